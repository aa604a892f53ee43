//! `mpiswarm up`: the whole lifecycle, phase by phase, each phase agreed by the host leaders:
//! daemons up, swarm init, joins, membership confirmed, images, stack, verify, the user's command
//! (or a wait for a signal), teardown everywhere. The other ranks of each host only wait.

use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::host::engine::Engine;
use crate::host::host_daemon::{self, HostDaemon, Launched};
use crate::host::identity;
use crate::mpi::cluster::{Cluster, Role};
use crate::mpi::collective::{Interrupt, Leaders, PhaseFailed};
use crate::output::report::{HostTimes, RunReport, Timeline, phase_stats};
use crate::plan::cli::PortDriver;
use crate::plan::config::{Network, UpConfig, Workload};
use crate::swarm::formation;
use crate::swarm::formation::JoinRole;
use crate::swarm::stack_state::Goal;
use crate::sys::signals::Signals;

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
    let early = early.then(|| host_daemon::launch(cfg, &job, &host, &mut tl));
    let (cluster, mut role) =
        Cluster::init(host.clone(), signals.clone(), &cfg.host.state_base, &job)?;
    crate::output::logging::set_origin(&host, cluster.rank);
    tl.set_rank(cluster.rank);
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
                manager_cpu_at_join: 0.0,
            };
            run.lifecycle(early)
        }
        // If the launcher's idea of the host's first rank was not MPI's, MPI's wins, and a
        // daemon started early is torn down as it is dropped.
        Role::Follower(follower) => {
            drop(early);
            follower.wait_for_end()
        }
    };
    cluster.finish(role, code);
    Ok(code)
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
    /// Rank 0: its dockerd's CPU seconds when the joins began.
    manager_cpu_at_join: f64,
}

/// What rank 0 learns of each host.
#[derive(Debug, Serialize, Deserialize)]
struct HostFacts {
    addr: Ipv4Addr,
    /// Ranks of the job on the host.
    ranks: usize,
    offer: crate::host::offer::Offer,
}

/// The order in which workers join: host `managers + slot` is worker `slot`; it joins through
/// manager `slot % managers`, after worker `slot - window` ended its join.
#[derive(Debug, Clone, Copy)]
struct JoinOrder {
    managers: usize,
    window: usize,
    hosts: usize,
}

impl JoinOrder {
    /// The worker slot of host `index` (None for a manager).
    fn slot(&self, index: usize) -> Option<usize> {
        index.checked_sub(self.managers)
    }

    /// The manager (host index) worker `slot` joins through.
    fn via(&self, slot: usize) -> usize {
        slot % self.managers
    }

    /// The host whose join must end before worker `slot` starts.
    fn waits_for(&self, slot: usize) -> Option<usize> {
        slot.checked_sub(self.window).map(|s| s + self.managers)
    }

    /// The host that waits for worker `slot`.
    fn passes_to(&self, slot: usize) -> Option<usize> {
        let next = self.managers + slot + self.window;
        (next < self.hosts).then_some(next)
    }
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
                        debug!("{t:#}");
                    }
                    Err(e)
                }
            }
        });
        match ran {
            Ok(code) => code,
            Err(e) => {
                // Every leader learns a phase failure; rank 0 reports it once for all hosts.
                if self.leaders.is_root() || e.downcast_ref::<PhaseFailed>().is_none() {
                    tracing::error!("{e:#}");
                }
                1
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
        let (status, value) = crate::mpi::collective::split(step(self));
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
        value.ok_or_else(|| anyhow::anyhow!("internal: {what} agreed without a value"))
    }

    fn is_root(&self) -> bool {
        self.leaders.is_root()
    }

    /// Every host's name, in host order, on every leader; two hosts with one name are refused
    /// (they would share a state directory).
    fn agree_hosts(&mut self) -> Result<Vec<String>> {
        let host = self.leaders.host.clone();
        let names = self.leaders.gather_to_root(
            &host,
            "say their host names",
            self.deadline,
            Interrupt::BySignal,
        )?;
        let verdict =
            names.map(|n| crate::mpi::job::distinct_hosts(n).map_err(|e| format!("{e:#}")));
        let hosts: std::result::Result<Vec<String>, String> =
            self.leaders
                .broadcast_value(verdict.as_ref(), "learn the hosts", self.deadline)?;
        let hosts = hosts.map_err(anyhow::Error::msg)?;
        debug!(
            "job {}: {} rank(s) on {} host(s)",
            self.job,
            self.ranks,
            hosts.len()
        );
        Ok(hosts)
    }

    /// A daemon on every host; rank 0 initializes the swarm as soon as its own daemon is up,
    /// while the other hosts are still starting theirs.
    fn start_daemon(
        &mut self,
        early: Option<Result<Launched>>,
    ) -> Result<(HostDaemon, Option<formation::Invitations>)> {
        let outputs = if self.is_root() {
            crate::output::outputs::check(self.cfg)
        } else {
            Ok(())
        };
        let hosts = self.leaders.hosts();
        self.leaders.begin_progress("hosts with a daemon up", hosts);
        let started = self.phase(
            "start the rootless Docker daemon and initialize the swarm",
            None,
            |run| {
                let launched = match early {
                    Some(launched) => launched,
                    None => host_daemon::launch(run.cfg, run.job, &run.leaders.host, &mut run.tl),
                };
                let speak = run.is_root();
                let daemon = outputs
                    .and(launched)
                    .and_then(|l| l.wait(run.signals, run.deadline, &mut run.tl, speak))?;
                run.leaders.progress_done();
                let join = if run.is_root() {
                    let t = Instant::now();
                    let info = formation::init(
                        &daemon.engine,
                        daemon.addr,
                        &daemon.listen_addr(),
                        run.cfg.address_pool,
                    )?;
                    run.tl.done("swarm-init", t);
                    Some(info)
                } else {
                    None
                };
                Ok((daemon, join))
            },
        );
        self.leaders.progress.end();
        if self.is_root() && started.is_ok() {
            info!(
                "daemons up on {hosts} host(s) in {:.2} s",
                self.start.elapsed().as_secs_f64()
            );
        }
        started
    }
}

