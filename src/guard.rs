//! The host guard: a small process outside the rank's process group that owns the daemon and
//! tears the host down when told to, when it is signalled, or when the rank dies (its lifeline
//! pipe closes), so that even `kill -9` of the rank leaves nothing behind.
//!
//! Protocol: the rank holds the write end of the guard's stdin (the lifeline) and reads lines
//! from its stdout: `started PID`, `exited STATUS` (the daemon died early), `backlog ...` (the
//! outcome of deepening slirp4netns' accept queues), `clean`, `dirty MSG`.
//! A line `teardown` on the lifeline, or its end, starts the teardown.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use wait_timeout::ChildExt;

use crate::cli::{GuardArgs, PortDriver};
use crate::statedir::{GuardRecord, StateDir};
use crate::{daemon, teardown};

/// How long the guard may take to kill everything and delete the directory.
const TEARDOWN_BUDGET: Duration = Duration::from_secs(10);

/// How long the guard looks for slirp4netns' listeners (they appear before dockerd starts).
const BACKLOG_WAIT: Duration = Duration::from_secs(60);

/// The guard process's main: returns its exit code.
pub fn run(args: &GuardArgs) -> Result<i32> {
    // Orphans of the daemon's tree (e.g. slirp4netns) are reparented here, so the guard can find
    // and kill them all.
    nix::sys::prctl::set_child_subreaper(true).context("failed to become a child subreaper")?;
    let (sig_read, sig_write) = UnixStream::pair()?;
    for sig in crate::signals::TEARDOWN_SIGNALS {
        signal_hook::low_level::pipe::register(sig, sig_write.try_clone()?)
            .context("failed to install the guard's signal handlers")?;
    }
    let dir = StateDir {
        path: args.dir.clone(),
    };
    let addr: Ipv4Addr = args
        .advertise_addr
        .parse()
        .with_context(|| format!("invalid advertise address {:?}", args.advertise_addr))?;
    let me = teardown::proc_info(std::process::id() as i32)
        .ok_or_else(|| anyhow!("cannot read /proc/self"))?;
    let record = GuardRecord {
        pid: me.pid,
        start_time: me.start_time,
        host: crate::host::hostname(),
        job: args
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    StateDir::write_private(&dir.guard_record(), &serde_json::to_vec(&record)?)?;

    let mut out = std::io::stdout();
    let mut daemon = match daemon::command(&dir, addr, args.port_driver).and_then(|mut c| {
        c.spawn()
            .context("failed to start rootlesskit (is it installed and on PATH?)")
    }) {
        Ok(child) => Some(child),
        Err(e) => {
            let _ = writeln!(out, "exited {e:#}");
            None
        }
    };
    if let Some(child) = &daemon {
        let _ = writeln!(out, "started {}", child.id());
    }
    let stop_helpers = Arc::new(AtomicBool::new(false));
    if args.vxlan_nolearning
        && let Some(child) = &daemon
    {
        start_learning_sweeper(child.id(), &dir, stop_helpers.clone());
    }
    if args.port_driver == PortDriver::Slirp4netns
        && let Some(child) = &daemon
    {
        start_deepening_backlogs(child.id(), addr, stop_helpers.clone());
    }

    wait_for_teardown(&mut daemon, &sig_read, &mut out);
    stop_helpers.store(true, Ordering::SeqCst);

    let result = teardown_host(&dir);
    match &result {
        Ok(()) => {
            let _ = writeln!(out, "clean");
        }
        Err(e) => {
            let _ = writeln!(out, "dirty {}", format!("{e:#}").replace('\n', " "));
        }
    }
    Ok(if result.is_ok() { 0 } else { 1 })
}

/// Remedy (b): once rootlesskit's child (inside the namespaces) exists, keep vxlan learning off.
fn start_learning_sweeper(rootlesskit: u32, dir: &StateDir, stop: Arc<AtomicBool>) {
    let state_dir = dir.path.display().to_string();
    let _ = std::thread::Builder::new()
        .name("vxlan".into())
        .spawn(move || {
            let mut inner = None;
            while inner.is_none() && !stop.load(Ordering::SeqCst) {
                // Its child in another user namespace: not slirp4netns, its other child.
                let own_userns = std::fs::read_link("/proc/self/ns/user").ok();
                inner = teardown::descendants(rootlesskit as i32)
                    .into_iter()
                    .find(|p| {
                        p.ppid == rootlesskit as i32
                            && std::fs::read_link(format!("/proc/{}/ns/user", p.pid)).ok()
                                != own_userns
                    })
                    .map(|p| p.pid as u32);
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Some(pid) = inner {
                crate::vxlan::keep_learning_off(pid, state_dir, stop);
            }
        });
}

/// Once slirp4netns listens on the published TCP ports, deepens their accept queues; reports the
/// outcome as an event (the rank logs it).
fn start_deepening_backlogs(rootlesskit: u32, addr: Ipv4Addr, stop: Arc<AtomicBool>) {
    let ports: Vec<u16> = daemon::SWARM_PORTS
        .iter()
        .filter(|(_, proto)| *proto == "tcp")
        .map(|(port, _)| *port)
        .collect();
    let _ = std::thread::Builder::new()
        .name("backlog".into())
        .spawn(move || {
            let deadline = Instant::now() + BACKLOG_WAIT;
            let line =
                match crate::backlog::deepen(rootlesskit as i32, addr, &ports, deadline, &stop) {
                    Ok(done) => format!("backlog deepened on port(s) {done:?}"),
                    Err(e) => format!("backlog not deepened: {e:#}"),
                };
            let _ = writeln!(std::io::stdout(), "{line}");
        });
}

/// Blocks until the lifeline says teardown or closes, or a signal arrives; reports an early
/// daemon exit on the way.
fn wait_for_teardown(daemon: &mut Option<Child>, sig_read: &UnixStream, out: &mut impl Write) {
    let stdin = std::io::stdin();
    let mut lifeline = stdin.lock();
    loop {
        let mut fds = [
            PollFd::new(lifeline.as_fd(), PollFlags::POLLIN),
            PollFd::new(sig_read.as_fd(), PollFlags::POLLIN),
        ];
        let ready = poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0);
        if ready > 0 {
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                return;
            }
            if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                let mut line = String::new();
                match lifeline.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) if line.trim() == "teardown" => return,
                    Ok(_) => {}
                }
            }
        }
        if let Some(child) = daemon
            && let Ok(Some(status)) = child.try_wait()
        {
            let _ = writeln!(out, "exited {status}");
            *daemon = None;
        }
    }
}

