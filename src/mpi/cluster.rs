//! The job's MPI world as mpiswarm uses it: MPI start, each rank's role (one leader per host
//! owns the host's daemon and takes part in the agreements; the other ranks of the host only
//! wait for the end), and MPI's end.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow};
use mpi::Threading;
use mpi::topology::{Color, SimpleCommunicator};
use mpi::traits::*;

use crate::host::end_notice::protocol::{End, Greeting, MpiEnd};
use crate::host::end_notice::{Announcer, EndWatch, Heard};
use crate::mpi::collective::Leaders;
use crate::mpi::messages::{EndNotice, InFlight, Message};
use crate::mpi::start_deadline::{StartDeadline, StartLimit};
use crate::sys::deadline::Backoff;
use crate::sys::signals::Signals;

/// How often a waiting rank looks whether it received a signal to pass on (a look costs one
/// system call: no MPI progress).
const SIGNAL_CHECK: Duration = Duration::from_millis(250);
/// How long a rank waits for its signal to reach rank 0 (which received it too, when the launcher
/// signalled the job; it may be gone).
const PASS_ON_DEADLINE: Duration = Duration::from_millis(200);
/// How long a rank that heard the job's end gives the signal it passed on to reach rank 0, which
/// drives MPI again once the end is agreed (its drain and MPI_Finalize take the message).
const PASSED_ON_AT_END: Duration = Duration::from_secs(3);
/// How long a rank whose leader died waits for the launcher's signal before leaving anyway.
const LEADER_GONE_WAIT: Duration = Duration::from_secs(3);

/// Open MPI's setting that makes a rank waiting inside MPI give its core away (`sched_yield`)
/// instead of spinning.
const YIELD_WHEN_IDLE: &str = "OMPI_MCA_mpi_yield_when_idle";
/// Whether mpiswarm set `YIELD_WHEN_IDLE` itself (the user's command must not inherit it).
static SET_YIELD: AtomicBool = AtomicBool::new(false);

/// Asks Open MPI (read at `MPI_Init`) to yield the CPU while waiting, unless the user or the
/// launcher chose otherwise. By default Open MPI spins in every blocking call when it thinks each
/// rank has a core (a host's slots, not its cores, decide), and mpiswarm's ranks wait in the two
/// communicator splits, which every rank of the job must reach: with more ranks than cores the
/// spinning ranks starve those still on their way, and the leaders' daemons. Measured on 2 cores,
/// 96 ranks (bench/SCALE.md): the two splits took 24-28 s spinning, 0.3-0.4 s yielding. mpiswarm
/// computes nothing: yielding costs it no speed worth having.
pub fn prefer_yielding_progress() {
    if std::env::var_os(YIELD_WHEN_IDLE).is_some() {
        return;
    }
    // SAFETY: called from main before MPI, signal handling or any other thread starts: nothing
    // else reads or writes the environment at the same time.
    unsafe { std::env::set_var(YIELD_WHEN_IDLE, "1") };
    SET_YIELD.store(true, Ordering::SeqCst);
}

/// The variable to keep out of the user's command's environment (mpiswarm's own choice for its
/// ranks, not the user's for their programs), if mpiswarm set it.
pub fn own_mpi_settings() -> Option<&'static str> {
    SET_YIELD.load(Ordering::SeqCst).then_some(YIELD_WHEN_IDLE)
}

/// What this rank does in the job.
pub enum Role {
    /// Leads its host (rank 0 also leads the job).
    Leader(Leaders),
    /// Shares its host with a leader and waits for the end.
    Follower(Follower),
}

/// MPI itself: started once, ended once.
pub struct Cluster {
    /// Rank in the whole job.
    pub rank: i32,
    /// Ranks in the whole job.
    pub size: i32,
    /// Seconds from this process's start until MPI was initialized.
    pub started_in: f64,
    /// This host's end socket (its leader only; `None` if it could not listen).
    announcer: Option<Announcer>,
    /// A leader that could not listen tells its host's other ranks the end over MPI.
    tell_followers_over_mpi: bool,
    world: SimpleCommunicator,
    universe: mpi::environment::Universe,
}

