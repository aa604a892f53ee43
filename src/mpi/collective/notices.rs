//! The leaders' point-to-point notices outside the agreements: manager invitations, join
//! turns, progress, stop requests, heartbeats, and the drain of what is left at the end.

use std::time::Instant;

use anyhow::{Result, bail};

use mpi::traits::Communicator;

use crate::host::end_notice::protocol::End;
use crate::mpi::messages::{EndNotice, Kind, ManagerInvitation, Message};
use crate::sys::signals::{Cause, Interrupted};

use super::{Leaders, State};

/// How long rank 0 waits for a notice to reach every leader (a live one looks every 50 ms at
/// most; the first notice also opens the connection).
const NOTICE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);
/// How long a leader waits for its host's other ranks to take the end over MPI (they look every
/// 50 ms at most).
const FOLLOWER_NOTICE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(1);
/// The same after the launcher's signal, which every rank received.
const STOP_NOTICE_AFTER_A_SIGNAL: std::time::Duration = std::time::Duration::from_millis(100);

impl Leaders {
    /// Rank 0: sends a manager's join invitation to each host of index in `hosts` (to each
    /// alone), all at once; fails naming the hosts it did not reach by `deadline`.
    pub fn send_manager_invitations(
        &mut self,
        hosts: std::ops::Range<usize>,
        bytes: &[u8],
        deadline: Instant,
    ) -> Result<()> {
        let ranks = hosts.start as i32..hosts.end as i32;
        let sent = ManagerInvitation::send_to_each(
            &self.comm,
            ranks,
            bytes,
            deadline,
            Some(&self.signals.clone()),
        );
        self.undelivered(sent, "send the manager join invitation")
    }

    /// A manager host: waits for its join invitation from rank 0 until the deadline or a
    /// teardown signal. Only a probe is pending meanwhile: giving up leaves MPI usable.
    pub fn receive_manager_invitation(&self, deadline: Instant) -> Result<Vec<u8>> {
        let mut backoff = crate::sys::deadline::Backoff::default();
        loop {
            if let Some(bytes) = ManagerInvitation::poll(&self.comm, Some(0)) {
                return Ok(bytes);
            }
            if let Some(sig) = self.signals.received() {
                return Err(Interrupted::during(
                    sig,
                    "waiting for the manager join invitation from rank 0",
                )
                .into());
            }
            if Instant::now() >= deadline {
                bail!("timed out waiting for the manager join invitation from rank 0");
            }
            self.signals.sleep(backoff.next());
        }
    }

    /// This worker host's join ended: the host `index` (a join window later) may start its own.
    pub fn pass_join_turn(&mut self, index: usize) -> Result<()> {
        let sent = Message::JoinTurn.send_within(
            &self.comm,
            index as i32,
            Instant::now() + NOTICE_DEADLINE,
            Some(&self.signals.clone()),
        );
        self.undelivered(sent, "pass the join turn on")
    }

