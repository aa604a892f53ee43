//! What rank 0 writes for `--collect DIR`: `DIR/<job>/` (0700) with `tasks.json` and
//! `nodes.json` from the swarm, every host's share as it arrives (`services/<service>.log`,
//! `hosts/<host>/daemon.log`), `report.json` (written by `up` after the teardown) and
//! `INCOMPLETE`, which names whatever the time budget or a failure left out. Files are 0600.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::host::engine::Engine;
use crate::swarm::api::{self, List};
use crate::swarm::collect::protocol::ShareLine;
use crate::sys::deadline::{Deadline, time_left};
use crate::sys::frame::MAX_FRAME;

/// The most kept of one service's logs on one host; beyond it they are cut, saying so.
pub const SERVICE_CAP: usize = 4 << 20;

/// What builds one of the swarm's files from the manager's API, before a deadline.
type Facts = fn(&Engine, Instant) -> Result<Value>;

/// Rank 0's output directory for one run.
pub struct Output {
    root: PathBuf,
    hosts: Vec<String>,
    /// Each host's last line, until its end arrives.
    pending: Vec<Vec<u8>>,
    /// Hosts whose whole share arrived.
    ended: Vec<bool>,
    received: Vec<u64>,
    missing: Vec<String>,
}

impl Output {
    /// Makes `dir` (if needed) and `dir/<job>/`, new and private. Until `finish`, INCOMPLETE
    /// says that collection was under way: a run killed meanwhile leaves that explanation.
    pub fn create(dir: &Path, job: &str, hosts: &[String]) -> Result<Output> {
        match DirBuilder::new().mode(0o700).create(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                return Err(e).with_context(|| format!("failed to create {}", dir.display()));
            }
            _ => {}
        }
        let root = dir.join(job);
        DirBuilder::new()
            .mode(0o700)
            .create(&root)
            .with_context(|| format!("failed to create {}", root.display()))?;
        for sub in ["services", "hosts"] {
            let path = root.join(sub);
            DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .with_context(|| format!("failed to create {}", path.display()))?;
        }
        let out = Output {
            root,
            hosts: hosts.to_vec(),
            pending: vec![Vec::new(); hosts.len()],
            ended: vec![false; hosts.len()],
            received: vec![0; hosts.len()],
            missing: Vec::new(),
        };
        out.write_file(
            "INCOMPLETE",
            b"collection was under way when mpiswarm ended: it was killed before it finished \
              (e.g. by the launcher after its grace period); what is here was kept\n",
        )?;
        Ok(out)
    }

    /// Something that will not be in the directory, for INCOMPLETE.
    pub fn missing(&mut self, what: String) {
        if !self.missing.contains(&what) {
            self.missing.push(what);
        }
    }

    fn write_file(&self, name: &str, contents: &[u8]) -> Result<()> {
        crate::sys::private_file::write(&self.root.join(name), contents)
    }

    /// `tasks.json` and `nodes.json` from the manager, as far as time allows.
    pub fn swarm_facts(&mut self, engine: &Engine, until: Instant) {
        let builders: [(&str, Facts); 2] = [("tasks.json", tasks), ("nodes.json", nodes)];
        for (name, build) in builders {
            if time_left(until).is_none() {
                self.missing(format!("{name}: the time budget ran out"));
                continue;
            }
            let written = build(engine, until).and_then(|v| {
                let mut text = serde_json::to_vec_pretty(&v)?;
                text.push(b'\n');
                self.write_file(name, &text)
            });
            if let Err(e) = written {
                self.missing(format!("{name}: {e:#}"));
            }
        }
    }

    /// A piece of host `host`'s share (see `collect`): complete lines are written at once.
    pub fn take(&mut self, host: usize, bytes: &[u8]) {
        let Some(pending) = self.pending.get_mut(host) else {
            return;
        };
        self.received[host] += bytes.len() as u64;
        pending.extend_from_slice(bytes);
        let end = match pending.iter().rposition(|b| *b == b'\n') {
            Some(end) => end + 1,
            // Longer than any line a share sends: not one (and never kept whole in memory).
            None if pending.len() > MAX_FRAME => {
                pending.clear();
                let what = format!(
                    "{}: a line of its share longer than {MAX_FRAME} bytes was dropped",
                    self.hosts[host]
                );
                self.missing(what);
                return;
            }
            None => return,
        };
        let lines: Vec<u8> = pending.drain(..end).collect();
        self.apply(host, &lines);
    }

    /// Complete service and missing lines that come from no host's share (the swarm manager's).
    pub fn take_lines(&mut self, lines: &[u8]) {
        self.apply(0, lines);
    }

    /// The hosts whose share has not all arrived.
    pub fn unfinished_hosts(&self) -> Vec<String> {
        self.hosts
            .iter()
            .zip(&self.ended)
            .filter(|(_, ended)| !**ended)
            .map(|(h, _)| h.clone())
            .collect()
    }

    /// A host whose share cannot arrive, with what that leaves out and why (instead of the
    /// general "did not all reach rank 0").
    pub fn unreachable(&mut self, host: &str, what: String) {
        if let Some(i) = self.hosts.iter().position(|h| h == host) {
            self.ended[i] = true;
        }
        self.missing(what);
    }

    /// Writes complete lines of one host, each batch of lines for one file at once.
    fn apply(&mut self, host: usize, lines: &[u8]) {
        let mut batch: Option<(PathBuf, Vec<u8>)> = None;
        for line in lines.split_inclusive(|b| *b == b'\n') {
            let (target, text) = match ShareLine::decode(line) {
                Ok(ShareLine::Service { service, line }) => {
                    let name = format!("{}.log", file_name(&service));
                    (self.root.join("services").join(name), line)
                }
                Ok(ShareLine::Daemon(line)) => {
                    let host_dir = file_name(&self.hosts[host]);
                    let path = self.root.join("hosts").join(host_dir).join("daemon.log");
                    (path, line)
                }
                Ok(ShareLine::Missing(what)) => {
                    self.missing(what);
                    continue;
                }
                Ok(ShareLine::End) => {
                    self.ended[host] = true;
                    continue;
                }
                Err(e) => {
                    let what = format!("{}: {e:#}", self.hosts[host]);
                    self.missing(what);
                    continue;
                }
            };
            if batch.as_ref().is_some_and(|(p, _)| *p != target)
                && let Some((path, bytes)) = batch.take()
            {
                self.append(&path, &bytes);
            }
            let (_, bytes) = batch.get_or_insert_with(|| (target, Vec::new()));
            bytes.extend_from_slice(text.as_bytes());
            bytes.push(b'\n');
        }
        if let Some((path, bytes)) = batch {
            self.append(&path, &bytes);
        }
    }

    /// Appends to a file of the output (created 0600, never through a symlink).
    fn append(&mut self, path: &Path, bytes: &[u8]) {
        let written = path
            .parent()
            .map_or(Ok(()), |dir| {
                DirBuilder::new().mode(0o700).recursive(true).create(dir)
            })
            .and_then(|()| {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(path)
            })
            .and_then(|mut f| f.write_all(bytes));
        if let Err(e) = written {
            self.missing(format!("{}: failed to write: {e}", path.display()));
        }
    }

    /// Names the hosts whose share did not all arrive, then writes INCOMPLETE (or removes it
    /// when nothing is missing); returns the directory.
    pub fn finish(mut self, why: Option<&str>) -> PathBuf {
        for host in 0..self.hosts.len() {
            if !self.ended[host] {
                let what = format!(
                    "{}: its logs and daemon log did not all reach rank 0 ({} bytes arrived)",
                    self.hosts[host], self.received[host]
                );
                self.missing(what);
            }
        }
        let path = self.root.join("INCOMPLETE");
        if self.missing.is_empty() && why.is_none() {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!("--collect: failed to remove {}: {e}", path.display());
            }
            return self.root;
        }
        let mut text = format!(
            "collection stopped before everything was kept: {}\nmissing:\n",
            why.unwrap_or("some parts failed")
        );
        for m in &self.missing {
            text.push_str(&format!("- {m}\n"));
        }
        if let Err(e) = self.write_file("INCOMPLETE", text.as_bytes()) {
            tracing::warn!("--collect: {e:#}");
        }
        self.root
    }
}

