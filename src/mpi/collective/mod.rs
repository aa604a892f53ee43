//! Agreements among the host leaders, with deadlines. Only one rank per host takes part: a
//! phase's verdict is one all-reduce of a small number, failure details travel to rank 0 only
//! when there are failures, data every host needs is broadcast, data only rank 0 needs is
//! gathered to it. No collective waits past its deadline or (unless asked) a teardown signal;
//! one that was abandoned leaves MPI unusable, and every later one is refused.

use std::fmt;
use std::time::Instant;

use anyhow::{Result, bail};
use mpi::collective::SystemOperation;
use mpi::request::{Request, StaticScope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::mpi::messages::{Kind, ManagerInvitation, Message};
use crate::mpi::mpi_buffer::Lent;
use crate::mpi::progress::Progress;
use crate::sys::signals::{self, Signals};

/// Chunk size of streamed broadcasts (image archives).
const CHUNK: usize = 4 << 20;
/// A failure's message is cut to this many bytes in an agreement.
const MAX_ERROR: usize = 4096;
/// What rank 0 holds at once in a streamed gather, over all hosts (one chunk per host).
const GATHER_ROUND: usize = 16 << 20;
/// A streamed gather's chunk per host: no smaller than this however many hosts there are.
const GATHER_MIN_CHUNK: usize = 64 << 10;

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
            return write!(f, "failed to {} on another host", self.phase);
        }
        write!(
            f,
            "failed to {} on {} of {} host(s):",
            self.phase,
            self.failures.len(),
            self.total_hosts
        )?;
        for o in &self.failures {
            write!(
                f,
                "\n  {} (rank {}): {}",
                o.host,
                o.rank,
                o.error.replace('\n', "\n    ")
            )?;
        }
        Ok(())
    }
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

    /// Every leader's value, in host order, at rank 0 (`None` elsewhere).
    pub fn gather_to_root<T: Serialize + DeserializeOwned>(
        &mut self,
        value: &T,
        what: &str,
        deadline: Instant,
        interrupt: Interrupt,
    ) -> Result<Option<Vec<T>>> {
        let record = serde_json::to_vec(value)?;
        let width = self.all_reduce_max(record.len() as u64, what, deadline, interrupt)?;
        let Some(records) = self.gather_fixed(record, width as usize, what, deadline, interrupt)?
        else {
            return Ok(None);
        };
        let values = records
            .iter()
            .map(|r| serde_json::from_slice(r))
            .collect::<Result<Vec<T>, _>>()?;
        Ok(Some(values))
    }

    /// Rank 0's value (`Some` there, `None` elsewhere), on every leader.
    pub fn broadcast_value<T: Serialize + DeserializeOwned>(
        &mut self,
        value: Option<&T>,
        what: &str,
        deadline: Instant,
    ) -> Result<T> {
        let bytes = value.map(serde_json::to_vec).transpose()?;
        let bytes = self.broadcast(bytes, what, deadline)?;
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// Rank 0's bytes, on every leader.
    pub fn broadcast(
        &mut self,
        data: Option<Vec<u8>>,
        what: &str,
        deadline: Instant,
    ) -> Result<Vec<u8>> {
        let len = Box::new(data.as_ref().map_or(0, |d| d.len() as u64));
        let len = *self.broadcast_box(len, what, deadline)?;
        let buf = data
            .unwrap_or_else(|| vec![0; len as usize])
            .into_boxed_slice();
        Ok(self.broadcast_box(buf, what, deadline)?.into_vec())
    }

    /// Streams rank 0's `source` to every leader's `sink` in fixed-size chunks: memory stays
    /// bounded whatever the size. Returns the number of bytes streamed.
    pub fn broadcast_stream(
        &mut self,
        mut source: Option<&mut dyn std::io::Read>,
        mut sink: impl FnMut(&[u8]),
        what: &str,
        deadline: Instant,
    ) -> Result<u64> {
        let mut buf = vec![0u8; CHUNK + 8].into_boxed_slice();
        let mut total = 0u64;
        loop {
            if let Some(src) = source.as_mut() {
                let header = match read_full(*src, &mut buf[8..]) {
                    Ok(n) => n as u64,
                    Err(_) => u64::MAX,
                };
                buf[..8].copy_from_slice(&header.to_le_bytes());
            }
            buf = self.broadcast_box(buf, what, deadline)?;
            let mut header = [0u8; 8];
            header.copy_from_slice(&buf[..8]);
            match u64::from_le_bytes(header) {
                0 => return Ok(total),
                u64::MAX => bail!("rank 0 failed to read the data to {what}"),
                n => {
                    let n = (n as usize).min(CHUNK);
                    sink(&buf[8..8 + n]);
                    total += n as u64;
                }
            }
        }
    }

    /// Streams every leader's `source` to rank 0, which hands each piece to `sink` with the
    /// sender's host index, in order per host. Each round every leader sends at most one chunk
    /// (rank 0 holds at most `GATHER_ROUND` bytes at once, whatever the number of hosts); a
    /// leader whose `stop` says so ends the stream everywhere after the rounds already done.
    /// The waits never end on a first signal (this runs during teardown), only at `deadline`.
    pub fn gather_stream(
        &mut self,
        mut source: Option<&mut dyn std::io::Read>,
        mut sink: impl FnMut(usize, &[u8]),
        stop: impl Fn() -> bool,
        what: &str,
        deadline: Instant,
    ) -> Result<Gathered> {
        let chunk = (GATHER_ROUND / self.hosts().max(1)).clamp(GATHER_MIN_CHUNK, CHUNK);
        let mut buf = vec![0u8; chunk];
        loop {
            let len = match source.as_mut().map(|s| read_full(*s, &mut buf)) {
                Some(Ok(n)) => n,
                Some(Err(e)) => {
                    tracing::warn!("{}: failed to read what to send to {what}: {e}", self.host);
                    source = None;
                    0
                }
                None => 0,
            };
            let vote = if stop() { u64::MAX } else { len as u64 };
            let width = self.all_reduce_max(vote, what, deadline, Interrupt::Never)?;
            match width {
                u64::MAX => return Ok(Gathered::Stopped),
                0 => return Ok(Gathered::Complete),
                _ => {}
            }
            let record = buf[..len].to_vec();
            let records =
                self.gather_fixed(record, width as usize, what, deadline, Interrupt::Never)?;
            for (host, piece) in records.iter().flatten().enumerate() {
                if !piece.is_empty() {
                    sink(host, piece);
                }
            }
        }
    }

    /// Broadcasts the contents of `buf` from rank 0 into every leader's `buf`, and gives it back.
    fn broadcast_box<T: ?Sized + BufferMut + 'static>(
        &mut self,
        buf: Box<T>,
        what: &str,
        deadline: Instant,
    ) -> Result<Box<T>> {
        self.ready(what)?;
        let (lent, view) = Lent::new(buf);
        let request = self
            .comm
            .process_at_rank(0)
            .immediate_broadcast_into(StaticScope, view);
        self.wait(request, what, deadline, Interrupt::BySignal)?;
        // SAFETY: the request completed; `view` went into it and is not used again.
        Ok(unsafe { lent.reclaim() })
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

    /// Gathers `record` (at most `width` bytes) from every leader to rank 0, which gets them in
    /// host order with their padding removed.
    fn gather_fixed(
        &mut self,
        mut record: Vec<u8>,
        width: usize,
        what: &str,
        deadline: Instant,
        interrupt: Interrupt,
    ) -> Result<Option<Vec<Vec<u8>>>> {
        self.ready(what)?;
        let len = record.len();
        // The length goes first: records may contain any bytes.
        record.splice(0..0, (len as u64).to_le_bytes());
        record.resize(width + 8, 0);
        let (send, send_view) = Lent::new(record.into_boxed_slice());
        let root = self.comm.process_at_rank(0);
        if !self.is_root() {
            let request = root.immediate_gather_into(StaticScope, &*send_view);
            self.wait(request, what, deadline, interrupt)?;
            // SAFETY: the request completed; the view went into it and is not used again.
            drop(unsafe { send.reclaim() });
            return Ok(None);
        }
        let all = vec![0u8; (width + 8) * self.hosts()].into_boxed_slice();
        let (recv, recv_view) = Lent::new(all);
        let request = root.immediate_gather_into_root(StaticScope, &*send_view, recv_view);
        self.wait(request, what, deadline, interrupt)?;
        // SAFETY: as above.
        let (_, all) = unsafe { (send.reclaim(), recv.reclaim()) };
        Ok(Some(all.chunks(width + 8).map(unpad).collect()))
    }

    fn ready(&self, what: &str) -> Result<()> {
        match self.state {
            State::Ready => Ok(()),
            State::Abandoned(_) => {
                bail!("cannot {what}: an earlier collective was abandoned, MPI can only be aborted")
            }
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
        loop {
            match request.test() {
                Ok(_) => return Ok(()),
                Err(pending) => request = pending,
            }
            let signal = self
                .signals
                .received()
                .filter(|_| interrupt == Interrupt::BySignal);
            let abandon = if let Some(sig) = signal {
                Some(format!(
                    "interrupted by {} while waiting for all hosts to {what}",
                    signals::name(sig)
                ))
            } else if Instant::now() >= deadline {
                Some(format!(
                    "timed out waiting for all hosts to {what}: at least one host did not arrive \
                     before the deadline (a host is hung or died; raise --timeout if it is just slow)"
                ))
            } else {
                None
            };
            if let Some(reason) = abandon {
                // MPI still owns the request and its buffers: both are leaked.
                std::mem::forget(request);
                self.state = State::Abandoned(reason.clone());
                bail!(reason);
            }
            if self.is_root() {
                self.progress.collect(&self.comm);
            }
            self.signals.sleep(backoff.next());
        }
    }

    /// Rank 0: sends a manager's join invitation to the host of index `host` alone.
    pub fn send_manager_invitation(&self, host: usize, bytes: &[u8]) {
        ManagerInvitation::send(&self.comm, host as i32, bytes);
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
                bail!(
                    "interrupted by {} while waiting for the manager join invitation from rank 0",
                    signals::name(sig)
                );
            }
            if Instant::now() >= deadline {
                bail!("timed out waiting for the manager join invitation from rank 0");
            }
            self.signals.sleep(backoff.next());
        }
    }

    /// This worker host's join ended: the host `index` (a join window later) may start its own.
    pub fn pass_join_turn(&self, index: usize) {
        Message::JoinTurn.send(&self.comm, index as i32);
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
                bail!(
                    "interrupted by {} while waiting for {name} to finish joining the swarm \
                     (joins go a window at a time)",
                    signals::name(sig)
                );
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
        self.progress.done(&self.comm, is_root);
    }

    /// Rank 0: a stop requested by any rank of the job (the signal it received).
    pub fn poll_stop_request(&self) -> Option<i32> {
        match Message::poll(&self.world, None, Kind::StopRequest)? {
            (_, Message::StopRequest { signal }) => Some(signal),
            _ => None,
        }
    }

    /// This rank asks rank 0 to stop the job (it received `signal`).
    pub fn request_stop(&self, signal: i32) {
        Message::StopRequest { signal }.send(&self.world, 0);
    }

    /// Rank 0 tells every other leader to tear down.
    pub fn announce_stop(&self, code: i32) {
        Message::Stop { code }.send_to_each(&self.comm, 1);
    }

    /// Leaders other than rank 0: whether rank 0 said stop.
    pub fn poll_stop(&self) -> bool {
        Message::poll(&self.comm, Some(0), Kind::Stop).is_some()
    }

    /// Rank 0: tells every other leader it is alive.
    pub fn send_heartbeats(&self) {
        Message::Heartbeat.send_to_each(&self.comm, 1);
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

/// A local result as an agreement's status and the value to keep if every host agrees.
pub fn split<T>(result: Result<T>) -> (Result<()>, Option<T>) {
    match result {
        Ok(v) => (Ok(()), Some(v)),
        Err(e) => (Err(e), None),
    }
}

/// A gathered record without its length prefix and padding.
fn unpad(slot: &[u8]) -> Vec<u8> {
    let mut len = [0u8; 8];
    len.copy_from_slice(&slot[..8]);
    let len = (u64::from_le_bytes(len) as usize).min(slot.len() - 8);
    slot[8..8 + len].to_vec()
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

/// Reads until `buf` is full or the source ends.
fn read_full(source: &mut dyn std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
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
}
