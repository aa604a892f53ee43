//! Other users of the cluster: hosts outside the job must not reach the swarm's ports (VXLAN has
//! no authentication), and another user on a member host must not take them over.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// The other unprivileged user scripts/simcluster makes, standing for the cluster's other users.
const OTHER: &str = "mpiswarm-other";

/// Runs a shell command on a simulated host as the other user.
fn as_other(host: &str, shell: &str) -> std::process::Output {
    Command::new(script("simcluster"))
        .env("SIM_USER", OTHER)
        .args(["exec", host, shell])
        .output()
        .expect("simcluster exec as the other user")
}

/// rootlesskit's namespaced child on `host` (where the daemon's network namespace is).
fn daemon_netns_pid(host: &str) -> u32 {
    pids_matching("^/proc/self/exe --net=slirp4netns")
        .into_iter()
        .find(|p| host_of_tree(*p).as_deref() == Some(host))
        .unwrap_or_else(|| panic!("no daemon namespace on {host}"))
}

/// Packets the firewall dropped in the daemon's namespace on `host` (its drop rules' counters).
fn dropped(host: &str) -> u64 {
    let pid = daemon_netns_pid(host);
    // The userland's own nft: the table was made by its release of nftables.
    let out = launcher("nsenter")
        .args(["-t", &pid.to_string(), "-n"])
        .args(["nft", "list", "chain", "ip", "mpiswarm", "input"])
        .output()
        .expect("nft in the daemon's namespace");
    let text = String::from_utf8_lossy(&out.stdout);
    let counts: Vec<u64> = text
        .lines()
        .filter(|l| l.trim_end().ends_with("drop"))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "packets")?;
            words.next()?.parse().ok()
        })
        .collect();
    assert_eq!(
        counts.len(),
        2,
        "no drop rules in mpiswarm's chain on {host}:\n{text}"
    );
    counts.iter().sum()
}

#[test]
fn swarm_ports_drop_traffic_from_hosts_outside_the_job() {
    let Some(_c) = cluster() else { return };
    let bg = Background::start(3, 3, &[]);
    let before = dropped(&host(1));
    // msh4 is not in the job: VXLAN frames and gossip from it must not reach msh1's daemon.
    let target = "10.77.0.11";
    // Five datagrams to each UDP port (busybox nc here has no UDP mode).
    let sent = as_other(
        &host(4),
        &format!(
            "python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); \
             [s.sendto(b'frame', ('{target}', p)) for p in (4789, 7946) for i in range(5)]\""
        ),
    );
    assert!(sent.status.success(), "{sent:?}");
    let udp_dropped = dropped(&host(1));
    assert!(
        udp_dropped >= before + 10,
        "dropped {before} -> {udp_dropped}: frames from outside got through"
    );
    // slirp4netns accepts TCP on the host's side, then connects inside: that SYN is dropped.
    let _ = as_other(
        &host(4),
        &format!("timeout 3 busybox nc -w 1 {target} 2377 </dev/null; true"),
    );
    let after = dropped(&host(1));
    assert!(
        after > udp_dropped,
        "a connection from outside the job reached the managers' port ({udp_dropped} -> {after} dropped)"
    );
    // Members still reach each other: the swarm is whole and usable.
    let nodes = bg.docker("node ls -q");
    assert_eq!(String::from_utf8_lossy(&nodes.stdout).lines().count(), 3);
    bg.signal("TERM");
    let _ = bg.wait(Duration::from_secs(30));
    assert_clean(Duration::from_secs(5));
}

