//! `mpiswarm up`: the whole lifecycle, phase by phase, each phase agreed by every rank: daemons
//! up, swarm init, joins, membership confirmed, the user's command (or a wait for a signal),
//! teardown everywhere.

use std::net::Ipv4Addr;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::cluster::{Cluster, PhaseFailed};
use crate::config::UpConfig;
use crate::engine::Engine;
use crate::guard::GuardHandle;
use crate::report::{HostTimes, RunReport, Timeline, phase_stats};
use crate::signals::{self, Signals};
use crate::statedir::StateDir;
use crate::{host, swarm};

/// How long the whole teardown (every host, agreed) may take before ranks give up waiting.
const TEARDOWN_DEADLINE: Duration = Duration::from_secs(20);
/// How often rank 0 tells the others it is alive while the swarm is up.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// If rank 0 falls silent this long, it is gone (some launchers, e.g. srun by default, leave the
/// other ranks running when one dies): the others give up instead of holding the allocation.
const RANK0_SILENCE_LIMIT: Duration = Duration::from_secs(15);
/// Grace for the user's command between SIGTERM and SIGKILL.
const COMMAND_GRACE: Duration = Duration::from_millis(500);

/// One host's running daemon; dropping it tears the host down.
pub struct HostDaemon {
    pub guard: GuardHandle,
    pub engine: Engine,
    pub addr: Ipv4Addr,
}

#[derive(Serialize, Deserialize)]
struct Member {
    host: String,
    leader: bool,
}

/// Runs `up` on this rank; prints its errors (rank 0 prints the cluster-wide ones) and returns
/// the exit code.
pub fn run(cfg: &UpConfig, signals: Signals) -> Result<i32> {
    let host = host::hostname();
    let job = job_key();
    // Daemons start at once, while MPI is still starting: rank 0's always (it then reaches
    // `swarm init`, about 0.6 s, while the other hosts start theirs), every host's when the nodes
    // have CPUs to spare. The launcher says which rank this is; MPI has the last word.
    let mut tl = Timeline::new(&host, -1);
    let early = if cfg.early_start_all {
        crate::cluster::launcher_local_rank() == Some(0)
    } else {
        crate::cluster::launcher_rank() == Some(0)
    };
    let early = early.then(|| launch_daemon(cfg, &job, &host, &mut tl));
    let mut cluster = Cluster::init(host.clone(), signals.clone())?;
    crate::report::set_origin(&host, cluster.rank);
    tl.set_rank(cluster.rank);
    let result = lifecycle(&mut cluster, cfg, &signals, &job, early, tl);
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            // Every rank learns a phase failure; rank 0 reports it once for all hosts.
            if cluster.is_root() || e.downcast_ref::<PhaseFailed>().is_none() {
                tracing::error!("{e:#}");
            }
            1
        }
    };
    cluster.finish(code);
    Ok(code)
}

