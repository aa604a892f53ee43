//! `--collect DIR`: at teardown, before anything is killed, every host reads its own containers'
//! logs and its daemon's log (in parallel, each into an unnamed file in its state directory),
//! then streams that share to rank 0 over MPI in bounded chunks; rank 0 writes every file
//! (`out`; `via_swarm` reads through the manager what MPI cannot carry). A time budget bounds it
//! all; a second signal skips it.
//!
//! Why everything goes through rank 0: one file per service holds the lines of every host, so it
//! needs one writer; DIR may be node-local to rank 0 (only rank 0's view of it was checked before
//! the start); and files then belong to one process of the user, never to sub-uids.
//!
//! What a host sends is lines: `S\t<service>\t<log line>`, `D\t<daemon log line>`,
//! `M\t<what is missing>` and a final `E` (its share arrived whole).

pub mod out;
pub mod via_swarm;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::host::engine::{Engine, frames};
use crate::host::host_daemon::HostDaemon;
use crate::mpi::collective::{Gathered, Leaders};
use crate::plan::config::Collect;
use crate::swarm::collect::out::{Output, SERVICE_CAP};
use crate::sys::deadline::time_left;
use crate::sys::signals::Signals;

/// The most kept of one host's daemon log: its end.
const DAEMON_LOG_CAP: u64 = 4 << 20;
/// Longer lines are split (a TTY's output may have no newlines at all).
const MAX_LINE: usize = 64 << 10;
/// Share of the budget for reading on each host; the rest is for the transfer to rank 0.
const READ_SHARE: f64 = 0.7;
/// How long past the budget a transfer may wait for a host that does not answer at all (dead):
/// then MPI is given up, as for any collective past its deadline.
const TRANSFER_GRACE: Duration = Duration::from_secs(2);
/// What the manager's log API gets at least, when MPI could not carry every host's share: a host
/// that does not answer takes the transfer to the budget's end, and its logs are the ones wanted.
const MANAGER_FLOOR: Duration = Duration::from_secs(2);

/// Collects this host's share and, at rank 0, writes everything under `DIR/<job>/`; returns
/// that directory at rank 0. Never fails the teardown: problems are logged and named in
/// `INCOMPLETE`.
pub fn at_teardown(
    leaders: &mut Leaders,
    signals: &Signals,
    plan: &Collect,
    daemon: &HostDaemon,
    hosts: &[String],
    job: &str,
) -> Option<PathBuf> {
    let start = Instant::now();
    let deadline = start + plan.budget;
    let read_until = start + plan.budget.mul_f64(READ_SHARE);
    let skipped = signals.urgent();
    let host = leaders.host.clone();
    let abandoned = leaders.abandoned_because().map(str::to_owned);
    if !leaders.is_root() && abandoned.is_some() {
        hold_for_the_manager(signals, deadline);
        return None;
    }
    let mut out = if leaders.is_root() {
        open_output(plan, job, hosts, skipped, &daemon.engine, read_until)
    } else {
        None
    };
    let share = if skipped {
        None
    } else {
        let stopped = || signals.urgent();
        spool(daemon, &host, read_until, &stopped)
            .inspect_err(|e| warn!("--collect: {e:#}"))
            .ok()
    };
    let cut = carry_shares(leaders, signals, share, out.as_mut(), abandoned, deadline);
    let mpi_failed = matches!(cut, Some(Cut::Failed(_)));
    let why = cut.map(|c| match c {
        _ if signals.urgent() => "a second signal ended it".to_owned(),
        Cut::Budget => format!(
            "the time budget ran out (--collect-timeout {:?})",
            plan.budget
        ),
        Cut::Failed(e) => e,
    });
    let mut out = out?;
    if let Some(why) = why.as_deref().filter(|_| mpi_failed && !signals.urgent()) {
        // Within the budget: the other hosts keep their daemons that long (see above).
        let until = deadline.max(Instant::now() + MANAGER_FLOOR);
        by_manager(&mut out, &daemon.engine, until, why);
    }
    let dir = out.finish(why.as_deref());
    let incomplete = why.map_or("", |_| " (incomplete: see INCOMPLETE there)");
    let took = start.elapsed().as_secs_f64();
    info!(
        "collected into {} in {took:.2} s{incomplete}",
        dir.display()
    );
    Some(dir)
}

