//! The host guard: a small process in a session of its own (out of the rank's process group)
//! that owns the daemon and tears the host down when told to, when it is signalled, or when the
//! rank dies (its lifeline pipe closes), so that even `kill -9` of the rank leaves nothing behind.
//!
//! The rank holds the write end of the guard's stdin (the lifeline) and reads the guard's events
//! from its stdout (`guard_protocol`). `teardown` on the lifeline, or its end, starts the
//! teardown. The daemon's tree dies with the guard (a parent death signal); if the guard dies
//! anyway (SIGKILL, OOM), its rank notices at once, cleans the host itself as `mpiswarm cleanup`
//! would, and the run tears down reporting the host.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

use crate::host::guard_protocol::{GuardCommand, GuardEvent};
use crate::host::{daemon, teardown};
use crate::plan::cli::GuardArgs;
use crate::plan::config::Network;
use crate::sys::signals::OnSignal;
use crate::sys::statedir::{GuardRecord, StateDir};

/// How long the guard may take to kill everything and delete the directory.
const TEARDOWN_BUDGET: Duration = Duration::from_secs(10);

/// How long the teardown waits for the rank's own cleanup after killing a hung guard.
const LOST_CLEANUP_BUDGET: Duration = Duration::from_secs(35);

/// How long the guard looks for slirp4netns' listeners (they appear before dockerd starts).
const BACKLOG_WAIT: Duration = Duration::from_secs(60);

/// The guard process's main: returns its exit code.
pub fn run(args: &GuardArgs) -> Result<i32> {
    // Orphans of the daemon's tree (e.g. slirp4netns) are reparented here, so the guard can find
    // and kill them all.
    nix::sys::prctl::set_child_subreaper(true).context("failed to become a child subreaper")?;
    let (sig_read, sig_write) = UnixStream::pair()?;
    for sig in crate::sys::signals::TEARDOWN_SIGNALS {
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
    let me = crate::sys::procfs::proc_info(std::process::id() as i32)
        .ok_or_else(|| anyhow!("cannot read /proc/self"))?;
    let record = GuardRecord {
        pid: me.pid,
        start_time: me.start_time,
        host: crate::host::identity::hostname(),
        job: args
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    // Held for the guard's life: `cleanup` leaves a run alone while anyone holds it.
    let _run_lock = crate::sys::statedir::hold_run_lock(&dir.path)?;
    StateDir::write_private(&dir.guard_record(), &serde_json::to_vec(&record)?)?;

    let mut out = std::io::stdout();
    let network = Network::from_guard_net(args.net);
    let mut daemon =
        match daemon::command(&dir, addr, network, args.overlay_default_mtu).and_then(|mut c| {
            c.spawn()
                .context("failed to start rootlesskit (is it installed and on PATH?)")
        }) {
            Ok(child) => Some(child),
            Err(e) => {
                emit(&mut out, &GuardEvent::Exited(format!("{e:#}")));
                None
            }
        };
    if let Some(child) = &daemon {
        emit(&mut out, &GuardEvent::Started(child.id()));
    }
    let stop_helpers = Arc::new(AtomicBool::new(false));
    if args.vxlan_nolearning
        && let Some(child) = &daemon
    {
        start_learning_sweeper(child.id(), &dir, stop_helpers.clone());
    }
    if network.slirp4netns_forwards()
        && let Some(child) = &daemon
    {
        start_deepening_backlogs(child.id(), addr, stop_helpers.clone());
    }

    let intruder = wait_for_teardown(&mut daemon, &sig_read, addr, &mut out);
    stop_helpers.store(true, Ordering::SeqCst);

    let result = teardown_host(&dir).and_then(|()| match intruder {
        Some(s) => Err(anyhow!(
            "{}",
            GuardEvent::Intruder {
                uid: s.uid,
                port: s.port
            }
        )),
        None => Ok(()),
    });
    match &result {
        Ok(()) => emit(&mut out, &GuardEvent::Clean),
        Err(e) => emit(&mut out, &GuardEvent::Dirty(format!("{e:#}"))),
    }
    Ok(if result.is_ok() { 0 } else { 1 })
}

/// One event to the rank, as one line.
fn emit(out: &mut impl Write, event: &GuardEvent) {
    let _ = writeln!(out, "{}", event.encode());
}

/// Remedy (b): once rootlesskit's child (inside the namespaces) exists, keep vxlan learning off.
fn start_learning_sweeper(rootlesskit: u32, dir: &StateDir, stop: Arc<AtomicBool>) {
    let state_dir = dir.path.display().to_string();
    let _ = std::thread::Builder::new()
        .name("vxlan".into())
        .spawn(move || {
            let mut inner = None;
            while inner.is_none() && !stop.load(Ordering::SeqCst) {
                inner = crate::sys::procfs::rootlesskit_child(rootlesskit as i32).map(|p| p as u32);
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Some(pid) = inner {
                crate::host::vxlan::keep_learning_off(pid, state_dir, stop);
            }
        });
}

/// Once slirp4netns listens on the published TCP ports, deepens their accept queues; reports the
/// outcome as an event (the rank logs it).
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
            emit(&mut std::io::stdout(), &GuardEvent::Backlog(outcome));
        });
}