fn lifecycle(
    c: &mut Cluster,
    cfg: &UpConfig,
    signals: &Signals,
    job: &str,
    early: Option<Result<Launched>>,
    mut tl: Timeline,
) -> Result<i32> {
    let start = Instant::now();
    let deadline = start + cfg.timeout;
    tl.add("mpi-start", c.started_in);

    let me = Member {
        host: c.host.clone(),
        leader: c.is_leader,
    };
    let members = c.all_gather(&me, "start", deadline)?;
    let hosts = leader_hosts(&members)?;
    c.hosts = hosts.len();
    debug!("job {job}: {} rank(s) on {} host(s)", c.size, hosts.len());

    // Phase: a daemon on every host; rank 0 initializes the swarm as soon as its own daemon is up,
    // while the other hosts are still starting theirs.
    let mut daemon = None;
    let mut join_info = None;
    let outputs_ok = if c.is_root() {
        check_outputs(cfg)
    } else {
        Ok(())
    };
    c.begin_progress("hosts with a daemon up", hosts.len());
    let launched = match (c.is_leader, early) {
        (true, Some(launched)) => Some(launched),
        (true, None) => Some(launch_daemon(cfg, job, &c.host, &mut tl)),
        // Not a leader. If the launcher's idea of the host's first rank was not MPI's, MPI's wins,
        // and a daemon started early is torn down as it is dropped.
        (false, _) => None,
    };
    let local = match launched {
        Some(launched) => outputs_ok
            .and(launched)
            .and_then(|l| wait_daemon(l, signals, deadline, &mut tl, c.is_root()))
            .and_then(|d| {
                c.progress_done();
                let d = daemon.insert(d);
                if c.is_root() {
                    let t = Instant::now();
                    join_info = Some(swarm::init(&d.engine, d.addr, cfg.address_pool)?);
                    tl.done("swarm-init", t);
                }
                Ok(0.0)
            }),
        None => Ok(0.0),
    };
    let my_addr = daemon
        .as_ref()
        .map_or(serde_json::Value::Null, |d| d.addr.to_string().into());
    let outcomes = c.agree_with_extra(
        "start the rootless Docker daemon and initialize the swarm",
        local,
        my_addr,
        deadline,
    );
    c.end_progress();
    let outcomes = outcomes?;
    // Advertise addresses in host order (leaders report theirs, in rank order like `hosts`).
    let addrs: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.extra.as_str().map(str::to_owned))
        .collect();
    if c.is_root() {
        info!(
            "daemons up on {} host(s) in {:.2} s",
            hosts.len(),
            start.elapsed().as_secs_f64()
        );
    }

    // The manager address and join tokens go to every rank.
    let payload = c.broadcast(
        join_info.map(|i| i.encode()),
        "receive the join token",
        deadline,
    )?;
    let info = swarm::JoinInfo::decode(&payload)?;
    drop(payload);
    // At least rank 0's host: --managers is at least 1, and rank 0 always leads a host.
    let managers = cfg.managers.min(hosts.len()).max(1);
    if cfg.managers > hosts.len() && c.is_root() {
        tracing::warn!(
            "--managers {} but only {} host(s): all of them are managers",
            cfg.managers,
            hosts.len()
        );
    }
    let index = hosts.iter().position(|h| *h == c.host);

    // Phase: managers join one at a time (Raft adds one member per change), then the workers
    // all at once, spread over the managers so that no single one takes every join.
    let t = Instant::now();
    for (turn, manager_host) in hosts.iter().enumerate().take(managers).skip(1) {
        let local = match (&daemon, index) {
            (Some(d), Some(i)) if i == turn => {
                swarm::join(&d.engine, d.addr, &info, &info.manager, true, deadline).map(|()| 0.0)
            }
            _ => Ok(0.0),
        };
        c.agree(&format!("join manager {manager_host}"), local, deadline)?;
    }
    c.begin_progress("workers joined", hosts.len().saturating_sub(managers));
    let local = match (&daemon, index) {
        (Some(d), Some(i)) if i >= managers => {
            let through = format!("{}:2377", addrs[i % managers]);
            let joined = swarm::join(&d.engine, d.addr, &info, &through, false, deadline);
            c.progress_done();
            joined.map(|()| 0.0)
        }
        _ => Ok(0.0),
    };
    drop(info);
    if daemon.is_some() && !c.is_root() {
        tl.done("join", t);
    }
    let joined = c.agree("join the swarm", local, deadline);
    c.end_progress();
    joined?;

    // Phase: rank 0 sees every host as a Ready node.
    let t = Instant::now();
    let local = if c.is_root() {
        let d = daemon.as_ref().expect("rank 0 leads its host");
        swarm::wait_members(&d.engine, &hosts, managers, deadline).map(|_| 0.0)
    } else {
        Ok(0.0)
    };
    c.agree("confirm swarm membership", local, deadline)?;
    tl.done("membership", t);
    let swarm_ready = start.elapsed().as_secs_f64();

    if !cfg.load.is_empty() {
        let t = Instant::now();
        let engine = daemon.as_ref().map(|d| &d.engine);
        let names = crate::images::distribute(c, &cfg.load, engine, deadline)?;
        tl.done("image-load", t);
        if c.is_root() {
            info!(
                "loaded {} on {} host(s) in {:.2} s",
                names.join(", "),
                hosts.len(),
                t.elapsed().as_secs_f64()
            );
        }
    }
    if let Some((file, name)) = &cfg.stack {
        let t = Instant::now();
        let local = if c.is_root() {
            let d = daemon.as_ref().expect("rank 0 leads its host");
            deploy_stack(&d.engine, file, name, deadline).map(|()| 0.0)
        } else {
            Ok(0.0)
        };
        c.agree(&format!("deploy the stack {name}"), local, deadline)?;
        tl.done("stack", t);
    }

    if let Some(image) = &cfg.verify {
        let t = Instant::now();
        crate::verify::run(
            c,
            daemon.as_ref().map(|d| &d.engine),
            &hosts,
            image,
            cfg.overlay_mtu,
            deadline,
        )?;
        tl.done("verify", t);
    }

    // Phase: the user's command on rank 0, or a wait for a signal anywhere. Whatever happens on
    // rank 0, the others are told to stop: they wait for nothing else.
    let bring_up = start.elapsed().as_secs_f64();
    let mut ready_file = None;
    let ran = if c.is_root() {
        let d = daemon.as_ref().expect("rank 0 leads its host");
        info!(
            "swarm ready: {} node(s) ({}) in {:.2} s",
            hosts.len(),
            hosts.join(", "),
            swarm_ready + c.started_in
        );
        let ran = match &cfg.ready_file {
            Some(path) => write_ready_file(path, d.engine.socket(), hosts.len(), cfg.overlay_mtu)
                .map(|()| {
                    ready_file = Some(ReadyFile(path.clone()));
                }),
            None => Ok(()),
        }
        .and_then(|()| run_or_wait(c, &cfg.command, d.engine.socket(), signals));
        c.announce_stop(*ran.as_ref().unwrap_or(&1));
        ran
    } else {
        wait_for_stop(c, signals).map(|()| 0)
    };

    // Teardown: every host at once, then agree that every host is clean.
    let t = Instant::now();
    drop(ready_file);
    let local = match daemon.take() {
        Some(mut d) => d.guard.teardown(TEARDOWN_DEADLINE).map(|()| {
            tl.done("teardown", t);
            0.0
        }),
        None => Ok(0.0),
    };
    let times = if c.is_leader {
        serde_json::to_value(tl.snapshot())?
    } else {
        serde_json::Value::Null
    };
    let outcomes = c.agree_uninterruptible(
        "tear down",
        local,
        times,
        Instant::now() + TEARDOWN_DEADLINE,
    )?;
    c.drain_stops();
    if c.is_root() {
        let per_host: Vec<HostTimes> = outcomes
            .iter()
            .filter_map(|o| serde_json::from_value(o.extra.clone()).ok())
            .collect();
        let report = RunReport {
            hosts: hosts.len(),
            ranks: c.size,
            swarm_ready_s: swarm_ready + c.started_in,
            bring_up_s: bring_up + c.started_in,
            phases: phase_stats(&per_host),
            per_host,
        };
        let slowest = report
            .phases
            .iter()
            .find(|p| p.phase == "teardown")
            .map_or(0.0, |p| p.max);
        info!(
            "torn down: {} host(s) clean, slowest {:.0} ms",
            hosts.len(),
            slowest * 1000.0
        );
        info!("{}", report.summary());
        if let Some(path) = &cfg.report {
            report.write(path)?;
        }
    }
    ran
}

