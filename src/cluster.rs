//! MPI collectives with deadlines: every rank learns every host's outcome of a phase, and no
//! collective waits past the bring-up deadline or a teardown signal.

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use mpi::request::{Request, StaticScope};
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use serde::{Deserialize, Serialize};

use crate::signals::{self, Signals};

/// Size of one rank's record in an agreement: enough for a host name and a readable error.
const RECORD: usize = 8192;
/// Chunk size of streamed broadcasts (image archives).
const CHUNK: usize = 4 << 20;
const TAG_STOP_REQUEST: i32 = 101;
const TAG_STOP: i32 = 102;
const TAG_PROGRESS: i32 = 103;
const TAG_HEARTBEAT: i32 = 104;

/// One rank's outcome of a phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Outcome {
    pub rank: i32,
    pub host: String,
    pub error: Option<String>,
    /// Phase-specific data, e.g. seconds taken.
    #[serde(default)]
    pub value: f64,
    /// Anything else a phase reports (e.g. the host's timings at teardown).
    #[serde(default)]
    pub extra: serde_json::Value,
}

/// A phase that failed on some hosts, as every rank sees it.
#[derive(Debug)]
pub struct PhaseFailed {
    pub phase: String,
    pub failures: Vec<Outcome>,
    pub total_hosts: usize,
}