fn teardown_host(dir: &StateDir) -> Result<()> {
    let deadline = Instant::now() + TEARDOWN_BUDGET;
    let killed = teardown::kill_own_tree(deadline);
    let removed = teardown::remove_state_dir(
        &dir.path,
        deadline.saturating_duration_since(Instant::now()),
    );
    // The per-user parent goes too once no other run of this user is left on the host.
    if let Some(parent) = dir.path.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    match (killed, removed) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(a), Err(b)) => Err(anyhow!("{a:#}; {b:#}")),
    }
}

/// The rank's side: starts the guard and talks to it.
pub struct GuardHandle {
    child: Child,
    lifeline: Option<ChildStdin>,
    events: Receiver<String>,
    pub dir: StateDir,
    done: bool,
}

impl GuardHandle {
    pub fn spawn(
        dir: StateDir,
        addr: Ipv4Addr,
        port_driver: PortDriver,
        vxlan_nolearning: bool,
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("failed to find the mpiswarm executable")?;
        let mut guard = Command::new(&exe);
        guard.arg("guard");
        if vxlan_nolearning {
            guard.arg("--vxlan-nolearning");
        }
        let mut child = guard
            .arg("--dir")
            .arg(&dir.path)
            .arg("--advertise-addr")
            .arg(addr.to_string())
            .arg("--port-driver")
            .arg(port_driver.as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // Out of the rank's process group: the launcher's group kill must not hit the daemon
            // half-way; the guard reacts to the rank's death instead.
            .process_group(0)
            .spawn()
            .with_context(|| format!("failed to start the guard {}", exe.display()))?;
        let stdout = child
            .stdout
            .take()
            .context("the guard's output was not piped")?;
        let (tx, events) = channel();
        std::thread::Builder::new()
            .name("guard-events".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .context("failed to start the guard reader thread")?;
        Ok(GuardHandle {
            lifeline: child.stdin.take(),
            child,
            events,
            dir,
            done: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An event from the guard, if one arrives within `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<String> {
        match self.events.recv_timeout(timeout) {
            Ok(line) => Some(line),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Starts the teardown without waiting for it (so that several things can overlap).
    pub fn begin_teardown(&mut self) {
        if let Some(mut lifeline) = self.lifeline.take() {
            let _ = lifeline.write_all(b"teardown\n");
        }
    }

    /// Tears the host down and waits for the guard's verdict, at most `timeout`.
    pub fn teardown(&mut self, timeout: Duration) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        self.begin_teardown();
        let deadline = Instant::now() + timeout;
        let mut verdict = None;
        while verdict.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(line) if line == "clean" => verdict = Some(Ok(())),
                Ok(line) if line.starts_with("dirty ") => {
                    verdict = Some(Err(anyhow!("{}", &line[6..])));
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    verdict = Some(Err(anyhow!(
                        "the guard (pid {}) ended without a verdict",
                        self.child.id()
                    )));
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    bail!(
                        "failed to tear down {} within {:?}: the guard (pid {}) did not finish and was killed",
                        self.dir.path.display(),
                        timeout,
                        self.child.id()
                    );
                }
            }
        }
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        if self.child.wait_timeout(left)?.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        verdict.unwrap_or_else(|| Err(anyhow!("the guard gave no verdict")))
    }
}

impl Drop for GuardHandle {
    fn drop(&mut self) {
        if let Err(e) = self.teardown(TEARDOWN_BUDGET + Duration::from_secs(2)) {
            tracing::error!("{e:#}");
        }
    }
}

/// Reads a guard record, for `cleanup`.
pub fn read_record(dir: &Path) -> Option<GuardRecord> {
    let mut text = String::new();
    std::fs::File::open(dir.join("guard.json"))
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
    serde_json::from_str(&text).ok()
}

/// True while the guard that wrote `record` is still running (pid and start time both match).
pub fn is_alive(record: &GuardRecord) -> bool {
    teardown::proc_info(record.pid).is_some_and(|p| p.start_time == record.start_time && !p.zombie)
}

pub fn state_dirs_under(root: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(root)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}