/// Names this run's state directory on this host: the batch job id when there is one (so that
/// admins can match them), plus this process's pid and clock, so two runs never collide.
fn job_key() -> String {
    let batch = ["SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .map(|id| {
            id.chars()
                .filter(|ch| ch.is_ascii_alphanumeric())
                .take(12)
                .collect::<String>()
        })
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("j{batch}{:x}{:x}", std::process::id(), nanos & 0xfff)
}

/// The host of each host leader; two leaders claiming one name would share a state directory.
fn leader_hosts(members: &[Member]) -> Result<Vec<String>> {
    let mut hosts: Vec<String> = Vec::new();
    for m in members.iter().filter(|m| m.leader) {
        if hosts.contains(&m.host) {
            bail!(
                "two ranks that do not share memory both report host name {:?}: every node needs a distinct host name",
                m.host
            );
        }
        hosts.push(m.host.clone());
    }
    Ok(hosts)
}

/// A daemon whose guard has been started, not yet answering.
pub struct Launched {
    guard: GuardHandle,
    addr: Ipv4Addr,
    warnings: Vec<crate::preflight::Check>,
    started: Instant,
}

/// Checks the host and starts its guard and daemon without waiting for it: this can run while
/// MPI is still starting up.
fn launch_daemon(cfg: &UpConfig, job: &str, host: &str, tl: &mut Timeline) -> Result<Launched> {
    let t = Instant::now();
    let addr = host::advertise_addr(&cfg.host.addr)?;
    let warnings = if cfg.preflight {
        crate::preflight::require(&cfg.host, addr)?
    } else {
        Vec::new()
    };
    tl.done("checks", t);
    let started = Instant::now();
    let dir = StateDir::create(&cfg.host.state_base, job, host)?;
    let guard = GuardHandle::spawn(dir, addr, cfg.port_driver, cfg.vxlan_nolearning)?;
    Ok(Launched {
        guard,
        addr,
        warnings,
        started,
    })
}

