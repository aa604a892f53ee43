//! The rank<->guard protocol, framed and parsed only here (`sys::frame`: one JSON line per
//! message): events from the guard on its stdout, commands from the rank on the guard's stdin
//! (the lifeline).
//!
//! Events: `Started` (rootlesskit's pid), `Restarted` (started once more, after its start-up race
//! with nsenter: the new pid), `Exited` (the daemon ended early), `Backlog`
//! (slirp4netns' accept queues deepened, or why not), `Intruder` (another user bound a swarm port
//! here), then one verdict: `Clean` or `Dirty`. Commands: `Command` (the user's command runs in
//! that process group: the teardown kills it, whatever killed the rank), `Teardown`; the
//! lifeline's end (the rank died) means the same.

use std::fmt;
use std::io::{BufRead, Write};

use anyhow::{Context, Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::sys::frame::{self, Next, Peer};

/// Who sends events, for the errors of a bad one.
const FROM_GUARD: Peer = Peer {
    name: "the guard",
    expected: "an event (started, restarted, exited, backlog, intruder, clean or dirty)",
    secret: false,
};

/// Who sends commands, for the errors of a bad one.
const FROM_RANK: Peer = Peer {
    name: "the rank on the lifeline",
    expected: "a command (teardown, or command with a process group above 1)",
    secret: false,
};

/// One message from the guard to its rank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardEvent {
    /// rootlesskit started with this pid.
    Started(u32),
    /// rootlesskit lost its start-up race with nsenter and was started again, with this pid;
    /// `why` is the line of its output that showed the race.
    Restarted { pid: u32, why: String },
    /// The daemon ended, or could not start: its exit status or the error.
    Exited(String),
    /// The outcome of deepening slirp4netns' accept queues: the ports, or why not.
    Backlog(Result<Vec<u16>, String>),
    /// Another user bound a swarm UDP port on this host's address: the guard tears down.
    Intruder { uid: u32, port: u16 },
    /// Verdict: the host is torn down and nothing is left.
    Clean,
    /// Verdict: the teardown left something; what.
    Dirty(String),
}

impl GuardEvent {
    /// Writes the event as one frame.
    pub fn write_to(&self, out: &mut impl Write) -> Result<()> {
        out.write_all(&frame::encode(self)?)?;
        out.flush()?;
        Ok(())
    }

    /// The guard's next event, a bad frame, or the end of its output; `Err` if reading failed.
    pub fn read_from(input: &mut impl BufRead) -> std::io::Result<Next<Self>> {
        frame::read(input, &FROM_GUARD)
    }

    /// True for the guard's last word: `clean` or `dirty`.
    pub fn is_verdict(&self) -> bool {
        matches!(self, GuardEvent::Clean | GuardEvent::Dirty(_))
    }
}

/// One event from the guard to its rank, which may be gone already (then nobody is left to tell).
pub fn emit(out: &mut impl Write, event: &GuardEvent) {
    let _ = event.write_to(out);
}

/// For people: what the event says.
impl fmt::Display for GuardEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardEvent::Started(pid) => write!(f, "rootlesskit started (pid {pid})"),
            GuardEvent::Restarted { pid, why } => write!(
                f,
                "rootlesskit started again (pid {pid}) after it lost its start-up race with \
                 nsenter ({why})"
            ),
            GuardEvent::Exited(status) => write!(f, "the rootless daemon exited ({status})"),
            GuardEvent::Backlog(Ok(ports)) => {
                write!(f, "backlog deepened on port(s) {ports:?}")
            }
            GuardEvent::Backlog(Err(why)) => write!(f, "backlog not deepened: {why}"),
            GuardEvent::Intruder { uid, port } => write!(
                f,
                "another user (uid {uid}) bound the swarm port {port}/udp on this host, where it \
                 would receive the job's traffic: the job was stopped (use exclusive nodes)"
            ),
            GuardEvent::Clean => write!(f, "clean"),
            GuardEvent::Dirty(what) => write!(f, "not clean: {what}"),
        }
    }
}

/// One message from the rank to its guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuardCommand {
    /// Kill the daemon's tree and delete the state directory, then give the verdict.
    Teardown,
    /// The user's command runs in this process group (never 0 or 1): the teardown kills the
    /// group first, so that nothing of the job outlives it even when the rank was killed.
    Command { group: u32 },
}

impl GuardCommand {
    /// Writes the command as one frame.
    pub fn write_to(self, out: &mut impl Write) -> Result<()> {
        out.write_all(&frame::encode(&self)?)
            .context("failed to write to the guard's lifeline")
    }

