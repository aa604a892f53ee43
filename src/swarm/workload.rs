//! The swarm in use: rank 0 runs the user's command against it, watches a stack's work
//! (`--until-stack-jobs-complete`) or waits for a signal; the other host leaders wait to be told to
//! stop; a signal anywhere stops the whole job.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::{debug, info};

use crate::host::engine::Engine;
use crate::host::guard::handle::GuardHandle;
use crate::mpi::collective::Leaders;
use crate::swarm::stack::{Health, Watch, Work};
use crate::swarm::stack_state::verdict::Counts;
use crate::sys::exit::{CommandUnusable, Unusable};
use crate::sys::signals::Signals;

/// How often rank 0 tells the others it is alive while the swarm is up.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// If rank 0 falls silent this long, it is gone (some launchers, e.g. srun by default, leave the
/// other ranks running when one dies): the others give up instead of holding the allocation.
const RANK0_SILENCE_LIMIT: Duration = Duration::from_secs(15);
/// Grace for the user's command between SIGTERM and SIGKILL.
const COMMAND_GRACE: Duration = Duration::from_millis(500);

/// How often rank 0 looks at a stack's work (three calls to the manager each time).
const WORK_POLL: Duration = Duration::from_millis(500);
/// How long Swarm may take to give a global job its tasks (see stack::GLOBAL_SETTLE).
const WORK_SETTLE: Duration = Duration::from_secs(5);
/// How long the manager may fail to answer about the work before the run gives up (a leader
/// election, a busy manager: a long batch run should not end on one failed look).
const WORK_UNANSWERED: Duration = Duration::from_secs(30);
/// How long the "busy-after-signal" fault keeps rank 0 from MPI (debug builds, tests only).
const BUSY_FAULT: Duration = Duration::from_millis(1500);

/// What rank 0 runs, or waits for, while the swarm is up.
pub enum Workload<'a> {
    Command(&'a [String]),
    /// The work of stack `name` (`--until-stack-jobs-complete`), watched through the manager.
    StackWork {
        engine: &'a Engine,
        name: &'a str,
    },
    Signal,
}

/// The workload under way.
enum Running<'a> {
    Child(Child),
    Stack(StackWatch<'a>),
    Nothing,
}

/// Rank 0's watch over a stack's work, through the manager.
struct StackWatch<'a> {
    engine: &'a Engine,
    name: &'a str,
    start: Instant,
    next: Instant,
    last: Option<Counts>,
    /// Since when the manager has not answered.
    unanswered: Option<Instant>,
}

impl StackWatch<'_> {
    /// The run's exit code once the work is done or failed for good.
    fn poll(&mut self) -> Result<Option<i32>> {
        if Instant::now() < self.next {
            return Ok(None);
        }
        self.next = Instant::now() + WORK_POLL;
        let name = self.name;
        let settled = self.start.elapsed() >= WORK_SETTLE;
        let work = match crate::swarm::stack::work(self.engine, name, settled) {
            Ok(work) => {
                self.unanswered = None;
                work
            }
            Err(e) => {
                let since = *self.unanswered.get_or_insert_with(Instant::now);
                if since.elapsed() >= WORK_UNANSWERED {
                    return Err(e.context(format!(
                        "the manager did not say how the work of stack {name} stands for {} s",
                        WORK_UNANSWERED.as_secs()
                    )));
                }
                tracing::warn!("{e:#} (trying again)");
                return Ok(None);
            }
        };
        match work {
            Work::Running(counts) => {
                if self.last != Some(counts) {
                    info!("stack {name}: {counts}");
                    self.last = Some(counts);
                }
                Ok(None)
            }
            Work::Done(counts) => {
                info!("stack {name}: its work is done: {counts}");
                Ok(Some(0))
            }
            Work::Failed { code, message } => {
                tracing::error!("stack {name}: {message}");
                info!("stack {name}: exiting with the failed task's code {code}");
                Ok(Some(code))
            }
        }
    }
}

impl Running<'_> {
    /// Its exit code once it ended.
    fn poll(&mut self) -> Result<Option<i32>> {
        match self {
            Running::Child(child) => Ok(child.try_wait()?.map(|status| {
                let code = status
                    .code()
                    .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
                debug!("command exited with {code}");
                code
            })),
            Running::Stack(watch) => watch.poll(),
            Running::Nothing => Ok(None),
        }
    }

    /// Stops it: its owner is going away. A stack's tasks go with the teardown.
    fn stop(&mut self, signals: &Signals) {
        if let Running::Child(child) = self {
            stop_command(child, signals);
        }
    }
}

