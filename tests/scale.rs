//! Many ranks per host (one per core, as users launch MPI programs): one daemon per host, the
//! ranks that do not lead their host stay small and idle, and the exit code and teardown are as
//! with one rank per host.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

const RANKS_PER_HOST: usize = 16;
const HOSTS: usize = 3;
/// A rank that only waits may hold this much more memory than the smallest leader at most.
const FOLLOWER_EXTRA_KIB: u64 = 4 * 1024;

/// Peak resident memory (VmHWM) and CPU ticks used so far by a process.
fn usage(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM");
    let fields = stat_fields(pid);
    (hwm, (fields[11] + fields[12]) as u64)
}

/// Fields of /proc/PID/stat after the command's name, as numbers (state, a letter, reads 0):
/// session is 3, user and system CPU ticks 11 and 12, niceness 16.
fn stat_fields(pid: u32) -> Vec<i64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    stat[stat.rfind(')').expect("comm") + 2..]
        .split(' ')
        .map(|f| f.parse().unwrap_or(0))
        .collect()
}

fn niceness(pid: u32) -> i64 {
    stat_fields(pid)[16]
}

fn session(pid: u32) -> i64 {
    stat_fields(pid)[3]
}

/// The one process on `host` whose command line matches `pattern`.
fn one_on(host: &str, pattern: &str) -> u32 {
    let found = pids_matching_on(host, pattern);
    assert_eq!(found.len(), 1, "{pattern} on {host}: {found:?}");
    found[0]
}

/// The system call a process's main thread is blocked in (`None` while it runs).
fn blocked_in(pid: u32) -> Option<u64> {
    let line = std::fs::read_to_string(format!("/proc/{pid}/syscall")).ok()?;
    line.split_whitespace().next()?.parse().ok()
}

/// Whether a rank waits in the kernel on a socket: poll or ppoll (x86_64 numbers), seen in one of
/// a few looks (a look may fall on its periodic signal check).
fn waits_in_poll(pid: u32) -> bool {
    (0..20).any(|_| {
        let blocked = matches!(blocked_in(pid), Some(7 | 271));
        if !blocked {
            std::thread::sleep(Duration::from_millis(30));
        }
        blocked
    })
}

#[test]
fn sixteen_ranks_per_host_share_one_daemon_and_the_others_stay_idle() {
    let Some(_c) = cluster() else { return };
    let np = RANKS_PER_HOST * HOSTS;
    let bg = Background::start(np, HOSTS, &[]);
    let ranks = ranks();
    assert_eq!(ranks.len(), np, "expected {np} ranks: {ranks:?}");
    let nodes = bg.docker("node ls -q");
    assert_eq!(
        String::from_utf8_lossy(&nodes.stdout).lines().count(),
        HOSTS
    );
    let mut leaders = Vec::new();
    let mut followers = Vec::new();
    for h in hosts(HOSTS) {
        let daemons = pids_matching_on(&h, "^dockerd").len();
        assert_eq!(daemons, 1, "expected one dockerd on {h}");
        // The lowest rank on a host leads it.
        let mut on_host: Vec<&(u32, String, u32)> = ranks.iter().filter(|r| r.1 == h).collect();
        assert_eq!(on_host.len(), RANKS_PER_HOST, "ranks on {h}: {on_host:?}");
        on_host.sort_by_key(|r| r.2);
        leaders.push(on_host[0].0);
        followers.extend(on_host[1..].iter().map(|r| r.0));
    }
    // The others wait in the kernel, connected to their leader's end socket, not inside MPI;
    // once all of a host's ranks are connected, its path is gone from the disk.
    for h in hosts(HOSTS) {
        assert_eq!(
            state_entry(&format!("-{h}.end")),
            None,
            "{h}'s end socket outlived the greeting"
        );
    }
    // Each daemon has a session (a CPU scheduling group) of its own beside its host's ranks,
    // which keep their priority: a lower one slowed MPI's start.
    for (h, leader) in hosts(HOSTS).iter().zip(&leaders) {
        let guard = one_on(h, "mpiswarm guard");
        let rootlesskit = one_on(h, "^rootlesskit");
        assert_eq!(
            session(guard),
            i64::from(guard),
            "{h}'s guard leads a session"
        );
        assert_eq!(session(rootlesskit), i64::from(guard), "{h}'s daemon in it");
        assert_ne!(session(*leader), session(guard), "{h}'s leader outside it");
    }
    for pid in leaders.iter().chain(&followers) {
        assert_eq!(niceness(*pid), 0, "rank pid {pid}");
    }
    for pid in &followers {
        assert!(
            waits_in_poll(*pid),
            "rank pid {pid} is not waiting in poll (blocked in syscall {:?})",
            blocked_in(*pid)
        );
    }
    let smallest_leader = leaders.iter().map(|p| usage(*p).0).min().unwrap();
    let before: u64 = followers.iter().map(|p| usage(*p).1).sum();
    std::thread::sleep(Duration::from_secs(2));
    let after: Vec<(u64, u64)> = followers.iter().map(|p| usage(*p)).collect();
    let ticks = after.iter().map(|u| u.1).sum::<u64>() - before;
    // 45 waiting ranks over 2 s: together under a tenth of one core (20 ticks at 100 Hz).
    assert!(ticks < 20, "waiting ranks used {ticks} CPU ticks in 2 s");
    for (pid, (hwm, _)) in followers.iter().zip(&after) {
        assert!(
            *hwm <= smallest_leader + FOLLOWER_EXTRA_KIB,
            "rank pid {pid} peaked at {hwm} KiB, leaders at {smallest_leader} KiB or more"
        );
    }
    eprintln!(
        "leaders peak {smallest_leader} KiB+, followers at most {} KiB, {ticks} ticks in 2 s",
        after.iter().map(|u| u.0).max().unwrap_or(0)
    );
    bg.signal("USR1");
    let out = bg.wait(Duration::from_secs(30));
    assert!(
        text(&out).1.contains("torn down: 3 host(s) clean"),
        "{}",
        text(&out).1
    );
    assert_clean(Duration::from_secs(3));
}