impl Cluster {
    /// Starts MPI within `start` (see `StartDeadline`) and elects one leader per host (ranks that
    /// share memory share a host); each leader listens for its host's other ranks beside its
    /// state directory (`base`, `job`).
    pub fn init(
        host: String,
        signals: Signals,
        base: &Path,
        job: &str,
        start: StartLimit,
    ) -> Result<(Cluster, Role)> {
        let started = StartDeadline::arm(&host, launcher_rank(), start);
        if crate::sys::fault::injected("mpi-start-late") {
            std::thread::sleep(Duration::from_secs(3600));
        }
        let (universe, provided) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or_else(|| anyhow!("MPI was already initialized"))?;
        check_threading(provided)?;
        let world = universe.world();
        crate::mpi::library::check_world(
            crate::mpi::library::LauncherWorld::from_env().as_ref(),
            world.size(),
            &crate::mpi::library::loaded(),
        )
        .map_err(crate::sys::exit::same_on_every_rank)?;
        let node = world.split_shared(0);
        let is_leader = node.rank() == 0;
        // A host with one rank has nobody to tell.
        let others = (node.size() - 1) as usize;
        let announcer = (is_leader && others > 0).then(|| {
            if crate::sys::fault::injected("end-socket") {
                return Err(anyhow!(
                    "failed to listen for this host's ranks: fault injected"
                ));
            }
            Announcer::listen(base, job, &host, others)
        });
        let greeting = greet_host(&node, announcer.as_ref());
        // Leaders in job order: the job's rank 0 (a leader: lowest on its host) is their rank 0.
        let color = if is_leader {
            Color::with_value(0)
        } else {
            Color::undefined()
        };
        let leaders = world.split_by_color(color);
        let (role, announcer) = match leaders {
            Some(comm) => {
                let announcer = announcer.and_then(|a| {
                    a.inspect_err(|e| {
                        tracing::warn!(
                            "{e:#}: this host's other ranks will hear of the job's end over MPI"
                        );
                    })
                    .ok()
                });
                let leaders = Leaders::new(comm, universe.world(), node, host, signals);
                if let Some(a) = &announcer {
                    let tell = a.teller();
                    crate::sys::signals::stuck_watchdog::tell_others_with(Box::new(move |code| {
                        tell(End {
                            code,
                            mpi: MpiEnd::Leave,
                        })
                    }));
                }
                (Role::Leader(leaders), announcer)
            }
            None => {
                let follower = Follower::new(universe.world(), node, signals, &greeting);
                (Role::Follower(follower), None)
            }
        };
        let tell_followers_over_mpi =
            matches!(role, Role::Leader(_)) && others > 0 && announcer.is_none();
        let cluster = Cluster {
            rank: world.rank(),
            size: world.size(),
            started_in: crate::output::report::since_process_start(),
            announcer,
            tell_followers_over_mpi,
            world,
            universe,
        };
        drop(started);
        Ok((cluster, role))
    }

    /// Ends MPI: a leader first tells its host's other ranks how the job ended. MPI is finalized
    /// when every collective completed. When one was abandoned a finalize could wait forever for
    /// a rank that is gone: the ranks leave without it if the launcher is ending the job anyway
    /// (its signal, or a rank's death, which it turns into one), and abort MPI otherwise.
    pub fn finish(self, mut role: Role, code: i32) {
        let mut end = match &mut role {
            Role::Leader(leaders) if leaders.abandoned() => End {
                code,
                mpi: MpiEnd::Leave,
            },
            Role::Leader(_) => End {
                code,
                mpi: MpiEnd::Finalize,
            },
            Role::Follower(follower) => {
                let heard = follower.heard.unwrap_or(End {
                    code,
                    mpi: MpiEnd::Finalize,
                });
                if heard.mpi == MpiEnd::Finalize && follower.passed_on_is_stuck() {
                    End {
                        code,
                        mpi: MpiEnd::Leave,
                    }
                } else {
                    heard
                }
            }
        };
        let launcher_ends_job = match &role {
            Role::Leader(leaders) => leaders.launcher_ends_job(),
            Role::Follower(_) => true,
        };
        if let Some(announcer) = &self.announcer {
            announcer.announce(end);
        } else if let Role::Leader(leaders) = &role
            && self.tell_followers_over_mpi
            && !leaders.tell_followers(end)
        {
            // A rank of the host not told would never reach MPI_Finalize: nor may this one.
            end.mpi = MpiEnd::Leave;
        }
        // Every communicator is freed before MPI is finalized.
        drop(role);
        let Cluster {
            world,
            universe,
            announcer,
            ..
        } = self;
        if end.mpi == MpiEnd::Leave && world.size() > 1 {
            if launcher_ends_job {
                leave_without_finalize(announcer, end.code);
            }
            world.abort(if code == 0 {
                crate::sys::exit::FAILED
            } else {
                code
            });
        }
        // The world communicator goes before MPI is finalized.
        drop(world);
        drop(universe);
        // Every rank of the host has connected by now (they all reached MPI_Finalize).
        drop(announcer);
    }
}

