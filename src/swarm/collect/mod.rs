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
//! What a host sends is lines (`protocol`): its services' log lines, its daemon's, what is
//! missing, and a final end (its share arrived whole).

pub mod out;
mod protocol;
mod share;
pub mod via_swarm;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::host::daemon::launch::HostDaemon;
use crate::host::engine::Engine;
use crate::mpi::collective::{Gathered, Leaders};
use crate::plan::config::Collect;
use crate::swarm::collect::out::Output;
use crate::sys::signals::Signals;

use share::{note, spool};

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
