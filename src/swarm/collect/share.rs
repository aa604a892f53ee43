//! This host's share of `--collect`: its containers' logs (`ShareLine::Service`, at most
//! `SERVICE_CAP` per service) and the end of its daemon's log (`ShareLine::Daemon`), spooled into
//! an unnamed file in the state directory while every host reads its own in parallel.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use crate::host::daemon::launch::HostDaemon;
use crate::host::engine::{Engine, frames};
use crate::swarm::collect::out::SERVICE_CAP;
use crate::swarm::collect::protocol::ShareLine;
use crate::sys::deadline::{Deadline, time_left};
use crate::sys::frame::Bytes;

/// The most kept of one host's daemon log: its end.
const DAEMON_LOG_CAP: u64 = 4 << 20;
/// Longer lines are split (a TTY's output may have no newlines at all).
const MAX_LINE: usize = 64 << 10;

/// This host's share, in an unnamed file in its state directory (memory stays bounded; the
/// file goes with the teardown), rewound for sending.
pub(super) fn spool(
    daemon: &HostDaemon,
    host: &str,
    until: Instant,
    stopped: &dyn Fn() -> bool,
) -> Result<File> {
    let dir = &daemon.guard.dir;
    let mut file = tempfile::tempfile_in(&dir.path).with_context(|| {
        format!(
            "failed to make a spool file in {} on {host}",
            dir.path.display()
        )
    })?;
    {
        let mut out = BufWriter::new(&mut file);
        if let Err(e) = service_logs(&daemon.engine, host, until, stopped, &mut out) {
            note(&mut out, &format!("service logs on {host}: {e:#}"))?;
        }
        daemon_log(&dir.log(), host, until, &mut out)?;
        ShareLine::End.write_to(&mut out)?;
        out.flush()
            .with_context(|| format!("failed to write the spool file on {host}"))?;
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

/// A line for INCOMPLETE.
pub(super) fn note(out: &mut impl Write, what: &str) -> Result<()> {
    ShareLine::missing(what).write_to(out)
}

/// The logs of every swarm container on this host, service by service, each service's at most
/// `SERVICE_CAP` bytes.
fn service_logs(
    engine: &Engine,
    host: &str,
    until: Instant,
    stopped: &dyn Fn() -> bool,
    out: &mut impl Write,
) -> Result<()> {
    if time_left(until).is_none() {
        return note(
            out,
            &format!("services/*.log: the logs on {host}: the time budget ran out"),
        );
    }
    let filter = json!({"label": ["com.docker.swarm.service.name"]}).to_string();
    let path = format!(
        "/containers/json?all=1&filters={}",
        crate::swarm::stack::encode(&filter)
    );
    let listed: crate::swarm::api::List<crate::swarm::api::Container> =
        serde_json::from_value(engine.get_json(&path, Deadline::phase(until))?)
            .context("unexpected reply to GET /containers/json")?;
    for (service, mut tasks) in by_service(&listed.0) {
        tasks.sort();
        let mut room = SERVICE_CAP;
        for (task, id) in tasks {
            let who = format!("{task}@{host}");
            if time_left(until).is_none() || stopped() {
                note(
                    out,
                    &format!("services/{service}.log: {who}: the time budget ran out"),
                )?;
                continue;
            }
            if room == 0 {
                continue;
            }
            let budget = Deadline::phase(until);
            let Some((written, cut)) = task_log(engine, &id, &service, &who, room, budget, out)?
            else {
                continue;
            };
            room = room.saturating_sub(written);
            if cut {
                room = 0;
                let line = format!(
                    "[mpiswarm: the logs of {service} on {host} are cut here: more than {} MiB]",
                    SERVICE_CAP >> 20
                );
                ShareLine::Service {
                    service: service.clone(),
                    line: line.into(),
                }
                .write_to(out)?;
            }
        }
    }
    Ok(())
}

/// The listed containers by service: each task's name and container ID.
fn by_service(listed: &[crate::swarm::api::Container]) -> BTreeMap<String, Vec<(String, String)>> {
    let mut services: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for c in listed {
        let Some(service) = c.labels.get("com.docker.swarm.service.name") else {
            continue;
        };
        if c.id.is_empty() {
            continue;
        }
        let task = c.labels.get("com.docker.swarm.task.name").unwrap_or(&c.id);
        services
            .entry(service.clone())
            .or_default()
            .push((task.clone(), c.id.clone()));
    }
    services
}

/// One task's logs, at most `room` bytes: what was written and whether it was cut; `None` when
/// the daemon gave none (named in the output).
fn task_log(
    engine: &Engine,
    id: &str,
    service: &str,
    who: &str,
    room: usize,
    deadline: Deadline,
    out: &mut impl Write,
) -> Result<Option<(usize, bool)>> {
    let path = format!("/containers/{id}/logs?stdout=1&stderr=1&timestamps=1");
    match engine.get_capped(&path, room, deadline) {
        Ok((r, cut)) if r.is_success() => {
            let (written, full) = format_logs(&r.body, service, who, room, out)?;
            Ok(Some((written, cut || full)))
        }
        Ok((r, _)) => {
            note(
                out,
                &format!("services/{service}.log: {who}: {}", r.message()),
            )?;
            Ok(None)
        }
        Err(e) => {
            note(out, &format!("services/{service}.log: {who}: {e:#}"))?;
            Ok(None)
        }
    }
}

/// Writes a container's log stream as service lines (`<time> <task>@<host> <stream> <text>`),
/// at most `room` bytes of them; returns the bytes kept and whether some did not fit.
fn format_logs(
    body: &[u8],
    service: &str,
    who: &str,
    room: usize,
    out: &mut impl Write,
) -> Result<(usize, bool)> {
    let mut written = 0;
    for (stream, payload) in frames(body) {
        for line in payload.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            for piece in line.chunks(MAX_LINE) {
                let (time, text) = match piece.iter().position(|b| *b == b' ') {
                    Some(i) => (&piece[..i], &piece[i + 1..]),
                    None => (piece, &[][..]),
                };
                let prefix = format!(" {who} {stream} ");
                let size = time.len() + prefix.len() + text.len() + 1;
                if written + size > room {
                    return Ok((written, true));
                }
                let line = [time, prefix.as_bytes(), text].concat();
                ShareLine::Service {
                    service: service.to_owned(),
                    line: Bytes::new(line),
                }
                .write_to(out)?;
                written += size;
            }
        }
    }
    Ok((written, false))
}

/// The end of this host's daemon log (at most `DAEMON_LOG_CAP` bytes) as daemon lines.
fn daemon_log(path: &Path, host: &str, until: Instant, out: &mut impl Write) -> Result<()> {
    let name = format!("hosts/{host}/daemon.log");
    if time_left(until).is_none() {
        return note(out, &format!("{name}: the time budget ran out"));
    }
    let opened = File::open(path).and_then(|f| f.metadata().map(|m| (f, m.len())));
    let (mut file, len) = match opened {
        Ok(found) => found,
        Err(e) => {
            return note(
                out,
                &format!("{name}: failed to read {}: {e}", path.display()),
            );
        }
    };
    let skip = len.saturating_sub(DAEMON_LOG_CAP);
    let mut lines = if skip > 0 {
        file.seek(SeekFrom::Start(skip))?;
        ShareLine::Daemon(
            format!(
                "[mpiswarm: the first {skip} bytes of {} on {host} are not kept: only its last {} MiB]",
                path.display(),
                DAEMON_LOG_CAP >> 20
            )
            .into(),
        )
        .write_to(out)?;
        let mut lines = BufReader::new(file.take(DAEMON_LOG_CAP)).split(b'\n');
        // The first line is a piece of one.
        lines.next();
        lines
    } else {
        BufReader::new(file.take(DAEMON_LOG_CAP)).split(b'\n')
    };
    for line in lines.by_ref() {
        let line = line.with_context(|| format!("failed to read {} on {host}", path.display()))?;
        for piece in line.chunks(MAX_LINE) {
            ShareLine::Daemon(Bytes::new(piece.to_vec())).write_to(out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::engine::tests::frame;
    use crate::swarm::collect::protocol::tests::{lines, service};
    use std::time::Duration;

    #[test]
    fn log_lines_carry_time_task_node_and_stream_and_are_cut_at_the_cap() {
        let mut body = frame(1, "T1 first line\nT2 second line\n");
        body.extend(frame(2, "T3 an error\n"));
        let mut out = Vec::new();
        let (n, cut) = format_logs(&body, "web", "web.1.x@h2", 1 << 20, &mut out).unwrap();
        assert!(!cut);
        assert_eq!(
            lines(&out),
            [
                Ok(service("web", "T1 web.1.x@h2 stdout first line")),
                Ok(service("web", "T2 web.1.x@h2 stdout second line")),
                Ok(service("web", "T3 web.1.x@h2 stderr an error")),
            ]
        );
        assert!(n > 0);
        let mut out = Vec::new();
        let (n, cut) = format_logs(&body, "web", "web.1.x@h2", 40, &mut out).unwrap();
        assert!(cut && n <= 40, "{n}");
        assert_eq!(lines(&out).len(), 1);
    }

    #[test]
    fn a_daemon_log_is_kept_whole_or_by_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("daemon.log");
        std::fs::write(&log, b"one\ntw\xffo\n").unwrap();
        let mut out = Vec::new();
        let until = Instant::now() + Duration::from_secs(5);
        daemon_log(&log, "h1", until, &mut out).unwrap();
        assert_eq!(
            lines(&out),
            [
                Ok(ShareLine::Daemon(Bytes::Utf8("one".into()))),
                Ok(ShareLine::Daemon(Bytes::Raw(b"tw\xffo".to_vec()))),
            ]
        );
        let mut out = Vec::new();
        daemon_log(&dir.path().join("gone"), "h1", until, &mut out).unwrap();
        let [Ok(ShareLine::Missing(what))] = &lines(&out)[..] else {
            panic!("{out:?}")
        };
        assert!(what.starts_with("hosts/h1/daemon.log: "), "{what}");
    }
}