/// Exits at once, MPI unfinalized: the launcher is already ending the job, and MPI_Abort would
/// only add its banner. What must not outlive the rank (the end socket) goes first.
fn leave_without_finalize(announcer: Option<Announcer>, code: i32) -> ! {
    drop(announcer);
    tracing::debug!("leaving without MPI_Finalize: the launcher is ending the job");
    std::process::exit(code)
}

/// The host's ranks greet each other right after the split, when all of them are there: one
/// broadcast from the leader (a message to each, once they wait, would wait for each one in turn:
/// 1.3 s at 32 ranks per host). It tells its pid and where it will announce the end.
fn greet_host(node: &SimpleCommunicator, announcer: Option<&Result<Announcer>>) -> Greeting {
    let mut wire = Greeting {
        leader_pid: std::process::id() as i32,
        end_path: announcer
            .and_then(|a| a.as_ref().ok())
            .map(|a| a.path().to_owned()),
    }
    .encode();
    node.process_at_rank(0).broadcast_into(&mut wire[..]);
    Greeting::decode(&wire)
}

/// A rank that shares its host with the leader: it waits in the kernel for the leader to say the
/// job ended, passes on a signal it receives, and gives up if the leader dies.
pub struct Follower {
    world: SimpleCommunicator,
    /// This host's ranks (the leader is its rank 0): freed before MPI is finalized.
    node: SimpleCommunicator,
    leader_pid: i32,
    /// Where the end is heard.
    channel: Channel,
    signals: Signals,
    /// What the leader said at the end (`None` until then, or if it could not be heard).
    heard: Option<End>,
    /// A signal passed on to rank 0 whose message MPI had not delivered by `PASS_ON_DEADLINE`.
    passed_on: Option<InFlight>,
}

impl Follower {
    fn new(
        world: SimpleCommunicator,
        node: SimpleCommunicator,
        signals: Signals,
        greeting: &Greeting,
    ) -> Follower {
        let channel = match greeting.end_path.as_deref() {
            Some(path) => match EndWatch::connect(path, greeting.leader_pid) {
                Ok(watch) => Channel::Socket(watch),
                Err(e) => {
                    // The leader listens, so it announces on its socket, never over MPI: only
                    // the leader's death or MPI_Finalize can end this rank's wait.
                    tracing::warn!("{e:#}: this rank will wait inside MPI_Finalize");
                    Channel::Finalize
                }
            },
            None => Channel::Mpi {
                leader_start: crate::sys::procfs::proc_info(greeting.leader_pid)
                    .map(|p| p.start_time),
                backoff: Backoff::default(),
            },
        };
        Follower {
            world,
            node,
            leader_pid: greeting.leader_pid,
            channel,
            signals,
            heard: None,
            passed_on: None,
        }
    }

    /// Waits for the job's end and returns its exit code (0 when it cannot be heard: the
    /// leaders' codes are the job's).
    pub fn wait_for_end(&mut self) -> i32 {
        if matches!(self.channel, Channel::Finalize) {
            return 0;
        }
        let mut signal_passed_on = false;
        let end = loop {
            match self.hear() {
                Heard::End(end) => break end,
                Heard::LeaderGone => {
                    tracing::error!(
                        "the leader of this host (pid {}) is gone without saying how the job ended",
                        self.leader_pid
                    );
                    // The launcher learned of the death as this rank did and is ending the job:
                    // leaving on its signal, not before, keeps it from waiting for this rank
                    // (Open MPI 4.1's daemon, busy signalling, saw a rank that left meanwhile
                    // only after its own SIGKILL step, a second later).
                    self.await_the_launchers_signal(LEADER_GONE_WAIT);
                    // Its MPI_Finalize will never come: neither may this rank's.
                    break End {
                        code: crate::sys::exit::FAILED,
                        mpi: MpiEnd::Leave,
                    };
                }
                Heard::Unreadable(e) => {
                    // The leader's own code is the job's (as when nothing can be heard).
                    tracing::error!("{e:#}: this rank waits inside MPI_Finalize");
                    break End {
                        code: 0,
                        mpi: MpiEnd::Finalize,
                    };
                }
                Heard::Nothing => {}
            }
            if !signal_passed_on && let Some(cause) = self.signals.received() {
                let deadline = std::time::Instant::now() + PASS_ON_DEADLINE;
                // Not delivered yet: rank 0 is busy (it got the launcher's signal too), gone or
                // hung; the end tells which.
                self.passed_on = Message::StopRequest { cause }
                    .send_by(&self.world, 0, deadline)
                    .err();
                signal_passed_on = true;
            }
        };
        self.heard = Some(end);
        end.code
    }

