//! Agreements among the host leaders, with deadlines. Only one rank per host takes part: a
//! phase's verdict is one all-reduce of a small number, failure details travel to rank 0 only
//! when there are failures, data every host needs is broadcast, data only rank 0 needs is
//! gathered to it. No collective waits past its deadline or (unless asked) a teardown signal;
//! one that was abandoned leaves MPI unusable, and every later one is refused.

mod notices;
mod transfer;

use std::fmt;
use std::time::Instant;

use anyhow::{Result, bail};
use mpi::collective::SystemOperation;
use mpi::request::{Request, StaticScope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use serde::{Deserialize, Serialize};

use crate::mpi::mpi_buffer::Lent;
use crate::mpi::progress::Progress;
use crate::sys::signals::{Cause, Signals};

/// How long an interrupted collective may still complete (it takes milliseconds once every host
/// is in it).
const SIGNAL_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// A failure's message is cut to this many bytes in an agreement.
const MAX_ERROR: usize = 4096;

/// How a streamed gather ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gathered {
    /// Every leader's source reached its end.
    Complete,
    /// A leader asked to stop (its time ran out); what was sent so far arrived.
    Stopped,
}

/// Whether a teardown signal ends a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interrupt {
    BySignal,
    Never,
}

/// One host's failure in a phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    pub host: String,
    pub rank: i32,
    pub error: String,
}

/// A phase that failed on some hosts. Rank 0 holds every failure; the other leaders know only
/// that the phase failed (rank 0 reports it for all).
#[derive(Debug)]
pub struct PhaseFailed {
    pub phase: String,
    pub failures: Vec<Failure>,
    pub total_hosts: usize,
}

impl fmt::Display for PhaseFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.failures.is_empty() {
            return write!(
                f,
                "failed to {} on another host (rank 0 names it and the cause)",
                self.phase
            );
        }
        write!(
            f,
            "failed to {} on {} of {} host(s):",
            self.phase,
            self.failures.len(),
            self.total_hosts
        )?;
        // The same failure on many hosts is said once, naming them all in hostlist notation.
        for (error, hosts) in grouped(&self.failures) {
            let who = match hosts.as_slice() {
                [one] => format!("{} (rank {})", one.host, one.rank),
                many => {
                    let names: Vec<&str> = many.iter().map(|o| o.host.as_str()).collect();
                    crate::output::hostlist::compress(&names)
                }
            };
            write!(f, "\n  {who}: {}", error.replace('\n', "\n    "))?;
        }
        Ok(())
    }
}

/// Failures with the same text together, in the order each text first appears.
fn grouped(failures: &[Failure]) -> Vec<(&str, Vec<&Failure>)> {
    let mut groups: Vec<(&str, Vec<&Failure>)> = Vec::new();
    for o in failures {
        match groups.iter_mut().find(|(error, _)| *error == o.error) {
            Some((_, hosts)) => hosts.push(o),
            None => groups.push((&o.error, vec![o])),
        }
    }
    groups
}

impl std::error::Error for PhaseFailed {}

/// Whether collectives may still be started.
enum State {
    Ready,
    /// A request was left pending inside MPI: MPI can only be aborted now. Why it was given up.
    Abandoned(String),
}

/// This host's leader, as one of the job's host leaders.
pub struct Leaders {
    /// The host leaders; its rank 0 is the job's rank 0, ranks in job order (host order).
    comm: SimpleCommunicator,
    /// Every rank: stop requests come from any of them.
    world: SimpleCommunicator,
    /// This host's ranks: the leader tells the others when the job ends.
    node: SimpleCommunicator,
    pub host: String,
    /// This rank in the whole job.
    pub world_rank: i32,
    signals: Signals,
    state: State,
    pub progress: Progress,
}

impl Leaders {
    pub fn new(
        comm: SimpleCommunicator,
        world: SimpleCommunicator,
        node: SimpleCommunicator,
        host: String,
        signals: Signals,
    ) -> Self {
        Leaders {
            world_rank: world.rank(),
            comm,
            world,
            node,
            host,
            signals,
            state: State::Ready,
            progress: Progress::default(),
        }
    }

