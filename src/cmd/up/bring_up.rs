//! `up`'s bring-up: the hosts agreed, each host's daemon started, the hosts' facts shared
//! and the swarm ports opened to the agreed peers only.

use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::host::daemon::launch::{self, HostDaemon, Launched};
use crate::mpi::collective::Interrupt;
use crate::plan::cli::PortDriver;
use crate::plan::config::Network;
use crate::swarm::formation;

use super::{HostFacts, Run};

/// Why rank 0 stops the job before any daemon starts.
#[derive(Debug, Serialize, Deserialize)]
enum Refusal {
    Hosts(String),
    Command(crate::sys::exit::CommandUnusable),
}

impl Run<'_> {
    /// Every host's name, in host order, on every leader; two hosts with one name are refused
    /// (they would share a state directory).
    pub(super) fn agree_hosts(&mut self) -> Result<Vec<String>> {
        let host = self.leaders.host.clone();
        let names = self.leaders.gather_to_root(
            &host,
            "say their host names",
            self.deadline,
            Interrupt::BySignal,
        )?;
        // Rank 0's verdict: the hosts, else why the job cannot go on (a repeated host name, a
        // command that cannot run), which every host then learns.
        let verdict = names.map(|n| match super::check_command(self.cfg, &host) {
            Some(unusable) => Err(Refusal::Command(unusable)),
            None => {
                crate::mpi::job::distinct_hosts(n).map_err(|e| Refusal::Hosts(format!("{e:#}")))
            }
        });
        let hosts: std::result::Result<Vec<String>, Refusal> =
            self.leaders
                .broadcast_value(verdict.as_ref(), "learn the hosts", self.deadline)?;
        let hosts = hosts.map_err(|r| match r {
            Refusal::Command(unusable) => anyhow::Error::new(unusable),
            Refusal::Hosts(why) => anyhow::Error::msg(why),
        })?;
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
    pub(super) fn start_daemon(
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
                    None => {
                        let labels = run.own_labels();
                        launch::launch(run.cfg, run.job, &run.leaders.host, &labels, &mut run.tl)
                    }
                };
                let speak = run.is_root();
                let daemon = outputs
                    .and(launched)
                    .and_then(|l| l.wait(run.signals, run.deadline, &mut run.tl, speak))?;
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

    /// What rank 0 needs of every host (addresses, labels) goes to it once; every host's address
    /// then goes to every host (the firewall lets them in; workers join through the managers').
    pub(super) fn share_facts(&mut self, daemon: &HostDaemon) -> Result<Vec<Ipv4Addr>> {
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

    /// Opens the swarm ports to the job's hosts, and to nobody else (see firewall.rs).
    pub(super) fn open_ports(&mut self, daemon: &HostDaemon, peers: &[Ipv4Addr]) -> Result<()> {
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
}
