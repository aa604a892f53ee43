//! Teardown: whatever ends the run (a signal to the launcher, SIGKILL to any rank or to the
//! launcher), every host is left clean: no process, directory, mount or socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The README's promise: a host whose rank (or guard) is killed outright is clean within a second.
const KILLED_HOST_CLEAN: Duration = Duration::from_secs(1);
/// Every host clean after a rank's SIGKILL (issue 13's target, Open MPI 4.1 defaults, 4 hosts with
/// 8 tasks): Open MPI's own second (mpirun's delay before it signals the surviving ranks) plus
/// our teardown.
const EVERY_HOST_CLEAN: Duration = Duration::from_millis(1300);
/// The other kill tests: every host clean before Open MPI's own SIGKILL of the survivors (2 s), so
/// that no host waits for it; with room for a busy 2-core machine (the target above is measured
/// by the 8-task test).
const EVERY_HOST_CLEAN_BEFORE_MPIRUNS_SIGKILL: Duration = Duration::from_millis(1900);

/// A 3-host swarm running the paper's stack (5 containers), waiting for a signal.
fn swarm_with_stack() -> Background {
    let (image, _) = image_archive("mpiswarm/busybox:latest", 0);
    let stack = fixture("paper-stack.yml");
    let bg = Background::start(
        3,
        3,
        &["--load", &image, "--stack", &stack, "--stack-name", "td"],
    );
    let containers: usize = hosts(3)
        .iter()
        .map(|h| {
            String::from_utf8_lossy(&docker_on(h, "ps -q").stdout)
                .lines()
                .count()
        })
        .sum();
    assert_eq!(containers, 5, "the stack should run 5 containers");
    assert!(
        residue().is_err(),
        "the residue check must see the running swarm"
    );
    bg
}

fn kill9(pids: &[u32]) {
    let mut cmd = Command::new("kill");
    cmd.arg("-KILL");
    for p in pids {
        cmd.arg(p.to_string());
    }
    assert!(cmd.status().unwrap().success(), "kill -9 {pids:?}");
}

fn signal_to_mpirun(sig: &str) {
    let Some(_c) = cluster() else { return };
    let bg = swarm_with_stack();
    bg.signal(sig);
    let out = bg.wait(Duration::from_secs(30));
    assert_clean(Duration::from_secs(3));
    let stderr = text(&out).1;
    // Where the launcher SIGKILLs the ranks 0.5 s after the signal, the guards clean the hosts
    // and rank 0's report is lost (README, Signals).
    assert!(
        !graceful_signal(sig) || stderr.contains("torn down: 3 host(s) clean"),
        "no teardown report:\n{stderr}"
    );
    // Nothing of the user's is left in any node-local temporary directory (e.g. a daemon's
    // goroutine dump, which containerd writes into its TMPDIR on SIGUSR1).
    let files = user_temp_files();
    assert!(
        files.is_empty(),
        "files left after SIG{sig}:\n{}",
        files.join("\n")
    );
}

#[test]
fn sigint_to_mpirun() {
    signal_to_mpirun("INT");
}

#[test]
fn sigterm_to_mpirun() {
    signal_to_mpirun("TERM");
}

#[test]
fn sigusr1_to_mpirun() {
    signal_to_mpirun("USR1");
}

/// A batch system that signals every process of a job step by pid (Slurm's process tracking
/// does) reaches the daemons too: containerd then dumps its goroutine stacks into its TMPDIR,
/// which must be inside the state directory, so that the teardown removes the dump with it.
#[test]
fn sigusr1_to_every_daemon_leaves_no_file_in_temp_dirs() {
    let Some(_c) = cluster() else { return };
    let bg = swarm_with_stack();
    for name in ["containerd", "dockerd"] {
        let status = Command::new("pkill")
            .args(["-USR1", "-u", USER, "-x", name])
            .status()
            .unwrap();
        assert!(status.success(), "no {name} to signal");
    }
    // containerd writes its dump at once; give it a moment before the teardown kills it.
    std::thread::sleep(Duration::from_millis(500));
    bg.signal("USR1");
    let _ = bg.wait(Duration::from_secs(30));
    let files = user_temp_files();
    assert!(files.is_empty(), "files left:\n{}", files.join("\n"));
    assert_clean(Duration::from_secs(3));
}