    /// This host's index among the hosts (rank 0's host is 0).
    pub fn index(&self) -> usize {
        self.comm.rank() as usize
    }

    /// The number of hosts.
    pub fn hosts(&self) -> usize {
        self.comm.size() as usize
    }

    /// The job's ranks on this host (this leader included).
    pub fn ranks_here(&self) -> usize {
        self.node.size() as usize
    }

    pub fn is_root(&self) -> bool {
        self.comm.rank() == 0
    }

    pub fn abandoned(&self) -> bool {
        matches!(self.state, State::Abandoned(_))
    }

    /// Whether this rank received a signal by which the launcher ends the job.
    pub fn launcher_ends_job(&self) -> bool {
        self.signals
            .received()
            .is_some_and(Cause::launcher_ends_job)
    }

    /// Why a collective was abandoned, if one was.
    pub fn abandoned_because(&self) -> Option<&str> {
        match &self.state {
            State::Ready => None,
            State::Abandoned(reason) => Some(reason),
        }
    }

    /// Every leader contributes its outcome of `phase`: Ok when every host succeeded, else an
    /// error naming (at rank 0) every failing host and its cause.
    pub fn agree(&mut self, phase: &str, local: Result<()>, deadline: Instant) -> Result<()> {
        self.agree_until(phase, local, deadline, Interrupt::BySignal)
    }

    pub fn agree_until(
        &mut self,
        phase: &str,
        local: Result<()>,
        deadline: Instant,
        interrupt: Interrupt,
    ) -> Result<()> {
        let record = match &local {
            Ok(()) => Vec::new(),
            Err(e) => serde_json::to_vec(&Failure {
                host: self.host.clone(),
                rank: self.world_rank,
                error: truncate(format!("{e:#}"), MAX_ERROR),
            })?,
        };
        let width = self.all_reduce_max(record.len() as u64, phase, deadline, interrupt)?;
        if width == 0 {
            return Ok(());
        }
        let records = self.gather_fixed(record, width as usize, phase, deadline, interrupt)?;
        let failures = records
            .unwrap_or_default()
            .iter()
            .filter(|r| !r.is_empty())
            .map(|r| serde_json::from_slice(r))
            .collect::<Result<Vec<Failure>, _>>()?;
        Err(PhaseFailed {
            phase: phase.to_owned(),
            failures,
            total_hosts: self.hosts(),
        }
        .into())
    }

    fn all_reduce_max(
        &mut self,
        value: u64,
        what: &str,
        deadline: Instant,
        interrupt: Interrupt,
    ) -> Result<u64> {
        self.ready(what)?;
        let (send, send_view) = Lent::new(Box::new(value));
        let (recv, recv_view) = Lent::new(Box::new(0u64));
        let request = self.comm.immediate_all_reduce_into(
            StaticScope,
            &*send_view,
            recv_view,
            SystemOperation::max(),
        );
        self.wait(request, what, deadline, interrupt)?;
        // SAFETY: the request completed; the views went into it and are not used again.
        let (_, max) = unsafe { (send.reclaim(), recv.reclaim()) };
        Ok(*max)
    }

    fn ready(&self, what: &str) -> Result<()> {
        match &self.state {
            State::Ready => Ok(()),
            State::Abandoned(why) => bail!(
                "cannot {what}: MPI is unusable since an earlier wait was given up ({why}); the \
                 job can only be aborted, and the first error is the one to act on"
            ),
        }
    }

