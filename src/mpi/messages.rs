//! The point-to-point messages ranks send each other outside the agreements, as one enum: each
//! kind has its own MPI tag and one integer of payload, mapped here and nowhere else. Two carry
//! bytes instead: a manager's join invitation, which only its recipient may hold, and the end a
//! host's leader tells its other ranks (the frame its end socket carries). Every
//! send has a deadline: a first message to a rank waits for that rank's handshake, which a gone or
//! hung rank never makes.

use std::time::Instant;

use mpi::Tag;
use mpi::request::{Request, StaticScope};
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use crate::host::end_notice::protocol::End;
use crate::mpi::mpi_buffer::Lent;
use crate::sys::deadline::Backoff;
use crate::sys::signals::{Cause, Signals};

/// A message between ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    /// To rank 0: this rank received a teardown signal.
    StopRequest { cause: Cause },
    /// Rank 0 to every host leader: tear down now (the command's exit code so far).
    Stop { code: i32 },
    /// A host leader to rank 0: it finished its part of progress phase `phase`.
    Progress { phase: i32 },
    /// Rank 0 to every host leader: still alive.
    Heartbeat,
    /// A worker host to the one a join window after it: its join ended, the next may start.
    JoinTurn,
}

/// What a receiver asks for (messages of other kinds stay queued).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    StopRequest,
    Stop,
    Progress,
    Heartbeat,
    JoinTurn,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::StopRequest,
        Kind::Stop,
        Kind::Progress,
        Kind::Heartbeat,
        Kind::JoinTurn,
    ];

    fn tag(self) -> Tag {
        match self {
            Kind::StopRequest => 101,
            Kind::Stop => 102,
            Kind::Progress => 103,
            Kind::Heartbeat => 104,
            Kind::JoinTurn => 105,
        }
    }
}

impl Message {
    pub fn kind(self) -> Kind {
        match self {
            Message::StopRequest { .. } => Kind::StopRequest,
            Message::Stop { .. } => Kind::Stop,
            Message::Progress { .. } => Kind::Progress,
            Message::Heartbeat => Kind::Heartbeat,
            Message::JoinTurn => Kind::JoinTurn,
        }
    }

    fn payload(self) -> i32 {
        match self {
            Message::StopRequest { cause } => cause.code(),
            Message::Stop { code } => code,
            Message::Progress { phase } => phase,
            Message::Heartbeat | Message::JoinTurn => 0,
        }
    }

    fn from_parts(kind: Kind, value: i32) -> Message {
        match kind {
            Kind::StopRequest => Message::StopRequest {
                cause: Cause::from_code(value),
            },
            Kind::Stop => Message::Stop { code: value },
            Kind::Progress => Message::Progress { phase: value },
            Kind::Heartbeat => Message::Heartbeat,
            Kind::JoinTurn => Message::JoinTurn,
        }
    }

    /// Sends to `rank` of `comm`, waiting until `deadline` at most (or a signal, if `signals` is
    /// given); `Err` holds the rank when the message was not delivered by then.
    pub fn send_within(
        self,
        comm: &SimpleCommunicator,
        rank: i32,
        deadline: Instant,
        signals: Option<&Signals>,
    ) -> Result<(), Vec<i32>> {
        self.send_to_each(comm, rank..rank + 1, deadline, signals)
    }

    /// Sends to each of `ranks` of `comm`, all at once: a first message to a rank
    /// opens a connection, which completes only when that rank next looks (a waiting rank looks
    /// every 50 ms at most), and one send after the other would add those waits up. Waits until
    /// `deadline` at most (or a signal, if `signals` is given); the ranks whose message was not
    /// delivered by then (gone, or hung) are returned, their requests left inside MPI.
    pub fn send_to_each(
        self,
        comm: &SimpleCommunicator,
        ranks: std::ops::Range<i32>,
        deadline: Instant,
        signals: Option<&Signals>,
    ) -> Result<(), Vec<i32>> {
        let payload = Box::new(self.payload());
        send_each_within(comm, ranks, payload, self.kind().tag(), deadline, signals)
    }

    /// A queued message of `kind` from `from` (any rank if `None`), with its sender; never blocks.
    pub fn poll(
        comm: &SimpleCommunicator,
        from: Option<i32>,
        kind: Kind,
    ) -> Option<(i32, Message)> {
        let source = probe_queued(comm, from, kind.tag())?.source_rank();
        let (value, _) = comm
            .process_at_rank(source)
            .receive_with_tag::<i32>(kind.tag());
        Some((source, Message::from_parts(kind, value)))
    }