/// A service or host name as one file name: no separators, no hidden or special names.
pub fn file_name(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.is_empty() || safe.starts_with('.') {
        format!("_{safe}")
    } else {
        safe
    }
}

fn get<T: DeserializeOwned>(engine: &Engine, path: &str, until: Instant) -> Result<T> {
    time_left(until).context("the time budget ran out")?;
    api::get(engine, path, Deadline::phase(until))
}

/// Node ids to host names.
fn hostnames(nodes: &[api::Node]) -> impl Fn(&str) -> Option<String> + '_ {
    move |id| {
        nodes.iter().find_map(|n| {
            (n.id == id)
                .then(|| n.description.hostname.clone())
                .flatten()
        })
    }
}

/// Every task of every service: where it ran, its states, exit code and error.
fn tasks(engine: &Engine, until: Instant) -> Result<Value> {
    let List(mut tasks): List<api::Task> = get(engine, "/tasks", until)?;
    let List(services): List<api::Service> = get(engine, "/services", until)?;
    let List(nodes): List<api::Node> = get(engine, "/nodes", until)?;
    let host_of = hostnames(&nodes);
    let service_of = |id: &str| {
        services
            .iter()
            .find_map(|s| (s.id == id && !s.spec.name.is_empty()).then(|| s.spec.name.clone()))
    };
    tasks.sort_by_key(|t| (service_of(&t.service_id), t.slot, t.created_at.clone()));
    let list = tasks
        .iter()
        .map(|t| {
            let container = t.status.container_status.as_ref();
            json!({
                "service": service_of(&t.service_id),
                "slot": t.slot,
                "id": t.id,
                "node": t.node_id.as_deref().and_then(&host_of),
                "desired_state": t.desired_state,
                "state": t.status.state,
                "exit_code": container.and_then(|c| c.exit_code),
                "error": t.status.err,
                "message": t.status.message,
                "container": container.and_then(|c| c.container_id.clone()),
                "created_at": t.created_at,
                "updated_at": t.updated_at,
                "status_at": t.status.timestamp,
            })
        })
        .collect();
    Ok(Value::Array(list))
}

