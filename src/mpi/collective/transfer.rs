//! Data among the host leaders: gathers to rank 0 and broadcasts from it, of values, of byte
//! buffers and of streams too large to hold (in rounds of bounded chunks).

use std::time::Instant;

use anyhow::{Result, bail};
use mpi::request::StaticScope;
use mpi::traits::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::mpi::mpi_buffer::Lent;

use super::{Gathered, Interrupt, Leaders};

/// Chunk size of streamed broadcasts (image archives).
const CHUNK: usize = 4 << 20;

/// What rank 0 holds at once in a streamed gather, over all hosts (one chunk per host).
const GATHER_ROUND: usize = 16 << 20;

/// A streamed gather's chunk per host: no smaller than this however many hosts there are.
const GATHER_MIN_CHUNK: usize = 64 << 10;

/// A gathered record without its length prefix and padding.
pub(super) fn unpad(slot: &[u8]) -> Vec<u8> {
    let mut len = [0u8; 8];
    len.copy_from_slice(&slot[..8]);
    let len = (u64::from_le_bytes(len) as usize).min(slot.len() - 8);
    slot[8..8 + len].to_vec()
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

impl Leaders {
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
    pub(super) fn broadcast_box<T: ?Sized + BufferMut + 'static>(
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

    /// Gathers `record` (at most `width` bytes) from every leader to rank 0, which gets them in
    /// host order with their padding removed.
    pub(super) fn gather_fixed(
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
}