impl fmt::Display for PhaseFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "failed to {} on {} of {} host(s):",
            self.phase,
            self.failures.len(),
            self.total_hosts
        )?;
        for o in &self.failures {
            let msg = o.error.as_deref().unwrap_or("");
            write!(
                f,
                "\n  {} (rank {}): {}",
                o.host,
                o.rank,
                msg.replace('\n', "\n    ")
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for PhaseFailed {}

/// The job's MPI world as mpiswarm uses it.
pub struct Cluster {
    // Field order matters: the communicators must be freed before MPI is finalized.
    world: SimpleCommunicator,
    pub rank: i32,
    pub size: i32,
    /// Lowest rank on this host: the one that owns the host's daemon.
    pub is_leader: bool,
    pub host: String,
    /// Number of hosts (host leaders): set by `up` once they are known (0 before).
    pub hosts: usize,
    /// Seconds from this process's start until MPI was initialized.
    pub started_in: f64,
    signals: Signals,
    /// Set when a collective was abandoned: MPI can then only be aborted, not finalized.
    poisoned: bool,
    /// Rank 0's live progress display: (phase id, label, hosts done, hosts in all).
    progress: Option<(i32, String, usize, usize)>,
    /// Phase ids for progress messages, so that a late message is never counted in the wrong phase.
    phase_id: i32,
    /// The reusable buffer of `broadcast_stream`, allocated on first use.
    chunk: Option<*mut u8>,
    universe: Option<mpi::environment::Universe>,
}

impl Cluster {
    pub fn init(host: String, signals: Signals) -> Result<Self> {
        let universe = mpi::initialize().ok_or_else(|| anyhow!("MPI was already initialized"))?;
        let world = universe.world();
        // Ranks sharing memory share a host: one leader per host owns its daemon.
        let node = world.split_shared(0);
        let is_leader = node.rank() == 0;
        Ok(Cluster {
            rank: world.rank(),
            size: world.size(),
            world,
            is_leader,
            host,
            started_in: crate::report::since_process_start(),
            hosts: 0,
            signals,
            poisoned: false,
            chunk: None,
            progress: None,
            phase_id: 0,
            universe: Some(universe),
        })
    }

    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Polls a request until it completes, the deadline passes, or a teardown signal arrives.
    fn wait<D: ?Sized>(
        &mut self,
        request: Request<'static, D>,
        what: &str,
        deadline: Instant,
    ) -> Result<()> {
        self.wait_for(request, what, deadline, true)
    }

    fn wait_for<D: ?Sized>(
        &mut self,
        request: Request<'static, D>,
        what: &str,
        deadline: Instant,
        interruptible: bool,
    ) -> Result<()> {
        let mut request = request;
        let mut pause = Duration::from_micros(50);
        loop {
            match request.test() {
                Ok(_) => return Ok(()),
                Err(pending) => request = pending,
            }
            let signal = self.signals.received().filter(|_| interruptible);
            let abandon = if let Some(sig) = signal {
                Some(format!(
                    "interrupted by {} while waiting for all ranks to {what}",
                    signals::name(sig)
                ))
            } else if Instant::now() >= deadline {
                Some(format!(
                    "timed out waiting for all ranks to {what}: at least one rank did not arrive \
                     before the deadline (a host is hung or died; raise --timeout if it is just slow)"
                ))
            } else {
                None
            };
            if let Some(reason) = abandon {
                // MPI still owns the buffers of an abandoned request; they were leaked for this.
                std::mem::forget(request);
                self.poisoned = true;
                bail!(reason);
            }
            self.collect_progress();
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    /// Every rank contributes its outcome of `phase`; every rank gets all of them, and an error
    /// naming every failing host if any failed.
    pub fn agree(
        &mut self,
        phase: &str,
        local: Result<f64>,
        deadline: Instant,
    ) -> Result<Vec<Outcome>> {
        self.agree_with(phase, local, serde_json::Value::Null, deadline, true)
    }

    /// As `agree`, with phase data from every rank (e.g. each host's address).
    pub fn agree_with_extra(
        &mut self,
        phase: &str,
        local: Result<f64>,
        extra: serde_json::Value,
        deadline: Instant,
    ) -> Result<Vec<Outcome>> {
        self.agree_with(phase, local, extra, deadline, true)
    }

    /// As `agree`, but a teardown signal does not interrupt it: used for the teardown itself.
    pub fn agree_uninterruptible(
        &mut self,
        phase: &str,
        local: Result<f64>,
        extra: serde_json::Value,
        deadline: Instant,
    ) -> Result<Vec<Outcome>> {
        self.agree_with(phase, local, extra, deadline, false)
    }

    fn agree_with(
        &mut self,
        phase: &str,
        local: Result<f64>,
        extra: serde_json::Value,
        deadline: Instant,
        interruptible: bool,
    ) -> Result<Vec<Outcome>> {
        let outcome = Outcome {
            rank: self.rank,
            host: self.host.clone(),
            error: local.as_ref().err().map(|e| format!("{e:#}")),
            value: *local.as_ref().unwrap_or(&0.0),
            extra,
        };
        let all = self.gather_records(&outcome, phase, deadline, interruptible)?;
        let failures: Vec<Outcome> = all.iter().filter(|o| o.error.is_some()).cloned().collect();
        if failures.is_empty() {
            Ok(all)
        } else {
            let mut hosts: Vec<&str> = all.iter().map(|o| o.host.as_str()).collect();
            hosts.sort_unstable();
            hosts.dedup();
            Err(PhaseFailed {
                phase: phase.to_owned(),
                failures,
                total_hosts: hosts.len(),
            }
            .into())
        }
    }

    /// Gathers one serializable record from every rank, in rank order.
    pub fn all_gather<T: Serialize + for<'de> Deserialize<'de>>(
        &mut self,
        value: &T,
        what: &str,
        deadline: Instant,
    ) -> Result<Vec<T>> {
        self.gather_records(value, what, deadline, true)
    }

    fn gather_records<T: Serialize + for<'de> Deserialize<'de>>(
        &mut self,
        value: &T,
        what: &str,
        deadline: Instant,
        interruptible: bool,
    ) -> Result<Vec<T>> {
        let mut record = serde_json::to_vec(value)?;
        if record.len() > RECORD {
            bail!(
                "internal: a record for {what} is {} bytes, more than {RECORD}",
                record.len()
            );
        }
        record.resize(RECORD, 0);
        let send: &'static [u8] = Box::leak(record.into_boxed_slice());
        let recv: &'static mut [u8] =
            Box::leak(vec![0u8; RECORD * self.size as usize].into_boxed_slice());
        let recv_ptr = recv.as_ptr();
        let request = self
            .world
            .immediate_all_gather_into(StaticScope, send, recv);
        self.wait_for(request, what, deadline, interruptible)?;
        // SAFETY: the request completed, so MPI no longer writes the buffer; it was leaked and lives forever.
        let received = unsafe { std::slice::from_raw_parts(recv_ptr, RECORD * self.size as usize) };
        received
            .chunks(RECORD)
            .map(|chunk| {
                let end = chunk.iter().position(|&b| b == 0).unwrap_or(RECORD);
                serde_json::from_slice(&chunk[..end]).map_err(Into::into)
            })
            .collect()
    }

    /// Rank 0's bytes, on every rank.
    pub fn broadcast(
        &mut self,
        data: Option<Vec<u8>>,
        what: &str,
        deadline: Instant,
    ) -> Result<Vec<u8>> {
        let len: &'static mut u64 =
            Box::leak(Box::new(data.as_ref().map_or(0, |d| d.len() as u64)));
        let len_ptr: *const u64 = len;
        let request = self
            .world
            .process_at_rank(0)
            .immediate_broadcast_into(StaticScope, len);
        self.wait(request, what, deadline)?;
        // SAFETY: the broadcast completed; the leaked value is no longer written by MPI.
        let len = unsafe { *len_ptr } as usize;
        let buf: &'static mut [u8] =
            Box::leak(data.unwrap_or_else(|| vec![0; len]).into_boxed_slice());
        let buf_ptr = buf.as_ptr();
        let request = self
            .world
            .process_at_rank(0)
            .immediate_broadcast_into(StaticScope, buf);
        self.wait(request, what, deadline)?;
        // SAFETY: as above.
        Ok(unsafe { std::slice::from_raw_parts(buf_ptr, len) }.to_vec())
    }

    /// Streams rank 0's `source` to every rank's `sink` in fixed-size chunks: memory stays
    /// bounded whatever the size. Returns the number of bytes streamed.
    pub fn broadcast_stream(
        &mut self,
        mut source: Option<&mut dyn std::io::Read>,
        mut sink: impl FnMut(&[u8]),
        what: &str,
        deadline: Instant,
    ) -> Result<u64> {
        let buf_ptr = self.chunk_buffer();
        let mut total = 0u64;
        loop {
            // SAFETY: the buffer was leaked for the life of the process and no MPI request is
            // using it now (each broadcast below completes before the next starts).
            let buf: &'static mut [u8] =
                unsafe { std::slice::from_raw_parts_mut(buf_ptr, CHUNK + 8) };
            if let Some(src) = source.as_mut() {
                let header = match read_full(*src, &mut buf[8..]) {
                    Ok(n) => n as u64,
                    Err(_) => u64::MAX,
                };
                buf[..8].copy_from_slice(&header.to_le_bytes());
            }
            let request = self
                .world
                .process_at_rank(0)
                .immediate_broadcast_into(StaticScope, buf);
            self.wait(request, what, deadline)?;
            // SAFETY: as above; the broadcast has completed.
            let buf: &[u8] = unsafe { std::slice::from_raw_parts(buf_ptr, CHUNK + 8) };
            let header = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
            match header {
                0 => return Ok(total),
                u64::MAX => bail!("rank 0 failed to read the data to {what}"),
                n => {
                    let n = n as usize;
                    sink(&buf[8..8 + n]);
                    total += n as u64;
                }
            }
        }
    }

    fn chunk_buffer(&mut self) -> *mut u8 {
        *self
            .chunk
            .get_or_insert_with(|| Box::leak(vec![0u8; CHUNK + 8].into_boxed_slice()).as_mut_ptr())
    }

    /// A rank other than 0 asks rank 0 to stop the whole job (it received a signal).
    pub fn request_stop(&self, sig: i32) {
        if !self.is_root() {
            self.world
                .process_at_rank(0)
                .send_with_tag(&sig, TAG_STOP_REQUEST);
        }
    }

    /// Rank 0 tells every other rank to tear down.
    pub fn announce_stop(&self, code: i32) {
        for rank in 1..self.size {
            self.world
                .process_at_rank(rank)
                .send_with_tag(&code, TAG_STOP);
        }
    }

    /// A stop message that arrived, if any: a stop request at rank 0, a stop elsewhere.
    pub fn poll_stop(&self) -> Option<i32> {
        let tag = if self.is_root() {
            TAG_STOP_REQUEST
        } else {
            TAG_STOP
        };
        let status = self.world.any_process().immediate_probe_with_tag(tag)?;
        let (value, _) = self
            .world
            .process_at_rank(status.source_rank())
            .receive_with_tag::<i32>(tag);
        Some(value)
    }

    /// Rank 0 starts counting hosts that finish the next phase (shown live on a terminal).
    pub fn begin_progress(&mut self, label: &str, total: usize) {
        self.phase_id += 1;
        if self.is_root() && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            self.progress = Some((self.phase_id, label.to_owned(), 0, total));
            self.render_progress();
        }
    }

    /// A host leader finished its part of the current phase.
    pub fn progress_done(&mut self) {
        if self.is_root() {
            if let Some(p) = self.progress.as_mut() {
                p.2 += 1;
            }
            self.render_progress();
        } else {
            self.world
                .process_at_rank(0)
                .send_with_tag(&self.phase_id, TAG_PROGRESS);
        }
    }

    /// Ends the live line of the phase.
    pub fn end_progress(&mut self) {
        if self.progress.take().is_some() {
            eprint!("\r\x1b[2K");
        }
    }

    fn collect_progress(&mut self) {
        if !self.is_root() {
            return;
        }
        while let Some(status) = self
            .world
            .any_process()
            .immediate_probe_with_tag(TAG_PROGRESS)
        {
            let (phase, _) = self
                .world
                .process_at_rank(status.source_rank())
                .receive_with_tag::<i32>(TAG_PROGRESS);
            if let Some(p) = self.progress.as_mut()
                && p.0 == phase
            {
                p.2 += 1;
                self.render_progress();
            }
        }
    }

    fn render_progress(&self) {
        if let Some((_, label, done, total)) = &self.progress {
            eprint!("\r\x1b[2Kmpiswarm: {label} {done}/{total}");
        }
    }

    /// Rank 0: tells every other rank it is alive.
    pub fn send_heartbeats(&self) {
        for rank in 1..self.size {
            self.world
                .process_at_rank(rank)
                .send_with_tag(&0i32, TAG_HEARTBEAT);
        }
    }

    /// Other ranks: true if rank 0's heartbeat arrived since the last call.
    pub fn poll_heartbeats(&self) -> bool {
        let mut heard = false;
        while let Some(status) = self
            .world
            .process_at_rank(0)
            .immediate_probe_with_tag(TAG_HEARTBEAT)
        {
            let _ = self
                .world
                .process_at_rank(status.source_rank())
                .receive_with_tag::<i32>(TAG_HEARTBEAT);
            heard = true;
        }
        heard
    }

    /// Receives stop messages nobody waited for (both sides stopped at once), so that none is
    /// left in flight at finalize. Called after a collective that follows every send.
    pub fn drain_stops(&self) {
        let tags = [TAG_STOP_REQUEST, TAG_STOP, TAG_PROGRESS, TAG_HEARTBEAT];
        while let Some(status) = tags
            .iter()
            .find_map(|&tag| self.world.any_process().immediate_probe_with_tag(tag))
        {
            let _ = self
                .world
                .process_at_rank(status.source_rank())
                .receive_with_tag::<i32>(status.tag());
        }
    }

    /// Ends MPI: finalize when every collective completed, abort when one was abandoned (a
    /// finalize could then wait forever for a rank that is gone).
    pub fn finish(mut self, code: i32) {
        if self.poisoned && self.size > 1 {
            self.world.abort(if code == 0 { 1 } else { code });
        }
        drop(self.universe.take());
    }
}

/// This rank as the launcher set it (Open MPI, MPICH's Hydra, PMIx, Slurm), before MPI starts.
pub fn launcher_rank() -> Option<u32> {
    first_number_in(&[
        "OMPI_COMM_WORLD_RANK",
        "PMI_RANK",
        "PMIX_RANK",
        "SLURM_PROCID",
    ])
}

/// This process's rank among the job's ranks on its node, as the launcher announces it before
/// MPI starts (Open MPI, MPICH's Hydra, Slurm): `None` when no launcher says.
pub fn launcher_local_rank() -> Option<u32> {
    first_number_in(&[
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ])
}

/// The first of these environment variables that is set to a number.
fn first_number_in(vars: &[&str]) -> Option<u32> {
    vars.iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
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
