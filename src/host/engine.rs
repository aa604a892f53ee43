//! Docker Engine API over the daemon's Unix socket: no `docker` CLI processes on the hot path, and
//! secrets such as the swarm join token travel in request bodies, never in any process's argv.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use curl::easy::{Easy, List, ReadError};
use serde_json::Value;

/// API version spoken by Docker 20.10 (the oldest engine mpiswarm supports).
const API_VERSION: &str = "v1.41";
/// How long one ordinary Engine API call may take.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for one daemon's Engine API.
#[derive(Debug, Clone)]
pub struct Engine {
    socket: PathBuf,
}

/// How a bounded GET's body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    Whole,
    /// Cut at the bound asked for.
    Capped,
    /// Still streaming when the time was up: what came is kept.
    TimedOut,
}

/// The status code and body of one API response.
#[derive(Debug)]
pub struct Response {
    pub status: u32,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).context("failed to parse the Engine API's JSON reply")
    }

    /// A 2xx status.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The daemon's own error message, which is what a user needs to see.
    pub fn message(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).trim().to_owned())
    }
}

impl Engine {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Engine {
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn handle(&self, method: &str, path: &str, timeout: Duration) -> Result<Easy> {
        let mut easy = Easy::new();
        easy.unix_socket_path(Some(&self.socket))?;
        easy.url(&format!("http://docker/{API_VERSION}{path}"))?;
        easy.custom_request(method)?;
        easy.timeout(timeout)?;
        easy.connect_timeout(timeout.min(Duration::from_secs(2)))?;
        Ok(easy)
    }

    fn perform(&self, mut easy: Easy, method: &str, path: &str) -> Result<Response> {
        let mut body = Vec::new();
        {
            let mut transfer = easy.transfer();
            transfer.write_function(|data| {
                body.extend_from_slice(data);
                Ok(data.len())
            })?;
            transfer.perform().with_context(|| {
                format!(
                    "failed to call {method} {path} on the Docker daemon at {}",
                    self.socket.display()
                )
            })?;
        }
        let status = easy.response_code()?;
        Ok(Response { status, body })
    }

    /// One request with an optional JSON body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        json: Option<&Value>,
        timeout: Duration,
    ) -> Result<Response> {
        let mut easy = self.handle(method, path, timeout)?;
        if let Some(json) = json {
            let mut headers = List::new();
            headers.append("Content-Type: application/json")?;
            easy.http_headers(headers)?;
            easy.post_fields_copy(&serde_json::to_vec(json)?)?;
        }
        self.perform(easy, method, path)
    }

