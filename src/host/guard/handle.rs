//! The guard as its rank sees it: started in a session of its own, tied to the rank by a
//! lifeline (its stdin), its events read on a thread, and its death noticed and cleaned up after.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

use crate::host::guard::protocol::{GuardCommand, GuardEvent};
use crate::host::statedir::StateDir;
use crate::plan::config::Network;
use crate::sys::frame::Next;
use crate::sys::signals::OnSignal;

use super::TEARDOWN_BUDGET;

/// How long past the guard's teardown budget its verdict may take to reach the rank.
const VERDICT_MARGIN: Duration = Duration::from_secs(2);

/// How long the teardown waits for the rank's own cleanup after killing a hung guard.
const LOST_CLEANUP_BUDGET: Duration = Duration::from_secs(35);

/// The write end of the guard's stdin, shared with the signal thread: a teardown signal reaches
/// the guard at once, whatever the rank's main thread is blocked in.
struct Lifeline(Mutex<Option<ChildStdin>>);

impl Lifeline {
    /// Sends `teardown` and closes the lifeline (its end means the same); later calls do nothing.
    fn teardown(&self) {
        let taken = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut pipe) = taken {
            let _ = GuardCommand::Teardown.write_to(&mut pipe);
        }
    }

    /// Sends `command` unless the teardown was sent already (then the guard is past listening).
    fn send(&self, command: GuardCommand) -> Result<()> {
        let mut pipe = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match pipe.as_mut() {
            Some(pipe) => command.write_to(pipe),
            None => Ok(()),
        }
    }
}

impl OnSignal for Lifeline {
    fn on_signal(&self, _sig: i32) {
        self.teardown();
    }
}

/// The rank's side: starts the guard and talks to it.
pub struct GuardHandle {
    child: Child,
    lifeline: Arc<Lifeline>,
    events: Receiver<GuardEvent>,
    /// Set when the guard died without a verdict: what this rank then did to clean the host.
    lost: Arc<OnceLock<String>>,
    /// A verdict that arrived while someone else read the events (a teardown signal reaches the
    /// guard at once, so the verdict can come during start-up): the teardown's answer.
    verdict: OnceLock<Result<(), String>>,
    pub dir: StateDir,
    done: bool,
}

/// Starts the guard in a session of its own, which its daemon's processes inherit. Out of the
/// rank's process group, the launcher's group kill cannot hit the daemon half-way (the guard
/// reacts to the rank's death instead). And where the kernel groups processes by session for CPU
/// scheduling (autogroup, on by default in Debian's kernels), the daemon gets a fair share beside
/// the job's ranks however many there are. At 32 ranks per host on 2 cores that gives rank 0's
/// early daemon its CPU during MPI's start better than lowering the waiting ranks' priority did,
/// which slowed MPI's start itself (bench/SCALE.md).
///
/// The guard also keeps none of the rank's other descriptors (`inherit.rs`).
fn own_session(cmd: &mut Command) -> Result<()> {
    super::inherit::none_past_stdio(cmd)?;
    // SAFETY: the closure runs in the forked child before exec and makes one async-signal-safe
    // system call (setsid); it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid()?;
            Ok(())
        });
    }
    Ok(())
}

