//! One framing for every message mpiswarm's processes send each other (a rank and its guard, a
//! host's leader and its other ranks, a host's `--collect` share to rank 0): each message is one
//! serde value written as one line of JSON. Every protocol is an enum of its own, encoded and
//! decoded only through here, so that a bad frame reads the same whoever sent it.
//!
//! Why JSON lines and not a length prefix: JSON escapes the newlines inside strings, so a
//! message is one line whatever it carries, and a reader finds its end by the newline, without a
//! length to trust; the streams are cut anywhere on the way (pipes, `--collect`'s MPI chunks) and
//! are put together by line; a peer that dies mid-message leaves a line without its newline,
//! which tells a truncated frame from a clean end; and a person can read them (strace, a guard
//! run by hand).

use std::io::BufRead;

use anyhow::{Result, anyhow};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The longest frame read: far above any message sent (a `--collect` line of 64 KiB, escaped),
/// so that a peer gone astray cannot make the reader hold its whole output.
pub const MAX_FRAME: usize = 1 << 20;

/// How much of a bad frame an error quotes.
const QUOTED: usize = 120;

/// Who sends a protocol's messages and what they are, for the errors of a bad frame.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    /// Who sent it: "the guard".
    pub name: &'static str,
    /// What was expected: "an event (started, exited, ...)".
    pub expected: &'static str,
    /// The messages carry a secret: an error never quotes them.
    pub secret: bool,
}

/// `message` as one frame: a line of JSON with its newline.
pub fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>> {
    let mut frame = serde_json::to_vec(message)
        .map_err(|e| anyhow!("failed to encode a message as JSON: {e}"))?;
    frame.push(b'\n');
    Ok(frame)
}

/// One frame (a line, with or without its newline) from `from`.
pub fn decode<T: DeserializeOwned>(line: &[u8], from: &Peer) -> Result<T> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    serde_json::from_slice(line).map_err(|e| {
        anyhow!(
            "unknown message from {}: {} is not {} ({})",
            from.name,
            quote(line, from),
            from.expected,
            why(&e, from)
        )
    })
}

/// Bytes kept as they are (a log line, a path): a JSON string when they are UTF-8, else an array
/// of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Bytes {
    Utf8(String),
    Raw(Vec<u8>),
}

impl Bytes {
    pub fn new(bytes: Vec<u8>) -> Bytes {
        match String::from_utf8(bytes) {
            Ok(text) => Bytes::Utf8(text),
            Err(e) => Bytes::Raw(e.into_bytes()),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Bytes::Utf8(text) => text.as_bytes(),
            Bytes::Raw(bytes) => bytes,
        }
    }
}

impl From<String> for Bytes {
    fn from(text: String) -> Bytes {
        Bytes::Utf8(text)
    }
}

/// What a reader found next.
#[derive(Debug)]
pub enum Next<T> {
    Message(T),
    /// A frame cut short by the end of the stream, longer than `MAX_FRAME`, or not a message: the
    /// error says which, from whom, and what was due.
    Bad(anyhow::Error),
    /// The stream ended cleanly, between frames.
    End,
}

/// The next frame of `reader`, from `from`; `Err` only when reading itself failed.
pub fn read<T: DeserializeOwned>(
    reader: &mut impl BufRead,
    from: &Peer,
) -> std::io::Result<Next<T>> {
    let mut line = Vec::new();
    let limit = MAX_FRAME as u64 + 1;
    match std::io::Read::take(&mut *reader, limit).read_until(b'\n', &mut line) {
        // A part arrived, then the stream failed (or its read timeout passed).
        Err(e) if !line.is_empty() => return Ok(Next::Bad(truncated(&line, from, &e))),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    Ok(match line.last() {
        None => Next::End,
        Some(b'\n') => match decode(&line, from) {
            Ok(message) => Next::Message(message),
            Err(e) => Next::Bad(e),
        },
        Some(_) if line.len() > MAX_FRAME => Next::Bad(anyhow!(
            "unknown message from {}: more than {MAX_FRAME} bytes without a newline, where {} \
             was due",
            from.name,
            from.expected
        )),
        Some(_) => Next::Bad(truncated(&line, from, &"the end of its output")),
    })
}

/// A frame cut short, by the end of the stream or by an error.
fn truncated(part: &[u8], from: &Peer, then: &dyn std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "truncated message from {}: {} ({} bytes, no newline) of {}, then {then}",
        from.name,
        quote(part, from),
        part.len(),
        from.expected
    )
}