    /// Receives every queued message of any kind and drops it, so that none is in flight when MPI
    /// is finalized (both sides may have sent at once, or a failed phase left an invitation).
    pub fn drain(comm: &SimpleCommunicator) {
        while Kind::ALL
            .iter()
            .any(|&kind| Message::poll(comm, None, kind).is_some())
            || ManagerInvitation::poll(comm, None).is_some()
            || EndNotice::poll(comm, None).is_some()
        {}
    }
}

impl Message {
    /// Sends to `rank` of `comm` and waits until `deadline` at most for the send to complete;
    /// an unfinished send comes back, to be finished later or left to MPI.
    pub fn send_by(
        self,
        comm: &SimpleCommunicator,
        rank: i32,
        deadline: Instant,
    ) -> Result<(), InFlight> {
        let (lent, payload) = Lent::new(Box::new(self.payload()));
        let payload: &'static i32 = payload;
        let request = comm.process_at_rank(rank).immediate_send_with_tag(
            StaticScope,
            payload,
            self.kind().tag(),
        );
        let mut in_flight = InFlight {
            request: Some(request),
            lent: Some(lent),
        };
        if in_flight.finish_by(deadline) {
            Ok(())
        } else {
            Err(in_flight)
        }
    }
}

/// A send that has not completed: a first message to a rank opens a connection, which completes
/// only when that rank next drives MPI (rank 0 tearing down its host may not for a while). MPI
/// keeps the request and its buffer until then; dropped unfinished, both are left to MPI.
pub struct InFlight {
    request: Option<Request<'static, i32>>,
    lent: Option<Lent<i32>>,
}

impl InFlight {
    /// Tests the send until it completes (true) or `deadline` passes (false).
    pub fn finish_by(&mut self, deadline: Instant) -> bool {
        let mut backoff = Backoff::default();
        while let Some(request) = self.request.take() {
            if let Err(unfinished) = request.test() {
                self.request = Some(unfinished);
                let Some(left) = crate::sys::deadline::time_left(deadline) else {
                    return false;
                };
                std::thread::sleep(backoff.next().min(left));
            } else if let Some(lent) = self.lent.take() {
                // SAFETY: the only request that used the buffer completed.
                drop(unsafe { lent.reclaim() });
            }
        }
        true
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        // MPI still owns an unfinished request and its buffer (never reclaimed): both are leaked.
        if let Some(request) = self.request.take() {
            std::mem::forget(request);
        }
    }
}

