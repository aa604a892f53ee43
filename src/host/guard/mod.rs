//! The host guard: a small process in a session of its own (out of the rank's process group)
//! that owns the daemon and tears the host down when told to, when it is signalled, or when the
//! rank dies (its lifeline pipe closes), so that even `kill -9` of the rank leaves nothing behind.
//!
//! The rank holds the write end of the guard's stdin (the lifeline) and reads the guard's events
//! from its stdout (`protocol`). `teardown` on the lifeline, or its end, starts the
//! teardown. The daemon's tree dies with the guard (a parent death signal); if the guard dies
//! anyway (SIGKILL, OOM), its rank notices at once, cleans the host itself as `mpiswarm cleanup`
//! would, and the run tears down reporting the host. This file is the guard process; `daemon`
//! its rootlesskit (started again once after rootlesskit's nsenter race); `handle` is the rank's
//! side; `protocol` is what the two say to each other.

mod daemon;
pub mod handle;
mod inherit;
pub mod protocol;

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::host::guard::daemon::Daemon;
use crate::host::guard::protocol::{GuardCommand, GuardEvent, emit};
use crate::host::statedir::{GuardRecord, StateDir};
use crate::host::teardown;
use crate::plan::cli::GuardArgs;
use crate::plan::config::Network;
use crate::sys::frame::Next;

/// How long the guard may take to kill everything and delete the directory.
const TEARDOWN_BUDGET: Duration = Duration::from_secs(10);

/// How often the guard looks for other users' sockets on the swarm's UDP ports: each look reads
/// /proc/net/udp, which walks the kernel's whole UDP table (every socket of the node).
const SQUATTER_SCAN: Duration = Duration::from_millis(500);

/// The guard process's main: returns its exit code.
pub fn run(args: &GuardArgs) -> Result<i32> {
    // Orphans of the daemon's tree (e.g. slirp4netns) are reparented here, so the guard can find
    // and kill them all.
    crate::output::logging::set_origin_of_guard(&crate::host::identity::hostname());
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
    let record = own_record(args)?;
    // Held for the guard's life: `cleanup` leaves a run alone while anyone holds it.
    let _run_lock = crate::host::statedir::hold_run_lock(&dir.path)?;
    crate::sys::private_file::write(&dir.guard_record(), &serde_json::to_vec(&record)?)?;

    let mut out = std::io::stdout();
    let network = Network::from_guard_net(args.net);
    let mut daemon = Daemon::start(args, &dir, addr, network, &mut out);
    let mut command = None;
    let intruder = wait_for_teardown(&mut daemon, &sig_read, addr, &mut command, &mut out);
    // Ends the helper threads that follow rootlesskit.
    drop(daemon);
    tracing::debug!("tearing this host down");

    let result = kill_command(command)
        .and(teardown_host(&dir))
        .and_then(|()| match crate::sys::fault::injected("dirty-teardown") {
            true => Err(anyhow!(
                "fault injected by the tests: the teardown left something"
            )),
            false => Ok(()),
        })
        .and_then(|()| match intruder {
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

/// What `guard.json` says of this guard: `cleanup` leaves the run alone while it is alive.
fn own_record(args: &GuardArgs) -> Result<GuardRecord> {
    let me = crate::sys::procfs::proc_info(std::process::id() as i32)
        .ok_or_else(|| anyhow!("cannot read /proc/self"))?;
    Ok(GuardRecord {
        pid: me.pid,
        start_time: me.start_time,
        host: crate::host::identity::hostname(),
        job: args
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    })
}

/// Blocks until the lifeline says teardown or closes, or a signal arrives, or another user binds
/// a swarm UDP port on `addr` (returned); reports an early daemon exit on the way (or starts it
/// again, once, after rootlesskit's nsenter race), and notes the user's command's process group
/// in `command` when the rank names it.
fn wait_for_teardown(
    daemon: &mut Option<Daemon>,
    sig_read: &UnixStream,
    addr: Ipv4Addr,
    command: &mut Option<u32>,
    out: &mut impl Write,
) -> Option<crate::host::squatters::Squatter> {
    let stdin = std::io::stdin();
    let mut lifeline = stdin.lock();
    let udp_ports: Vec<u16> = crate::host::firewall::SWARM_PORTS
        .iter()
        .filter(|(_, proto)| *proto == "udp")
        .map(|(port, _)| *port)
        .collect();
    let mut next_scan = Instant::now();
    loop {
        let scan_now = Instant::now() >= next_scan;
        if scan_now {
            next_scan = Instant::now() + SQUATTER_SCAN;
        }
        if let Some(s) = scan_now
            .then(|| crate::host::squatters::scan(addr, &udp_ports))
            .into_iter()
            .flatten()
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
                match GuardCommand::read_from(&mut lifeline) {
                    Ok(Next::End) | Err(_) => return None,
                    Ok(Next::Message(GuardCommand::Teardown)) => return None,
                    Ok(Next::Message(GuardCommand::Command { group })) => *command = Some(group),
                    Ok(Next::Bad(e)) => tracing::warn!("{e:#}"),
                }
            }
        }
        if let Some(running) = daemon
            && let Some(status) = running.exited()
            && !running.after_exit(status, out)
        {
            *daemon = None;
        }
    }
}

/// SIGKILL to the user's command's process group, first of all: its owner, rank 0, may be dead,
/// and the command is no part of the daemon's tree. A group already gone is fine.
fn kill_command(group: Option<u32>) -> Result<()> {
    let Some(group) = group else { return Ok(()) };
    match killpg(Pid::from_raw(group as i32), Signal::SIGKILL) {
        Ok(()) => {
            tracing::debug!("killed the user's command (process group {group})");
            Ok(())
        }
        Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(anyhow!(
            "failed to kill the user's command (process group {group}): {e}"
        )),
    }
}

fn teardown_host(dir: &StateDir) -> Result<()> {
    let deadline = Instant::now() + TEARDOWN_BUDGET;
    teardown::let_namespace_setup_finish(deadline);
    let killed = teardown::kill_own_tree(deadline);
    let removed = teardown::remove_state_dir(
        &dir.path,
        deadline.saturating_duration_since(Instant::now()),
    );
    // The rank's end socket beside it (the rank may be gone), then the per-user parent once no
    // other run of this user is left on the host.
    let _ = std::fs::remove_file(crate::host::end_notice::end_path_of(&dir.path));
    if let Some(parent) = dir.path.parent() {
        crate::sys::user_root::remove_if_empty(parent);
    }
    match (killed, removed) {
        (Ok(()), Ok(())) => Ok(()),
        (Err(e), Ok(())) | (Ok(()), Err(e)) => Err(e),
        (Err(a), Err(b)) => Err(anyhow!("{a:#}; {b:#}")),
    }
}