/// Rank 0: runs the workload (or waits), and returns the exit code mpiswarm should end with.
/// `watch`, the stack's, ends the run (exit code 1) when a task fails for good, also at the
/// command's end.
pub fn run_or_wait(
    leaders: &mut Leaders,
    workload: &Workload,
    socket: &Path,
    guard: &GuardHandle,
    signals: &Signals,
    mut watch: Option<&mut Watch>,
) -> Result<i32> {
    let mut running = match workload {
        Workload::Command(command) => Running::Child(spawn(command, socket, guard)?),
        Workload::StackWork { engine, name } => {
            info!("stack {name} deployed; waiting until its work is done");
            Running::Stack(StackWatch {
                engine,
                name,
                start: Instant::now(),
                next: Instant::now(),
                last: None,
                unanswered: None,
            })
        }
        Workload::Signal => {
            info!("swarm up; waiting for SIGINT, SIGTERM or SIGUSR1 to tear it down");
            Running::Nothing
        }
    };
    let mut last_beat = Instant::now();
    // Each look at MPI costs CPU that the workload on this node would rather have: the pause
    // grows while nothing happens (a signal still wakes it at once).
    let mut backoff = crate::sys::deadline::Backoff::default();
    loop {
        if last_beat.elapsed() >= HEARTBEAT_EVERY {
            leaders.send_heartbeats();
            last_beat = Instant::now();
        }
        if let Some(Health::Failed(code)) = watch.as_mut().map(|w| w.poll()) {
            info!(
                "a task of the stack failed for good: tearing down (--allow-task-failures lets the run go on)"
            );
            running.stop(signals);
            return Ok(code);
        }
        if let Some(code) = running.poll()? {
            // A failure since the watch's last look counts too.
            if let Some(Health::Failed(task_code)) = watch.map(|w| w.look()) {
                return Ok(task_code);
            }
            return Ok(code);
        }
        let stop = signals
            .received()
            .map(|cause| format!("{cause} received"))
            .or_else(|| {
                leaders
                    .poll_stop_request()
                    .map(|cause| format!("{cause} received by another rank"))
            });
        if let Some(why) = stop {
            info!("{why}: tearing down");
            if crate::sys::fault::injected("busy-after-signal") {
                // As when stopping the command keeps rank 0 from MPI: the other ranks' messages
                // (a signal they pass on) wait for its next look.
                tracing::warn!("fault injected: rank 0 leaves MPI alone for {BUSY_FAULT:?}");
                std::thread::sleep(BUSY_FAULT);
            }
            running.stop(signals);
            return Ok(0);
        }
        signals.sleep(backoff.next());
    }
}

/// The user's command in its own process group, against rank 0's daemon. It dies with this
/// rank, and the guard knows its group: the guard's teardown kills what it started, whatever
/// killed the rank.
fn spawn(command: &[String], socket: &Path, guard: &GuardHandle) -> Result<Child> {
    let Some((program, args)) = command.split_first() else {
        bail!("no command to run");
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        // Its own group, so that stopping it stops everything it started.
        .process_group(0);
    if let Some(var) = crate::mpi::cluster::own_mpi_settings() {
        cmd.env_remove(var);
    }
    crate::host::daemon::config::die_with_parent(&mut cmd);
    // Checked before the bring-up; what changed since (or a bad interpreter line) still gets
    // the code a shell would give.
    let mut child = cmd.spawn().map_err(|e| {
        let message = format!("failed to run {program:?} on rank 0: {e}");
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => Unusable::NotFound,
            std::io::ErrorKind::PermissionDenied => Unusable::NotExecutable,
            _ if e.raw_os_error() == Some(libc::ENOEXEC) => Unusable::NotExecutable,
            _ => return anyhow::anyhow!(message),
        };
        anyhow::Error::new(CommandUnusable { why, message })
    })?;
    // The group is the child's pid (process_group(0)).
    if let Err(e) = guard.command_started(child.id()) {
        let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ =
            crate::sys::deadline::reap_within(&mut child, crate::sys::deadline::REAP_AFTER_KILL);
        return Err(e.context(format!("failed to run {program:?} on rank 0")));
    }
    Ok(child)
}

/// SIGTERM to the command's group, a short grace, then SIGKILL: its owner is going away.
fn stop_command(child: &mut Child, signals: &Signals) {
    let _busy = crate::sys::signals::stuck_watchdog::Hold::new();
    let group = Pid::from_raw(child.id() as i32);
    let _ = killpg(group, Signal::SIGTERM);
    let deadline = Instant::now() + COMMAND_GRACE;
    while Instant::now() < deadline && !signals.urgent() {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = killpg(group, Signal::SIGKILL);
    let _ = crate::sys::deadline::reap_within(child, crate::sys::deadline::REAP_AFTER_KILL);
}

/// Host leaders other than rank 0: wait until rank 0 says stop, or a signal arrives here (then
/// tell rank 0), or rank 0 falls silent.
pub fn wait_for_stop(leaders: &mut Leaders, signals: &Signals) -> Result<()> {
    let mut last_heard = Instant::now();
    let mut backoff = crate::sys::deadline::Backoff::default();
    loop {
        if leaders.poll_stop() {
            return Ok(());
        }
        if let Some(cause) = signals.received() {
            leaders.request_stop(cause);
            return Ok(());
        }
        if leaders.poll_heartbeats() {
            last_heard = Instant::now();
        } else if last_heard.elapsed() > RANK0_SILENCE_LIMIT {
            bail!(
                "lost contact with rank 0: no heartbeat for {} s (rank 0 died or hangs); tearing down",
                RANK0_SILENCE_LIMIT.as_secs()
            );
        }
        signals.sleep(backoff.next());
    }
}