/// Rank 0's output directory, with the swarm's own facts (unless a second signal asked for an
/// immediate teardown).
fn open_output(
    plan: &Collect,
    job: &str,
    hosts: &[String],
    skipped: bool,
    engine: &Engine,
    read_until: Instant,
) -> Option<Output> {
    let mut out = Output::create(&plan.dir, job, hosts)
        .inspect_err(|e| warn!("--collect: {e:#}"))
        .ok();
    if let Some(o) = out.as_mut() {
        if skipped {
            o.missing("everything: a second signal asked for an immediate teardown".into());
        } else {
            o.swarm_facts(engine, read_until);
        }
    }
    out
}

/// Every host's share to rank 0 over MPI, unless an earlier collective was abandoned (then rank
/// 0 keeps only its own); what cut the transfer short, if anything.
fn carry_shares(
    leaders: &mut Leaders,
    signals: &Signals,
    share: Option<File>,
    mut out: Option<&mut Output>,
    abandoned: Option<String>,
    deadline: Instant,
) -> Option<Cut> {
    match abandoned {
        Some(reason) => {
            if let Some(o) = out.as_mut() {
                keep_own_share(o, share);
            }
            Some(Cut::Failed(format!(
                "an earlier MPI collective was abandoned ({reason}), so MPI could carry no \
                 other host's share"
            )))
        }
        None => {
            let stop = || signals.urgent() || Instant::now() >= deadline;
            let until = deadline + TRANSFER_GRACE;
            transfer(leaders, share, out, stop, until)
        }
    }
}

/// A host other than rank 0's when MPI cannot carry its share: rank 0 reads its containers'
/// logs through the swarm's manager meanwhile, so the daemon and its containers stay for the
/// budget (a second signal ends the wait).
fn hold_for_the_manager(signals: &Signals, deadline: Instant) {
    while !signals.urgent() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Why the transfer did not bring every host's whole share.
enum Cut {
    Budget,
    Failed(String),
}

/// Rank 0's own share, straight into the output (no other host's can come over MPI).
fn keep_own_share(out: &mut Output, share: Option<File>) {
    let Some(mut src) = share else {
        return;
    };
    let mut buf = vec![0u8; 1 << 20];
    while let Ok(n @ 1..) = src.read(&mut buf) {
        out.take(0, &buf[..n]);
    }
}

/// The hosts whose share did not all arrive: their service logs through the swarm's manager
/// (which gathers them from each node), as time allows; their daemon logs are named missing.
fn by_manager(out: &mut Output, engine: &Engine, until: Instant, why: &str) {
    let hosts: BTreeSet<String> = out.unfinished_hosts().into_iter().collect();
    if hosts.is_empty() {
        return;
    }
    let mut lines = Vec::new();
    if let Err(e) =
        crate::swarm::collect::via_swarm::service_logs(engine, &hosts, until, &mut lines)
    {
        let _ = note(
            &mut lines,
            &format!("services/*.log through the swarm manager: {e:#}"),
        );
    }
    out.take_lines(&lines);
    for host in hosts {
        out.unreachable(
            &host,
            format!(
                "hosts/{host}/daemon.log: not kept: {why}; the service logs of {host} were read \
                 through the swarm manager instead"
            ),
        );
    }
}

/// Every host's share to rank 0's output; `None` when all of it arrived.
fn transfer(
    leaders: &mut Leaders,
    share: Option<File>,
    mut out: Option<&mut Output>,
    stop: impl Fn() -> bool,
    deadline: Instant,
) -> Option<Cut> {
    let mut source = share.map(BufReader::new);
    let gathered = leaders.gather_stream(
        source.as_mut().map(|s| s as &mut dyn Read),
        |host, bytes| {
            if let Some(o) = out.as_mut() {
                o.take(host, bytes);
            }
        },
        stop,
        "send their collected logs to rank 0",
        deadline,
    );
    match gathered {
        Ok(Gathered::Complete) => None,
        Ok(Gathered::Stopped) => Some(Cut::Budget),
        Err(e) => Some(Cut::Failed(format!("{e:#}"))),
    }
}

/// This host's share, in an unnamed file in its state directory (memory stays bounded; the
/// file goes with the teardown), rewound for sending.
fn spool(
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
        out.write_all(b"E\n")?;
        out.flush()
            .with_context(|| format!("failed to write the spool file on {host}"))?;
    }
    file.seek(SeekFrom::Start(0))?;
    Ok(file)
}

