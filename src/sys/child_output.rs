//! A child's output read within a deadline: a pipe ends only when every holder closes it, and a
//! grandchild the tool left running (a daemon, `cmd &`) would keep a plain `read_to_string`
//! blocked long after the child itself ended.

use std::io::Read;
use std::process::{Child, ExitStatus};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

/// How long the pipes may stay open after the child ended (its own last writes are in them by
/// then; only something it left behind keeps them open).
const PIPES_AFTER_EXIT: Duration = Duration::from_millis(200);

/// What a child printed and how it ended.
#[derive(Debug, Default)]
pub struct Finished {
    /// `None`: it did not end within the time and was killed.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Finished {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Waits for `child` at most `timeout` (then kills it, as `deadline::wait_or_kill`) while its
/// piped stdout and stderr are read on threads, so that neither a full pipe nor a pipe held open
/// by a grandchild can block; returns what arrived in time. Pipes that were not piped read empty.
pub fn output_within(mut child: Child, timeout: Duration) -> std::io::Result<Finished> {
    let start = Instant::now();
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = crate::sys::deadline::wait_or_kill(&mut child, timeout)?;
    let pipes_until =
        Instant::now() + PIPES_AFTER_EXIT.min(timeout.saturating_sub(start.elapsed()));
    Ok(Finished {
        status,
        stdout: collect(&stdout, pipes_until),
        stderr: collect(&stderr, pipes_until),
    })
}

/// Reads a pipe on a thread, passing each chunk on as it arrives (a reader held up by a
/// grandchild still gives what came before); the channel ends with the pipe.
fn drain(pipe: Option<impl Read + Send + 'static>) -> Option<Receiver<Vec<u8>>> {
    let mut pipe = pipe?;
    let (tx, rx) = channel();
    let spawned = std::thread::Builder::new()
        .name("child-output".into())
        .spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
    // Without a thread the pipe is dropped: the child gets EPIPE rather than a full pipe.
    spawned.ok().map(|_| rx)
}

/// Every chunk that arrives before `until` or before the pipe ends.
fn collect(chunks: &Option<Receiver<Vec<u8>>>, until: Instant) -> Vec<u8> {
    let mut all = Vec::new();
    let Some(chunks) = chunks else { return all };
    loop {
        // Chunks already there are taken even once the time is up.
        let left = until.saturating_duration_since(Instant::now());
        match chunks.recv_timeout(left) {
            Ok(chunk) => all.extend_from_slice(&chunk),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => return all,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};

    use super::*;

    fn sh(script: &str) -> Child {
        Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_pipe_held_by_a_grandchild_does_not_hold_the_reader() {
        let t = Instant::now();
        let out = output_within(sh("sleep 60 & echo hi"), Duration::from_secs(5)).unwrap();
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        assert!(out.status.is_some_and(|s| s.success()));
        assert_eq!(out.stdout_text(), "hi\n");
    }

    #[test]
    fn both_pipes_are_read_while_the_child_runs() {
        // More than a pipe holds, on both pipes.
        let out = output_within(
            sh("head -c 300000 /dev/zero; head -c 300000 /dev/zero >&2; exit 3"),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.status.and_then(|s| s.code()), Some(3));
        assert_eq!(out.stdout.len(), 300000);
        assert_eq!(out.stderr.len(), 300000);
    }

    #[test]
    fn a_child_that_overstays_is_killed_with_what_it_said() {
        let t = Instant::now();
        let out = output_within(
            sh("echo started; exec sleep 60"),
            Duration::from_millis(300),
        )
        .unwrap();
        assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
        assert!(out.status.is_none());
        assert_eq!(out.stdout_text(), "started\n");
    }
}
