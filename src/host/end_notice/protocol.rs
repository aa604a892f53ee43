//! What a host's leader tells its host's other ranks, encoded and parsed only here: its
//! greeting at the start, and how the job ended.
//!
//! The end is a frame (`sys::frame`), the same bytes on the end socket and over MPI when the
//! leader has no socket. The greeting is the payload of one MPI broadcast, whose size every rank
//! must know before it arrives: it keeps a fixed form of `GREETING_BYTES` (a JSON frame would
//! need room for the worst escaping of the longest path, nine times the bytes to every rank of
//! the host).

use std::io::BufRead;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::host::statedir;
use crate::sys::frame::{self, Next, Peer};

/// The greeting's size on the wire: the leader's pid, the path's length, the path.
pub const GREETING_BYTES: usize = 4 + 2 + statedir::SUN_PATH_MAX;

/// Who tells the end, for the errors of a bad frame.
const FROM_LEADER: Peer = Peer {
    name: "this host's leader",
    expected: "the job's end (an exit code, and whether MPI is finalized)",
    secret: false,
};

/// What a host's leader tells the host's other ranks at the start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub leader_pid: i32,
    /// Where to hear of the end; `None` when the leader could not listen.
    pub end_path: Option<PathBuf>,
}

impl Greeting {
    pub fn encode(&self) -> [u8; GREETING_BYTES] {
        let mut out = [0u8; GREETING_BYTES];
        out[..4].copy_from_slice(&self.leader_pid.to_le_bytes());
        if let Some(path) = &self.end_path {
            let bytes = path.as_os_str().as_bytes();
            // A longer path cannot have been bound (`sun_path`), so it is never sent.
            if bytes.len() <= statedir::SUN_PATH_MAX {
                out[4..6].copy_from_slice(&(bytes.len() as u16).to_le_bytes());
                out[6..6 + bytes.len()].copy_from_slice(bytes);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8; GREETING_BYTES]) -> Greeting {
        let leader_pid = i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let len = (u16::from_le_bytes([bytes[4], bytes[5]]) as usize).min(statedir::SUN_PATH_MAX);
        let end_path =
            (len > 0).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(&bytes[6..6 + len])));
        Greeting {
            leader_pid,
            end_path,
        }
    }
}

/// How the job ended, as a leader tells its host's other ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    pub code: i32,
    pub mpi: MpiEnd,
}

/// How a rank leaves MPI at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MpiEnd {
    /// Every host agreed: MPI is finalized, as usual.
    Finalize,
    /// The launcher is ending the job and the hosts could not all agree (one is dead or hung):
    /// a finalize would wait for them, so the ranks leave without it.
    Leave,
}

impl End {
    /// The end on the wire, the socket's and MPI's alike. A number and a unit variant always
    /// serialize: were it not so, the ranks would get an empty frame and say so.
    pub fn frame(self) -> Vec<u8> {
        frame::encode(&self).unwrap_or_default()
    }

    /// An end received over MPI (a whole message).
    pub fn from_frame(bytes: &[u8]) -> Result<End> {
        frame::decode(bytes, &FROM_LEADER)
    }

    /// The end, read from the end socket.
    pub fn read_from(input: &mut impl BufRead) -> std::io::Result<Next<End>> {
        frame::read(input, &FROM_LEADER)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_greeting_survives_its_wire_form() {
        for g in [
            Greeting {
                leader_pid: 4242,
                end_path: Some("/tmp/mpiswarm-1000/j12ab-node-7.end".into()),
            },
            Greeting {
                leader_pid: 1,
                end_path: None,
            },
        ] {
            assert_eq!(Greeting::decode(&g.encode()), g);
        }
    }

    #[test]
    fn an_end_survives_its_frame() {
        for end in [
            End {
                code: 137,
                mpi: MpiEnd::Leave,
            },
            End {
                code: 0,
                mpi: MpiEnd::Finalize,
            },
            End {
                code: i32::MIN,
                mpi: MpiEnd::Finalize,
            },
        ] {
            let wire = end.frame();
            assert!(wire.ends_with(b"\n"), "{wire:?}");
            assert_eq!(End::from_frame(&wire).unwrap(), end);
            let read = End::read_from(&mut &wire[..]).unwrap();
            assert!(matches!(read, Next::Message(e) if e == end), "{read:?}");
        }
    }

    #[test]
    fn a_malformed_end_is_named() {
        for bad in [
            &b"{\"code\":1,\"mpi\":\"abort\"}\n"[..],
            b"{\"code\":1}",
            b"\x01\0\0\0\0",
            b"",
        ] {
            let e = End::from_frame(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("unknown message from this host's leader: ")
                    && e.contains("is not the job's end (an exit code, and whether MPI"),
                "{e}"
            );
        }
    }
}