#[test]
fn another_user_binding_the_vxlan_port_stops_the_job_and_is_named() {
    let Some(_c) = cluster() else { return };
    let bg = Background::start(3, 3, &[]);
    let other_uid = uid_of(OTHER);
    // SO_REUSEADDR lets a socket of another uid bind slirp4netns' address and port, and take its
    // unicast datagrams. python3 holds the socket until the job reacts (at most 20 s).
    let squat = Command::new(script("simcluster"))
        .env("SIM_USER", OTHER)
        .args([
            "exec",
            &host(2),
            "python3 -c \"import socket,time; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); \
             s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(('10.77.0.12',4789)); \
             print('bound', flush=True); time.sleep(20)\"",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the squatter");
    // Every daemon is gone while the other user still holds the port (it does for 20 s).
    let t0 = std::time::Instant::now();
    let daemons = "^(rootlesskit|slirp4netns|dockerd|containerd)";
    while !pids_matching(daemons).is_empty() && t0.elapsed() < Duration::from_secs(12) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = t0.elapsed();
    let cleaned = if pids_matching(daemons).is_empty() {
        Ok(())
    } else {
        Err(pids_matching(daemons))
    };
    let mut squat = squat;
    let _ = squat.kill();
    let squat_out = squat.wait_with_output().unwrap();
    let out = bg.wait(Duration::from_secs(30));
    let stderr = text(&out).1;
    assert!(
        String::from_utf8_lossy(&squat_out.stdout).contains("bound"),
        "the other user could not bind the port: {squat_out:?}"
    );
    assert!(
        cleaned.is_ok(),
        "hosts not clean {took:?} after the squatter came: {cleaned:?}\n{stderr}"
    );
    assert!(!out.status.success(), "the job went on: {stderr}");
    assert!(
        stderr.contains(&format!(
            "another user (uid {other_uid}) bound the swarm port 4789/udp"
        )),
        "{stderr}"
    );
    assert!(stderr.contains(&host(2)), "the host is not named: {stderr}");
    assert_clean(Duration::from_secs(5));
}

#[test]
fn cleanup_refuses_a_per_user_root_planted_by_another_user() {
    let Some(_c) = cluster() else { return };
    let root = format!("/tmp/mpiswarm-{}", uid_of(USER));
    let bait = "/tmp/mpiswarm-test-bait";
    // The other user plants the test user's per-user root as a symlink to a directory of its own.
    let planted = as_other(&host(1), &format!("mkdir -p {bait} && ln -s {bait} {root}"));
    assert!(planted.status.success(), "{planted:?}");
    let bin = binary().display().to_string();
    let out = on_host(&host(1), &format!("{bin} cleanup"));
    let _ = Command::new("rm").args(["-rf", &root, bait]).status();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "cleanup accepted a planted root: {out:?}"
    );
    assert!(
        stderr.contains("is not a directory owned by you"),
        "{stderr}"
    );
    assert_clean(Duration::from_secs(3));
}

#[test]
fn cleanup_in_a_loop_while_up_starts_leaves_the_run_unharmed() {
    let Some(_c) = cluster() else { return };
    let bin = binary().display().to_string();
    let looping = Command::new(script("simcluster"))
        .args([
            "exec",
            &host(1),
            &format!("for i in $(seq 300); do {bin} cleanup >/dev/null 2>&1; done"),
        ])
        .spawn()
        .expect("start the cleanup loop");
    let out = run_with_deadline(
        mpirun(
            2,
            2,
            &[
                "up",
                "--",
                "sh",
                "-c",
                "docker info >/dev/null && docker node ls -q | wc -l",
            ],
        ),
        Duration::from_secs(120),
    );
    let mut looping = looping;
    let _ = looping.kill();
    let _ = looping.wait();
    let _ = on_host(&host(1), "pkill -f 'mpiswarm cleanup'; true");
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "the run was harmed by cleanup:\n{stderr}"
    );
    assert_eq!(stdout.trim(), "2", "{stdout}\n{stderr}");
    assert_clean(Duration::from_secs(5));
}

/// The join tokens rank 0's daemon gave out, in the order seen: (worker, manager) per poll.
fn tokens_seen(polls: &str) -> Vec<(String, String)> {
    polls
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let token = |kind: &str| {
                v.pointer(&format!("/JoinTokens/{kind}"))?
                    .as_str()
                    .map(str::to_owned)
            };
            Some((token("Worker")?, token("Manager")?))
        })
        .collect()
}