/// `payload` to each of `ranks` with nonblocking sends, tested until all completed, `deadline`, or
/// a signal (if `signals` is given): the ranks not reached are returned, and their requests and
/// the payload are left to MPI for good.
fn send_each_within<B: Buffer + ?Sized + 'static>(
    comm: &SimpleCommunicator,
    ranks: std::ops::Range<i32>,
    payload: Box<B>,
    tag: Tag,
    deadline: Instant,
    signals: Option<&Signals>,
) -> Result<(), Vec<i32>> {
    let (lent, payload) = Lent::new(payload);
    let payload: &'static B = payload;
    let mut pending: Vec<(i32, Request<'static, B>)> = ranks
        .map(|rank| {
            let request =
                comm.process_at_rank(rank)
                    .immediate_send_with_tag(StaticScope, payload, tag);
            (rank, request)
        })
        .collect();
    let mut backoff = Backoff::default();
    loop {
        pending = pending
            .into_iter()
            .filter_map(|(rank, request)| request.test().err().map(|r| (rank, r)))
            .collect();
        if pending.is_empty() {
            // SAFETY: every request that used the payload completed.
            drop(unsafe { lent.reclaim() });
            return Ok(());
        }
        if Instant::now() >= deadline || signals.is_some_and(|s| s.received().is_some()) {
            let undelivered = pending.iter().map(|(rank, _)| *rank).collect();
            // MPI still owns these requests and the payload: both are leaked.
            for (_, request) in pending {
                std::mem::forget(request);
            }
            return Err(undelivered);
        }
        match signals {
            Some(signals) => signals.sleep(backoff.next()),
            None => std::thread::sleep(backoff.next()),
        }
    }
}

/// Rank 0 to one host that becomes a manager: its join invitation (manager address and token),
/// sent to that host alone rather than broadcast, so that no worker ever holds the manager token.
pub struct ManagerInvitation;

impl ManagerInvitation {
    const TAG: Tag = 107;

    /// Sends `bytes` to each of `ranks` of `comm`, as `Message::send_to_each` does.
    pub fn send_to_each(
        comm: &SimpleCommunicator,
        ranks: std::ops::Range<i32>,
        bytes: &[u8],
        deadline: Instant,
        signals: Option<&Signals>,
    ) -> Result<(), Vec<i32>> {
        let payload: Box<[u8]> = bytes.into();
        send_each_within(comm, ranks, payload, Self::TAG, deadline, signals)
    }

    /// A queued invitation from `from` (any rank if `None`); never blocks.
    pub fn poll(comm: &SimpleCommunicator, from: Option<i32>) -> Option<Vec<u8>> {
        receive_queued(comm, from, Self::TAG)
    }
}

/// A host's leader to its host's other ranks, when it could not give them its end socket: how
/// the job ended, as `End::frame` (the socket's bytes).
pub struct EndNotice;

impl EndNotice {
    const TAG: Tag = 106;

    /// Sends `end` to each of `ranks` of `comm`, as `Message::send_to_each` does.
    pub fn send_to_each(
        comm: &SimpleCommunicator,
        ranks: std::ops::Range<i32>,
        end: End,
        deadline: Instant,
    ) -> Result<(), Vec<i32>> {
        let payload: Box<[u8]> = end.frame().into();
        send_each_within(comm, ranks, payload, Self::TAG, deadline, None)
    }

    /// A queued end from `from` (any rank if `None`), or why it is not one; never blocks.
    pub fn poll(comm: &SimpleCommunicator, from: Option<i32>) -> Option<anyhow::Result<End>> {
        receive_queued(comm, from, Self::TAG).map(|bytes| End::from_frame(&bytes))
    }
}

/// A queued message with `tag` from `from` (any rank if `None`), not yet received; never blocks.
fn probe_queued(
    comm: &SimpleCommunicator,
    from: Option<i32>,
    tag: Tag,
) -> Option<mpi::point_to_point::Status> {
    match from {
        Some(rank) => comm.process_at_rank(rank).immediate_probe_with_tag(tag),
        None => comm.any_process().immediate_probe_with_tag(tag),
    }
}

/// The bytes of a queued message with `tag` from `from` (any rank if `None`); never blocks.
fn receive_queued(comm: &SimpleCommunicator, from: Option<i32>, tag: Tag) -> Option<Vec<u8>> {
    let source = probe_queued(comm, from, tag)?.source_rank();
    let (bytes, _) = comm.process_at_rank(source).receive_vec_with_tag::<u8>(tag);
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_survives_its_wire_form() {
        let all = [
            Message::StopRequest {
                cause: Cause::Signal(15),
            },
            Message::StopRequest {
                cause: Cause::GuardLost,
            },
            Message::StopRequest {
                cause: Cause::Intruder,
            },
            Message::Stop { code: 3 },
            Message::Progress { phase: 2 },
            Message::Heartbeat,
            Message::JoinTurn,
        ];
        for m in all {
            assert_eq!(Message::from_parts(m.kind(), m.payload()), m);
        }
    }

    #[test]
    fn tags_are_distinct() {
        let mut tags: Vec<Tag> = Kind::ALL.iter().map(|k| k.tag()).collect();
        tags.extend([ManagerInvitation::TAG, EndNotice::TAG]);
        tags.sort_unstable();
        tags.dedup();
        assert_eq!(tags.len(), Kind::ALL.len() + 2);
    }

    /// The send deadline, against the real MPI. A peer that takes no data is this process
    /// itself (an MPI singleton) sent a message too large for MPI to buffer: the send waits for
    /// a matching receive, as one to a gone or hung rank waits for its handshake. The only test
    /// here that initializes MPI (once per process).
    #[test]
    fn a_send_no_rank_takes_gives_up_at_its_deadline_naming_the_rank() {
        // Without its deadline the send would wait forever: fail instead of hanging the suite.
        // The watchdog is disarmed when the test ends (its sender dropped), so it can never end
        // other tests that share this process.
        let (_armed, disarmed) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let limit = std::time::Duration::from_secs(60);
            if disarmed.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                eprintln!("the send to a rank that takes nothing did not give up within 60 s");
                std::process::abort();
            }
        });
        let universe = mpi::initialize().expect("MPI initializes as a singleton");
        let world = universe.world();
        let untaken = vec![7u8; 8 << 20];
        let wait = std::time::Duration::from_millis(300);
        let start = Instant::now();
        let sent = ManagerInvitation::send_to_each(&world, 0..1, &untaken, start + wait, None);
        let took = start.elapsed();
        assert_eq!(sent, Err(vec![0]), "the rank that took nothing");
        assert!(took >= wait, "gave up after {took:?}, before its deadline");
        assert!(took < wait * 10, "gave up only after {took:?}");

        // A message MPI can buffer is sent at once; then take both, so that MPI ends cleanly.
        let small = [1u8; 16];
        let sent =
            ManagerInvitation::send_to_each(&world, 0..1, &small, Instant::now() + wait, None);
        assert_eq!(sent, Ok(()));
        let first = ManagerInvitation::poll(&world, Some(0)).expect("the untaken message");
        assert_eq!(first.len(), untaken.len());
        let second = ManagerInvitation::poll(&world, Some(0)).expect("the small message");
        assert_eq!(second, small);
    }
}
