//! Docker Engine API over the daemon's Unix socket: no `docker` CLI processes on the hot path, and
//! secrets such as the swarm join token travel in request bodies, never in any process's argv.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use curl::easy::{Easy, List, ReadError};
use serde::Deserialize;
use serde_json::Value;

use crate::sys::deadline::{Deadline, seconds};

/// API version spoken by Docker 20.10 (the oldest engine mpiswarm supports).
const API_VERSION: &str = "v1.41";
/// How long one ordinary Engine API call may take, if its deadline leaves it that long.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// A client for one daemon's Engine API. Every call takes a `Deadline`: an ordinary call ends at
/// the earlier of it and `CALL_TIMEOUT`, a stream (logs, an image load) at the deadline alone.
#[derive(Debug, Clone)]
pub struct Engine {
    /// The daemon's host, named in errors.
    host: String,
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

    /// The daemon's own error message, which is what a user needs to see: the Engine API's
    /// error reply (`{"message": ...}`), or the body as it came if it is not one.
    pub fn message(&self) -> String {
        serde_json::from_slice::<ErrorReply>(&self.body)
            .map(|reply| reply.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&self.body).trim().to_owned())
    }
}

/// The Engine API's one documented error shape (`ErrorResponse`).
#[derive(Deserialize)]
struct ErrorReply {
    message: String,
}

/// A call the daemon refused: its HTTP status and message. It travels in `anyhow::Error`; a
/// caller that must tell one refusal from another downcasts to it and decides on `status`
/// (message wording only where Docker gives nothing else: `swarm::api`'s refusals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineError {
    /// The daemon's host.
    pub host: String,
    /// Method and path, e.g. `POST /swarm/join`.
    pub call: String,
    pub status: u32,
    pub message: String,
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the Docker daemon on {} answered {} with {}: {}",
            self.host, self.call, self.status, self.message
        )
    }
}

impl std::error::Error for EngineError {}