#[test]
fn join_tokens_seen_during_bring_up_no_longer_work_once_ready() {
    let Some(_c) = cluster() else { return };
    // As the test user on rank 0's host, rank 0's daemon polled from its start until told to
    // stop: what anyone able to read the tokens during bring-up would have kept.
    let stop = user_dir().join(format!("stop-polling.{}", std::process::id()));
    let _ = std::fs::remove_file(&stop);
    let poller = Command::new(script("simcluster"))
        .args([
            "exec",
            &host(1),
            &format!(
                "while [ ! -e {stop} ]; do for s in /tmp/mpiswarm-{uid}/*-{h}/docker.sock; do \
                 [ -S \"$s\" ] && curl -s --max-time 1 --unix-socket \"$s\" http://d/v1.41/swarm \
                 && echo; done; sleep 0.02; done",
                stop = stop.display(),
                uid = uid_of(USER),
                h = host(1),
            ),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start polling rank 0's daemon");
    let bg = Background::start(3, 3, &[]);
    std::fs::write(&stop, "").unwrap();
    let polls = wait_output(poller, Duration::from_secs(10));
    let _ = std::fs::remove_file(&stop);
    let seen = tokens_seen(&String::from_utf8_lossy(&polls.stdout));
    let current = |kind: &str| {
        let out = bg.docker(&format!("swarm join-token -q {kind}"));
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let (worker, manager) = (current("worker"), current("manager"));
    bg.signal("TERM");
    let _ = bg.wait(Duration::from_secs(30));
    let (early_worker, early_manager) = seen
        .first()
        .expect("no join token seen during bring-up")
        .clone();
    // Compared whole, shown never (a failure's output is no place for a live token).
    assert!(
        early_worker != worker,
        "the worker token seen during bring-up ({} polls) is still the swarm's once it is ready",
        seen.len()
    );
    assert!(
        early_manager != manager,
        "the manager token seen during bring-up is still the swarm's once it is ready"
    );
    assert_clean(Duration::from_secs(5));
}

/// Another user swaps the test user's per-user root for a symlink to a directory of its own
/// between the run's check of the root and its use (the root was empty: another run of the
/// user had just removed it). The run refuses, naming the path, and makes nothing in the
/// planted directory.
#[test]
fn a_per_user_root_swapped_for_a_symlink_mid_run_is_refused() {
    let Some(_c) = cluster() else { return };
    let root = format!("/tmp/mpiswarm-{}", uid_of(USER));
    let bait = format!("/tmp/mpiswarm-test-bait.{}", std::process::id());
    let mut run = Streamed::start(mpirun_env(
        1,
        1,
        &[("MPISWARM_TEST_FAULT", "user-root-swap")],
        &["up", "--timeout", "30s", "--", "true"],
    ));
    run.wait_for("fault user-root-swap: waiting for", Duration::from_secs(30));
    // The user's other run removes the empty root; the other user plants its own, writable one.
    let removed = on_host(&host(1), &format!("rmdir {root}"));
    let planted = as_other(
        &host(1),
        &format!("mkdir -m 777 {bait} && ln -s {bait} {root}"),
    );
    let (status, text) = run.finish(Duration::from_secs(60));
    let inside: Vec<_> = std::fs::read_dir(&bait)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let _ = Command::new("rm").args(["-rf", &root, &bait]).status();
    assert!(removed.status.success(), "{removed:?}");
    assert!(planted.status.success(), "{planted:?}");
    assert!(!status.success(), "the run used the planted root:\n{text}");
    assert!(
        text.contains(&format!(
            "{root} exists but is not a directory owned by you"
        )),
        "{text}"
    );
    assert!(
        inside.is_empty(),
        "made in the planted directory: {inside:?}"
    );
    assert_clean(Duration::from_secs(5));
}

/// The harness's shared directory (the binary the test user runs) is never one another user
/// made: a planted one is refused, not filled.
#[test]
fn the_harness_refuses_a_shared_dir_another_user_planted() {
    if !nix_is_root_here() {
        return;
    }
    let planted =
        std::env::temp_dir().join(format!("mpiswarm-test-planted.{}", std::process::id()));
    std::fs::create_dir(&planted).unwrap();
    let other = uid_of(OTHER);
    std::os::unix::fs::chown(&planted, Some(other), Some(other)).unwrap();
    let refused = std::panic::catch_unwind(|| make_own_dir(&planted)).is_err();
    let _ = std::fs::remove_dir(&planted);
    assert!(
        refused,
        "a directory of uid {other} was taken as the harness's own"
    );
}

fn nix_is_root_here() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
