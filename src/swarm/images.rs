//! Images without a registry: rank 0 reads each `docker save` archive once and broadcasts it
//! over MPI in chunks; every host streams it into its own daemon as it arrives.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};

use crate::host::engine::{Engine, Response};
use crate::mpi::collective::Leaders;
use crate::swarm::api::LoadMessage;

/// Chunks in flight between MPI and the daemon on each host (bounds memory).
const QUEUE: usize = 2;

/// Loads every archive on every host; returns what the daemons reported loading (at rank 0).
pub fn distribute(
    leaders: &mut Leaders,
    archives: &[PathBuf],
    engine: &Engine,
    deadline: Instant,
) -> Result<Vec<String>> {
    let mut loaded = Vec::new();
    for archive in archives {
        loaded.extend(load_everywhere(leaders, archive, engine, deadline)?);
    }
    Ok(loaded)
}

/// One archive: rank 0 opens it, every host streams it into its daemon as it arrives.
fn load_everywhere(
    leaders: &mut Leaders,
    archive: &Path,
    engine: &Engine,
    deadline: Instant,
) -> Result<Vec<String>> {
    let shown = archive.display().to_string();
    let opened = if leaders.is_root() {
        check_archive(archive).and_then(|()| {
            File::open(archive)
                .map(Some)
                .with_context(|| format!("failed to open the image archive {shown} (--load)"))
        })
    } else {
        Ok(None)
    };
    let (status, file) = crate::mpi::collective::split(opened);
    leaders.agree(&format!("read the image archive {shown}"), status, deadline)?;
    let mut file = file.flatten();
    let hosts = leaders.hosts();
    leaders.begin_progress(&format!("hosts that loaded {shown}"), hosts);
    let mut loader = Loader::start(engine.clone(), deadline);
    let source = file.as_mut().map(|f| f as &mut dyn Read);
    let streamed = leaders.broadcast_stream(
        source,
        |chunk| loader.feed(chunk),
        &format!("receive the image archive {shown}"),
        deadline,
    );
    let names = streamed.and_then(|_| loader.finish());
    if names.is_ok() {
        leaders.progress_done();
    }
    let (local, names) = crate::mpi::collective::split(names);
    let agreed = leaders.agree(&format!("load the image archive {shown}"), local, deadline);
    leaders.progress.end();
    agreed.map(|()| names.unwrap_or_default())
}

/// Streams one archive into one daemon from a background thread.
struct Loader {
    chunks: Option<SyncSender<Vec<u8>>>,
    thread: JoinHandle<Result<Vec<String>>>,
}

impl Loader {
    fn start(engine: Engine, deadline: Instant) -> Self {
        let (tx, rx) = sync_channel(QUEUE);
        let thread = std::thread::spawn(move || {
            let mut reader = ChunkReader {
                rx,
                current: Vec::new(),
                pos: 0,
            };
            let response = engine.post_stream(
                "/images/load?quiet=1",
                "application/x-tar",
                &mut reader,
                crate::sys::deadline::Deadline::phase(deadline),
            )?;
            parse_load_response(&response)
        });
        Loader {
            chunks: Some(tx),
            thread,
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        // A daemon that gave up stops reading: drop the rest, the error comes from `finish`.
        if let Some(tx) = &self.chunks
            && tx.send(chunk.to_vec()).is_err()
        {
            self.chunks = None;
        }
    }

    fn finish(mut self) -> Result<Vec<String>> {
        self.chunks = None;
        self.thread
            .join()
            .map_err(|_| anyhow!("the image loader thread crashed: a bug in mpiswarm; please report it with this run's output (rerun with -v for more)"))?
    }
}

struct ChunkReader {
    rx: Receiver<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.current.len() {
            match self.rx.recv() {
                Ok(next) => {
                    self.current = next;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The daemon answers a load with a stream of JSON messages; any error among them fails it.
pub fn parse_load_response(response: &Response) -> Result<Vec<String>> {
    let text = String::from_utf8_lossy(&response.body);
    if !response.is_success() {
        bail!(
            "the daemon refused the archive ({}): {}",
            response.status,
            response.message()
        );
    }
    let mut names = Vec::new();
    for v in serde_json::Deserializer::from_str(&text).into_iter::<LoadMessage>() {
        let v = v.context("the daemon's answer to the image load is not JSON")?;
        let detail = v.error_detail.and_then(|d| d.message);
        if let Some(err) = detail.or(v.error) {
            bail!("the daemon could not load the archive: {err}");
        }
        if let Some(stream) = v.stream {
            for line in stream.lines() {
                if let Some(name) = line
                    .strip_prefix("Loaded image: ")
                    .or_else(|| line.strip_prefix("Loaded image ID: "))
                {
                    names.push(name.trim().to_owned());
                }
            }
        }
    }
    if names.is_empty() {
        bail!("the daemon loaded no image from the archive (is it a `docker save` archive?)");
    }
    Ok(names)
}

/// Checks an archive path before anything starts: it must be a readable file.
pub fn check_archive(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("failed to read --load {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "--load {} is not a file (give an archive written by `docker save`)",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(status: u32, body: &[u8]) -> Response {
        Response {
            status,
            body: body.to_vec(),
        }
    }

    #[test]
    fn load_responses() {
        let ok = br#"{"stream":"Loaded image: mpiswarm/busybox:latest\n"}"#;
        assert_eq!(
            parse_load_response(&reply(200, ok)).unwrap(),
            vec!["mpiswarm/busybox:latest"]
        );
        let err = br#"{"errorDetail":{"message":"unexpected EOF"},"error":"unexpected EOF"}"#;
        assert!(
            parse_load_response(&reply(200, err))
                .unwrap_err()
                .to_string()
                .contains("unexpected EOF")
        );
        assert!(
            parse_load_response(&reply(500, br#"{"message":"boom"}"#))
                .unwrap_err()
                .to_string()
                .contains("boom")
        );
        assert!(parse_load_response(&reply(200, b"")).is_err());
    }
}
