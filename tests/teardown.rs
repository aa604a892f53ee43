//! Teardown: whatever ends the run (a signal to the launcher, SIGKILL to any rank or to the
//! launcher), every host is left clean: no process, directory, mount or socket.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

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
    assert!(
        stderr.contains("torn down: 3 host(s) clean"),
        "no teardown report:\n{stderr}"
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

#[test]
fn sigkill_to_a_nonzero_rank() {
    let Some(_c) = cluster() else { return };
    let bg = swarm_with_stack();
    let ranks = ranks();
    let victim = ranks.iter().find(|r| r.2 == 2).expect("rank 2");
    kill9(&[victim.0]);
    let _ = bg.wait(Duration::from_secs(30));
    assert_clean(Duration::from_secs(3));
}

#[test]
fn sigkill_to_rank_0() {
    let Some(_c) = cluster() else { return };
    let bg = swarm_with_stack();
    let ranks = ranks();
    kill9(&[ranks[0].0]);
    let _ = bg.wait(Duration::from_secs(30));
    assert_clean(Duration::from_secs(3));
}

#[test]
fn sigkill_to_mpirun() {
    let Some(_c) = cluster() else { return };
    let bg = swarm_with_stack();
    kill9(&[bg.mpirun_pid()]);
    let _ = bg.wait(Duration::from_secs(30));
    assert_clean(Duration::from_secs(3));
}

#[test]
fn sigkill_to_every_rank_at_once() {
    let Some(_c) = cluster() else { return };
    let bg = swarm_with_stack();
    let pids: Vec<u32> = ranks().iter().map(|r| r.0).collect();
    assert_eq!(pids.len(), 3);
    kill9(&pids);
    let _ = bg.wait(Duration::from_secs(30));
    assert_clean(Duration::from_secs(3));
}

#[test]
fn the_residue_check_detects_planted_leftovers() {
    let Some(_c) = cluster() else { return };
    // A process of the test user on msh2 and a state directory of msh3.
    let mut sleeper = Command::new(script("simcluster"))
        .args(["exec", "msh2", "exec sleep 300"])
        .spawn()
        .unwrap();
    let dir = format!("/tmp/mpiswarm-{}/jplanted-msh3", uid_of(USER));
    std::fs::create_dir_all(&dir).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let found = residue().expect_err("planted leftovers must be found");
    assert!(found.contains("msh2: process"), "{found}");
    assert!(found.contains("jplanted-msh3"), "{found}");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let _ = Command::new("pkill").args(["-u", USER, "sleep"]).status();
    std::fs::remove_dir_all(std::path::Path::new(&dir).parent().unwrap()).unwrap();
    assert_clean(Duration::from_secs(3));
}

/// After a run whose guard died with it (a node-level kill), `mpiswarm cleanup` removes the
/// orphaned daemon and directory on that host, and leaves a live run on other hosts alone.
#[test]
fn cleanup_removes_orphans_and_spares_live_runs() {
    let Some(_c) = cluster() else { return };
    let live = Background::start(2, 2, &[]);
    let live_dirs: Vec<String> = hosts(2)
        .iter()
        .map(|h| host_socket(h).expect("live socket"))
        .collect();

    // A second run on msh3 alone, then everything of it that mpiswarm owns killed at once:
    // mpirun, rank and guard. Its daemon survives as an orphan.
    let mut orphan_run = mpirun(1, 1, &["up"]);
    let hostfile = std::env::temp_dir().join("mpiswarm-test-hosts.msh3");
    std::fs::write(&hostfile, "msh3 slots=8\n").unwrap();
    let mut args: Vec<String> = orphan_run
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let at = args.iter().position(|a| a == "--hostfile").unwrap();
    args[at + 1] = hostfile.display().to_string();
    orphan_run = Command::new("mpirun.openmpi");
    orphan_run
        .args(&args)
        .current_dir("/tmp")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut orphan = orphan_run.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while host_socket("msh3").is_none_or(|s| !std::path::Path::new(&s).exists()) {
        assert!(
            std::time::Instant::now() < deadline,
            "second run did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut victims: Vec<u32> = pids_matching("mpiswarm (up|guard)|orted")
        .into_iter()
        .filter(|p| host_of(*p).as_deref() == Some("msh3"))
        .collect();
    victims.push(orphan.id());
    kill9(&victims);
    let _ = orphan.wait();
    std::thread::sleep(Duration::from_millis(500));
    let left =
        residue_on(&["msh3".to_owned()]).expect_err("the orphaned daemon should still be there");
    assert!(
        left.contains("rootlesskit") || left.contains("dockerd"),
        "{left}"
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