/// Every surviving rank gone after a rank's SIGKILL (issue 26, the same 8 tasks on 4 hosts): Open
/// MPI 4.1's second before it signals the survivors, their teardown, and only a brief wait for
/// the dead host's word. Measured 1.43-1.52 s on an idle machine; without the brief wait the
/// survivors lived until mpirun's own SIGKILL, 2.0 s after the death. (mpirun itself returns
/// once its daemons do: one in about ten runs the dead rank's node's daemon held it to 2.07 s.)
const SURVIVORS_GONE: Duration = Duration::from_millis(1900);

/// Kills one rank; its host must be clean within a second, every host within `every`; returns
/// how long the other ranks took to exit after the kill.
fn sigkill_one_rank(bg: Background, rank: u32, every: Duration) -> Duration {
    let ranks = ranks();
    let victim = ranks
        .iter()
        .find(|r| r.2 == rank)
        .unwrap_or_else(|| panic!("no rank {rank}: {ranks:?}"));
    let survivors: Vec<u32> = ranks.iter().filter(|r| r.2 != rank).map(|r| r.0).collect();
    let trees = daemon_trees();
    let (own, others): (Vec<Tree>, Vec<Tree>) = trees.into_iter().partition(|t| t.host == victim.1);
    assert_eq!(own.len(), 1, "one daemon tree on {}", victim.1);
    let t0 = Instant::now();
    kill9(&[victim.0]);
    let what = format!("SIGKILL to rank {rank}");
    assert_gone_within(&what, &own, t0, KILLED_HOST_CLEAN);
    assert_gone_within(&what, &others, t0, every);
    let gone = loop {
        if survivors.iter().all(|p| !running(*p)) || t0.elapsed() > Duration::from_secs(10) {
            break t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = bg.wait(Duration::from_secs(30));
    eprintln!(
        "{what}: the other ranks gone after {gone:?}, mpirun returned after {:?}",
        t0.elapsed()
    );
    assert_clean(Duration::from_secs(3));
    gone
}

/// Whether `pid` runs (an exited process not yet reaped by its parent does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn sigkill_to_a_nonzero_rank() {
    let Some(_c) = cluster() else { return };
    sigkill_one_rank(
        swarm_with_stack(),
        2,
        EVERY_HOST_CLEAN_BEFORE_MPIRUNS_SIGKILL,
    );
}

/// Open MPI 4.1's defaults, 4 hosts with 8 tasks: mpirun signals the surviving ranks a second
/// after the death, and a rank stuck in an MPI call towards the dead peer must still start its
/// host's teardown at once.
#[test]
fn sigkill_to_a_nonzero_rank_of_eight_on_four_hosts() {
    let Some(_c) = cluster() else { return };
    let bg = Background::start(8, 4, &[]);
    assert_eq!(daemon_trees().len(), 4, "one daemon per host");
    let gone = sigkill_one_rank(bg, 2, EVERY_HOST_CLEAN);
    assert!(
        gone <= SURVIVORS_GONE,
        "the other ranks lived {gone:?} after the SIGKILL of rank 2 (at most {SURVIVORS_GONE:?})"
    );
}

#[test]
fn sigkill_to_rank_0() {
    let Some(_c) = cluster() else { return };
    sigkill_one_rank(
        swarm_with_stack(),
        0,
        EVERY_HOST_CLEAN_BEFORE_MPIRUNS_SIGKILL,
    );
}

/// Rank 0's command, and everything it started, does not outlive the job whatever killed rank 0
/// (it runs in a process group of its own, out of the launcher's reach): it dies with its rank,
/// and rank 0's guard kills its group in the teardown.
#[test]
fn sigkill_to_rank_0_while_its_command_runs() {
    let Some(_c) = cluster() else { return };
    let bg = Background::start(3, 3, &["--", "sh", "-c", "sleep 3217; echo done"]);
    let uid = uid_of(USER);
    let started = Instant::now();
    while !user_processes(uid).iter().any(|p| p.contains("sleep 3217")) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the command never started:\n{}",
            user_processes(uid).join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rank0 = ranks().into_iter().find(|r| r.2 == 0).expect("rank 0");
    kill9(&[rank0.0]);
    let _ = bg.wait(Duration::from_secs(30));
    let ended = Instant::now();
    loop {
        let left = user_processes(uid);
        if left.is_empty() {
            eprintln!(
                "no process of {USER} left {:?} after the job ended",
                ended.elapsed()
            );
            break;
        }
        assert!(
            ended.elapsed() < KILLED_HOST_CLEAN,
            "{KILLED_HOST_CLEAN:?} after the job ended (rank 0 killed while its command ran), \
             processes of {USER} are left:\n{}",
            left.join("\n")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_clean(Duration::from_secs(3));
}

/// Every live process of `uid` on the machine (every simulated host shares its process table),
/// as "HOST: PID COMMAND".
fn user_processes(uid: u32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next().map(str::to_owned))
        };
        if field("Uid:").and_then(|u| u.parse::<u32>().ok()) != Some(uid)
            || field("State:").is_some_and(|s| s == "Z")
        {
            continue;
        }
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let host = host_of(pid).unwrap_or_else(|| "no host".into());
        found.push(format!("{host}: {pid} {}", cmd.trim()));
    }
    found
}