#[test]
fn sixteen_ranks_per_host_return_the_commands_exit_code() {
    let Some(_c) = cluster() else { return };
    let np = RANKS_PER_HOST * HOSTS;
    let cmd = mpirun(
        np,
        HOSTS,
        &["up", "--", "sh", "-c", "docker info >/dev/null && exit 5"],
    );
    let out = run_with_deadline(cmd, Duration::from_secs(120));
    assert_eq!(out.status.code(), Some(5), "{}", text(&out).1);
    assert!(
        text(&out).1.contains("swarm ready: 3 node(s)"),
        "{}",
        text(&out).1
    );
    assert_clean(Duration::from_secs(3));
}

/// SIGKILL to one rank on host 2 of a 16-ranks-per-host job: the job ends within its deadline
/// and every host is left clean.
fn sigkill_to_rank_on_host_2(rank: u32) {
    let bg = Background::start(RANKS_PER_HOST * HOSTS, HOSTS, &[]);
    let ranks = ranks();
    let victim = ranks
        .iter()
        .find(|r| r.2 == rank)
        .unwrap_or_else(|| panic!("rank {rank}"));
    assert_eq!(victim.1, host(2), "{ranks:?}");
    let status = std::process::Command::new("kill")
        .args(["-KILL", &victim.0.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = bg.wait(Duration::from_secs(30));
    assert_clean(Duration::from_secs(3));
}

#[test]
fn sigkill_to_a_rank_that_leads_nothing_leaves_every_host_clean() {
    let Some(_c) = cluster() else { return };
    // Rank 4 shares host 2 with rank 1, its leader (ranks are placed round-robin by node).
    sigkill_to_rank_on_host_2(4);
}

#[test]
fn sigkill_to_a_host_leader_ends_its_waiting_ranks_and_leaves_every_host_clean() {
    let Some(_c) = cluster() else { return };
    // Rank 1 leads host 2 (ranks are placed round-robin by node). The guard removes the host's
    // state directory and the leader's end socket; how its waiting ranks hear the death is
    // end_notice's unit test (MPI's launcher ends them too).
    sigkill_to_rank_on_host_2(1);
}

/// A swarm of `per_host` ranks on each of `nhosts` hosts whose leaders could not listen on their
/// end sockets (the debug build's fault hook).
fn start_with_deaf_leaders(per_host: usize, nhosts: usize) -> Background {
    Background::start_env_within(
        per_host * nhosts,
        nhosts,
        &[("MPISWARM_TEST_FAULT", "end-socket")],
        &[],
        Duration::from_secs(60),
    )
}

/// Rank 0 leaves MPI alone for 1.5 s after the launcher's signal (a fault injected into the
/// debug build; stopping a command can keep it so). Meanwhile the other host's follower passes
/// the signal on to rank 0, over a connection that only opens when rank 0 looks at MPI again:
/// its send is finished at the end, and every rank reaches MPI_Finalize. (Under a loaded suite
/// such a follower gave up after 200 ms and left without MPI_Finalize, and mpirun failed the
/// job: "exiting improperly".)
#[test]
fn a_signal_passed_on_while_rank_0_is_away_from_mpi_still_ends_every_rank_in_finalize() {
    let Some(_c) = cluster() else { return };
    let bg = Background::start_env_within(
        4,
        2,
        &[("MPISWARM_TEST_FAULT", "busy-after-signal")],
        &[],
        Duration::from_secs(60),
    );
    bg.signal("USR1");
    let out = bg.wait(Duration::from_secs(30));
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("fault injected: rank 0 leaves MPI alone"),
        "the fault was not injected:\n{stderr}"
    );
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("torn down: 2 host(s) clean"), "{stderr}");
    assert_clean(Duration::from_secs(3));
}