/// The swarm's nodes with their roles, states and labels (the node's and its daemon's).
fn nodes(engine: &Engine, until: Instant) -> Result<Value> {
    let List(nodes): List<api::Node> = get(engine, "/nodes", until)?;
    let list = nodes
        .iter()
        .map(|n| {
            json!({
                "id": n.id,
                "hostname": n.description.hostname,
                "role": n.spec.role,
                "availability": n.spec.availability,
                "state": n.status.state,
                "addr": n.status.addr,
                "leader": n.manager_status.as_ref().is_some_and(|m| m.leader),
                "labels": n.spec.labels,
                "engine_labels": n.description.engine.labels,
                "engine": n.description.engine.engine_version,
            })
        })
        .collect();
    Ok(Value::Array(list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::collect::protocol::tests::service;
    use std::os::unix::fs::MetadataExt;

    /// A share's lines on the wire.
    fn wire(lines: &[ShareLine]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            l.write_to(&mut out).unwrap();
        }
        out
    }

    #[test]
    fn names_become_safe_file_names() {
        assert_eq!(file_name("col_web"), "col_web");
        assert_eq!(file_name("../x/y"), "_.._x_y");
        assert_eq!(file_name(""), "_");
    }

    #[test]
    fn shares_are_written_by_line_whatever_the_chunking() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["h1".to_owned(), "h2".to_owned()];
        let mut out = Output::create(dir.path(), "j1", &hosts).unwrap();
        let h1 = wire(&[
            service("web", "t1 web.1@h1 stdout a"),
            ShareLine::Daemon("daemon says".to_owned().into()),
            ShareLine::missing("something"),
            ShareLine::End,
        ]);
        let h2 = wire(&[service("web", "t2 web.2@h2 stdout b")]);
        // Pieces cut anywhere, hosts interleaved.
        out.take(0, &h1[..10]);
        out.take(1, &h2[..5]);
        out.take(0, &h1[10..]);
        out.take(1, &h2[5..]);
        let root = out.finish(None);
        let web = std::fs::read_to_string(root.join("services/web.log")).unwrap();
        assert_eq!(web, "t1 web.1@h1 stdout a\nt2 web.2@h2 stdout b\n");
        let daemon = std::fs::read_to_string(root.join("hosts/h1/daemon.log")).unwrap();
        assert_eq!(daemon, "daemon says\n");
        let incomplete = std::fs::read_to_string(root.join("INCOMPLETE")).unwrap();
        assert!(incomplete.contains("- something"), "{incomplete}");
        assert!(incomplete.contains("- h2: its logs"), "{incomplete}");
        assert!(!incomplete.contains("- h1"), "{incomplete}");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("services/web.log")), 0o600);
    }

    #[test]
    fn hosts_read_through_the_manager_are_named_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["h1".to_owned(), "h2".to_owned(), "h3".to_owned()];
        let mut out = Output::create(dir.path(), "j3", &hosts).unwrap();
        out.take(
            0,
            &wire(&[service("web", "t1 web.1@h1 stdout a"), ShareLine::End]),
        );
        assert_eq!(out.unfinished_hosts(), ["h2", "h3"]);
        out.take_lines(&wire(&[
            service("web", "t2 web.2@h2 stdout b"),
            ShareLine::missing("services/web.log: cut"),
        ]));
        out.unreachable("h2", "hosts/h2/daemon.log: not kept: MPI failed".into());
        let root = out.finish(Some("MPI failed"));
        let web = std::fs::read_to_string(root.join("services/web.log")).unwrap();
        assert_eq!(web, "t1 web.1@h1 stdout a\nt2 web.2@h2 stdout b\n");
        let incomplete = std::fs::read_to_string(root.join("INCOMPLETE")).unwrap();
        assert!(
            incomplete.contains("- hosts/h2/daemon.log: not kept: MPI failed"),
            "{incomplete}"
        );
        assert!(
            incomplete.contains("- services/web.log: cut"),
            "{incomplete}"
        );
        assert!(incomplete.contains("- h3: its logs"), "{incomplete}");
        assert!(!incomplete.contains("- h2: its logs"), "{incomplete}");
    }

    #[test]
    fn a_complete_collection_leaves_no_incomplete_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = Output::create(dir.path(), "j2", &["h1".to_owned()]).unwrap();
        assert!(dir.path().join("j2/INCOMPLETE").exists());
        out.take(0, &wire(&[ShareLine::End]));
        let root = out.finish(None);
        assert!(!root.join("INCOMPLETE").exists());
        // The same job twice is refused: nothing is overwritten.
        assert!(Output::create(dir.path(), "j2", &["h1".to_owned()]).is_err());
    }

    #[test]
    fn a_bad_line_or_an_endless_one_is_named_in_incomplete_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["h1".to_owned(), "h2".to_owned()];
        let mut out = Output::create(dir.path(), "j4", &hosts).unwrap();
        let mut h1 = b"S\tweb\tan old line\n".to_vec();
        h1.extend(wire(&[
            service("web", "t1 web.1@h1 stdout a"),
            ShareLine::End,
        ]));
        out.take(0, &h1);
        out.take(1, &vec![b'x'; MAX_FRAME + 1]);
        out.take(1, &wire(&[ShareLine::End]));
        let root = out.finish(None);
        let web = std::fs::read_to_string(root.join("services/web.log")).unwrap();
        assert_eq!(web, "t1 web.1@h1 stdout a\n");
        let incomplete = std::fs::read_to_string(root.join("INCOMPLETE")).unwrap();
        assert!(
            incomplete.contains(
                "- h1: unknown message from a host's --collect share: \"S\\tweb\\tan old line\" is not"
            ),
            "{incomplete}"
        );
        assert!(
            incomplete.contains("- h2: a line of its share longer than 1048576 bytes was dropped"),
            "{incomplete}"
        );
    }
}