#[test]
fn sigkill_to_mpirun() {
    let Some(_c) = cluster() else { return };
    let bg = swarm_with_stack();
    let trees = daemon_trees();
    let t0 = Instant::now();
    kill9(&[bg.mpirun_pid()]);
    assert_gone_within(
        "SIGKILL to mpirun",
        &trees,
        t0,
        EVERY_HOST_CLEAN_BEFORE_MPIRUNS_SIGKILL,
    );
    let _ = bg.wait(Duration::from_secs(30));
    assert_clean(Duration::from_secs(3));
}

#[test]
fn sigkill_to_every_rank_at_once() {
    let Some(_c) = cluster() else { return };
    let bg = swarm_with_stack();
    let pids: Vec<u32> = ranks().iter().map(|r| r.0).collect();
    assert_eq!(pids.len(), 3);
    let trees = daemon_trees();
    let t0 = Instant::now();
    kill9(&pids);
    assert_gone_within("SIGKILL to every rank", &trees, t0, KILLED_HOST_CLEAN);
    let _ = bg.wait(Duration::from_secs(30));
    assert_clean(Duration::from_secs(3));
}

/// An OOM kill or a `kill -9` of one host's guard: that host's daemon tree dies with it, its
/// rank cleans the host at once (state directory included), and the run fails naming the host.
#[test]
fn sigkill_to_a_guard() {
    let Some(_c) = cluster() else { return };
    let bg = swarm_with_stack();
    let trees = daemon_trees();
    let victim = trees
        .iter()
        .find(|t| t.host == "msh2")
        .expect("a daemon on msh2")
        .clone();
    // rootlesskit, its namespaced child, slirp4netns, dockerd, containerd at least.
    assert!(victim.procs.len() >= 5, "{victim:?}");
    let t0 = Instant::now();
    kill9(&[victim.guard]);
    assert_gone_within(
        "SIGKILL to msh2's guard",
        std::slice::from_ref(&victim),
        t0,
        KILLED_HOST_CLEAN,
    );
    let listeners = swarm_listeners("msh2");
    assert!(listeners.is_empty(), "msh2 still listens: {listeners:?}");
    let out = bg.wait(Duration::from_secs(30));
    let stderr = text(&out).1;
    assert!(!out.status.success(), "the run must fail:\n{stderr}");
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("msh2 (rank") && l.contains("the guard (pid")),
        "the failure must name msh2 and its guard:\n{stderr}"
    );
    assert_clean(Duration::from_secs(3));
}