/// Waits until a launched daemon's API answers, then prepares it for the swarm.
fn wait_daemon(
    launched: Launched,
    signals: &Signals,
    deadline: Instant,
    tl: &mut Timeline,
    is_root: bool,
) -> Result<HostDaemon> {
    let Launched {
        guard,
        addr,
        warnings,
        started,
    } = launched;
    for w in warnings {
        // Hosts are usually alike: one voice for the warnings, the others only when asked.
        if is_root {
            tracing::warn!("{}: {} ({})", w.name, w.detail, w.fix);
        } else {
            debug!("{}: {} ({})", w.name, w.detail, w.fix);
        }
    }
    let engine = Engine::new(guard.dir.socket());
    let fail = |what: String, guard: &GuardHandle| {
        anyhow!(
            "{what}; last lines of {}:\n{}",
            guard.dir.log().display(),
            guard.dir.log_tail(12)
        )
    };
    loop {
        // The guard's news so far; a short wait for more paces this loop.
        let mut wait = Duration::from_millis(10);
        while let Some(event) = guard.next_event(wait) {
            wait = Duration::ZERO;
            if let Some(status) = event.strip_prefix("exited ") {
                return Err(fail(
                    format!("the rootless daemon exited during start-up ({status})"),
                    &guard,
                ));
            }
            if event.starts_with("backlog not deepened") {
                tracing::warn!(
                    "{event}: when many hosts connect at once, some wait a second for a retransmission"
                );
            } else {
                debug!("guard: {event}");
            }
        }
        if engine.ping(Duration::from_millis(500)) {
            break;
        }
        if let Some(sig) = signals.received() {
            bail!(
                "interrupted by {} while the daemon was starting",
                signals::name(sig)
            );
        }
        if Instant::now() >= deadline {
            return Err(fail(
                format!(
                    "the daemon's API at {} did not answer before the deadline",
                    engine.socket().display()
                ),
                &guard,
            ));
        }
    }
    tl.done("daemon", started);
    let t = Instant::now();
    swarm::create_gwbridge(&engine)?;
    tl.done("gwbridge", t);
    debug!(
        "daemon up at {} (guard pid {})",
        engine.socket().display(),
        guard.pid()
    );
    Ok(HostDaemon {
        guard,
        engine,
        addr,
    })
}