/// A host leader that could not listen for its host's other ranks (a fault injected into the
/// debug build): they hear of the job's end over MPI, asleep meanwhile rather than spinning inside
/// MPI_Finalize, and the job ends as usual.
#[test]
fn ranks_whose_leader_could_not_listen_sleep_then_end_with_the_job() {
    let Some(_c) = cluster() else { return };
    let (per_host, nhosts) = (4, 2);
    let bg = start_with_deaf_leaders(per_host, nhosts);
    let ranks = ranks();
    let followers: Vec<u32> = hosts(nhosts)
        .iter()
        .flat_map(|h| {
            let mut on_host: Vec<&(u32, String, u32)> =
                ranks.iter().filter(|r| &r.1 == h).collect();
            on_host.sort_by_key(|r| r.2);
            on_host[1..].iter().map(|r| r.0).collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(followers.len(), (per_host - 1) * nhosts, "{ranks:?}");
    // Let them settle into their slowest look (every 50 ms), then count.
    std::thread::sleep(Duration::from_secs(3));
    let before: u64 = followers.iter().map(|p| usage(*p).1).sum();
    std::thread::sleep(Duration::from_secs(2));
    let ticks = followers.iter().map(|p| usage(*p).1).sum::<u64>() - before;
    // 6 waiting ranks over 2 s: together under a tenth of one core (20 ticks at 100 Hz).
    assert!(ticks < 20, "waiting ranks used {ticks} CPU ticks in 2 s");
    eprintln!("6 ranks waiting for the end over MPI: {ticks} CPU ticks in 2 s");
    bg.signal("USR1");
    let out = bg.wait(Duration::from_secs(30));
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("will hear of the job's end over MPI"),
        "the fault was not injected:\n{stderr}"
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("torn down: {nhosts} host(s) clean")),
        "{stderr}"
    );
    for pid in &followers {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "rank pid {pid} outlived the job"
        );
    }
    assert_clean(Duration::from_secs(3));
}

/// SIGKILL to the leader of host 2 when the leaders could not listen (the fault hook): its
/// waiting ranks, which look for the end over MPI, see it die and leave on the launcher's
/// SIGTERM (1 s after a death with Open MPI 4.1), not at its SIGKILL (2 s); every host is clean.
#[test]
fn ranks_whose_leader_could_not_listen_leave_when_it_is_killed() {
    let Some(_c) = cluster() else { return };
    let (per_host, nhosts) = (4, 2);
    let bg = start_with_deaf_leaders(per_host, nhosts);
    let ranks = ranks();
    // Ranks go round-robin by node: rank 1 leads host 2, ranks 3, 5 and 7 wait there.
    let pid_of = |rank: u32| ranks.iter().find(|r| r.2 == rank).map(|r| r.0).unwrap();
    let leader = pid_of(1);
    let waiting: Vec<u32> = [3, 5, 7].into_iter().map(pid_of).collect();
    let killed = std::time::Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-KILL", &leader.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // Exited is gone: reaping them is the launcher's daemon's business.
    let running = |p: &u32| proc_stat(*p).is_some_and(|(_, _, zombie)| !zombie);
    while waiting.iter().any(running) && killed.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let lived = killed.elapsed();
    let _ = bg.wait(Duration::from_secs(30));
    assert!(
        lived < Duration::from_millis(1900),
        "host 2's waiting ranks lived {lived:?} after their leader's death"
    );
    eprintln!("host 2's waiting ranks gone {lived:?} after their leader's death");
    assert_clean(Duration::from_secs(3));
}

/// Rank 0 starts its daemon while MPI starts, but MPI_Init does not wait for the host's Docker
/// release: the guard reads it. With many ranks per host every other rank waits inside MPI_Init
/// for rank 0, yielding its core but always runnable, and rank 0's `dockerd --version` there
/// took 0.7 s at 32 ranks per host (once 19 s, with the rest of the start). The debug build's
/// fault hook holds the probe 4 s: MPI is up on every host well before, and the daemon waits.
#[test]
fn mpi_starts_without_waiting_for_the_docker_release() {
    let Some(_c) = cluster() else { return };
    let report = user_dir()
        .join(format!("report-slow-version.{}.json", std::process::id()))
        .display()
        .to_string();
    let _ = std::fs::remove_file(&report);
    let cmd = mpirun_env(
        2,
        2,
        &[("MPISWARM_TEST_FAULT", "slow-docker-version")],
        &["up", "--report", &report, "--", "true"],
    );
    let out = run_with_deadline(cmd, Duration::from_secs(120));
    assert!(out.status.success(), "{}", text(&out).1);
    let written = std::fs::read_to_string(&report).expect("report written");
    let _ = std::fs::remove_file(&report);
    let parsed: serde_json::Value = serde_json::from_str(&written).expect("report is JSON");
    let phase = |host: &serde_json::Value, name: &str| {
        host["phases"]
            .as_array()
            .expect("phases")
            .iter()
            .find(|p| p[0] == name)
            .and_then(|p| p[1].as_f64())
            .unwrap_or_else(|| panic!("no {name} in {host}"))
    };
    for host in parsed["per_host"].as_array().expect("per_host") {
        assert!(
            phase(host, "mpi-start") < 3.0,
            "MPI waited for the probe on {}: {written}",
            host["host"]
        );
        // The fault was injected: the daemon (and only it) waited for the probe.
        assert!(phase(host, "daemon") >= 4.0, "{written}");
    }
    assert_clean(Duration::from_secs(3));
}