/// A line for INCOMPLETE.
fn note(out: &mut impl Write, what: &str) -> Result<()> {
    writeln!(out, "M\t{}", what.replace('\n', " "))?;
    Ok(())
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
    let Some(left) = time_left(until) else {
        return note(
            out,
            &format!("services/*.log: the logs on {host}: the time budget ran out"),
        );
    };
    let filter = json!({"label": ["com.docker.swarm.service.name"]}).to_string();
    let path = format!(
        "/containers/json?all=1&filters={}",
        crate::swarm::stack::encode(&filter)
    );
    let listed = engine.get_json(&path, left)?;
    for (service, mut tasks) in by_service(&listed) {
        tasks.sort();
        let mut room = SERVICE_CAP;
        for (task, id) in tasks {
            let who = format!("{task}@{host}");
            let Some(left) = time_left(until).filter(|_| !stopped()) else {
                note(
                    out,
                    &format!("services/{service}.log: {who}: the time budget ran out"),
                )?;
                continue;
            };
            if room == 0 {
                continue;
            }
            let Some((written, cut)) = task_log(engine, &id, &service, &who, room, left, out)?
            else {
                continue;
            };
            room = room.saturating_sub(written);
            if cut {
                room = 0;
                writeln!(
                    out,
                    "S\t{service}\t[mpiswarm: the logs of {service} on {host} are cut here: \
                     more than {} MiB]",
                    SERVICE_CAP >> 20
                )?;
            }
        }
    }
    Ok(())
}

/// The listed containers by service: each task's name and container ID.
fn by_service(listed: &Value) -> BTreeMap<String, Vec<(String, String)>> {
    let mut services: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for c in listed.as_array().into_iter().flatten() {
        let label = |k: &str| c.pointer(&format!("/Labels/{k}")).and_then(Value::as_str);
        let (Some(service), Some(id)) = (
            label("com.docker.swarm.service.name"),
            c.get("Id").and_then(Value::as_str),
        ) else {
            continue;
        };
        let task = label("com.docker.swarm.task.name").unwrap_or(id);
        services
            .entry(service.to_owned())
            .or_default()
            .push((task.to_owned(), id.to_owned()));
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
    left: Duration,
    out: &mut impl Write,
) -> Result<Option<(usize, bool)>> {
    let path = format!("/containers/{id}/logs?stdout=1&stderr=1&timestamps=1");
    match engine.get_capped(&path, room, left) {
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

/// Writes a container's log stream as `S` lines (`<time> <task>@<host> <stream> <text>`), at
/// most `room` bytes of them; returns the bytes written and whether some did not fit.
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
                let head = format!("S\t{service}\t");
                let prefix = format!(" {who} {stream} ");
                let size = time.len() + prefix.len() + text.len() + 1;
                if written + size > room {
                    return Ok((written, true));
                }
                out.write_all(head.as_bytes())?;
                out.write_all(time)?;
                out.write_all(prefix.as_bytes())?;
                out.write_all(text)?;
                out.write_all(b"\n")?;
                written += size;
            }
        }
    }
    Ok((written, false))
}

/// The end of this host's daemon log (at most `DAEMON_LOG_CAP` bytes) as `D` lines.
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
        writeln!(
            out,
            "D\t[mpiswarm: the first {skip} bytes of {} on {host} are not kept: only its last {} MiB]",
            path.display(),
            DAEMON_LOG_CAP >> 20
        )?;
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
            out.write_all(b"D\t")?;
            out.write_all(piece)?;
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::engine::tests::frame;

    #[test]
    fn log_lines_carry_time_task_node_and_stream_and_are_cut_at_the_cap() {
        let mut body = frame(1, "T1 first line\nT2 second line\n");
        body.extend(frame(2, "T3 an error\n"));
        let mut out = Vec::new();
        let (n, cut) = format_logs(&body, "web", "web.1.x@h2", 1 << 20, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!cut);
        assert_eq!(
            text,
            "S\tweb\tT1 web.1.x@h2 stdout first line\nS\tweb\tT2 web.1.x@h2 stdout second line\n\
             S\tweb\tT3 web.1.x@h2 stderr an error\n"
        );
        assert!(n > 0);
        let mut out = Vec::new();
        let (n, cut) = format_logs(&body, "web", "web.1.x@h2", 40, &mut out).unwrap();
        assert!(cut && n <= 40, "{n}");
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 1);
    }

    #[test]
    fn a_daemon_log_is_kept_whole_or_by_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("daemon.log");
        std::fs::write(&log, "one\ntwo\n").unwrap();
        let mut out = Vec::new();
        let until = Instant::now() + Duration::from_secs(5);
        daemon_log(&log, "h1", until, &mut out).unwrap();
        assert_eq!(out, b"D\tone\nD\ttwo\n");
        let mut out = Vec::new();
        daemon_log(&dir.path().join("gone"), "h1", until, &mut out).unwrap();
        assert!(
            String::from_utf8(out)
                .unwrap()
                .starts_with("M\thosts/h1/daemon.log: ")
        );
    }
}
