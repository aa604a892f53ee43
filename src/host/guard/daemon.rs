//! The guard's daemon: rootlesskit started with the helper threads that follow its pid, and
//! started once more when it lost its known start-up race with nsenter, so that a rare race of
//! rootlesskit's own does not fail the job.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::host::daemon::{config, rootlesskit};
use crate::host::guard::protocol::{GuardEvent, emit};
use crate::host::statedir::StateDir;
use crate::plan::cli::GuardArgs;
use crate::plan::config::Network;

/// How long the guard looks for slirp4netns' listeners (they appear before dockerd starts).
const BACKLOG_WAIT: Duration = Duration::from_secs(60);

/// How long killing what a failed start left may take before the second start.
const CLEAR_BUDGET: Duration = Duration::from_secs(5);

/// The running rootlesskit, and what a second start needs.
pub(super) struct Daemon {
    command: Command,
    child: Child,
    /// Where the first start's output begins in the log (only it tells whether that start lost
    /// the race); `None` once rootlesskit was started again: a second failure is like any other.
    first_start_log: Option<u64>,
    helpers: Helpers,
    /// Ends this start's helper threads (set on drop, and before a second start).
    stop: Arc<AtomicBool>,
}

/// The helper threads that take rootlesskit's pid, and what they need.
struct Helpers {
    dir: StateDir,
    addr: Ipv4Addr,
    learning_sweeper: bool,
    deepen_backlogs: bool,
}

impl Daemon {
    /// Starts rootlesskit with dockerd and tells the rank (`Started`, or `Exited` with the
    /// reason: then there is no daemon).
    pub(super) fn start(
        args: &GuardArgs,
        dir: &StateDir,
        addr: Ipv4Addr,
        network: Network,
        out: &mut impl Write,
    ) -> Option<Daemon> {
        let overlay_default_mtu = crate::host::docker_version::if_network_defaults(
            args.overlay_default_mtu,
            args.docker_release,
        );
        let helpers = Helpers {
            dir: dir.clone(),
            addr,
            learning_sweeper: args.vxlan_nolearning,
            deepen_backlogs: network.slirp4netns_forwards(),
        };
        let started = config::command(dir, addr, network, overlay_default_mtu, &args.labels)
            .and_then(|mut command| {
                let log_from = log_len(dir);
                Ok((spawn(&mut command)?, command, log_from))
            });
        match started {
            Ok((child, command, log_from)) => {
                emit(out, &GuardEvent::Started(child.id()));
                let stop = helpers.start(child.id());
                Some(Daemon {
                    command,
                    child,
                    first_start_log: Some(log_from),
                    helpers,
                    stop,
                })
            }
            Err(e) => {
                emit(out, &GuardEvent::Exited(format!("{e:#}")));
                None
            }
        }
    }

    /// rootlesskit's exit status, once it has exited.
    pub(super) fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// After rootlesskit exited with `status`: starts it again if this was its first start and
    /// it lost the nsenter race (`Restarted`), else tells the rank it exited (`Exited`).
    /// Returns whether a daemon runs again.
    pub(super) fn after_exit(&mut self, status: ExitStatus, out: &mut impl Write) -> bool {
        let Some(log_from) = self.first_start_log else {
            let said =
                format!("{status}, at its second start: the first lost its race with nsenter");
            emit(out, &GuardEvent::Exited(said));
            return false;
        };
        let log = self.log_since(log_from);
        let Some(why) = rootlesskit::nsenter_race(&log).map(str::to_owned) else {
            emit(out, &GuardEvent::Exited(status.to_string()));
            return false;
        };
        match self.restart(status) {
            Ok(pid) => {
                emit(out, &GuardEvent::Restarted { pid, why });
                true
            }
            Err(e) => {
                let what = format!("{status}, after its start-up race with nsenter ({why}); {e:#}");
                emit(out, &GuardEvent::Exited(what));
                false
            }
        }
    }

    /// What was written to the log from byte `from` on.
    fn log_since(&self, from: u64) -> String {
        let text = std::fs::read(self.helpers.dir.log()).unwrap_or_default();
        let from = usize::try_from(from).map_or(text.len(), |f| f.min(text.len()));
        String::from_utf8_lossy(&text[from..]).into_owned()
    }