/// What JSON found wrong: its words quote the frame's values, so a secret frame gets only where.
fn why(e: &serde_json::Error, from: &Peer) -> String {
    match from.secret {
        true => format!("{:?} error at column {}", e.classify(), e.column()),
        false => e.to_string(),
    }
}

/// A bad frame as an error shows it: its start, or nothing if it may hold a secret.
fn quote(line: &[u8], from: &Peer) -> String {
    if from.secret {
        return format!("a frame of {} bytes", line.len());
    }
    let text = String::from_utf8_lossy(&line[..line.len().min(QUOTED)]);
    let more = if line.len() > QUOTED { "..." } else { "" };
    format!("{text:?}{more}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of a bad frame read from `bytes`.
    fn bad(bytes: &[u8], from: &Peer) -> String {
        match read::<Hello>(&mut &bytes[..], from).unwrap() {
            Next::Bad(e) => e.to_string(),
            other => panic!("{other:?} from {bytes:?}"),
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Hello {
        Hi { name: String },
        Bye,
    }

    const FROM: Peer = Peer {
        name: "the tester",
        expected: "a greeting (hi or bye)",
        secret: false,
    };

    #[test]
    fn frames_are_one_line_whatever_they_carry() {
        let hi = Hello::Hi {
            name: "two\nlines\r\n and \"quotes\"".into(),
        };
        let frame = encode(&hi).unwrap();
        assert_eq!(frame.iter().filter(|b| **b == b'\n').count(), 1);
        assert!(frame.ends_with(b"\n"));
        assert_eq!(decode::<Hello>(&frame, &FROM).unwrap(), hi);
        let stream = [frame, encode(&Hello::Bye).unwrap()].concat();
        let mut reader = &stream[..];
        assert!(matches!(read::<Hello>(&mut reader, &FROM).unwrap(), Next::Message(m) if m == hi));
        assert!(matches!(
            read::<Hello>(&mut reader, &FROM).unwrap(),
            Next::Message(Hello::Bye)
        ));
        assert!(matches!(
            read::<Hello>(&mut reader, &FROM).unwrap(),
            Next::End
        ));
    }

    #[test]
    fn a_truncated_frame_is_told_from_a_clean_end_and_named() {
        let frame = encode(&Hello::Hi { name: "x".into() }).unwrap();
        let cut = &frame[..frame.len() - 3];
        let err = bad(cut, &FROM);
        assert!(
            err.starts_with("truncated message from the tester: ")
                && err.ends_with("of a greeting (hi or bye), then the end of its output"),
            "{err}"
        );
    }

    #[test]
    fn a_malformed_frame_names_its_peer_and_what_was_due() {
        let err = decode::<Hello>(b"{\"Hello\":1}\n", &FROM)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "unknown message from the tester: \"{\\\"Hello\\\":1}\" is not a greeting"
            ),
            "{err}"
        );
        assert!(decode::<Hello>(b"", &FROM).is_err());
        assert!(decode::<Hello>(b"\"Bye\" \"Bye\"", &FROM).is_err());
    }

    #[test]
    fn an_endless_frame_is_refused_at_its_bound() {
        let long = vec![b'x'; MAX_FRAME + 10];
        let err = bad(&long, &FROM);
        assert!(err.contains("without a newline"), "{err}");
    }

    #[test]
    fn a_secret_frame_is_never_quoted() {
        let from = Peer {
            secret: true,
            ..FROM
        };
        let err = decode::<Hello>(b"{\"SWMTKN-1-x\":{\"name\":\"a\"}}", &from)
            .unwrap_err()
            .to_string();
        assert!(!err.contains("SWMTKN"), "{err}");
        let err = bad(b"{\"Hi\":\"SWMTKN", &from);
        assert!(!err.contains("SWMTKN"), "{err}");
    }
}