fn deploy_stack(engine: &Engine, file: &Path, name: &str, deadline: Instant) -> Result<()> {
    crate::stack::deploy(engine, file, name, deadline)?;
    crate::stack::wait_converged(engine, name, deadline, |p| {
        info!("stack {name}: {}/{} replicas running", p.running, p.desired);
    })
}

/// Rank 0: runs the command (or waits), and returns the exit code mpiswarm should end with.
fn run_or_wait(c: &Cluster, command: &[String], socket: &Path, signals: &Signals) -> Result<i32> {
    let mut child = match command.split_first() {
        Some((program, args)) => Some(
            Command::new(program)
                .args(args)
                .env("DOCKER_HOST", format!("unix://{}", socket.display()))
                // Its own group, so that stopping it stops everything it started.
                .process_group(0)
                .spawn()
                .with_context(|| format!("failed to run {program:?} on rank 0"))?,
        ),
        None => {
            info!("swarm up; waiting for SIGINT, SIGTERM or SIGUSR1 to tear it down");
            None
        }
    };
    let mut last_beat = Instant::now();
    loop {
        if last_beat.elapsed() >= HEARTBEAT_EVERY {
            c.send_heartbeats();
            last_beat = Instant::now();
        }
        if let Some(ch) = child.as_mut()
            && let Some(status) = ch.try_wait()?
        {
            let code = status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            debug!("command exited with {code}");
            return Ok(code);
        }
        let stop = signals
            .received()
            .map(|sig| format!("{} received", signals::name(sig)))
            .or_else(|| {
                c.poll_stop()
                    .map(|sig| format!("{} received by another rank", signals::name(sig)))
            });
        if let Some(why) = stop {
            info!("{why}: tearing down");
            if let Some(ch) = child.as_mut() {
                stop_command(ch, signals);
            }
            return Ok(0);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGTERM to the command's group, a short grace, then SIGKILL: its owner is going away.
fn stop_command(child: &mut Child, signals: &Signals) {
    let group = Pid::from_raw(child.id() as i32);
    let _ = killpg(group, Signal::SIGTERM);
    let deadline = Instant::now() + COMMAND_GRACE;
    while Instant::now() < deadline && !signals.urgent() {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = killpg(group, Signal::SIGKILL);
    let _ = child.wait();
}

/// Ranks other than 0: wait until rank 0 says stop, or a signal arrives here (then tell rank 0).
fn wait_for_stop(c: &Cluster, signals: &Signals) -> Result<()> {
    let mut last_heard = Instant::now();
    loop {
        if c.poll_stop().is_some() {
            return Ok(());
        }
        if let Some(sig) = signals.received() {
            c.request_stop(sig);
            return Ok(());
        }
        if c.poll_heartbeats() {
            last_heard = Instant::now();
        } else if last_heard.elapsed() > RANK0_SILENCE_LIMIT {
            bail!(
                "lost contact with rank 0: no heartbeat for {} s (rank 0 died or hangs); tearing down",
                RANK0_SILENCE_LIMIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The files rank 0 writes later must be writable now: failing after the swarm is up would waste it.
fn check_outputs(cfg: &UpConfig) -> Result<()> {
    for (flag, path) in [("--ready-file", &cfg.ready_file), ("--report", &cfg.report)] {
        let Some(path) = path else { continue };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK).with_context(|| {
            format!(
                "{flag} {}: cannot write in {}",
                path.display(),
                dir.display()
            )
        })?;
    }
    Ok(())
}

/// The ready file; removed when dropped (at teardown or on any error path).
struct ReadyFile(PathBuf);

impl Drop for ReadyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn write_ready_file(path: &Path, socket: &Path, nodes: usize, mtu: u32) -> Result<()> {
    let text = format!(
        "DOCKER_HOST=unix://{}\nMPISWARM_NODES={nodes}\nMPISWARM_OVERLAY_MTU={mtu}\n\
         export DOCKER_HOST MPISWARM_NODES MPISWARM_OVERLAY_MTU\n",
        socket.display()
    );
    StateDir::write_private(path, text.as_bytes())
        .with_context(|| format!("failed to write the ready file {}", path.display()))
}
