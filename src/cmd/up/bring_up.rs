//! `up`'s bring-up: the hosts and their addresses agreed, then each host's daemon started with
//! its swarm ports open to those hosts only.

use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::host::daemon::launch::{self, HostDaemon, Launched};
use crate::host::docker_version;
use crate::mpi::collective::Interrupt;
use crate::plan::cli::PortDriver;
use crate::plan::config::Network;
use crate::swarm::formation;

use super::{HostFacts, Run};

/// What every host learns from rank 0 before the daemons start.
#[derive(Debug, Serialize, Deserialize)]
struct Agreed {
    hosts: Vec<String>,
    /// Every host's address, in host order.
    addrs: Vec<Ipv4Addr>,
    /// Rank 0's Docker release and the dockerd file it was read from.
    docker: Option<docker_version::Shared>,
}

/// Why rank 0 stops the job before any daemon starts.
#[derive(Debug, Serialize, Deserialize)]
enum Refusal {
    Hosts(String),
    Command(crate::sys::exit::CommandUnusable),
}

impl Run<'_> {
    /// Every host's name and address, in host order, on every leader; two hosts with one name
    /// are refused (they would share a state directory), and so is a host without an address to
    /// advertise. Rank 0 keeps every host's facts.
    pub(super) fn agree_hosts(&mut self) -> Result<Vec<String>> {
        let host = self.leaders.host.clone();
        let facts = crate::host::identity::advertise_addr(&self.cfg.host.addr)
            .map(|addr| HostFacts {
                addr,
                ranks: self.leaders.ranks_here(),
                offer: crate::host::offer::here(),
            })
            .map_err(|e| format!("{e:#}"));
        let all = self.leaders.gather_to_root(
            &(host.clone(), facts),
            "say their host names and addresses",
            self.deadline,
            Interrupt::BySignal,
        )?;
        // Rank 0's verdict: the hosts, their addresses and its Docker release, else why the job
        // cannot go on (a repeated host name, a host without an address, a command that cannot
        // run), which every host then learns.
        let verdict = all.map(|all| self.judge_hosts(all));
        let agreed: std::result::Result<Agreed, Refusal> =
            self.leaders
                .broadcast_value(verdict.as_ref(), "learn the hosts", self.deadline)?;
        let agreed = agreed.map_err(|r| match r {
            Refusal::Command(unusable) => anyhow::Error::new(unusable),
            Refusal::Hosts(why) => anyhow::Error::msg(why),
        })?;
        self.peers = agreed.addrs;
        self.docker_release =
            docker_version::Shared::for_host(agreed.docker.as_ref(), docker_version::Stamp::here());
        let hosts = agreed.hosts;
        debug!(
            "job {}: {} rank(s) on {} host(s)",
            self.job,
            self.ranks,
            hosts.len()
        );
        Ok(hosts)
    }

    /// Rank 0: the hosts and their addresses from every host's word, or why the job stops.
    fn judge_hosts(
        &mut self,
        all: Vec<(String, std::result::Result<HostFacts, String>)>,
    ) -> std::result::Result<Agreed, Refusal> {
        if let Some(unusable) = super::check_command(self.cfg, &self.leaders.host) {
            return Err(Refusal::Command(unusable));
        }
        let (names, facts): (Vec<String>, Vec<_>) = all.into_iter().unzip();
        let without: Vec<String> = names
            .iter()
            .zip(&facts)
            .filter_map(|(name, f)| f.as_ref().err().map(|e| format!("{name}: {e}")))
            .collect();
        if !without.is_empty() {
            return Err(Refusal::Hosts(format!(
                "no address to advertise on {} host(s): {}",
                without.len(),
                without.join("; ")
            )));
        }
        let hosts =
            crate::mpi::job::distinct_hosts(names).map_err(|e| Refusal::Hosts(format!("{e:#}")))?;
        self.facts = facts.into_iter().flatten().collect();
        // Not waited for: a probe still running leaves each host to read its own.
        let docker = self
            .release_probe
            .take()
            .and_then(docker_version::Probe::finish_now)
            .and_then(|release| {
                docker_version::Stamp::here().map(|stamp| docker_version::Shared { stamp, release })
            });
        Ok(Agreed {
            hosts,
            addrs: self.facts.iter().map(|f| f.addr).collect(),
            docker,
        })
    }

    /// A daemon on every host; rank 0 initializes the swarm as soon as its own daemon is up,
    /// while the other hosts are still starting theirs.
    pub(super) fn start_daemon(
        &mut self,
        early: Option<Result<Launched>>,
    ) -> Result<(HostDaemon, Option<formation::Founding>)> {
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
                    None => {
                        let labels = run.own_labels();
                        let host = &run.leaders.host;
                        let release = run.docker_release;
                        launch::launch(run.cfg, run.job, host, &labels, release, &mut run.tl)
                    }
                };
                let speak = run.is_root();
                let daemon = outputs
                    .and(launched)
                    .and_then(|l| l.wait(run.signals, run.deadline, &mut run.tl, speak))?;
                // Before the swarm exists: the ports are open to the job's hosts only from its
                // first packet.
                run.open_ports(&daemon)?;
                run.label_daemon(&daemon)?;
                run.leaders.progress_done();
                let join = if run.is_root() {
                    let t = Instant::now();
                    let info = formation::init(
                        &daemon.engine,
                        daemon.addr,
                        &daemon.listen_addr(),
                        run.cfg.address_pool,
                        run.own_deadline(),
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

    /// This host's labels, as daemon.json lists them.
    fn own_labels(&self) -> Vec<String> {
        crate::host::daemon::labels::encode(&super::host_labels(
            self.leaders.index(),
            self.leaders.ranks_here(),
            &crate::host::offer::here(),
        ))
    }

    /// The host's labels on a daemon launched before they were known, before its node inits or
    /// joins the swarm (so that no manager writes them to Raft for each node).
    fn label_daemon(&mut self, daemon: &HostDaemon) -> Result<()> {
        if daemon.labelled {
            return Ok(());
        }
        let t = Instant::now();
        let labels = self.own_labels();
        crate::host::daemon::labels::apply(
            &self.leaders.host,
            &daemon.guard.dir,
            daemon.guard.pid() as i32,
            &daemon.engine,
            &labels,
            self.own_deadline(),
        )?;
        self.tl.done("engine-labels", t);
        Ok(())
    }

    /// Opens the swarm ports to the job's hosts, and to nobody else (see firewall.rs).
    pub(super) fn open_ports(&mut self, daemon: &HostDaemon) -> Result<()> {
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
        let t = Instant::now();
        crate::host::firewall::allow(daemon.guard.pid(), &self.peers)
            .context("failed to open the swarm ports to the job's hosts")?;
        self.tl.done("firewall", t);
        Ok(())
    }
}