/// Blocks until the lifeline says teardown or closes, or a signal arrives, or another user binds
/// a swarm UDP port on `addr` (returned); reports an early daemon exit on the way.
fn wait_for_teardown(
    daemon: &mut Option<Child>,
    sig_read: &UnixStream,
    addr: Ipv4Addr,
    out: &mut impl Write,
) -> Option<crate::host::squatters::Squatter> {
    let stdin = std::io::stdin();
    let mut lifeline = stdin.lock();
    let udp_ports: Vec<u16> = crate::host::firewall::SWARM_PORTS
        .iter()
        .filter(|(_, proto)| *proto == "udp")
        .map(|(port, _)| *port)
        .collect();
    loop {
        if let Some(s) = crate::host::squatters::scan(addr, &udp_ports)
            .into_iter()
            .next()
        {
            emit(
                out,
                &GuardEvent::Intruder {
                    uid: s.uid,
                    port: s.port,
                },
            );
            return Some(s);
        }
        let mut fds = [
            PollFd::new(lifeline.as_fd(), PollFlags::POLLIN),
            PollFd::new(sig_read.as_fd(), PollFlags::POLLIN),
        ];
        let ready = poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0);
        if ready > 0 {
            if fds[1].revents().is_some_and(|r| !r.is_empty()) {
                return None;
            }
            if fds[0].revents().is_some_and(|r| !r.is_empty()) {
                let mut line = String::new();
                match lifeline.read_line(&mut line) {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => match GuardCommand::decode(&line) {
                        Ok(GuardCommand::Teardown) => return None,
                        Err(e) => tracing::warn!("{e:#}"),
                    },
                }
            }
        }
        if let Some(child) = daemon
            && let Ok(Some(status)) = child.try_wait()
        {
            emit(out, &GuardEvent::Exited(status.to_string()));
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
    // The rank's end socket beside it (the rank may be gone), then the per-user parent once no
    // other run of this user is left on the host.
    let _ = std::fs::remove_file(crate::host::end_notice::end_path_of(&dir.path));
    if let Some(parent) = dir.path.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    match (killed, removed) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(a), Err(b)) => Err(anyhow!("{a:#}; {b:#}")),
    }
}

/// The write end of the guard's stdin, shared with the signal thread: a teardown signal reaches
/// the guard at once, whatever the rank's main thread is blocked in.
struct Lifeline(Mutex<Option<ChildStdin>>);

impl Lifeline {
    /// Sends `teardown` and closes the lifeline (its end means the same); later calls do nothing.
    fn teardown(&self) {
        let taken = self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut pipe) = taken {
            let _ = pipe.write_all(GuardCommand::Teardown.encode().as_bytes());
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
/// The guard also keeps none of the rank's other descriptors: MPI's sockets are not close-on-exec,
/// and a daemon tree holding a rank's connections and its listening socket keeps a dead rank's
/// connections open for its peers (they would not see it die).
fn own_session(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and makes two async-signal-safe
    // system calls (close_range, setsid); it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            // Every descriptor past stdio closes at exec; an old kernel without close_range
            // (before 5.11) leaves them, as before.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            rustix::process::setsid()?;
            Ok(())
        });
    }
}

impl GuardHandle {
    pub fn spawn(
        dir: StateDir,
        addr: Ipv4Addr,
        network: Network,
        vxlan_nolearning: bool,
        overlay_default_mtu: Option<u32>,
    ) -> Result<Self> {
        let exe = std::env::current_exe().context("failed to find the mpiswarm executable")?;
        let mut guard = Command::new(&exe);
        guard.arg("guard");
        if vxlan_nolearning {
            guard.arg("--vxlan-nolearning");
        }
        if let Some(mtu) = overlay_default_mtu {
            guard.arg("--overlay-default-mtu").arg(mtu.to_string());
        }
        guard
            .arg("--dir")
            .arg(&dir.path)
            .arg("--advertise-addr")
            .arg(addr.to_string())
            .arg("--net")
            .arg(network.guard_net().as_str())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        own_session(&mut guard);
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
        Ok(GuardHandle {
            lifeline,
            child,
            events,
            lost,
            dir,
            done: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An event from the guard, if one arrives within `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<GuardEvent> {
        match self.events.recv_timeout(timeout) {
            Ok(event) => Some(event),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Set as soon as the guard died without a verdict (and this rank cleaned the host): what
    /// happened. The signal side learns it too (`signals::GUARD_LOST`), so every wait ends.
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
        let mut verdict = None;
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
        verdict.unwrap_or_else(|| Err(anyhow!("the guard gave no verdict")))
    }

    /// The guard did not finish its teardown: kill it; its reader then cleans the host as after
    /// any death of the guard, and the error says how that went.
    fn kill_hung(&mut self, timeout: Duration) -> anyhow::Error {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let cleaned = loop {
            match self.events.recv_timeout(LOST_CLEANUP_BUDGET) {
                Ok(GuardEvent::Dirty(what)) => break what,
                Ok(_) => {}
                Err(_) => break "no cleanup after it".to_owned(),
            }
        };
        anyhow!(
            "failed to tear down {} within {:?}: the guard (pid {}) did not finish and was killed; {cleaned}",
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
fn read_events(stdout: ChildStdout, tx: &Sender<GuardEvent>, watch: &Watch) {
    let mut verdict = false;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        match GuardEvent::decode(&line) {
            Ok(event) => {
                verdict |= event.is_verdict();
                if let GuardEvent::Intruder { .. } = &event {
                    // The whole job stops now, not at the next phase.
                    tracing::error!("{event}");
                    crate::sys::signals::intruder();
                }
                // The handle may be gone already; keep reading until the guard's end anyway.
                let _ = tx.send(event);
            }
            Err(e) => tracing::warn!("{e:#}"),
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