#[test]
fn the_residue_check_detects_planted_leftovers() {
    let Some(_c) = cluster() else { return };
    // A process of the test user on msh2, a state directory of msh3, and one of a host that no
    // longer exists (a run killed outright when the cluster was larger).
    let mut sleeper = Command::new(script("simcluster"))
        .args(["exec", "msh2", "exec sleep 300"])
        .spawn()
        .unwrap();
    let dir = format!("/tmp/mpiswarm-{}/jplanted-msh3", uid_of(USER));
    std::fs::create_dir_all(&dir).unwrap();
    let gone = format!("/tmp/mpiswarm-{}/jplanted-msh40", uid_of(USER));
    std::fs::create_dir_all(&gone).unwrap();
    // Files of the user in temporary directories, whatever their names.
    let files = [
        "/tmp/planted.log",
        "/var/tmp/planted-dir/x",
        "/dev/shm/planted",
    ];
    for f in files {
        let parent = std::path::Path::new(f).parent().unwrap();
        std::fs::create_dir_all(parent).unwrap();
        std::fs::write(f, "x").unwrap();
        let status = Command::new("chown").args([USER, f]).status().unwrap();
        assert!(status.success());
    }
    std::thread::sleep(Duration::from_millis(300));
    let found = residue().expect_err("planted leftovers must be found");
    assert!(found.contains("msh2: process"), "{found}");
    assert!(found.contains("jplanted-msh3"), "{found}");
    assert!(found.contains("msh40 (gone)"), "{found}");
    for f in files {
        assert!(
            found.contains(&format!("file {f} ")),
            "{f} not found:\n{found}"
        );
    }
    for f in files {
        std::fs::remove_file(f).unwrap();
    }
    std::fs::remove_dir("/var/tmp/planted-dir").unwrap();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let _ = Command::new("pkill").args(["-u", USER, "sleep"]).status();
    std::fs::remove_dir_all(std::path::Path::new(&dir).parent().unwrap()).unwrap();
    assert_clean(Duration::from_secs(3));
}

/// A suite killed outright (every process of the test user at once, guards too, as when a
/// machine's session ends) leaves state directories that nothing of the run is left to remove;
/// the next suite found them and took them for its own run's. `simcluster scrub`, which
/// `scripts/test` runs first (through `down`), leaves nothing of them.
#[test]
fn scrub_leaves_nothing_of_a_run_killed_outright() {
    let Some(_c) = cluster() else { return };
    let bg = Background::start(2, 2, &[]);
    let status = Command::new("pkill")
        .args(["-KILL", "-u", USER])
        .status()
        .unwrap();
    assert!(status.success(), "no process of {USER} to kill");
    drop(bg);
    // And a process of the test user still on a host, for scrub to end.
    let mut sleeper = Command::new(script("simcluster"))
        .args(["exec", "msh2", "exec sleep 300"])
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let left = residue().expect_err("a run killed outright leaves its state directories");
    assert!(left.contains("msh1: directory"), "{left}");
    assert!(left.contains("msh2: process"), "{left}");

    let status = Command::new(script("simcluster"))
        .arg("scrub")
        .status()
        .unwrap();
    let cleaned = wait_clean(Duration::from_secs(3));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert!(status.success());
    if let Err(left) = cleaned {
        panic!("scrub left:\n{left}");
    }
    let root = format!("/tmp/mpiswarm-{}", uid_of(USER));
    assert!(!std::path::Path::new(&root).exists(), "{root} is left");
}