    /// Clears what the first start left, starts rootlesskit again with its helpers, and says so
    /// in the log. Returns the new pid.
    fn restart(&mut self, status: ExitStatus) -> Result<u32> {
        let old = self.child.id();
        self.stop.store(true, Ordering::SeqCst);
        clear_failed_start(&self.helpers.dir).context("failed to clear its first start")?;
        self.child = spawn(&mut self.command).context("failed to start rootlesskit again")?;
        self.first_start_log = None;
        let pid = self.child.id();
        note_in_log(
            &self.helpers.dir,
            &format!(
                "mpiswarm guard: rootlesskit (pid {old}) exited during start-up ({status}) after \
                 losing its known race with nsenter (nsenter ran while rootlesskit's child \
                 re-executed itself): started it again once, as pid {pid}"
            ),
        );
        self.stop = self.helpers.start(pid);
        Ok(pid)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Helpers {
    /// Starts the helper threads for the rootlesskit `pid`; returns their stop flag.
    fn start(&self, pid: u32) -> Arc<AtomicBool> {
        let stop = Arc::new(AtomicBool::new(false));
        if self.learning_sweeper {
            start_learning_sweeper(pid, &self.dir, stop.clone());
        }
        if self.deepen_backlogs {
            start_deepening_backlogs(pid, self.addr, stop.clone());
        }
        stop
    }
}

/// Spawns rootlesskit's `command` (again: a `Command` spawns as often as asked).
fn spawn(command: &mut Command) -> Result<Child> {
    command
        .spawn()
        .context("failed to start rootlesskit (is it installed and on PATH?)")
}

/// The log's length: where the output of a start about to be spawned begins.
fn log_len(dir: &StateDir) -> u64 {
    std::fs::metadata(dir.log()).map_or(0, |m| m.len())
}

/// Kills what is left of a start that failed (rootlesskit's child, orphaned to the guard) and
/// removes rootlesskit's state directory. The child ends before it reaches the namespaces'
/// set-up (it waits for a message that never comes), so it made nothing in /tmp.
fn clear_failed_start(dir: &StateDir) -> Result<()> {
    crate::host::teardown::kill_own_tree(Instant::now() + CLEAR_BUDGET)?;
    let rk = config::rootlesskit_state_dir(dir);
    match std::fs::remove_dir_all(&rk) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("failed to remove {}", rk.display()))
        }
        _ => Ok(()),
    }
}

/// One line of the guard's own in the daemon's log, for whoever reads it (best effort: the log
/// is only for people).
fn note_in_log(dir: &StateDir, line: &str) {
    let log = std::fs::OpenOptions::new().append(true).open(dir.log());
    if let Ok(mut log) = log {
        let _ = writeln!(log, "{line}");
    }
}

/// Remedy (b): keeps vxlan learning off in the daemon's sandboxes, entered through rootlesskit's
/// child (inside the namespaces), once it exists.
fn start_learning_sweeper(rootlesskit: u32, dir: &StateDir, stop: Arc<AtomicBool>) {
    let state_dir = dir.path.display().to_string();
    let _ = std::thread::Builder::new()
        .name("vxlan".into())
        .spawn(move || crate::host::vxlan::keep_learning_off(rootlesskit as i32, state_dir, stop));
}

/// Once slirp4netns listens on the published TCP ports, deepens their accept queues; reports the
/// outcome as an event (the rank logs it), unless stopped first: then rootlesskit is gone or
/// was started again, and the outcome says nothing.
fn start_deepening_backlogs(rootlesskit: u32, addr: Ipv4Addr, stop: Arc<AtomicBool>) {
    let ports: Vec<u16> = crate::host::firewall::SWARM_PORTS
        .iter()
        .filter(|(_, proto)| *proto == "tcp")
        .map(|(port, _)| *port)
        .collect();
    let _ = std::thread::Builder::new()
        .name("backlog".into())
        .spawn(move || {
            let deadline = Instant::now() + BACKLOG_WAIT;
            let outcome =
                crate::host::backlog::deepen(rootlesskit as i32, addr, &ports, deadline, &stop)
                    .map_err(|e| format!("{e:#}"));
            if !stop.load(Ordering::SeqCst) {
                emit(&mut std::io::stdout(), &GuardEvent::Backlog(outcome));
            }
        });
}
