//! The rank<->guard protocol, printed and parsed only here: one line per message, events from the
//! guard on its stdout, commands from the rank on the guard's stdin (the lifeline).
//!
//! Events: `started PID`, `exited STATUS` (the daemon ended early), `backlog deepened PORT,...` or
//! `backlog failed MSG` (slirp4netns' accept queues), `intruder UID PORT` (another user bound a
//! swarm port here), then one verdict: `clean` or `dirty MSG`.
//! Commands: `command PGID` (the user's command runs in that process group: the teardown kills
//! it, whatever killed the rank), `teardown`; the lifeline's end (the rank died) means the same.

use std::fmt;

use anyhow::{Result, anyhow};

/// One message from the guard to its rank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardEvent {
    /// rootlesskit started with this pid.
    Started(u32),
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
    /// The line on the wire, without its newline (messages are kept on one line).
    pub fn encode(&self) -> String {
        match self {
            GuardEvent::Started(pid) => format!("started {pid}"),
            GuardEvent::Exited(status) => format!("exited {}", one_line(status)),
            GuardEvent::Backlog(Ok(ports)) => {
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                format!("backlog deepened {}", ports.join(","))
            }
            GuardEvent::Backlog(Err(why)) => format!("backlog failed {}", one_line(why)),
            GuardEvent::Intruder { uid, port } => format!("intruder {uid} {port}"),
            GuardEvent::Clean => "clean".to_owned(),
            GuardEvent::Dirty(what) => format!("dirty {}", one_line(what)),
        }
    }

    pub fn decode(line: &str) -> Result<Self> {
        let line = line.trim_end_matches(['\n', '\r']);
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let bad = || anyhow!("unknown message from the guard: {line:?}");
        Ok(match word {
            "started" => GuardEvent::Started(rest.parse().map_err(|_| bad())?),
            "exited" => GuardEvent::Exited(rest.to_owned()),
            "backlog" => match rest.split_once(' ').unwrap_or((rest, "")) {
                ("deepened", ports) => GuardEvent::Backlog(Ok(ports
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| p.parse().map_err(|_| bad()))
                    .collect::<Result<_>>()?)),
                ("failed", why) => GuardEvent::Backlog(Err(why.to_owned())),
                _ => return Err(bad()),
            },
            "intruder" => match rest.split_once(' ') {
                Some((uid, port)) => GuardEvent::Intruder {
                    uid: uid.parse().map_err(|_| bad())?,
                    port: port.parse().map_err(|_| bad())?,
                },
                None => return Err(bad()),
            },
            "clean" if rest.is_empty() => GuardEvent::Clean,
            "dirty" => GuardEvent::Dirty(rest.to_owned()),
            _ => return Err(bad()),
        })
    }

    /// True for the guard's last word: `clean` or `dirty`.
    pub fn is_verdict(&self) -> bool {
        matches!(self, GuardEvent::Clean | GuardEvent::Dirty(_))
    }
}

/// For people: what the event says.
impl fmt::Display for GuardEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardEvent::Started(pid) => write!(f, "rootlesskit started (pid {pid})"),
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardCommand {
    /// Kill the daemon's tree and delete the state directory, then give the verdict.
    Teardown,
    /// The user's command runs in this process group (never 0 or 1): the teardown kills the
    /// group first, so that nothing of the job outlives it even when the rank was killed.
    Command { group: u32 },
}

impl GuardCommand {
    /// The line on the wire, with its newline.
    pub fn encode(self) -> String {
        match self {
            GuardCommand::Teardown => "teardown\n".to_owned(),
            GuardCommand::Command { group } => format!("command {group}\n"),
        }
    }

    pub fn decode(line: &str) -> Result<Self> {
        let bad = || anyhow!("unknown command on the lifeline: {:?}", line.trim());
        match line.trim().split_once(' ') {
            None if line.trim() == "teardown" => Ok(GuardCommand::Teardown),
            Some(("command", group)) => match group.parse() {
                Ok(group) if group > 1 => Ok(GuardCommand::Command { group }),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip() {
        let events = [
            GuardEvent::Started(4242),
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
            GuardEvent::Dirty("failed to remove /tmp/x: busy".into()),
        ];
        for e in events {
            let line = e.encode();
            assert!(!line.contains('\n'), "{line:?}");
            assert_eq!(GuardEvent::decode(&line).unwrap(), e, "{line:?}");
            assert_eq!(GuardEvent::decode(&format!("{line}\n")).unwrap(), e);
        }
    }

    #[test]
    fn multi_line_messages_stay_on_one_line() {
        let e = GuardEvent::Dirty("first\nsecond".into());
        assert_eq!(e.encode(), "dirty first second");
        assert_eq!(
            GuardEvent::decode(&e.encode()).unwrap(),
            GuardEvent::Dirty("first second".into())
        );
    }

    #[test]
    fn bad_events_are_refused() {
        for line in [
            "",
            "started",
            "started x",
            "backlog",
            "backlog maybe",
            "backlog deepened 2377,x",
            "clean up",
            "hello",
        ] {
            assert!(GuardEvent::decode(line).is_err(), "{line:?} accepted");
        }
    }

    #[test]
    fn verdicts() {
        assert!(GuardEvent::Clean.is_verdict());
        assert!(GuardEvent::Dirty("x".into()).is_verdict());
        assert!(!GuardEvent::Started(1).is_verdict());
        assert!(!GuardEvent::Exited("x".into()).is_verdict());
    }

    #[test]
    fn commands_round_trip() {
        for command in [
            GuardCommand::Teardown,
            GuardCommand::Command { group: 4242 },
        ] {
            let line = command.encode();
            assert!(line.ends_with('\n'));
            assert_eq!(GuardCommand::decode(&line).unwrap(), command);
        }
        for bad in [
            "teardown now",
            "",
            "command",
            "command x",
            "command 0",
            "command 1",
            "command -5",
        ] {
            assert!(GuardCommand::decode(bad).is_err(), "{bad:?} accepted");
        }
    }
}
