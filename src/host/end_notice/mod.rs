//! How a host's leader tells the host's other ranks that the job ended, and its exit code: a Unix
//! socket in the user's private directory. They wait in the kernel (no CPU, no MPI progress) and
//! hear at once of the end, or of their leader's death (the connection breaks), where waiting
//! for an MPI message meant polling MPI and a first message that took a connection handshake.
//!
//! The leader listens at `<user root>/<job>-<host>.end` before its host's ranks greet each other
//! and tells them the path in the greeting; a thread accepts their connections as they come and
//! removes the path once every rank of the host is connected (nothing is left on the disk if the
//! leader is killed later; its guard removes it otherwise). At the end the leader writes the exit
//! code to every connection (and to any that comes later). A host with one rank has no socket.
//! What the leader says, here and over MPI, is `protocol`.

pub mod protocol;

use std::io::{BufReader, ErrorKind, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::host::end_notice::protocol::End;
use crate::host::statedir;
use crate::sys::frame::Next;
use crate::sys::user_root::{self, UserRoot};

/// How long a waiting rank reads its leader's frame once it began to arrive.
const FRAME_WAIT: Duration = Duration::from_secs(2);

/// Where a run's end socket lives: beside its state directory, named after it (so that the guard
/// and `cleanup`, which know the directory, remove it with it).
pub fn socket_path(base: &Path, job: &str, host: &str) -> PathBuf {
    end_path_of(&statedir::StateDir::path_for(base, job, host))
}

/// The end socket that belongs to a state directory.
pub fn end_path_of(state_dir: &Path) -> PathBuf {
    let mut name = state_dir.as_os_str().to_owned();
    name.push(".end");
    PathBuf::from(name)
}

/// The leader's side: accepts the host's ranks and, at the end, tells each the exit code.
pub struct Announcer {
    path: PathBuf,
    listeners: Arc<Mutex<Audience>>,
}

#[derive(Default)]
struct Audience {
    waiting: Vec<UnixStream>,
    /// Set once the end is announced: a rank that connects later hears it at once.
    end: Option<End>,
}

impl Announcer {
    /// Listens at `socket_path(base, job, host)` in the user's private root for `ranks` ranks.
    pub fn listen(base: &Path, job: &str, host: &str, ranks: usize) -> Result<Announcer> {
        let path = socket_path(base, job, host);
        let listener = bind_in_private_root(base, &path)?;
        let listeners = Arc::new(Mutex::new(Audience::default()));
        let audience = Arc::clone(&listeners);
        let unlink_at = path.clone();
        std::thread::Builder::new()
            .name("end-notice".into())
            .spawn(move || accept_forever(&listener, &audience, ranks, &unlink_at))
            .with_context(|| {
                format!("failed to start the thread accepting on {}", path.display())
            })?;
        Ok(Announcer { path, listeners })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tells every rank of the host (connected now or later) how the job ended.
    pub fn announce(&self, end: End) {
        tell(&self.listeners, end);
    }

    /// `announce` for another thread, which may have to tell the host's ranks to leave while
    /// the one owning this is stuck.
    pub fn teller(&self) -> impl Fn(End) + Send + 'static {
        let listeners = Arc::clone(&self.listeners);
        move |end| tell(&listeners, end)
    }
}

fn tell(listeners: &Mutex<Audience>, end: End) {
    let mut audience = listeners.lock().unwrap_or_else(PoisonError::into_inner);
    audience.end = Some(end);
    let wire = end.frame();
    for mut stream in audience.waiting.drain(..) {
        // A rank already gone cannot be told; the others must still be.
        let _ = stream.write_all(&wire);
    }
}

impl Drop for Announcer {
    /// The socket goes (the accepting thread ends with the process); so does the user's root if
    /// this was the last thing of the user's on the host.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if let Some(root) = self.path.parent() {
            user_root::remove_if_empty(root);
        }
    }
}