impl GuardHandle {
    pub fn spawn(
        dir: StateDir,
        addr: Ipv4Addr,
        network: Network,
        vxlan_nolearning: bool,
        overlay_default_mtu: Option<u32>,
        docker_release: Option<(u32, u32)>,
        labels: &[String],
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("failed to find the mpiswarm executable")?;
        let mut guard = Command::new(&exe);
        // Its log lines join this rank's stream: the same verbosity and format (after the
        // subcommand, so that `mpiswarm guard` stays what process listings show).
        guard
            .arg("guard")
            .args(crate::output::logging::flags_for_child());
        if vxlan_nolearning {
            guard.arg("--vxlan-nolearning");
        }
        if let Some(mtu) = overlay_default_mtu {
            guard.arg("--overlay-default-mtu").arg(mtu.to_string());
        }
        if let Some((major, minor)) = docker_release {
            guard
                .arg("--docker-release")
                .arg(format!("{major}.{minor}"));
        }
        for label in labels {
            guard.arg("--label").arg(label);
        }
        guard
            .arg("--dir")
            .arg(&dir.path)
            .arg("--advertise-addr")
            .arg(addr.to_string())
            .arg("--net")
            .arg(network.guard_net().as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Not the rank's own stderr: the launcher counts a rank as ended only once every
            // holder of its output closed it, and a dead rank's guard is still tearing down.
            .stderr(Stdio::piped());
        own_session(&mut guard).context("failed to keep the rank's descriptors from the guard")?;
        let mut child = guard
            .spawn()
            .with_context(|| format!("failed to start the guard {}", exe.display()))?;
        let lifeline = Arc::new(Lifeline(Mutex::new(child.stdin.take())));
        let listener: Weak<dyn OnSignal> = Arc::downgrade(&lifeline) as _;
        crate::sys::signals::listen(listener);
        let stdout = child
            .stdout
            .take()
            .context("the guard's output was not piped")?;
        let (tx, events) = channel();
        let lost = Arc::new(OnceLock::new());
        let watch = Watch {
            pid: child.id(),
            dir: dir.path.clone(),
            lost: lost.clone(),
        };
        std::thread::Builder::new()
            .name("guard-events".into())
            .spawn(move || read_events(stdout, &tx, &watch))
            .context("failed to start the guard reader thread")?;
        let stderr = child
            .stderr
            .take()
            .context("the guard's log was not piped")?;
        std::thread::Builder::new()
            .name("guard-log".into())
            .spawn(move || pass_on_log(stderr))
            .context("failed to start the guard log thread")?;
        // Told by the signal thread, the guard cleans the host even if this rank's main thread
        // is stuck; the watchdog then lets the rank go.
        crate::sys::signals::stuck_watchdog::guard_started(TEARDOWN_BUDGET + VERDICT_MARGIN);
        Ok(GuardHandle {
            lifeline,
            child,
            events,
            lost,
            verdict: OnceLock::new(),
            dir,
            done: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Tells the guard the process group of the user's command: its teardown kills the group
    /// even when this rank was killed first.
    pub fn command_started(&self, group: u32) -> Result<()> {
        self.lifeline.send(GuardCommand::Command { group })
    }

    /// An event from the guard, if one arrives within `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<GuardEvent> {
        match self.events.recv_timeout(timeout) {
            Ok(event) => {
                match &event {
                    GuardEvent::Clean => _ = self.verdict.set(Ok(())),
                    GuardEvent::Dirty(what) => _ = self.verdict.set(Err(what.clone())),
                    _ => {}
                }
                Some(event)
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Set as soon as the guard died without a verdict (and this rank cleaned the host): what
    /// happened. The signal side learns it too (`signals::Cause::GuardLost`), so every wait ends.
    pub fn gone(&self) -> Option<&str> {
        self.lost.get().map(String::as_str)
    }

    /// Starts the teardown without waiting for it (so that several things can overlap).
    pub fn begin_teardown(&mut self) {
        self.lifeline.teardown();
    }

    /// Tears the host down and waits for the guard's verdict, at most `timeout`.
    pub fn teardown(&mut self, timeout: Duration) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        self.begin_teardown();
        let deadline = Instant::now() + timeout;
        let mut verdict = self
            .verdict
            .get()
            .cloned()
            .map(|v| v.map_err(anyhow::Error::msg));
        while verdict.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(GuardEvent::Clean) => verdict = Some(Ok(())),
                Ok(GuardEvent::Dirty(what)) => verdict = Some(Err(anyhow!("{what}"))),
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    verdict = Some(Err(match self.gone() {
                        Some(what) => anyhow!("{what}"),
                        None => anyhow!(
                            "the guard (pid {}) ended without a verdict",
                            self.child.id()
                        ),
                    }));
                }
                Err(RecvTimeoutError::Timeout) => return Err(self.kill_hung(timeout)),
            }
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        crate::sys::deadline::wait_or_kill(&mut self.child, left)?;
        verdict.unwrap_or_else(|| {
            Err(anyhow!(
                "the guard (pid {}) ended without saying whether this host is clean: run \
                 `mpiswarm cleanup` on this host to remove what is left, and please report this \
                 bug with this run's output (rerun with -v for more)",
                self.child.id()
            ))
        })
    }

    /// The guard did not finish its teardown: kill it; its reader then cleans the host as after
    /// any death of the guard, and the error says how that went.
    fn kill_hung(&mut self, timeout: Duration) -> anyhow::Error {
        let _ = self.child.kill();
        let unreaped = !crate::sys::deadline::reap_within(
            &mut self.child,
            crate::sys::deadline::REAP_AFTER_KILL,
        );
        let cleaned = loop {
            match self.events.recv_timeout(LOST_CLEANUP_BUDGET) {
                Ok(GuardEvent::Dirty(what)) => break what,
                Ok(_) => {}
                Err(_) => break "no cleanup after it".to_owned(),
            }
        };
        let stuck = if unreaped {
            " (it did not end within a second of SIGKILL: uninterruptible sleep?)"
        } else {
            ""
        };
        anyhow!(
            "failed to tear down {} within {:?}: the guard (pid {}) did not finish and was killed{stuck}; {cleaned}",
            self.dir.path.display(),
            timeout,
            self.child.id()
        )
    }
}

impl Drop for GuardHandle {
    fn drop(&mut self) {
        if let Err(e) = self.teardown(TEARDOWN_BUDGET + Duration::from_secs(2)) {
            tracing::error!("{e:#}");
        }
    }
}

/// What the reader thread needs to clean up after its guard.
struct Watch {
    pid: u32,
    dir: PathBuf,
    lost: Arc<OnceLock<String>>,
}

/// The guard-events reader: passes events on; if the guard's output ends without a verdict (it
/// died: SIGKILL, OOM, a crash), cleans the host at once, then reports it like a verdict.
/// The guard's log lines, on this rank's stderr while the rank lives.
fn pass_on_log(log: std::process::ChildStderr) {
    use std::io::Write;
    for line in BufReader::new(log).lines() {
        let Ok(line) = line else { break };
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

fn read_events(stdout: ChildStdout, tx: &Sender<GuardEvent>, watch: &Watch) {
    let mut verdict = false;
    let mut stdout = BufReader::new(stdout);
    loop {
        match GuardEvent::read_from(&mut stdout) {
            Ok(Next::Message(event)) => {
                if event.is_verdict() {
                    verdict = true;
                    crate::sys::signals::stuck_watchdog::torn_down();
                }
                if let GuardEvent::Intruder { .. } = &event {
                    // The whole job stops now, not at the next phase.
                    tracing::error!("{event}");
                    crate::sys::signals::intruder();
                }
                // The handle may be gone already; keep reading until the guard's end anyway.
                let _ = tx.send(event);
            }
            Ok(Next::Bad(e)) => tracing::warn!("{e:#}"),
            Ok(Next::End) | Err(_) => break,
        }
    }
    if verdict {
        return;
    }
    let how = wait_dead(watch.pid, Instant::now() + Duration::from_secs(1));
    tracing::error!(
        "the guard (pid {}) died ({how}): cleaning this host now",
        watch.pid
    );
    let what = match crate::host::leftovers::after_guard_death(&watch.dir) {
        Ok(done) => format!(
            "the guard (pid {}) died ({how}); this rank cleaned the host as `mpiswarm cleanup` would: {done}",
            watch.pid
        ),
        Err(e) => format!(
            "the guard (pid {}) died ({how}), and cleaning the host after it failed: {e:#}",
            watch.pid
        ),
    };
    crate::sys::signals::stuck_watchdog::torn_down();
    let _ = watch.lost.set(what.clone());
    let _ = tx.send(GuardEvent::Dirty(what));
    crate::sys::signals::guard_lost();
}

/// Waits until the guard has exited (without reaping it: its handle does), and says how.
fn wait_dead(pid: u32, deadline: Instant) -> String {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
    loop {
        match waitid(Id::Pid(Pid::from_raw(pid as i32)), flags) {
            Ok(WaitStatus::Exited(_, code)) => return format!("exit code {code}"),
            Ok(WaitStatus::Signaled(_, sig, _)) => return format!("killed by {}", sig.as_str()),
            Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(WaitStatus::StillAlive) => return "its output ended, still running".to_owned(),
            Ok(other) => return format!("{other:?}"),
            // Reaped already by its handle.
            Err(_) => return "ended".to_owned(),
        }
    }
}
