//! Joining the swarm: how many managers, the order in which workers join (a window at a
//! time, spread over the managers), and the joins themselves.

use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::Result;

use crate::host::daemon::launch::HostDaemon;
use crate::swarm::formation;
use crate::swarm::formation::JoinRole;

use super::Run;

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

impl Run<'_> {
    /// The number of managers: at least rank 0's host, at most every host.
    pub(super) fn managers(&self, hosts: usize) -> usize {
        self.cfg.managers.clamp(1, hosts.max(1))
    }

    /// Managers join one at a time (Raft adds one member per change), then the workers all at
    /// once, spread over the managers so that no single one takes every join. Every host gets the
    /// worker's invitation; only the hosts that become managers get the manager's. Returns this
    /// host's swarm node ID.
    pub(super) fn join(
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
        let peers = self.peers.clone();
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
            self.leaders
                .send_manager_invitations(1..managers, &bytes, self.deadline)?;
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
    pub(super) fn join_managers(
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
                        run.own_deadline(),
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
    pub(super) fn join_workers(
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
                        run.own_deadline(),
                    )
                });
                // Passed on whatever the outcome: the next host's join does not depend on it,
                // and a failure here must not keep it waiting until the deadline.
                let passed = order
                    .passes_to(slot)
                    .map_or(Ok(()), |next| run.leaders.pass_join_turn(next));
                joined?;
                passed?;
                run.tl.done("own-join", t);
                run.leaders.progress_done();
            }
            // Managers too: rank 0 tells the job's nodes from any other by these IDs.
            let t = Instant::now();
            let id = formation::node_id(&daemon.engine, run.own_deadline());
            run.tl.done("node-id", t);
            id
        });
        self.leaders.progress.end();
        joined
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