/// Binds `path` below the user's private root; a leftover socket of a dead run with the same name
/// (nobody listening) is replaced. Another run's root vanishing in between is retried. A bind
/// takes a path, not the root's handle: the root still being at its path afterwards proves the
/// socket is in it (`sys/user_root.rs`).
fn bind_in_private_root(base: &Path, path: &Path) -> Result<UnixListener> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut last = None;
    for _ in 0..20 {
        let root = UserRoot::create(base)?;
        match UnixListener::bind(path) {
            Ok(listener) if root.still_at_path() => return Ok(listener),
            Ok(_) => {
                // Made somewhere else: removed again, by path (where it was made).
                let _ = std::fs::remove_file(path);
                last = Some(ErrorKind::NotFound.into());
            }
            Err(e) if e.kind() == ErrorKind::NotFound => last = Some(e),
            Err(e) if e.kind() == ErrorKind::AddrInUse && UnixStream::connect(path).is_err() => {
                root.unlink(&name)
                    .with_context(|| format!("failed to remove the stale {}", path.display()))?;
                last = Some(e);
            }
            Err(e) => {
                return Err(e).with_context(|| format!("failed to listen at {}", path.display()));
            }
        }
    }
    Err(last.unwrap_or_else(|| ErrorKind::NotFound.into()))
        .with_context(|| format!("failed to listen at {}", path.display()))
}

/// The accepting thread: keeps each connection until the end is announced; once `ranks` are
/// connected, nobody else needs the path.
fn accept_forever(listener: &UnixListener, audience: &Mutex<Audience>, ranks: usize, path: &Path) {
    let mut accepted = 0;
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        accepted += 1;
        if accepted == ranks {
            let _ = std::fs::remove_file(path);
        }
        let mut audience = audience.lock().unwrap_or_else(PoisonError::into_inner);
        match audience.end {
            Some(end) => {
                let _ = stream.write_all(&end.frame());
            }
            None => audience.waiting.push(stream),
        }
    }
}

/// What a waiting rank heard.
#[derive(Debug)]
pub enum Heard {
    /// The job ended.
    End(End),
    /// The leader's end of the connection closed without a word: it died.
    LeaderGone,
    /// The leader said something that is not an end (what, and from whom).
    Unreadable(anyhow::Error),
    /// Nothing yet.
    Nothing,
}

/// A rank's side: connected to its leader, waiting to hear the end.
pub struct EndWatch {
    stream: BufReader<UnixStream>,
}

impl EndWatch {
    /// Connects to the leader's socket, and checks that the leader is the one listening.
    pub fn connect(path: &Path, leader_pid: i32) -> Result<EndWatch> {
        let stream = UnixStream::connect(path)
            .with_context(|| format!("failed to connect to {}", path.display()))?;
        let peer = rustix::net::sockopt::socket_peercred(&stream)
            .with_context(|| format!("failed to read the credentials of {}", path.display()))?;
        let pid = peer.pid.as_raw_nonzero().get();
        if pid != leader_pid {
            bail!(
                "{} is held by pid {pid}, not by this host's leader (pid {leader_pid})",
                path.display()
            );
        }
        // The leader writes its one frame at once: a part of one, then silence, is not waited on.
        stream
            .set_read_timeout(Some(FRAME_WAIT))
            .with_context(|| format!("failed to set a read timeout on {}", path.display()))?;
        Ok(EndWatch {
            stream: BufReader::new(stream),
        })
    }