    /// The rank's next command; a group of 0 or 1 (every process, or init's) is refused.
    pub fn read_from(input: &mut impl BufRead) -> std::io::Result<Next<Self>> {
        Ok(match frame::read(input, &FROM_RANK)? {
            Next::Message(GuardCommand::Command { group }) if group <= 1 => Next::Bad(anyhow!(
                "unknown message from {}: a command for process group {group}, where {} was due",
                FROM_RANK.name,
                FROM_RANK.expected
            )),
            next => next,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(wire: &[u8]) -> Vec<Result<GuardEvent, String>> {
        let mut input = wire;
        let mut out = Vec::new();
        loop {
            match GuardEvent::read_from(&mut input).unwrap() {
                Next::Message(e) => out.push(Ok(e)),
                Next::Bad(e) => out.push(Err(e.to_string())),
                Next::End => return out,
            }
        }
    }

    fn commands(wire: &[u8]) -> Vec<Result<GuardCommand, String>> {
        let mut input = wire;
        let mut out = Vec::new();
        loop {
            match GuardCommand::read_from(&mut input).unwrap() {
                Next::Message(c) => out.push(Ok(c)),
                Next::Bad(e) => out.push(Err(e.to_string())),
                Next::End => return out,
            }
        }
    }

    #[test]
    fn events_round_trip() {
        let all = [
            GuardEvent::Started(4242),
            GuardEvent::Restarted {
                pid: 4243,
                why: "nsenter: cannot open /proc/4244/ns/net: No such file or directory".into(),
            },
            GuardEvent::Exited("exit status: 1".into()),
            GuardEvent::Exited(String::new()),
            GuardEvent::Backlog(Ok(vec![2377, 7946])),
            GuardEvent::Backlog(Ok(vec![])),
            GuardEvent::Backlog(Err("no listener on port 2377".into())),
            GuardEvent::Intruder {
                uid: 1002,
                port: 4789,
            },
            GuardEvent::Clean,
            GuardEvent::Dirty("failed to remove /tmp/x: busy\nand a second line".into()),
        ];
        let mut wire = Vec::new();
        for e in &all {
            e.write_to(&mut wire).unwrap();
        }
        assert_eq!(wire.iter().filter(|b| **b == b'\n').count(), all.len());
        let back: Vec<_> = all.iter().cloned().map(Ok).collect();
        assert_eq!(events(&wire), back);
    }

    /// A restart is one line naming the new pid and the race's line, and reads back as itself.
    #[test]
    fn a_restart_is_framed_as_one_line() {
        let event = GuardEvent::Restarted {
            pid: 4243,
            why: "nsenter: cannot open /proc/4244/ns/net: No such file or directory".into(),
        };
        let mut wire = Vec::new();
        event.write_to(&mut wire).unwrap();
        assert_eq!(
            String::from_utf8(wire.clone()).unwrap(),
            "{\"restarted\":{\"pid\":4243,\"why\":\"nsenter: cannot open /proc/4244/ns/net: \
             No such file or directory\"}}\n"
        );
        assert_eq!(events(&wire), [Ok(event)]);
        for bad in [
            "{\"restarted\":{\"pid\":4243}}\n",
            "{\"restarted\":{\"pid\":-1,\"why\":\"x\"}}\n",
            "{\"restarted\":4243}\n",
        ] {
            let got = events(bad.as_bytes());
            let [Err(e)] = &got[..] else {
                panic!("{bad:?} gave {got:?}")
            };
            assert!(
                e.contains("is not an event (started, restarted, exited"),
                "{e}"
            );
        }
    }

    #[test]
    fn bad_events_are_refused_naming_the_guard_and_what_was_due() {
        for line in [
            "\n",
            "started 42\n",
            "{\"started\":\"x\"}\n",
            "{\"backlog\":{\"Maybe\":[]}}\n",
            "{\"backlog\":{\"Ok\":[2377,\"x\"]}}\n",
            "{\"intruder\":{\"uid\":1}}\n",
            "\"hello\"\n",
        ] {
            let got = events(line.as_bytes());
            let [Err(e)] = &got[..] else {
                panic!("{line:?} gave {got:?}")
            };
            assert!(
                e.starts_with("unknown message from the guard: ")
                    && e.contains("is not an event (started, restarted, exited, backlog"),
                "{e}"
            );
        }
        // The guard died in the middle of its verdict.
        let got = events(b"\"clean\"\n{\"dirty\":\"failed to rem");
        assert_eq!(got[0], Ok(GuardEvent::Clean));
        let Err(e) = &got[1] else { panic!("{got:?}") };
        assert!(
            e.starts_with("truncated message from the guard: ")
                && e.ends_with("then the end of its output"),
            "{e}"
        );
    }

    #[test]
    fn verdicts() {
        assert!(GuardEvent::Clean.is_verdict());
        assert!(GuardEvent::Dirty("x".into()).is_verdict());
        assert!(!GuardEvent::Started(1).is_verdict());
        assert!(
            !GuardEvent::Restarted {
                pid: 1,
                why: String::new()
            }
            .is_verdict()
        );
        assert!(!GuardEvent::Exited("x".into()).is_verdict());
    }

    #[test]
    fn commands_round_trip_and_bad_ones_are_refused() {
        let mut wire = Vec::new();
        let all = [
            GuardCommand::Command { group: 4242 },
            GuardCommand::Teardown,
        ];
        for c in all {
            c.write_to(&mut wire).unwrap();
        }
        assert_eq!(commands(&wire), all.map(Ok));
        for bad in [
            "teardown\n",
            "\"teardown now\"\n",
            "{\"command\":{}}\n",
            "{\"command\":{\"group\":\"x\"}}\n",
            "{\"command\":{\"group\":0}}\n",
            "{\"command\":{\"group\":1}}\n",
            "{\"command\":{\"group\":-5}}\n",
            "\"teardo",
        ] {
            let got = commands(bad.as_bytes());
            let [Err(e)] = &got[..] else {
                panic!("{bad:?} gave {got:?}")
            };
            assert!(
                e.contains("message from the rank on the lifeline: ")
                    && e.contains("a command (teardown, or command"),
                "{e}"
            );
        }
    }
}