/// After a run whose guard died with its rank (a node-level kill), the daemon's tree is gone with
/// the guard, and `mpiswarm cleanup` removes the orphaned directory on that host, and leaves a live
/// run on other hosts alone.
#[test]
fn cleanup_removes_orphans_and_spares_live_runs() {
    let Some(_c) = cluster() else { return };
    let live = Background::start(2, 2, &[]);
    let live_dirs: Vec<String> = hosts(2)
        .iter()
        .map(|h| host_socket(h).expect("live socket"))
        .collect();

    // A second run on msh3 alone, then everything of it that mpiswarm owns killed at once:
    // mpirun, rank and guard. Its state directory survives as an orphan.
    // Its own deadline comes before the test's: a daemon that never answers is reported by `up`
    // itself, with its log.
    let mut orphan_run = mpirun(1, 1, &["up", "--timeout", "40s"]);
    let hostfile = std::env::temp_dir().join("mpiswarm-test-hosts.msh3");
    std::fs::write(&hostfile, "msh3 slots=8\n").unwrap();
    let mut args: Vec<String> = orphan_run
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let at = args.iter().position(|a| a == "--hostfile").unwrap();
    args[at + 1] = hostfile.display().to_string();
    // The same launcher (the machine's, or a second userland's through `simcluster login`).
    orphan_run = Command::new(orphan_run.get_program());
    orphan_run.args(&args).current_dir("/tmp");
    let mut orphan = Streamed::start(orphan_run);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while host_socket("msh3").is_none_or(|s| !std::path::Path::new(&s).exists()) {
        let ended = orphan.ended();
        if ended || std::time::Instant::now() >= deadline {
            // Every simulated host's processes (one /proc), kernel threads left out.
            let procs = on_host(
                "msh3",
                "ps --ppid 2 -p 2 --deselect -o pid,ppid,user,etimes,stat,args --forest",
            );
            panic!(
                "the second run on msh3 did not start its daemon ({}); it printed:\n{}\n\
                 the processes then:\n{}",
                if ended { "mpirun ended" } else { "60 s passed" },
                orphan.text(),
                String::from_utf8_lossy(&procs.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut victims: Vec<u32> = pids_matching("mpiswarm (up|guard)|orted")
        .into_iter()
        .filter(|p| host_of(*p).as_deref() == Some("msh3"))
        .collect();
    victims.push(orphan.pid());
    kill9(&victims);
    let _ = orphan.finish(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    // The daemon's tree died with its guard (parent death signals); its state directory stays.
    let left = residue_on(&["msh3".to_owned()])
        .expect_err("the orphaned state directory should still be there");
    assert!(left.contains("msh3: directory /tmp/mpiswarm-"), "{left}");
    assert!(
        !left.contains("rootlesskit") && !left.contains("dockerd"),
        "the daemon outlived its guard:\n{left}"
    );

    let out = on_host("msh3", &format!("{} cleanup", binary().display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "cleanup failed: {out:?}");
    assert!(stdout.contains("removed /tmp/mpiswarm-"), "{stdout}");
    residue_on(&["msh3".to_owned()])
        .unwrap_or_else(|l| panic!("msh3 not clean after cleanup:\n{l}"));

    // The live run is untouched, and cleanup on its host keeps it.
    let out = on_host("msh1", &format!("{} cleanup", binary().display()));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("still alive"),
        "{out:?}"
    );
    for socket in &live_dirs {
        assert!(
            std::path::Path::new(socket).exists(),
            "cleanup touched the live run: {socket}"
        );
    }
    assert_eq!(
        String::from_utf8_lossy(&live.docker("node ls -q").stdout)
            .lines()
            .count(),
        2
    );
    live.signal("INT");
    let _ = live.wait(Duration::from_secs(30));
    assert_clean(Duration::from_secs(3));
}

/// `scancel` signals every process of the job at once (slurmstepd), not through mpirun, and no
/// launcher kills the ranks a second later. A host clean after such a signal waits only briefly
/// for the teardown agreement's answer and may leave without it; rank 0, whose agreement was
/// answered, then waited for that host's timings until the teardown deadline (20 s): a
/// fresh-clone run found the batch shell, mpirun and rank 0 still there 5 s after `scancel`. Here
/// one host leaves so (fault hook), every rank gets SIGTERM as from slurmstepd, and the job must
/// end within seconds, every host clean.
#[test]
fn a_host_leaving_before_its_timings_does_not_hold_rank_0() {
    let Some(_c) = cluster() else { return };
    let bg = Background::start_env_within(
        3,
        3,
        &[("MPISWARM_TEST_FAULT", "leave-before-timings@msh2")],
        &["--", "sleep", "60"],
        Duration::from_secs(60),
    );
    let signalled = Instant::now();
    for (pid, _, _) in ranks() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let out = bg.wait(Duration::from_secs(40));
    let took = signalled.elapsed();
    let stderr = text(&out).1;
    assert!(
        took < Duration::from_secs(8),
        "the job took {took:?} to end after SIGTERM to every rank:\n{stderr}"
    );
    // The fault struck: rank 0 went without msh2's timings.
    assert!(
        stderr.contains("leaving without the report"),
        "rank 0 did not say it left without every host's timings:\n{stderr}"
    );
    assert_clean(Duration::from_secs(3));
}

/// Slurm's warning before a time limit "may be sent up to 60 seconds earlier than specified"
/// (sbatch(1)), so SIGUSR1 can reach a job whose swarm is still coming up (it did, in a
/// fresh-clone run: the guard took rank 0's daemon down under `swarm init`, which was reported
/// as the daemon's empty reply, and the guard's teardown verdict, read during the start-up, was
/// then missed: "the guard ended without a verdict"). Signalled at several moments of the
/// bring-up, the job ends, says that the signal ended it, and leaves every host clean.
#[test]
fn sigusr1_during_bring_up_ends_the_job_naming_the_signal() {
    let Some(_c) = cluster() else { return };
    for offset_ms in [50, 400, 800, 1200, 1600] {
        let mut cmd = mpirun(3, 3, &["up", "--", "sleep", "60"]);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let launched = Instant::now();
        // Every rank started (a rank handles signals from its first milliseconds; before it
        // exists the launcher has no one to pass the signal to), and rank 0's daemon starting.
        while ranks().len() < 3 || pids_matching("dockerd").is_empty() {
            if launched.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the ranks and a dockerd did not start within 60 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(offset_ms));
        let status = Command::new("kill")
            .args(["-USR1", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let out = wait_output(child, Duration::from_secs(60));
        let stderr = text(&out).1;
        let ready = stderr.contains("swarm ready");
        // The earliest signal lands during the bring-up (a swarm takes seconds), so the checks
        // below always run at least once.
        assert!(
            offset_ms > 50 || !ready,
            "+{offset_ms} ms: the swarm was ready already:\n{stderr}"
        );
        if !ready {
            assert!(!out.status.success(), "+{offset_ms} ms:\n{stderr}");
            let errors = error_messages(&stderr);
            assert!(!errors.is_empty(), "+{offset_ms} ms: no error:\n{stderr}");
            for error in errors {
                assert!(
                    error.contains("interrupted by SIGUSR1"),
                    "+{offset_ms} ms: an error that does not name the signal:\n{error}\n\n{stderr}"
                );
            }
        }
        eprintln!(
            "+{offset_ms} ms: {}",
            stderr
                .lines()
                .find(|l| l.contains("error:") || l.contains("torn down"))
                .unwrap_or("")
        );
        assert_clean(Duration::from_secs(5));
    }
}

/// rootlesskit's child makes two directories in /tmp while it sets up the daemon's namespaces
/// (`rootlesskit-b*` for the copy-up, `rksys*` for /sys; /tmp is fixed in its code) and removes
/// them before it starts dockerd. A fresh-clone run left one behind when SIGUSR1 came during the
/// bring-up. Here the child is held (SIGSTOP) while such a directory exists, the job is signalled,
/// and the child is let go a second later: the host must still end clean.
#[test]
fn sigusr1_while_rootlesskit_sets_up_leaves_nothing_in_tmp() {
    let Some(_c) = cluster() else { return };
    let uid = uid_of(USER);
    for attempt in 1..=10 {
        let mut cmd = mpirun(1, 1, &["up", "--", "sleep", "60"]);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let child = cmd.spawn().unwrap();
        let held = hold_rootlesskit_in_setup(uid, Duration::from_secs(60));
        let Some(dir) = held else {
            // The setup went by between two looks at /tmp (it takes milliseconds): try anew.
            let _ = Command::new("kill")
                .args(["-USR1", &child.id().to_string()])
                .status();
            let _ = wait_output(child, Duration::from_secs(60));
            assert_clean(Duration::from_secs(5));
            eprintln!("attempt {attempt}: the setup was not caught");
            continue;
        };
        let status = Command::new("kill")
            .args(["-USR1", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        std::thread::sleep(Duration::from_secs(1));
        for pid in pids_named("rootlesskit")
            .into_iter()
            .chain(pids_matching("^/proc/self/exe "))
        {
            let _ = Command::new("kill")
                .args(["-CONT", &pid.to_string()])
                .status();
        }
        let out = wait_output(child, Duration::from_secs(60));
        assert!(!out.status.success(), "{}", text(&out).1);
        eprintln!("attempt {attempt}: held rootlesskit while {dir} existed");
        assert_clean(Duration::from_secs(5));
        return;
    }
    panic!("rootlesskit's setup was not caught in 10 bring-ups");
}

/// Waits for a directory rootlesskit's child makes in /tmp during its setup (it lives about a
/// millisecond: watched with inotify, not by listing /tmp), then stops (SIGSTOP) the test user's
/// rootlesskit processes. The directory's name, if it was still there once they stopped; `None`
/// (and the processes let go) if the setup ended first.
fn hold_rootlesskit_in_setup(uid: u32, limit: Duration) -> Option<String> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let watch = Inotify::init(InitFlags::IN_NONBLOCK).unwrap();
    watch.add_watch("/tmp", AddWatchFlags::IN_CREATE).unwrap();
    let start = Instant::now();
    // rootlesskit and its child exist tens of milliseconds before the child's setup: their pids
    // are at hand when the directory appears (a pgrep then would come too late).
    let mut rootlesskits: Vec<u32> = Vec::new();
    while start.elapsed() < limit {
        if rootlesskits.len() < 2 {
            rootlesskits = pids_named("rootlesskit");
            rootlesskits.extend(pids_matching("^/proc/self/exe "));
        } else if !pids_matching("^dockerd --config-file").is_empty() {
            // The setup is over: the daemon itself runs (not a `dockerd --version`, which
            // rank 0 and the guard run meanwhile to learn the Docker release).
            return None;
        }
        let mut fds = [PollFd::new(watch.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(5u8)).unwrap() == 0 {
            continue;
        }
        let Ok(events) = watch.read_events() else {
            continue;
        };
        let Some(name) = events.iter().find_map(|e| {
            let name = e.name.as_ref()?.to_string_lossy().into_owned();
            (name.starts_with("rootlesskit-b") || name.starts_with("rksys")).then_some(name)
        }) else {
            continue;
        };
        for &pid in &rootlesskits {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGSTOP);
        }
        let dir = format!("/tmp/{name}");
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.uid() == uid => return Some(dir),
            _ => {
                for &pid in &rootlesskits {
                    let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
                }
                return None;
            }
        }
    }
    None
}

/// A fresh-clone run's stderr (Debian 13): prterun's MPI_ABORT message, its NUL, then rank 0's
/// error. Read as plain lines, the error was not found ("no error"), failing the SIGUSR1 test.
#[test]
fn an_error_forwarded_right_after_a_prterun_message_is_read() {
    let stderr = "mpiswarm[msh1:0]: warning: ip_vs: kernel module ip_vs is not available\n\
        ----------\nMPI_ABORT was invoked on rank 0 in communicator MPI_COMM_WORLD\n----------\n\
        \0mpiswarm[msh1:0]: error: failed to start the daemon on msh1 (rank 0): interrupted by \
        SIGUSR1\n  msh2 (rank 1): interrupted by SIGUSR1\n(the hosts could not agree on it)\n\
        \0[msh2:00000] *** An error occurred in Socket closed\n";
    assert_eq!(
        error_messages(stderr),
        [
            "mpiswarm[msh1:0]: error: failed to start the daemon on msh1 (rank 0): interrupted \
             by SIGUSR1\n  msh2 (rank 1): interrupted by SIGUSR1"
        ]
    );
}

/// mpiswarm's error messages in a run's output: each `error:` line with the indented lines that
/// continue it. Open MPI 5's launcher (prterun) ends each of its own help messages with a NUL byte,
/// so a rank's line forwarded right after one starts with that byte: it ends a line here too.
fn error_messages(stderr: &str) -> Vec<String> {
    let mut errors: Vec<String> = Vec::new();
    let mut open = false;
    for line in stderr.split(['\n', '\0']) {
        if line.starts_with("mpiswarm[") && line.contains("]: error: ") {
            errors.push(line.to_owned());
            open = true;
        } else if open && line.starts_with(' ') {
            if let Some(last) = errors.last_mut() {
                last.push('\n');
                last.push_str(line);
            }
        } else {
            open = false;
        }
    }
    errors
}
