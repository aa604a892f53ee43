//! The swarm in use: rank 0 runs the user's command against it (or waits for a signal), the other
//! host leaders wait to be told to stop; a signal anywhere stops the whole job.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tracing::{debug, info};

use crate::collective::Leaders;
use crate::signals::{self, Signals};

/// How often rank 0 tells the others it is alive while the swarm is up.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// If rank 0 falls silent this long, it is gone (some launchers, e.g. srun by default, leave the
/// other ranks running when one dies): the others give up instead of holding the allocation.
const RANK0_SILENCE_LIMIT: Duration = Duration::from_secs(15);
/// Grace for the user's command between SIGTERM and SIGKILL.
const COMMAND_GRACE: Duration = Duration::from_millis(500);

/// Rank 0: runs the command (or waits), and returns the exit code mpiswarm should end with.
pub fn run_or_wait(
    leaders: &Leaders,
    command: &[String],
    socket: &Path,
    signals: &Signals,
) -> Result<i32> {
    let mut child = match command.split_first() {
        Some((program, args)) => {
            let mut cmd = Command::new(program);
            cmd.args(args)
                .env("DOCKER_HOST", format!("unix://{}", socket.display()))
                // Its own group, so that stopping it stops everything it started.
                .process_group(0);
            if let Some(var) = crate::cluster::own_mpi_settings() {
                cmd.env_remove(var);
            }
            Some(
                cmd.spawn()
                    .with_context(|| format!("failed to run {program:?} on rank 0"))?,
            )
        }
        None => {
            info!("swarm up; waiting for SIGINT, SIGTERM or SIGUSR1 to tear it down");
            None
        }
    };
    let mut last_beat = Instant::now();
    // Each look at MPI costs CPU that the workload on this node would rather have: the pause
    // grows while nothing happens (a signal still wakes it at once).
    let mut backoff = crate::deadline::Backoff::default();
    loop {
        if last_beat.elapsed() >= HEARTBEAT_EVERY {
            leaders.send_heartbeats();
            last_beat = Instant::now();
        }
        if let Some(ch) = child.as_mut()
            && let Some(status) = ch.try_wait()?
        {
            let code = status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            debug!("command exited with {code}");
            return Ok(code);
        }
        let stop = signals
            .received()
            .map(|sig| format!("{} received", signals::name(sig)))
            .or_else(|| {
                leaders
                    .poll_stop_request()
                    .map(|sig| format!("{} received by another rank", signals::name(sig)))
            });
        if let Some(why) = stop {
            info!("{why}: tearing down");
            if let Some(ch) = child.as_mut() {
                stop_command(ch, signals);
            }
            return Ok(0);
        }
        signals.sleep(backoff.next());
    }
}

/// SIGTERM to the command's group, a short grace, then SIGKILL: its owner is going away.
fn stop_command(child: &mut Child, signals: &Signals) {
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
    let _ = child.wait();
}

/// Host leaders other than rank 0: wait until rank 0 says stop, or a signal arrives here (then
/// tell rank 0), or rank 0 falls silent.
pub fn wait_for_stop(leaders: &Leaders, signals: &Signals) -> Result<()> {
    let mut last_heard = Instant::now();
    let mut backoff = crate::deadline::Backoff::default();
    loop {
        if leaders.poll_stop() {
            return Ok(());
        }
        if let Some(sig) = signals.received() {
            leaders.request_stop(sig);
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
