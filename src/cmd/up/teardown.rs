//! `up`'s end: every host torn down (agreed, with a deadline) and the run's report.

use std::time::{Duration, Instant};

use anyhow::Result;
use tracing::info;

use crate::host::daemon::launch::HostDaemon;
use crate::mpi::collective::Interrupt;
use crate::output::report::{HostTimes, RunReport, phase_stats};

use super::{Milestones, Run, TEARDOWN_DEADLINE};

/// After the launcher's signal, how long after this host began its teardown it waits for the
/// other hosts' word (their teardowns began at the same moment), and the least it waits once
/// clean.
const WORD_AFTER_A_SIGNAL: Duration = Duration::from_millis(300);
const LEAST_WAIT_AFTER_A_SIGNAL: Duration = Duration::from_millis(100);
/// After the launcher's signal, how long rank 0 waits for the clean hosts' timings: those that
/// took the agreement's answer send them at once, and one that left without it never will.
const TIMINGS_AFTER_A_SIGNAL: Duration = Duration::from_secs(1);

impl Run<'_> {
    /// Tears this host down, agrees that every host is clean, and at rank 0 reports (with the
    /// bring-up's milestones when it got that far).
    pub(super) fn teardown(
        &mut self,
        daemon: HostDaemon,
        hosts: &[String],
        marks: Option<&Milestones>,
    ) -> Result<()> {
        // Before anything is killed: what the job produced, kept under --collect DIR.
        let t = Instant::now();
        let collected = self.cfg.collect.as_ref().and_then(|plan| {
            crate::swarm::collect::at_teardown(
                self.leaders,
                self.signals,
                plan,
                &daemon,
                hosts,
                self.job,
            )
        });
        if self.cfg.collect.is_some() {
            self.tl.done("collect", t);
        }
        let t = Instant::now();
        let HostDaemon {
            mut guard,
            run_lock,
            ..
        } = daemon;
        self.tl
            .set_daemon_usage(crate::sys::procfs::usage_by_program(
                &crate::sys::procfs::tree(guard.pid() as i32),
            ));
        let local = guard.teardown(TEARDOWN_DEADLINE);
        // The run is over on this host: `cleanup` may now treat what is left as a dead run's.
        drop(run_lock);
        if local.is_ok() {
            self.tl.done("teardown", t);
        }
        if self.leaders.abandoned() {
            // MPI can only be aborted now: this host is clean (or says why not), and that is all.
            return local;
        }
        let deadline = Instant::now() + TEARDOWN_DEADLINE;
        if !self.agree_clean(local, t.elapsed())? {
            return Ok(());
        }
        if crate::sys::fault::injected("leave-before-timings") {
            // As a host whose short wait after the launcher's signal ended just before the
            // agreement's answer reached it: it leaves, and sends no timings.
            return Ok(());
        }
        let Some(per_host) = self.gather_timings(deadline)? else {
            return Ok(());
        };
        self.report(per_host, hosts, marks, collected.as_deref())
    }

    /// Every host's timings at rank 0 by `deadline` (`None` elsewhere, or when rank 0 leaves
    /// without them). After the launcher's signal a host may have left as soon as it was clean
    /// (it waits only briefly for the agreement's answer, see `wait_for_the_others`), so rank 0
    /// waits as briefly for its timings and leaves without the report rather than until then.
    fn gather_timings(
        &mut self,
        deadline: Instant,
    ) -> Result<Option<Vec<crate::output::report::HostTimes>>> {
        let until = if self.leaders.launcher_ends_job() {
            deadline.min(Instant::now() + TIMINGS_AFTER_A_SIGNAL)
        } else {
            deadline
        };
        let times = self.tl.snapshot();
        let gathered =
            self.leaders
                .gather_to_root(&times, "report their timings", until, Interrupt::Never);
        let per_host = match gathered {
            Ok(per_host) => per_host,
            Err(_) if self.leaders.abandoned() && self.leaders.launcher_ends_job() => {
                if self.is_root() {
                    info!(
                        "every host is clean; not every host's timings came within {} ms, and \
                         the launcher is ending the job: leaving without the report",
                        TIMINGS_AFTER_A_SIGNAL.as_millis()
                    );
                }
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        self.leaders.drain();
        Ok(per_host)
    }

    /// Agrees with the other hosts that every host is clean; `false` when this host, clean, left
    /// without their word because the launcher is ending the job (see `wait_for_the_others`).
    fn agree_clean(&mut self, local: Result<()>, own: Duration) -> Result<bool> {
        let wait = self.wait_for_the_others(own);
        crate::sys::signals::stuck_watchdog::leaving_by(Instant::now() + wait);
        let failed_here = local.as_ref().err().map(|e| format!("{e:#}"));
        let Err(e) =
            self.leaders
                .agree_until("tear down", local, Instant::now() + wait, Interrupt::Never)
        else {
            // Every host answered: no MPI call can wait for a dead peer any more.
            drop(self.watchdog.take());
            return Ok(true);
        };
        if !(self.leaders.abandoned() && self.leaders.launcher_ends_job()) {
            return Err(e);
        }
        // Without the others' word, this host's own outcome is all there is to say.
        match failed_here {
            Some(here) => Err(anyhow::anyhow!("{here}")),
            None => {
                self.leave_before_the_others(wait);
                Ok(false)
            }
        }
    }

    /// How long this host, clean after `own` of teardown, waits for the others' word. After a
    /// signal by which the launcher ends the job (it kills every rank soon after; a rank's death
    /// comes as one too) the others were signalled at the same moment and tear down as this host
    /// did: a host that has not answered soon after is dead or hung, and waiting longer only
    /// keeps the launcher from returning (Open MPI 4.1 SIGKILLs the ranks a second after its
    /// SIGTERM).
    fn wait_for_the_others(&self, own: Duration) -> Duration {
        if self.leaders.launcher_ends_job() {
            WORD_AFTER_A_SIGNAL
                .saturating_sub(own)
                .max(LEAST_WAIT_AFTER_A_SIGNAL)
        } else {
            TEARDOWN_DEADLINE
        }
    }

    /// Says (rank 0 only) why this rank leaves without the other hosts' word.
    fn leave_before_the_others(&self, waited: Duration) {
        if self.is_root() {
            info!(
                "{} is clean; the other hosts did not all confirm theirs within {} ms, and the \
                 launcher is ending the job: leaving without their word (a host whose teardown \
                 fails says so itself; `mpiswarm cleanup` finishes any host left unclean)",
                self.leaders.host,
                waited.as_millis()
            );
        }
    }

    /// Rank 0's summary and `--report`, when bring-up got that far; the report also goes into
    /// the `--collect` directory (with zero milestones if bring-up did not finish).
    pub(super) fn report(
        &self,
        per_host: Vec<HostTimes>,
        hosts: &[String],
        marks: Option<&Milestones>,
        collected: Option<&std::path::Path>,
    ) -> Result<()> {
        let unreached = Milestones::default();
        let report = RunReport {
            hosts: hosts.len(),
            ranks: self.ranks,
            swarm_ready_s: marks.unwrap_or(&unreached).swarm_ready,
            bring_up_s: marks.unwrap_or(&unreached).bring_up,
            phases: phase_stats(&per_host),
            per_host,
        };
        if let Some(dir) = collected
            && let Err(e) = report.write(&dir.join("report.json"))
        {
            tracing::warn!("--collect: {e:#}");
        }
        if marks.is_none() {
            return Ok(());
        }
        let slowest = report
            .phases
            .iter()
            .find(|p| p.phase == "teardown")
            .map_or(0.0, |p| p.max);
        info!(
            "torn down: {} host(s) clean, slowest {:.0} ms",
            hosts.len(),
            slowest * 1000.0
        );
        info!("{}", report.summary());
        if let Some(path) = &self.cfg.report {
            report.write(path)?;
        }
        Ok(())
    }
}
