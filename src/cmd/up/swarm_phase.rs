//! `up` with a swarm: formed, its membership confirmed and sealed, then used (images loaded,
//! stack deployed, the workload run).

use std::time::Instant;

use anyhow::Result;
use tracing::info;

use crate::host::daemon::launch::HostDaemon;
use crate::host::engine::Engine;
use crate::mpi::collective::Interrupt;
use crate::plan::config::Workload;
use crate::swarm::formation;
use crate::swarm::stack::Watch;
use crate::swarm::stack_state::verdict::Goal;

use super::{Milestones, Run};

impl Run<'_> {
    /// Everything between the daemons' start and the teardown; returns the exit code.
    pub(super) fn with_swarm(
        &mut self,
        daemon: &HostDaemon,
        founding: Option<formation::Founding>,
        hosts: &[String],
        marks: &mut Milestones,
    ) -> Result<i32> {
        let (invitations, mut founded) = founding
            .map(|f| (f.invitations, (f.swarm, f.ingress)))
            .unzip();
        let node_id = self.join(daemon, invitations, hosts)?;
        let node_ids = self.leaders.gather_to_root(
            &node_id,
            "say their swarm node IDs",
            self.deadline,
            Interrupt::BySignal,
        )?;
        let node_ids = node_ids.unwrap_or_default();
        let managers = self.managers(hosts.len());
        self.phase("confirm swarm membership", Some("membership"), |run| {
            if run.is_root() {
                let guard = daemon.guard.pid() as i32;
                let founded = founded.take();
                run.confirm_members(&daemon.engine, guard, hosts, &node_ids, managers, founded)?;
            }
            Ok(())
        })?;
        marks.swarm_ready = self.start.elapsed().as_secs_f64() + self.started_in;
        if !self.cfg.load.is_empty() {
            self.load_images(daemon, hosts)?;
        }
        // Rank 0 watches the stack from its deploy to the teardown.
        let cfg = self.cfg;
        let mut watch = cfg
            .stack
            .as_ref()
            .map(|(_, name)| Watch::new(&daemon.engine, name, cfg.task_failures));
        if let (Some((file, name)), Some(watch)) = (&cfg.stack, watch.as_mut()) {
            self.phase(&format!("deploy the stack {name}"), Some("stack"), |run| {
                if run.is_root() {
                    run.deploy_stack(&daemon.engine, file, name, watch)?;
                }
                Ok(())
            })?;
        }
        if let Some(image) = &self.cfg.probe_image {
            let t = Instant::now();
            crate::swarm::verify::run(
                self.leaders,
                &daemon.engine,
                hosts,
                image,
                self.cfg.overlay_mtu,
                self.deadline,
                self.own_deadline(),
            )?;
            self.tl.done("verify", t);
        }
        marks.bring_up = self.start.elapsed().as_secs_f64() + self.started_in;
        self.use_swarm(daemon, hosts, marks, watch.as_mut())
    }

    /// `--load`: every archive read once at rank 0 and loaded on every host.
    fn load_images(&mut self, daemon: &HostDaemon, hosts: &[String]) -> Result<()> {
        let t = Instant::now();
        let names = crate::swarm::images::distribute(
            self.leaders,
            &self.cfg.load,
            &daemon.engine,
            self.deadline,
        )?;
        self.tl.done("image-load", t);
        if self.is_root() {
            info!(
                "loaded {} on {} host(s) in {:.2} s",
                names.join(", "),
                hosts.len(),
                t.elapsed().as_secs_f64()
            );
        }
        Ok(())
    }

    /// The swarm in use: rank 0 runs the command or waits (then tells every host to stop), the
    /// other hosts wait to be told; returns the exit code. Rank 0 watches the stack meanwhile
    /// (`--until-stack-jobs-complete` watches it its own way).
    pub(super) fn use_swarm(
        &mut self,
        daemon: &HostDaemon,
        hosts: &[String],
        marks: &Milestones,
        watch: Option<&mut Watch>,
    ) -> Result<i32> {
        if !self.is_root() {
            return crate::swarm::workload::wait_for_stop(self.leaders, self.signals).map(|()| 0);
        }
        info!(
            "swarm ready: {} node(s) ({}) in {:.2} s",
            hosts.len(),
            hosts.join(", "),
            marks.swarm_ready
        );
        let ready =
            crate::output::outputs::ReadyFile::write(self.cfg, daemon.engine.socket(), hosts.len());
        let (workload, watch) = match &self.cfg.workload {
            Workload::Command(command) => {
                (crate::swarm::workload::Workload::Command(command), watch)
            }
            Workload::StackWork(name) => {
                let work = crate::swarm::workload::Workload::StackWork {
                    engine: &daemon.engine,
                    name,
                };
                (work, None)
            }
            Workload::Signal => (crate::swarm::workload::Workload::Signal, watch),
        };
        let code = ready.and_then(|_ready| {
            crate::swarm::workload::run_or_wait(
                self.leaders,
                &workload,
                daemon.engine.socket(),
                &daemon.guard,
                self.signals,
                watch,
            )
        });
        self.leaders
            .announce_stop(*code.as_ref().unwrap_or(&crate::sys::exit::FAILED));
        code
    }

    /// Rank 0: the swarm sealed and every host's node Ready, from one node list: once the tokens
    /// are rotated nobody else can join, so the strangers in a list taken after it are all there
    /// will be (every host's join has returned by now, so none of them needs the old token).
    /// Then every node labelled. Each step is timed for the report.
    pub(super) fn confirm_members(
        &mut self,
        engine: &crate::host::engine::Engine,
        guard_pid: i32,
        hosts: &[String],
        node_ids: &[String],
        managers: usize,
        founded: Option<(formation::Founded, Option<crate::swarm::ingress::SetAside>)>,
    ) -> Result<()> {
        let until = self.own_deadline();
        let (founded, ingress) = founded.unzip();
        if let Some(ingress) = ingress.flatten() {
            let t = Instant::now();
            crate::swarm::ingress::restore(engine, ingress, until)?;
            self.tl.done("ingress", t);
        }
        if crate::sys::fault::injected("manager-stops") {
            crate::sys::fault::stop_program(guard_pid, "dockerd");
        }
        let t = Instant::now();
        let before = crate::swarm::seal::rotate_tokens(engine, founded, until)?;
        let rotated = t.elapsed().as_secs_f64();
        let t = Instant::now();
        // Both only read the manager after its one write: side by side, on a manager that can
        // take seconds per call at its busiest.
        let (nodes, checked) = std::thread::scope(|s| {
            let check = s.spawn(|| crate::swarm::seal::check_rotated(engine, &before, until));
            let nodes = formation::wait_members(engine, hosts, node_ids, managers, until);
            let checked = check
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (nodes, checked)
        });
        let nodes = nodes?;
        checked?;
        self.tl.done("members-ready", t);
        self.tl.set_manager_join_cpu(
            crate::sys::procfs::program_cpu(guard_pid, "dockerd") - self.manager_cpu_at_join,
        );
        let t = Instant::now();
        crate::swarm::seal::remove_strangers(engine, &nodes, node_ids, until)?;
        self.tl.add("seal", rotated + t.elapsed().as_secs_f64());
        if self.wants_node_labels() {
            let t = Instant::now();
            formation::label_nodes(engine, &self.node_labels(hosts, node_ids), until)?;
            self.tl.done("labels", t);
        }
        Ok(())
    }

    /// Rank 0's part of the stack phase: deploy, then wait until the stack is up (beside
    /// `--until-stack-jobs-complete`, only its lasting services: the work is the workload's).
    pub(super) fn deploy_stack(
        &self,
        engine: &Engine,
        file: &std::path::Path,
        name: &str,
        watch: &mut Watch,
    ) -> Result<()> {
        let until = self.own_deadline().instant();
        crate::swarm::stack::deploy(engine, file, name, until)?;
        let goal = match self.cfg.workload {
            Workload::StackWork(_) => Goal::Infrastructure,
            Workload::Command(_) | Workload::Signal => Goal::Up,
        };
        watch.wait_for(goal, until, |counts| {
            info!("stack {name}: {counts}");
        })?;
        if goal == Goal::Infrastructure {
            crate::swarm::stack::check_work(engine, name, until)?;
        }
        Ok(())
    }

    /// The labels stacks can place by, for each host's node (rank 0; `ids` in host order).
    /// Node labels cost the managers a Raft write per host: written when asked for, or when the
    /// stack places by them (the engine labels are always there).
    fn wants_node_labels(&self) -> bool {
        self.cfg.node_labels
            || self
                .cfg
                .stack
                .as_ref()
                .is_some_and(|(file, _)| crate::swarm::stack::uses_node_labels(file))
    }

    pub(super) fn node_labels(
        &self,
        hosts: &[String],
        ids: &[String],
    ) -> Vec<formation::NodeLabels> {
        hosts
            .iter()
            .zip(ids)
            .zip(&self.facts)
            .enumerate()
            .map(|(index, ((host, id), f))| formation::NodeLabels {
                host: host.clone(),
                id: id.clone(),
                labels: super::host_labels(index, f.ranks, &f.offer),
            })
            .collect()
    }
}