    /// Whether a signal this rank passed on is still not delivered after `PASSED_ON_AT_END`: its
    /// request stays inside MPI, where a finalize could wait for a rank 0 that is gone.
    fn passed_on_is_stuck(&mut self) -> bool {
        let deadline = std::time::Instant::now() + PASSED_ON_AT_END;
        self.passed_on
            .as_mut()
            .is_some_and(|in_flight| !in_flight.finish_by(deadline))
    }
}

/// How a follower hears of the job's end.
enum Channel {
    /// On its leader's end socket, in the kernel.
    Socket(EndWatch),
    /// As an MPI message from its leader, which could not listen: looked for with a backoff (up
    /// to 50 ms between looks, each a probe: a sleeping rank, not one spinning in MPI_Finalize).
    Mpi {
        /// The leader's start time, to tell it from a process that reuses its pid.
        leader_start: Option<u64>,
        backoff: Backoff,
    },
    /// Nowhere: it waits inside MPI_Finalize (it could not connect to a socket that exists).
    Finalize,
}

impl Follower {
    /// What was heard of the end (after waiting up to `SIGNAL_CHECK`).
    fn hear(&mut self) -> Heard {
        match &mut self.channel {
            Channel::Socket(watch) => watch.wait(SIGNAL_CHECK),
            Channel::Mpi {
                leader_start,
                backoff,
            } => {
                // Looked at before MPI is: once a peer is dead, Open MPI 4.1 can block inside any
                // call, retrying the connection to it, until the launcher's SIGKILL.
                let alive = leader_start
                    .is_some_and(|t| crate::sys::procfs::still_running(self.leader_pid, t));
                if !alive {
                    return Heard::LeaderGone;
                }
                match EndNotice::poll(&self.node, Some(0)) {
                    Some(Ok(end)) => return Heard::End(end),
                    Some(Err(e)) => return Heard::Unreadable(e),
                    None => {}
                }
                self.signals.sleep(backoff.next().min(SIGNAL_CHECK));
                Heard::Nothing
            }
            Channel::Finalize => Heard::Nothing,
        }
    }

    /// Sleeps until a signal arrives, or `limit` passed.
    fn await_the_launchers_signal(&self, limit: Duration) {
        let until = std::time::Instant::now() + limit;
        while self.signals.received().is_none() && std::time::Instant::now() < until {
            self.signals
                .sleep(until.saturating_duration_since(std::time::Instant::now()));
        }
    }
}

/// This rank as the launcher set it (Open MPI, MPICH's Hydra, PMIx, Slurm), before MPI starts.
pub fn launcher_rank() -> Option<u32> {
    first_number_in(&[
        "OMPI_COMM_WORLD_RANK",
        "PMI_RANK",
        "PMIX_RANK",
        "SLURM_PROCID",
    ])
}

/// This process's rank among the job's ranks on its node, as the launcher announces it before
/// MPI starts (Open MPI, MPICH's Hydra, Slurm): `None` when no launcher says.
pub fn launcher_local_rank() -> Option<u32> {
    first_number_in(&[
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ])
}

/// The first of these environment variables that is set to a number.
fn first_number_in(vars: &[&str]) -> Option<u32> {
    vars.iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
}

/// Only the main thread calls MPI, but the process has other threads (signals, the end notice,
/// drains): MPI must be told so (`Funneled`), and a library that cannot promise it refused.
fn check_threading(provided: Threading) -> Result<()> {
    if provided < Threading::Funneled {
        return Err(anyhow!(
            "failed to start MPI: the MPI library offers thread level {provided:?} only, and \
             mpiswarm needs Funneled (threads beside the one calling MPI): use an MPI library \
             built with thread support"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod threading_tests {
    use super::*;

    #[test]
    fn a_library_without_funneled_threads_is_refused() {
        let err = check_threading(Threading::Single).unwrap_err();
        assert!(
            format!("{err:#}").contains("thread level Single"),
            "{err:#}"
        );
        assert!(check_threading(Threading::Funneled).is_ok());
        assert!(check_threading(Threading::Multiple).is_ok());
    }
}
