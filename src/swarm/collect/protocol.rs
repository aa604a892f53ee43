//! What a host's `--collect` share says to rank 0, one `ShareLine` per frame (`sys::frame`),
//! written and parsed only here. The swarm manager's path (`via_swarm`) writes the same lines, so
//! that rank 0 keeps both alike.

use std::io::Write;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::sys::frame::{self, Bytes, Peer};

/// Who sends shares, for the errors of a bad line (rank 0 names the host).
const FROM_HOST: Peer = Peer {
    name: "a host's --collect share",
    expected: "a line of it (service, daemon, missing or end)",
    secret: false,
};

/// One line of a host's share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShareLine {
    /// A line of a service's log, for `services/<service>.log`:
    /// `<time> <task>@<host> <stream> <text>`.
    Service { service: String, line: Bytes },
    /// A line of the host's daemon log, for `hosts/<host>/daemon.log`.
    Daemon(Bytes),
    /// Something that will not be in the output, for INCOMPLETE (one line).
    Missing(String),
    /// The share ends here: it arrived whole.
    End,
}

impl ShareLine {
    /// Something missing, as INCOMPLETE lists it: on one line.
    pub fn missing(what: &str) -> ShareLine {
        ShareLine::Missing(what.replace('\n', " "))
    }

    /// Writes the line as one frame.
    pub fn write_to(&self, out: &mut impl Write) -> Result<()> {
        out.write_all(&frame::encode(self)?)?;
        Ok(())
    }

    /// One line of a share (with or without its newline).
    pub fn decode(line: &[u8]) -> Result<ShareLine> {
        frame::decode(line, &FROM_HOST)
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// Every line of a share, bad ones as their error.
    pub fn lines(wire: &[u8]) -> Vec<Result<ShareLine, String>> {
        wire.split_inclusive(|b| *b == b'\n')
            .map(|l| ShareLine::decode(l).map_err(|e| e.to_string()))
            .collect()
    }

    /// A service line.
    pub fn service(service: &str, line: &str) -> ShareLine {
        ShareLine::Service {
            service: service.into(),
            line: line.to_owned().into(),
        }
    }

    #[test]
    fn share_lines_round_trip_whatever_bytes_they_carry() {
        let all = [
            service("web", "T1 web.1@h1 stdout a \"quoted\"\ttab"),
            ShareLine::Service {
                service: "bin".into(),
                line: Bytes::new(vec![b'T', b' ', 0xff, 0xfe, 0, b'\r']),
            },
            ShareLine::Daemon("level=info msg=\"hi\"".to_owned().into()),
            ShareLine::Daemon(Bytes::new(vec![0x80])),
            ShareLine::missing("services/web.log: cut\nthere"),
            ShareLine::End,
        ];
        let mut wire = Vec::new();
        for l in &all {
            l.write_to(&mut wire).unwrap();
        }
        assert_eq!(wire.iter().filter(|b| **b == b'\n').count(), all.len());
        let back: Vec<_> = all.iter().cloned().map(Ok).collect();
        assert_eq!(lines(&wire), back);
        assert_eq!(
            all[1],
            ShareLine::Service {
                service: "bin".into(),
                line: Bytes::Raw(vec![b'T', b' ', 0xff, 0xfe, 0, b'\r'])
            }
        );
        assert_eq!(
            all[4],
            ShareLine::Missing("services/web.log: cut there".into())
        );
    }

    #[test]
    fn a_bad_or_truncated_line_is_named() {
        let mut wire = Vec::new();
        service("web", "a line").write_to(&mut wire).unwrap();
        let cut = &wire[..wire.len() - 4];
        for bad in [cut, b"S\tweb\tT1 old line\n", b"{\"service\":{}}\n"] {
            let [Err(e)] = &lines(bad)[..] else {
                panic!("{bad:?} accepted")
            };
            assert!(
                e.starts_with("unknown message from a host's --collect share: ")
                    && e.contains("is not a line of it (service, daemon, missing or end)"),
                "{e}"
            );
        }
    }
}