impl Engine {
    pub fn new(host: impl Into<String>, socket: impl Into<PathBuf>) -> Self {
        Engine {
            host: host.into(),
            socket: socket.into(),
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A request's handle, bounded by `deadline`, and the call as its errors name it; none once
    /// the deadline has passed (curl would read a zero timeout as none at all).
    fn handle<'a>(
        &self,
        method: &'a str,
        path: &'a str,
        deadline: Deadline,
    ) -> Result<(Easy, Call<'a>)> {
        let timeout = deadline.left();
        if timeout < Duration::from_millis(1) {
            bail!(
                "{method} {path} on {} was not sent: {} had passed",
                self.host,
                deadline.set_by()
            );
        }
        let mut easy = Easy::new();
        easy.unix_socket_path(Some(&self.socket))?;
        easy.url(&format!("http://docker/{API_VERSION}{path}"))?;
        easy.custom_request(method)?;
        easy.timeout(timeout)?;
        easy.connect_timeout(timeout.min(Duration::from_secs(2)))?;
        let call = Call {
            method,
            path,
            timeout,
            deadline,
        };
        Ok((easy, call))
    }

    /// The error of a call that failed: one that ran out of time names the host, the call and
    /// what set its deadline (a daemon that stopped answering, e.g. a manager without quorum).
    fn failed(&self, e: curl::Error, call: &Call) -> anyhow::Error {
        if e.is_operation_timedout() {
            return anyhow::anyhow!(
                "{} {} on {} did not answer within {} ({})",
                call.method,
                call.path,
                self.host,
                seconds(call.timeout),
                call.deadline.set_by()
            );
        }
        anyhow::Error::new(e).context(format!(
            "failed to call {} {} on {}'s Docker daemon at {}",
            call.method,
            call.path,
            self.host,
            self.socket.display()
        ))
    }

    /// The one transfer loop every call runs: sends `source` as the body if given, keeps what
    /// comes back as `keep` says, and tells how the body ended.
    fn perform(
        &self,
        mut easy: Easy,
        call: &Call,
        source: Option<&mut dyn Read>,
        keep: Keep,
    ) -> Result<(Response, Body)> {
        let mut body = Vec::new();
        let mut cut = false;
        let started = Instant::now();
        let performed = {
            let mut transfer = easy.transfer();
            if let Some(source) = source {
                transfer.read_function(|buf| source.read(buf).map_err(|_| ReadError::Abort))?;
            }
            transfer.write_function(|data| {
                let room = keep.cap.saturating_sub(body.len());
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
            Err(e)
                if keep.partial
                    && e.is_operation_timedout()
                    && easy.response_code().is_ok_and(|c| c != 0) =>
            {
                Body::TimedOut
            }
            Err(e) => return Err(self.failed(e, call)),
        };
        let status = easy.response_code()?;
        // What each call cost, for -vv: a slow manager shows as the calls it was slow to answer.
        tracing::trace!(
            "{} {} on {}: {status} in {:.3} s",
            call.method,
            call.path,
            self.host,
            started.elapsed().as_secs_f64()
        );
        Ok((Response { status, body }, ended))
    }

    /// One request with an optional JSON body.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        json: Option<&Value>,
        deadline: Deadline,
    ) -> Result<Response> {
        self.send(method, path, json, deadline.within(CALL_TIMEOUT))
    }

    /// As `call`, for a call that takes as long as it has work to do (an exec that waits for its
    /// command): bounded by `deadline` alone.
    pub fn call_long(
        &self,
        method: &str,
        path: &str,
        json: Option<&Value>,
        deadline: Deadline,
    ) -> Result<Response> {
        let response = self.send(method, path, json, deadline)?;
        self.must_succeed(method, path, response)
    }

    fn send(
        &self,
        method: &str,
        path: &str,
        json: Option<&Value>,
        deadline: Deadline,
    ) -> Result<Response> {
        let (mut easy, call) = self.handle(method, path, deadline)?;
        if let Some(json) = json {
            let mut headers = List::new();
            headers.append("Content-Type: application/json")?;
            easy.http_headers(headers)?;
            easy.post_fields_copy(&serde_json::to_vec(json)?)?;
        }
        Ok(self.perform(easy, &call, None, Keep::WHOLE)?.0)
    }

    /// A request that must succeed (2xx); the daemon's message becomes the error.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        json: Option<&Value>,
        deadline: Deadline,
    ) -> Result<Response> {
        let response = self.request(method, path, json, deadline)?;
        self.must_succeed(method, path, response)
    }

    /// The response if 2xx; else the refusal (an `EngineError`) as the error.
    fn must_succeed(&self, method: &str, path: &str, response: Response) -> Result<Response> {
        if !response.is_success() {
            return Err(EngineError {
                host: self.host.clone(),
                call: format!("{method} {path}"),
                status: response.status,
                message: response.message(),
            }
            .into());
        }
        Ok(response)
    }

    pub fn get_json(&self, path: &str, deadline: Deadline) -> Result<Value> {
        self.call("GET", path, None, deadline)?.json()
    }

    /// True once the daemon answers `/_ping`.
    pub fn ping(&self, deadline: Deadline) -> bool {
        self.request("GET", "/_ping", None, deadline)
            .map(|r| r.status == 200)
            .unwrap_or(false)
    }

    /// A GET whose body is kept only up to `cap` bytes: the transfer stops there. Returns the
    /// response and whether the body was cut (container logs can be far larger than wanted).
    pub fn get_capped(
        &self,
        path: &str,
        cap: usize,
        deadline: Deadline,
    ) -> Result<(Response, bool)> {
        match self.get_bounded(path, cap, deadline)? {
            (_, Body::TimedOut) => bail!(
                "GET {path} on {} was still sending at {}",
                self.host,
                deadline.set_by()
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
        deadline: Deadline,
    ) -> Result<(Response, Body)> {
        let (easy, call) = self.handle("GET", path, deadline)?;
        let keep = Keep { cap, partial: true };
        self.perform(easy, &call, None, keep)
    }

    /// Streams a request body from `source` (e.g. an image archive), without holding it in memory.
    pub fn post_stream(
        &self,
        path: &str,
        content_type: &str,
        source: &mut dyn Read,
        deadline: Deadline,
    ) -> Result<Response> {
        let (mut easy, call) = self.handle("POST", path, deadline)?;
        let mut headers = List::new();
        headers.append(&format!("Content-Type: {content_type}"))?;
        headers.append("Transfer-Encoding: chunked")?;
        easy.http_headers(headers)?;
        easy.post(true)?;
        Ok(self.perform(easy, &call, Some(source), Keep::WHOLE)?.0)
    }
}

/// How much of a reply's body a transfer keeps.
#[derive(Debug, Clone, Copy)]
struct Keep {
    /// The transfer stops once this many bytes came.
    cap: usize,
    /// A body still streaming when the time is up is kept as far as it came (else the call
    /// fails as one that did not answer).
    partial: bool,
}

impl Keep {
    const WHOLE: Keep = Keep {
        cap: usize::MAX,
        partial: false,
    };
}

/// One call as its errors name it.
struct Call<'a> {
    method: &'a str,
    path: &'a str,
    /// What was left of the deadline when the call started.
    timeout: Duration,
    deadline: Deadline,
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
pub(crate) mod tests;