    /// A request that must succeed (2xx); the daemon's message becomes the error.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        json: Option<&Value>,
        timeout: Duration,
    ) -> Result<Response> {
        let response = self.request(method, path, json, timeout)?;
        if !response.is_success() {
            bail!(
                "the Docker daemon answered {method} {path} with {}: {}",
                response.status,
                response.message()
            );
        }
        Ok(response)
    }

    pub fn get_json(&self, path: &str, timeout: Duration) -> Result<Value> {
        self.call("GET", path, None, timeout)?.json()
    }

    /// True once the daemon answers `/_ping`.
    pub fn ping(&self, timeout: Duration) -> bool {
        self.request("GET", "/_ping", None, timeout)
            .map(|r| r.status == 200)
            .unwrap_or(false)
    }

    /// A GET whose body is kept only up to `cap` bytes: the transfer stops there. Returns the
    /// response and whether the body was cut (container logs can be far larger than wanted).
    pub fn get_capped(
        &self,
        path: &str,
        cap: usize,
        timeout: Duration,
    ) -> Result<(Response, bool)> {
        match self.get_bounded(path, cap, timeout)? {
            (_, Body::TimedOut) => bail!(
                "failed to call GET {path} on the Docker daemon at {}: no answer within {timeout:?}",
                self.socket.display()
            ),
            (r, body) => Ok((r, body == Body::Capped)),
        }
    }

    /// As `get_capped`, but a body still streaming at the timeout is kept as far as it came (a
    /// swarm's log stream waits for every node that ran a task; one that does not answer must
    /// not cost the lines of the others).
    pub fn get_bounded(
        &self,
        path: &str,
        cap: usize,
        timeout: Duration,
    ) -> Result<(Response, Body)> {
        let mut easy = self.handle("GET", path, timeout)?;
        let mut body = Vec::new();
        let mut cut = false;
        let performed = {
            let mut transfer = easy.transfer();
            transfer.write_function(|data| {
                let room = cap.saturating_sub(body.len());
                if data.len() > room {
                    body.extend_from_slice(&data[..room]);
                    cut = true;
                    // Fewer bytes than offered ends the transfer.
                    return Ok(0);
                }
                body.extend_from_slice(data);
                Ok(data.len())
            })?;
            transfer.perform()
        };
        let ended = match performed {
            Ok(()) if cut => Body::Capped,
            Ok(()) => Body::Whole,
            Err(e) if cut && e.is_write_error() => Body::Capped,
            Err(e) if e.is_operation_timedout() && easy.response_code().is_ok_and(|c| c != 0) => {
                Body::TimedOut
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "failed to call GET {path} on the Docker daemon at {}",
                        self.socket.display()
                    )
                });
            }
        };
        let status = easy.response_code()?;
        Ok((Response { status, body }, ended))
    }

    /// Streams a request body from `source` (e.g. an image archive), without holding it in memory.
    pub fn post_stream(
        &self,
        path: &str,
        content_type: &str,
        source: &mut dyn Read,
        timeout: Duration,
    ) -> Result<Response> {
        let mut easy = self.handle("POST", path, timeout)?;
        let mut headers = List::new();
        headers.append(&format!("Content-Type: {content_type}"))?;
        headers.append("Transfer-Encoding: chunked")?;
        easy.http_headers(headers)?;
        easy.post(true)?;
        let mut body = Vec::new();
        {
            let mut transfer = easy.transfer();
            transfer.read_function(|buf| source.read(buf).map_err(|_| ReadError::Abort))?;
            transfer.write_function(|data| {
                body.extend_from_slice(data);
                Ok(data.len())
            })?;
            transfer
                .perform()
                .with_context(|| format!("failed to stream POST {path} to the Docker daemon"))?;
        }
        let status = easy.response_code()?;
        Ok(Response { status, body })
    }
}

/// The pieces of a log stream with the stream each came from. Without a TTY the Engine API
/// multiplexes stdout and stderr in frames (an 8-byte header: stream, three zeros, a big-endian
/// length); a TTY's output has no headers. A frame cut short keeps what arrived.
pub fn frames(body: &[u8]) -> Vec<(&'static str, &[u8])> {
    let framed = body.len() >= 8 && body[0] <= 2 && body[1..4] == [0, 0, 0];
    if !framed {
        return vec![("tty", body)];
    }
    let mut found = Vec::new();
    let mut rest = body;
    while rest.len() >= 8 {
        let stream = match rest[0] {
            0 => "stdin",
            1 => "stdout",
            2 => "stderr",
            _ => break,
        };
        let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let end = 8usize.saturating_add(len).min(rest.len());
        found.push((stream, &rest[8..end]));
        rest = &rest[end..];
    }
    found
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// One frame of Docker's multiplexed log stream, as the daemon sends it.
    pub(crate) fn frame(stream: u8, text: &str) -> Vec<u8> {
        let mut f = vec![stream, 0, 0, 0];
        f.extend_from_slice(&(text.len() as u32).to_be_bytes());
        f.extend_from_slice(text.as_bytes());
        f
    }

    #[test]
    fn frame_headers_are_stripped_and_streams_named() {
        let mut body = frame(1, "2026-01-01T00:00:00.000000001Z hello\n");
        body.extend(frame(2, "2026-01-01T00:00:00.000000002Z oops\n"));
        let got = frames(&body);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "stdout");
        assert_eq!(
            got[1],
            ("stderr", &b"2026-01-01T00:00:00.000000002Z oops\n"[..])
        );
        // A TTY stream has no headers; a cut frame keeps what arrived.
        assert_eq!(frames(b"plain text\n"), vec![("tty", &b"plain text\n"[..])]);
        let cut = &body[..body.len() - 3];
        assert_eq!(frames(cut)[1].1, b"2026-01-01T00:00:00.000000002Z oo");
    }
}