impl Run<'_> {
    /// Everything between the daemons' start and the teardown; returns the exit code.
    fn with_swarm(
        &mut self,
        daemon: &HostDaemon,
        join: Option<formation::Invitations>,
        hosts: &[String],
        marks: &mut Milestones,
    ) -> Result<i32> {
        let node_id = self.join(daemon, join, hosts)?;
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
                run.confirm_members(&daemon.engine, guard, hosts, &node_ids, managers)?;
            }
            Ok(())
        })?;
        marks.swarm_ready = self.start.elapsed().as_secs_f64() + self.started_in;
        if !self.cfg.load.is_empty() {
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
        }
        if let Some((file, name)) = &self.cfg.stack {
            self.phase(&format!("deploy the stack {name}"), Some("stack"), |run| {
                if run.is_root() {
                    run.deploy_stack(&daemon.engine, file, name)?;
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
            )?;
            self.tl.done("verify", t);
        }
        marks.bring_up = self.start.elapsed().as_secs_f64() + self.started_in;
        self.use_swarm(daemon, hosts, marks)
    }

    /// The swarm in use: rank 0 runs the command or waits (then tells every host to stop), the
    /// other hosts wait to be told; returns the exit code.
    fn use_swarm(
        &mut self,
        daemon: &HostDaemon,
        hosts: &[String],
        marks: &Milestones,
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
        let workload = match &self.cfg.workload {
            Workload::Command(command) => crate::swarm::workload::Workload::Command(command),
            Workload::StackWork(name) => crate::swarm::workload::Workload::StackWork {
                engine: &daemon.engine,
                name,
            },
            Workload::Signal => crate::swarm::workload::Workload::Signal,
        };
        let code = ready.and_then(|_ready| {
            crate::swarm::workload::run_or_wait(
                self.leaders,
                &workload,
                daemon.engine.socket(),
                self.signals,
            )
        });
        self.leaders.announce_stop(*code.as_ref().unwrap_or(&1));
        code
    }

    /// Rank 0: every host's node Ready, the swarm sealed (in this order: once the tokens are
    /// rotated nobody else can join, so the strangers listed after it are all there will be),
    /// then every node labelled. Each step is timed for the report.
    fn confirm_members(
        &mut self,
        engine: &crate::host::engine::Engine,
        guard_pid: i32,
        hosts: &[String],
        node_ids: &[String],
        managers: usize,
    ) -> Result<()> {
        let until = self.own_deadline();
        let t = Instant::now();
        formation::wait_members(engine, hosts, node_ids, managers, until)?;
        self.tl.done("members-ready", t);
        self.tl.set_manager_join_cpu(
            crate::sys::procfs::program_cpu(guard_pid, "dockerd") - self.manager_cpu_at_join,
        );
        let t = Instant::now();
        crate::swarm::seal::rotate_tokens(engine, until)?;
        crate::swarm::seal::remove_strangers(engine, node_ids, until)?;
        self.tl.done("seal", t);
        let t = Instant::now();
        formation::label_nodes(engine, &self.node_labels(hosts, node_ids), until)?;
        self.tl.done("labels", t);
        Ok(())
    }

    /// Rank 0's part of the stack phase: deploy, then wait until the stack is up (beside
    /// `--until-jobs-complete`, only its lasting services: the work is the workload's).
    fn deploy_stack(&self, engine: &Engine, file: &std::path::Path, name: &str) -> Result<()> {
        let until = self.own_deadline();
        crate::swarm::stack::deploy(engine, file, name, until)?;
        let goal = match self.cfg.workload {
            Workload::StackWork(_) => Goal::Infrastructure,
            Workload::Command(_) | Workload::Signal => Goal::Up,
        };
        crate::swarm::stack::wait_for(engine, name, goal, until, |counts| {
            info!("stack {name}: {counts}");
        })?;
        if goal == Goal::Infrastructure {
            crate::swarm::stack::check_work(engine, name)?;
        }
        Ok(())
    }

    /// The deadline for rank 0's own waits inside a phase the other hosts wait for in its
    /// agreement: a little before theirs, so that rank 0's reason (what it still waits for)
    /// reaches them, instead of every host giving up on the agreement at once.
    fn own_deadline(&self) -> Instant {
        self.deadline
            .checked_sub(AGREE_MARGIN)
            .unwrap_or(self.deadline)
    }

    /// The labels stacks can place by, for each host's node (rank 0; `ids` in host order).
    fn node_labels(&self, hosts: &[String], ids: &[String]) -> Vec<formation::NodeLabels> {
        hosts
            .iter()
            .zip(ids)
            .zip(&self.facts)
            .enumerate()
            .map(|(index, ((host, id), f))| {
                let labels = [
                    ("mpiswarm.index", index.to_string()),
                    ("mpiswarm.ranks", f.ranks.to_string()),
                    ("mpiswarm.cpus", f.offer.cpus.to_string()),
                    ("mpiswarm.memory", f.offer.memory_mib.to_string()),
                ];
                formation::NodeLabels {
                    host: host.clone(),
                    id: id.clone(),
                    labels: labels.map(|(k, v)| (k.to_owned(), v)).to_vec(),
                }
            })
            .collect()
    }

    /// Opens the swarm ports to the job's hosts, and to nobody else (see firewall.rs).
    fn open_ports(&mut self, daemon: &HostDaemon, peers: &[Ipv4Addr]) -> Result<()> {
        let port_driver = match self.cfg.network {
            // dockerd listens in the node's namespace: no overlay data path to guard, and the
            // control ports are swarm's mutually authenticated TLS (README: security).
            Network::Host => return Ok(()),
            Network::Overlay { port_driver } => port_driver,
        };
        if port_driver != PortDriver::Slirp4netns {
            if self.is_root() {
                tracing::warn!(
                    "--port-driver {} hides the source addresses of incoming traffic: the swarm ports \
                     (overlay traffic included) accept packets from any host that can reach them",
                    port_driver.as_str()
                );
            }
            return Ok(());
        }
        self.phase(
            "open the swarm ports to the job's hosts",
            Some("firewall"),
            |_| crate::host::firewall::allow(daemon.guard.pid(), peers),
        )
    }

    /// The number of managers: at least rank 0's host, at most every host.
    fn managers(&self, hosts: usize) -> usize {
        self.cfg.managers.clamp(1, hosts.max(1))
    }

    /// Managers join one at a time (Raft adds one member per change), then the workers all at
    /// once, spread over the managers so that no single one takes every join. Every host gets the
    /// worker's invitation; only the hosts that become managers get the manager's. Returns this
    /// host's swarm node ID.
    fn join(
        &mut self,
        daemon: &HostDaemon,
        invitations: Option<formation::Invitations>,
        hosts: &[String],
    ) -> Result<String> {
        let managers = self.managers(hosts.len());
        if self.cfg.managers > hosts.len() && self.is_root() {
            tracing::warn!(
                "--managers {} but only {} host(s): all of them are managers",
                self.cfg.managers,
                hosts.len()
            );
        }
        let peers = self.share_facts(daemon)?;
        self.open_ports(daemon, &peers)?;
        let (worker, manager) = invitations.map(|i| (i.worker, i.manager)).unzip();
        let payload = self.leaders.broadcast(
            worker.map(|i| i.encode()),
            "receive the worker join invitation",
            self.deadline,
        )?;
        let worker = formation::Invitation::decode(&payload, JoinRole::Worker)?;
        drop(payload);
        if let Some(manager) = manager {
            let bytes = manager.encode();
            for host in 1..managers {
                self.leaders.send_manager_invitation(host, &bytes);
            }
        }
        let t = Instant::now();
        if self.is_root() {
            self.manager_cpu_at_join =
                crate::sys::procfs::program_cpu(daemon.guard.pid() as i32, "dockerd");
        }
        self.join_managers(daemon, hosts, managers)?;
        let node_id = self.join_workers(daemon, &worker, hosts, &peers);
        if !self.is_root() {
            self.tl.done("join", t);
        }
        node_id
    }

    /// The hosts after rank 0's that become managers join one at a time, each with the
    /// invitation rank 0 sent it alone.
    fn join_managers(
        &mut self,
        daemon: &HostDaemon,
        hosts: &[String],
        managers: usize,
    ) -> Result<()> {
        let index = self.leaders.index();
        for (turn, manager_host) in hosts.iter().enumerate().take(managers).skip(1) {
            self.phase(&format!("join manager {manager_host}"), None, |run| {
                if index == turn {
                    let bytes = run.leaders.receive_manager_invitation(run.deadline)?;
                    let invitation = formation::Invitation::decode(&bytes, JoinRole::Manager)?;
                    let remote = invitation.manager.clone();
                    formation::join(
                        &daemon.engine,
                        daemon.addr,
                        &daemon.listen_addr(),
                        &invitation,
                        &remote,
                        run.deadline,
                    )?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// The other hosts join as workers through the managers in turn, a window at a time: at most
    /// `--joins-per-manager` per manager at once, each next one as soon as one ends (its own turn
    /// comes from the worker a window before it). Every host then says its node ID.
    fn join_workers(
        &mut self,
        daemon: &HostDaemon,
        worker: &formation::Invitation,
        hosts: &[String],
        peers: &[Ipv4Addr],
    ) -> Result<String> {
        let managers = self.managers(hosts.len());
        let index = self.leaders.index();
        let order = JoinOrder {
            managers,
            window: managers * self.cfg.joins_per_manager,
            hosts: peers.len(),
        };
        self.leaders
            .begin_progress("workers joined", peers.len().saturating_sub(managers));
        let joined = self.phase("join the swarm", None, |run| {
            if let Some(slot) = order.slot(index) {
                let turn = match order.waits_for(slot) {
                    Some(before) => {
                        run.leaders
                            .wait_join_turn(before, &hosts[before], run.deadline)
                    }
                    None => Ok(()),
                };
                let via = format!("{}:2377", peers[order.via(slot)]);
                let t = Instant::now();
                let joined = turn.and_then(|()| {
                    formation::join(
                        &daemon.engine,
                        daemon.addr,
                        &daemon.listen_addr(),
                        worker,
                        &via,
                        run.deadline,
                    )
                });
                // Passed on whatever the outcome: the next host's join does not depend on it,
                // and a failure here must not keep it waiting until the deadline.
                if let Some(next) = order.passes_to(slot) {
                    run.leaders.pass_join_turn(next);
                }
                joined?;
                run.tl.done("own-join", t);
                run.leaders.progress_done();
            }
            // Managers too: rank 0 tells the job's nodes from any other by these IDs.
            formation::node_id(&daemon.engine, run.deadline)
        });
        self.leaders.progress.end();
        joined
    }

    /// What rank 0 needs of every host (addresses, labels) goes to it once; every host's address
    /// then goes to every host (the firewall lets them in; workers join through the managers').
    fn share_facts(&mut self, daemon: &HostDaemon) -> Result<Vec<Ipv4Addr>> {
        let facts = HostFacts {
            addr: daemon.addr,
            ranks: self.leaders.ranks_here(),
            offer: crate::host::offer::here(),
        };
        let all = self.leaders.gather_to_root(
            &facts,
            "say their addresses",
            self.deadline,
            Interrupt::BySignal,
        )?;
        self.facts = all.unwrap_or_default();
        let addrs: Vec<Ipv4Addr> = self.facts.iter().map(|f| f.addr).collect();
        self.leaders.broadcast_value(
            self.is_root().then_some(&addrs),
            "learn the hosts' addresses",
            self.deadline,
        )
    }

    /// Tears this host down, agrees that every host is clean, and at rank 0 reports (with the
    /// bring-up's milestones when it got that far).
    fn teardown(
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
    fn report(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_join_a_window_at_a_time_spread_over_the_managers() {
        let order = JoinOrder {
            managers: 2,
            window: 4,
            hosts: 12,
        };
        // Hosts 0 and 1 are managers; hosts 2..6 start at once, two through each manager.
        assert_eq!(order.slot(1), None);
        let first: Vec<_> = (2..6).map(|i| order.slot(i).unwrap()).collect();
        assert!(first.iter().all(|s| order.waits_for(*s).is_none()));
        assert_eq!(
            first.iter().map(|s| order.via(*s)).collect::<Vec<_>>(),
            [0, 1, 0, 1]
        );
        // Each later host waits for the one a window before it, which passes it the turn.
        for host in 6..12 {
            let slot = order.slot(host).unwrap();
            let before = order.waits_for(slot).unwrap();
            assert_eq!(before, host - 4);
            assert_eq!(order.passes_to(order.slot(before).unwrap()), Some(host));
        }
        assert_eq!(order.passes_to(order.slot(8).unwrap()), None);
    }
}
