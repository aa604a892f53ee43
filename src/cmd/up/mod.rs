//! `mpiswarm up`: the whole lifecycle, phase by phase, each phase agreed by the host leaders:
//! daemons up, swarm init, joins, membership confirmed, images, stack, verify, the user's command
//! (or a wait for a signal), teardown everywhere. The other ranks of each host only wait.

mod bring_up;
mod join;
mod swarm_phase;
mod teardown;

use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::host::daemon::launch::{self, Launched};
use crate::host::identity;
use crate::mpi::cluster::{Cluster, Role};
use crate::mpi::collective::{Leaders, PhaseFailed};
use crate::output::report::Timeline;
use crate::plan::config::UpConfig;
use crate::sys::deadline::Deadline;
use crate::sys::exit::CommandUnusable;
use crate::sys::signals::{Interrupted, Signals};

/// How long before the hosts' deadline rank 0 ends a wait of its own inside a phase, so that
/// the agreement on the phase still completes with rank 0's reason (it takes milliseconds).
const AGREE_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

/// How long the whole teardown (every host, agreed) may take before ranks give up waiting.
const TEARDOWN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

/// Runs `up` on this rank; prints its errors (rank 0 prints the cluster-wide ones) and returns
/// the exit code.
pub fn run(cfg: &UpConfig, signals: Signals) -> Result<i32> {
    let host = identity::hostname();
    let job = crate::mpi::job::key();
    // Daemons start at once, while MPI is still starting: rank 0's always (it then reaches
    // `swarm init`, about 0.6 s, while the other hosts start theirs), every host's when the nodes
    // have CPUs to spare. The launcher says which rank this is; MPI has the last word.
    let mut tl = Timeline::new(&host, -1);
    let early = if cfg.early_start_all {
        crate::mpi::cluster::launcher_local_rank() == Some(0)
    } else {
        crate::mpi::cluster::launcher_rank() == Some(0)
    };
    // Under another MPI's launcher MPI starts as a world of one and is refused: no daemon first.
    let foreign = crate::mpi::library::launcher_is_foreign(
        crate::mpi::library::LauncherWorld::from_env().as_ref(),
        &crate::mpi::library::loaded(),
    );
    // A command that cannot run costs a second, not a bring-up: rank 0 looks before anything
    // starts, and the hosts agree on its verdict first (`agree_hosts`).
    let refused = crate::mpi::cluster::launcher_rank().is_none_or(|r| r == 0)
        && check_command(cfg, &host).is_some();
    let early = (early && !refused && !foreign)
        .then(|| launch::launch(cfg, &job, &host, &[], None, &mut tl));
    // Rank 0 reads the Docker release for the hosts whose dockerd is the same file, while MPI
    // starts (not waited for before MPI_Init: see docker_version).
    let release_probe = (crate::mpi::cluster::launcher_rank() == Some(0)
        && !cfg.early_start_all
        && !cfg.network.is_host()
        && !refused
        && !foreign)
        .then(crate::host::docker_version::Probe::start);
    let start = crate::mpi::start_deadline::StartLimit {
        within: cfg.timeout,
        longer: Some("a longer --timeout"),
    };
    let (cluster, mut role) = Cluster::init(
        host.clone(),
        signals.clone(),
        &cfg.host.state_base,
        &job,
        start,
    )?;
    crate::output::logging::set_origin(&host, cluster.rank);
    tl.set_rank(cluster.rank);
    // Held through MPI's end on every path but a clean agreement (see Run::watchdog).
    let mut watchdog = Some(crate::sys::signals::stuck_watchdog::arm());
    let code = match &mut role {
        Role::Leader(leaders) => {
            let run = Run {
                cfg,
                signals: &signals,
                job: &job,
                start: Instant::now(),
                deadline: Instant::now() + cfg.timeout,
                started_in: cluster.started_in,
                ranks: cluster.size,
                tl,
                leaders,
                facts: Vec::new(),
                peers: Vec::new(),
                docker_release: None,
                release_probe,
                manager_cpu_at_join: 0.0,
                watchdog: &mut watchdog,
            };
            run.lifecycle(early)
        }
        // If the launcher's idea of the host's first rank was not MPI's, MPI's wins, and a
        // daemon started early is torn down as it is dropped.
        Role::Follower(follower) => {
            drop(early);
            drop(release_probe);
            follower.wait_for_end()
        }
    };
    cluster.finish(role, code);
    drop(watchdog);
    Ok(code)
}

/// Rank 0: why the user's command cannot be run on this host, if it cannot.
pub(super) fn check_command(cfg: &UpConfig, host: &str) -> Option<CommandUnusable> {
    let crate::plan::config::Workload::Command(command) = &cfg.workload else {
        return None;
    };
    let program = command.first()?;
    let path = std::env::var_os("PATH");
    crate::sys::exit::check_command(program, path.as_deref(), host).err()
}

/// One host leader's run.
struct Run<'a> {
    cfg: &'a UpConfig,
    signals: &'a Signals,
    leaders: &'a mut Leaders,
    job: &'a str,
    start: Instant,
    /// One deadline for the whole bring-up.
    deadline: Instant,
    /// Seconds from process start to MPI ready.
    started_in: f64,
    ranks: i32,
    tl: Timeline,
    /// Every host's facts, in host order (rank 0 only).
    facts: Vec<HostFacts>,
    /// Every host's address, in host order.
    peers: Vec<std::net::Ipv4Addr>,
    /// This host's Docker release, when rank 0's dockerd is the same file (see docker_version).
    docker_release: Option<(u32, u32)>,
    /// Rank 0: its `dockerd --version`, started while MPI starts.
    release_probe: Option<crate::host::docker_version::Probe>,
    /// Rank 0: its dockerd's CPU seconds when the joins began.
    manager_cpu_at_join: f64,
    /// Lets this rank go if its main thread is stuck in MPI after the launcher's signal
    /// (`stuck_watchdog`); dropped once every host confirmed its teardown.
    watchdog: &'a mut Option<crate::sys::signals::stuck_watchdog::Armed>,
}