    /// Polls a request until it completes, the deadline passes, or (if interruptible) a
    /// teardown signal arrives; rank 0 updates its progress display meanwhile.
    fn wait<D: ?Sized>(
        &mut self,
        request: Request<'static, D>,
        what: &str,
        deadline: Instant,
        interrupt: Interrupt,
    ) -> Result<()> {
        let mut request = request;
        let mut backoff = crate::sys::deadline::Backoff::default();
        let mut signalled_at = None;
        loop {
            match request.test() {
                Ok(_) => return Ok(()),
                Err(pending) => request = pending,
            }
            // A collective that the other hosts have all but completed (rank 0 already went on,
            // e.g. to write the ready file that a job script signals after) still completes:
            // giving it up would leave MPI only an abort.
            let signal = self
                .signals
                .received()
                .filter(|_| interrupt == Interrupt::BySignal)
                .filter(|_| {
                    signalled_at.get_or_insert_with(Instant::now).elapsed() >= SIGNAL_GRACE
                });
            let abandon: Option<anyhow::Error> = if let Some(sig) = signal {
                Some(
                    crate::sys::signals::Interrupted::during(
                        sig,
                        format!("waiting for all hosts to {what}"),
                    )
                    .into(),
                )
            } else if Instant::now() >= deadline {
                Some(anyhow::anyhow!(
                    "timed out waiting for all hosts to {what}: at least one host did not arrive \
                     before the deadline (a host is hung or died; raise --timeout if it is just slow)"
                ))
            } else {
                None
            };
            if let Some(reason) = abandon {
                // MPI still owns the request and its buffers: both are leaked.
                std::mem::forget(request);
                self.state = State::Abandoned(reason.to_string());
                return Err(reason);
            }
            if self.is_root() {
                self.progress.collect(&self.comm);
            }
            if signalled_at.is_some() || self.signals.received().is_some() {
                // A signal makes `Signals::sleep` return at once: pause for the grace here.
                std::thread::sleep(std::time::Duration::from_millis(2));
            } else {
                self.signals.sleep(backoff.next());
            }
        }
    }
}

/// A local result as an agreement's status and the value to keep if every host agrees.
pub fn split<T>(result: Result<T>) -> (Result<()>, Option<T>) {
    match result {
        Ok(v) => (Ok(()), Some(v)),
        Err(e) => (Err(e), None),
    }
}

/// Cuts `text` to at most `max` bytes, on a character boundary, saying so.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut cut = max.saturating_sub(16);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text.push_str(" [... cut]");
    text
}

#[cfg(test)]
mod tests {
    use super::transfer::unpad;
    use super::*;

    #[test]
    fn unpad_keeps_exactly_the_record() {
        let mut slot = 3u64.to_le_bytes().to_vec();
        slot.extend_from_slice(b"abc\0\0\0");
        assert_eq!(unpad(&slot), b"abc");
        // A record may hold zero bytes; the length says where it ends.
        let mut slot = 2u64.to_le_bytes().to_vec();
        slot.extend_from_slice(&[0, 0, 9]);
        assert_eq!(unpad(&slot), vec![0, 0]);
    }

    #[test]
    fn truncate_cuts_on_a_character_boundary_and_says_so() {
        let long = "é".repeat(100);
        let cut = truncate(long, 51);
        assert!(cut.len() <= 51, "{}", cut.len());
        assert!(cut.ends_with("[... cut]"));
        assert_eq!(truncate("short".into(), 10), "short");
    }

    #[test]
    fn phase_failure_names_every_host() {
        let failed = PhaseFailed {
            phase: "join the swarm".into(),
            failures: vec![Failure {
                host: "n2".into(),
                rank: 4,
                error: "refused\nby n1".into(),
            }],
            total_hosts: 3,
        };
        assert_eq!(
            failed.to_string(),
            "failed to join the swarm on 1 of 3 host(s):\n  n2 (rank 4): refused\n    by n1"
        );
    }

    #[test]
    fn the_same_failure_on_many_hosts_is_said_once_with_a_hostlist() {
        let failure = |i: usize, error: &str| Failure {
            host: format!("n{i:03}"),
            rank: i as i32 * 2,
            error: error.into(),
        };
        let mut failures: Vec<Failure> = (1..=9)
            .filter(|i| *i != 5)
            .map(|i| failure(i, "no sub-uids"))
            .collect();
        failures.insert(2, failure(5, "disk full"));
        failures.push(failure(70, "no sub-uids"));
        let failed = PhaseFailed {
            phase: "start the daemon".into(),
            failures,
            total_hosts: 80,
        };
        assert_eq!(
            failed.to_string(),
            "failed to start the daemon on 10 of 80 host(s):\n  \
             n[001-004,006-009,070]: no sub-uids\n  n005 (rank 10): disk full"
        );
    }
}