    /// Waits up to `timeout` for the end.
    pub fn wait(&mut self, timeout: Duration) -> Heard {
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(
            self.stream.get_ref().as_fd(),
            PollFlags::POLLIN,
        )];
        match poll(&mut fds, timeout) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => return Heard::Nothing,
            Ok(_) => {}
            Err(_) => return Heard::LeaderGone,
        }
        match End::read_from(&mut self.stream) {
            Ok(Next::Message(end)) => Heard::End(end),
            Ok(Next::Bad(e)) => Heard::Unreadable(e),
            Ok(Next::End) | Err(_) => Heard::LeaderGone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::end_notice::protocol::MpiEnd;

    #[test]
    fn the_end_socket_sits_beside_its_state_directory() {
        let p = socket_path(Path::new("/tmp"), "j1", "msh1");
        assert_eq!(
            end_path_of(&statedir::StateDir::path_for(
                Path::new("/tmp"),
                "j1",
                "msh1"
            )),
            p
        );
        assert!(p.to_string_lossy().ends_with("/j1-msh1.end"));
    }

    #[test]
    fn every_waiting_rank_hears_the_code_and_a_late_one_too() {
        let base = tempfile::tempdir().unwrap();
        let announcer = Announcer::listen(base.path(), "j1", "h", 5).unwrap();
        let me = std::process::id() as i32;
        let mut early: Vec<_> = (0..3)
            .map(|_| EndWatch::connect(announcer.path(), me).unwrap())
            .collect();
        assert!(
            announcer.path().exists(),
            "removed before every rank connected"
        );
        assert!(matches!(
            early[0].wait(Duration::from_millis(20)),
            Heard::Nothing
        ));
        let end = End {
            code: 7,
            mpi: MpiEnd::Leave,
        };
        announcer.announce(end);
        for w in &mut early {
            assert!(matches!(w.wait(Duration::from_secs(5)), Heard::End(e) if e == end));
        }
        let mut late = EndWatch::connect(announcer.path(), me).unwrap();
        assert!(matches!(late.wait(Duration::from_secs(5)), Heard::End(e) if e == end));
        let _last = EndWatch::connect(announcer.path(), me).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while announcer.path().exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!announcer.path().exists(), "kept once every rank connected");
    }

    #[test]
    fn a_rank_hears_its_leader_die_when_the_connection_breaks() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("leader.end");
        let listener = UnixListener::bind(&path).unwrap();
        let mut watch = EndWatch::connect(&path, std::process::id() as i32).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(matches!(
            watch.wait(Duration::from_millis(20)),
            Heard::Nothing
        ));
        // What the kernel does to a killed leader's sockets.
        drop(accepted);
        drop(listener);
        assert!(matches!(
            watch.wait(Duration::from_secs(5)),
            Heard::LeaderGone
        ));
    }

    #[test]
    fn a_rank_refuses_a_socket_its_leader_does_not_hold() {
        let base = tempfile::tempdir().unwrap();
        let announcer = Announcer::listen(base.path(), "j2", "h", 1).unwrap();
        let err = EndWatch::connect(announcer.path(), 1).err().unwrap();
        assert!(format!("{err:#}").contains("not by this host's leader (pid 1)"));
    }

    /// A leader that writes a bad frame, or part of one, then stays: the rank hears that, from
    /// whom, at once or after `FRAME_WAIT`, never waits on.
    #[test]
    fn a_bad_or_truncated_end_is_named_not_waited_on() {
        for (wire, said) in [
            (
                &b"{\"code\":7}\n"[..],
                "unknown message from this host's leader: ",
            ),
            (
                &b"{\"code\":7,"[..],
                "truncated message from this host's leader: ",
            ),
        ] {
            let base = tempfile::tempdir().unwrap();
            let path = base.path().join("leader.end");
            let listener = UnixListener::bind(&path).unwrap();
            let mut watch = EndWatch::connect(&path, std::process::id() as i32).unwrap();
            let (mut accepted, _) = listener.accept().unwrap();
            accepted.write_all(wire).unwrap();
            let start = std::time::Instant::now();
            // The leader is still there: a part of a frame is followed by its silence.
            match watch.wait(Duration::from_secs(5)) {
                Heard::Unreadable(e) => {
                    assert!(e.to_string().starts_with(said), "{e}");
                    assert!(e.to_string().contains("the job's end (an exit code"), "{e}");
                }
                other => panic!("{wire:?} gave {other:?}"),
            }
            assert!(start.elapsed() < FRAME_WAIT * 2, "{:?}", start.elapsed());
        }
    }
}
