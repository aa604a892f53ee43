//! `up`'s end: every host torn down (agreed, with a deadline) and the run's report.

use std::time::Instant;

use anyhow::Result;
use tracing::info;

use crate::host::host_daemon::HostDaemon;
use crate::mpi::collective::Interrupt;
use crate::output::report::{HostTimes, RunReport, phase_stats};

use super::{Milestones, Run, TEARDOWN_DEADLINE};

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
        self.leaders
            .agree_until("tear down", local, deadline, Interrupt::Never)?;
        let times = self.tl.snapshot();
        let per_host = self.leaders.gather_to_root(
            &times,
            "report their timings",
            deadline,
            Interrupt::Never,
        )?;
        self.leaders.drain();
        let Some(per_host) = per_host else {
            return Ok(());
        };
        self.report(per_host, hosts, marks, collected.as_deref())
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