    /// Waits until host `index` (a join window earlier) says its join ended, until the deadline
    /// or a teardown signal; `name` is that host's, for the error.
    pub fn wait_join_turn(&self, index: usize, name: &str, deadline: Instant) -> Result<()> {
        let mut backoff = crate::sys::deadline::Backoff::default();
        loop {
            if Message::poll(&self.comm, Some(index as i32), Kind::JoinTurn).is_some() {
                return Ok(());
            }
            if let Some(sig) = self.signals.received() {
                return Err(Interrupted::during(
                    sig,
                    format!(
                        "waiting for {name} to finish joining the swarm (joins go a window at a \
                         time)"
                    ),
                )
                .into());
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out waiting for {name} to finish joining the swarm: this host joins \
                     after it (joins go a window at a time, --joins-per-manager)"
                );
            }
            self.signals.sleep(backoff.next());
        }
    }

    /// Rank 0 starts counting hosts that finish the next phase (shown live on a terminal).
    pub fn begin_progress(&mut self, label: &str, total: usize) {
        let is_root = self.is_root();
        self.progress.begin(is_root, label, total);
    }

    /// This host finished its part of the current progress phase.
    pub fn progress_done(&mut self) {
        let is_root = self.is_root();
        let deadline = Instant::now() + NOTICE_DEADLINE;
        let sent = self.progress.done(&self.comm, is_root, deadline);
        self.note_undelivered(sent, "tell rank 0 of this host's progress");
    }

    /// Rank 0: a stop requested by any rank of the job (the signal it received).
    pub fn poll_stop_request(&self) -> Option<Cause> {
        match Message::poll(&self.world, None, Kind::StopRequest)? {
            (_, Message::StopRequest { cause }) => Some(cause),
            _ => None,
        }
    }

    /// This rank asks rank 0 to stop the job (for `cause`); rank 0 may be gone.
    pub fn request_stop(&mut self, cause: Cause) {
        let sent = Message::StopRequest { cause }.send_to_each(
            &self.world,
            0..1,
            Instant::now() + STOP_NOTICE_AFTER_A_SIGNAL,
            None,
        );
        self.note_undelivered(sent, "ask rank 0 to stop");
    }

    /// Rank 0 tells every other leader to tear down. After the launcher's signal the others
    /// had it too and a dead one cannot be told: rank 0 then waits only briefly.
    pub fn announce_stop(&mut self, code: i32) {
        let wait = if self.launcher_ends_job() {
            STOP_NOTICE_AFTER_A_SIGNAL
        } else {
            NOTICE_DEADLINE
        };
        let sent = Message::Stop { code }.send_to_each(
            &self.comm,
            1..self.hosts() as i32,
            Instant::now() + wait,
            None,
        );
        self.note_undelivered(sent, "tell every host to tear down");
    }

    /// Leaves MPI's state as a pending send left it: a message not delivered (its host is gone
    /// or hung) keeps a request inside MPI, which can then only be aborted or left.
    fn note_undelivered(&mut self, sent: Result<(), Vec<i32>>, what: &str) {
        let _ = self.undelivered(sent, what);
    }

    /// `note_undelivered`, returning the reason as an error too.
    fn undelivered(&mut self, sent: Result<(), Vec<i32>>, what: &str) -> Result<()> {
        let Err(ranks) = sent else { return Ok(()) };
        let hosts: Vec<String> = ranks.iter().map(|r| format!("leader {r}")).collect();
        let reason = format!(
            "could not {what}: no answer from {} (gone or hung)",
            hosts.join(", ")
        );
        self.state = State::Abandoned(reason.clone());
        bail!(reason)
    }

    /// Tells this host's other ranks over MPI how the job ended (they have no end socket to hear
    /// it on); false when one was not reached in time (gone, or hung).
    pub fn tell_followers(&self, end: End) -> bool {
        let ranks = 1..self.node.size();
        let deadline = Instant::now() + FOLLOWER_NOTICE_DEADLINE;
        EndNotice::send_to_each(&self.node, ranks, end, deadline).is_ok()
    }

    /// Leaders other than rank 0: whether rank 0 said stop.
    pub fn poll_stop(&self) -> bool {
        Message::poll(&self.comm, Some(0), Kind::Stop).is_some()
    }

    /// Rank 0: tells every other leader it is alive (a signal ends the wait: the job is ending).
    pub fn send_heartbeats(&mut self) {
        let sent = Message::Heartbeat.send_to_each(
            &self.comm,
            1..self.hosts() as i32,
            Instant::now() + NOTICE_DEADLINE,
            Some(&self.signals.clone()),
        );
        self.note_undelivered(sent, "send every host its heartbeat");
    }

    /// Leaders other than rank 0: true if rank 0's heartbeat arrived since the last call.
    pub fn poll_heartbeats(&self) -> bool {
        let mut heard = false;
        while Message::poll(&self.comm, Some(0), Kind::Heartbeat).is_some() {
            heard = true;
        }
        heard
    }

    /// Receives messages nobody waited for (both sides stopped at once), so that none is left
    /// in flight at finalize. Called after the last agreement, which follows every send.
    pub fn drain(&self) {
        Message::drain(&self.comm);
        Message::drain(&self.world);
    }
}