/// What rank 0 learns of each host.
#[derive(Debug, Serialize, Deserialize)]
struct HostFacts {
    addr: Ipv4Addr,
    /// Ranks of the job on the host.
    ranks: usize,
    offer: crate::host::offer::Offer,
}

/// A host's labels (`mpiswarm.*`): on its daemon (engine labels) always, on its swarm node
/// (node labels) when asked for.
fn host_labels(
    index: usize,
    ranks: usize,
    offer: &crate::host::offer::Offer,
) -> Vec<(String, String)> {
    [
        ("mpiswarm.index", index.to_string()),
        ("mpiswarm.ranks", ranks.to_string()),
        ("mpiswarm.cpus", offer.cpus.to_string()),
        ("mpiswarm.memory", offer.memory_mib.to_string()),
    ]
    .map(|(k, v)| (k.to_owned(), v))
    .to_vec()
}

/// How far bring-up got, for the report.
#[derive(Default)]
struct Milestones {
    swarm_ready: f64,
    bring_up: f64,
}

impl Run<'_> {
    /// Every phase, then the teardown whatever happened; returns the exit code.
    fn lifecycle(mut self, early: Option<Result<Launched>>) -> i32 {
        self.tl.add("mpi-start", self.started_in);
        let mut marks = Milestones::default();
        let ran = self
            .agree_hosts()
            .and_then(|hosts| self.start_daemon(early).map(|daemon| (hosts, daemon)));
        let ran = ran.and_then(|(hosts, (daemon, join))| {
            let ran = self.with_swarm(&daemon, join, &hosts, &mut marks);
            let torn = self.teardown(daemon, &hosts, ran.as_ref().ok().map(|_| &marks));
            match (ran, torn) {
                (Ok(code), Ok(())) => Ok(code),
                (Ok(_), Err(e)) => Err(e),
                // The first failure is the one to report; the teardown's own news is secondary.
                (Err(e), torn) => {
                    if let Err(t) = torn {
                        self.report_teardown_failure(&t);
                    }
                    Err(e)
                }
            }
        });
        match ran {
            Ok(code) => code,
            Err(e) => {
                // Every leader learns a phase failure or a refused command; rank 0 reports it
                // once for all hosts.
                let everyone_knows = e.downcast_ref::<PhaseFailed>().is_some()
                    || e.downcast_ref::<CommandUnusable>().is_some();
                if self.leaders.is_root() || !everyone_knows {
                    tracing::error!("{e:#}");
                }
                crate::sys::exit::code_of(&e)
            }
        }
    }

    /// Runs this host's part of a phase, agrees on it with every host, and records its time
    /// under `timing` (if any). The step's value is returned only if every host succeeded.
    fn phase<T>(
        &mut self,
        what: &str,
        timing: Option<&str>,
        step: impl FnOnce(&mut Self) -> Result<T>,
    ) -> Result<T> {
        let t = Instant::now();
        let result = step(self).map_err(|e| self.blame_signal(e));
        let (status, value) = crate::mpi::collective::split(result);
        let local = status.as_ref().err().map(|e| format!("{e:#}"));
        if let Err(e) = self.leaders.agree(what, status, self.deadline) {
            return match local {
                // The hosts did not all arrive (a deadline, a signal): this host's own failure
                // is the news, not that some host did not arrive while this one was failing.
                Some(local) if e.downcast_ref::<PhaseFailed>().is_none() => Err(anyhow::anyhow!(
                    "failed to {what} on {} (rank {}): {local}\n(the hosts could not agree on \
                     it: {e:#})",
                    self.leaders.host,
                    self.leaders.world_rank
                )),
                _ => Err(e),
            };
        }
        if let Some(name) = timing {
            self.tl.done(name, t);
        }
        value.ok_or_else(|| {
            anyhow::anyhow!(
                "every host agreed that it could {what}, yet this host has no result of it: a bug \
                 in mpiswarm; please report it with this run's output (rerun with -v for more)"
            )
        })
    }

    fn is_root(&self) -> bool {
        self.leaders.is_root()
    }

    /// A teardown that failed after a failed phase is an error of its own (something may be
    /// left on a host), said as every error is: rank 0 for every host, each host for itself.
    fn report_teardown_failure(&self, e: &anyhow::Error) {
        if self.is_root() || e.downcast_ref::<PhaseFailed>().is_none() {
            tracing::error!("{e:#}");
        }
    }

    /// A step that failed after a teardown signal arrived failed because of it: the guard took
    /// the daemon down under the step (an API call then gets no reply), so the signal is the
    /// news and the step's own error its consequence.
    fn blame_signal(&self, e: anyhow::Error) -> anyhow::Error {
        match self.signals.received() {
            Some(cause) if e.downcast_ref::<Interrupted>().is_none() => e.context(Interrupted {
                cause,
                during: None,
            }),
            _ => e,
        }
    }
}

impl Run<'_> {
    /// The deadline for a host's own waits and Engine API calls inside a phase the hosts then
    /// agree on: a little before theirs, so that the reason (a manager that stopped answering,
    /// what rank 0 still waits for) reaches them, instead of every host giving up at once.
    fn own_deadline(&self) -> Deadline {
        Deadline::phase(
            self.deadline
                .checked_sub(AGREE_MARGIN)
                .unwrap_or(self.deadline),
        )
    }
}
