//! Bad input and broken hosts: a clear error naming the host and the cause, a non-zero exit,
//! nothing left on any host, and never a hang.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(90);

/// Runs `up` over 3 hosts and checks that it fails, saying all of `expect`, and leaves nothing.
fn fails(args: &[&str], expect: &[&str]) -> Output {
    let mut all = vec!["up", "--timeout", "40s"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--", "true"]);
    let out = run_with_deadline(mpirun(3, 3, &all), LIMIT);
    check_failure(&out, expect);
    out
}

fn check_failure(out: &Output, expect: &[&str]) {
    let (_, stderr) = text(out);
    assert!(!out.status.success(), "should have failed:\n{stderr}");
    for e in expect {
        assert!(
            stderr.contains(e),
            "the error should mention {e:?}:\n{stderr}"
        );
    }
    assert_clean(Duration::from_secs(3));
}

/// Breaks one host for the duration of a test.
struct Broken(String);

impl Broken {
    fn new(host: &str, kind: &str) -> Broken {
        let status = Command::new(script("simcluster"))
            .args(["break", host, kind])
            .status()
            .unwrap();
        assert!(status.success());
        Broken(host.to_owned())
    }
}

impl Drop for Broken {
    fn drop(&mut self) {
        let _ = Command::new(script("simcluster"))
            .args(["fix", &self.0])
            .status();
    }
}

#[test]
fn a_host_without_subuids() {
    let Some(_c) = cluster() else { return };
    let _b = Broken::new("msh2", "no-subuid");
    fails(&[], &["msh2", "subuid", "usermod --add-subuids"]);
}

#[test]
fn a_host_without_slirp4netns() {
    let Some(_c) = cluster() else { return };
    let _b = Broken::new("msh3", "no-slirp4netns");
    fails(&[], &["msh3", "slirp4netns", "not found"]);
}

#[test]
fn a_host_without_usable_tun() {
    let Some(_c) = cluster() else { return };
    let _b = Broken::new("msh2", "no-tun");
    fails(&[], &["msh2", "/dev/net/tun", "chmod 0666"]);
}

#[test]
fn a_swarm_port_taken_on_one_host() {
    let Some(_c) = cluster() else { return };
    // Another user's listener on msh3's gossip port.
    let mut squatter = Command::new(script("simcluster"))
        .args(["root", "msh3", "python3", "-c"])
        .arg("import socket, time; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('10.77.0.13', 7946)); s.listen(); time.sleep(120)")
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = run_with_deadline(
        mpirun(3, 3, &["up", "--timeout", "40s", "--", "true"]),
        LIMIT,
    );
    let _ = squatter.kill();
    let _ = squatter.wait();
    check_failure(&out, &["msh3", "7946/tcp", "already in use"]);
}

#[test]
fn a_state_dir_that_is_not_writable() {
    let Some(_c) = cluster() else { return };
    let dir = "/tmp/mpiswarm-test-readonly";
    std::fs::create_dir_all(dir).unwrap();
    fails(&["--state-dir", dir], &["msh1", "not writable", dir]);
}

/// A state directory refused on every host: mpiswarm's own failure (125), said once for all
/// hosts, which are named in hostlist notation.
#[test]
fn a_refusal_on_every_host_is_said_once_with_a_hostlist() {
    let Some(_c) = cluster() else { return };
    let out = fails(&["--state-dir", "/proc/nope"], &["msh[1-3]", "/proc/nope"]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert_eq!(
        stderr.matches("/proc/nope is not usable").count(),
        1,
        "said more than once:\n{stderr}"
    );
}

/// Runs `up -- COMMAND` that cannot run: its exit code, in a few seconds, no daemon started.
fn command_refused(command: &str, code: i32, expect: &str) {
    let started = Instant::now();
    let out = run_with_deadline(
        mpirun(3, 3, &["-v", "up", "--timeout", "40s", "--", command]),
        LIMIT,
    );
    let took = started.elapsed();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert_eq!(stderr.matches(expect).count(), 1, "{expect:?}:\n{stderr}");
    assert!(stderr.contains("nothing was started"), "{stderr}");
    // A guard's every event is logged at -v: none means no host started a daemon.
    assert!(
        !stderr.contains("guard: "),
        "a daemon was started:\n{stderr}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}:\n{stderr}");
    assert_clean(Duration::from_secs(3));
}

#[test]
fn a_command_not_found_exits_127_before_anything_starts() {
    let Some(_c) = cluster() else { return };
    command_refused(
        "/nonexistent/tool",
        127,
        "failed to find the command \"/nonexistent/tool\" on msh1",
    );
    command_refused(
        "no-such-tool-anywhere",
        127,
        "not found in any directory of PATH",
    );
}

#[test]
fn a_command_that_cannot_be_executed_exits_126_before_anything_starts() {
    let Some(_c) = cluster() else { return };
    command_refused(
        "/etc/hostname",
        126,
        "failed to execute the command \"/etc/hostname\" on msh1",
    );
}

#[test]
fn a_state_dir_on_a_filesystem_without_overlay() {
    let Some(_c) = cluster() else { return };
    // Network filesystems are recognised by type; this machine has none, so the site knob that
    // adds types marks the local filesystem of /tmp as unsupported, the same code path.
    let out = Command::new("stat")
        .args(["-f", "-c", "%t", "/tmp"])
        .output()
        .unwrap();
    let fs = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let cmd = {
        let mut c = mpirun(3, 3, &["up", "--timeout", "40s", "--", "true"]);
        c.env("SIM_EXTRA_ENV", format!("MPISWARM_UNSUPPORTED_FS={fs}"));
        c
    };
    let out = run_with_deadline(cmd, LIMIT);
    check_failure(
        &out,
        &["does not support overlayfs", "node-local --state-dir"],
    );
}

#[test]
fn an_interface_that_does_not_exist() {
    let Some(_c) = cluster() else { return };
    fails(
        &["--iface", "ib7"],
        &["--iface ib7", "msh1", "msh2", "msh3", "eth0 10.77.0."],
    );
}

#[test]
fn an_advertise_address_not_on_the_host() {
    let Some(_c) = cluster() else { return };
    fails(
        &["--advertise-addr", "10.77.0.99"],
        &["10.77.0.99 is not an address of host msh"],
    );
}

#[test]
fn running_as_root() {
    let Some(_c) = cluster() else { return };
    let mut cmd = mpirun(2, 2, &["up", "--timeout", "40s", "--", "true"]);
    cmd.env("SIM_USER", "root");
    let out = run_with_deadline(cmd, LIMIT);
    check_failure(&out, &["running as root", "ordinary user"]);
}

#[test]
fn dockerd_dies_during_start_on_one_host() {
    let Some(_c) = cluster() else { return };
    let _b = Broken::new("msh2", "dockerd-dies");
    fails(
        &["--no-preflight"],
        &["msh2", "exited during start-up", "out of cheese"],
    );
}

#[test]
fn a_rank_killed_during_bring_up_does_not_hang_the_others() {
    let Some(_c) = cluster() else { return };
    let mut child = mpirun(3, 3, &["up", "--timeout", "40s", "--", "sleep", "600"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill rank 2 as soon as its host's daemon exists: during the join.
    let deadline = Instant::now() + Duration::from_secs(60);
    let victim = loop {
        if host_socket("msh3").is_some()
            && let Some(r) = ranks().into_iter().find(|r| r.2 == 2)
        {
            break r.0;
        }
        assert!(Instant::now() < deadline, "rank 2 never started its daemon");
        std::thread::sleep(Duration::from_millis(20));
    };
    let started = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-KILL", &victim.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let out = wait_output(child_take(&mut child), Duration::from_secs(60));
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "the others waited past the deadline"
    );
    assert_clean(Duration::from_secs(3));
}

/// A manager whose API stops answering (its dockerd stopped, as one without quorum or starved
/// would be) while rank 0 seals the swarm (its first call rotates the join tokens): rank 0's
/// call ends with the phase, so the hosts
/// hear which call on which host did not answer, not only that a host was late.
#[test]
fn a_manager_that_stops_answering_is_named_before_the_deadline() {
    let Some(_c) = cluster() else { return };
    let timeout = Duration::from_secs(20);
    let args = ["up", "--timeout", "20s", "--", "true"];
    let t = Instant::now();
    let cmd = mpirun_env(3, 3, &[("MPISWARM_TEST_FAULT", "manager-stops")], &args);
    let out = run_with_deadline(cmd, LIMIT);
    let took = t.elapsed();
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "should have failed:\n{stderr}");
    assert!(
        stderr.contains("test fault: stopping dockerd") && stderr.contains("stopped true"),
        "the fault never struck:\n{stderr}"
    );
    assert!(
        stderr.contains("&rotateManagerToken=true on msh1 did not answer within")
            && stderr.contains("(the phase's deadline)"),
        "the error should name the call, the manager and the deadline:\n{stderr}"
    );
    // The hosts' agreement heard rank 0's reason instead of giving up on it.
    assert!(
        !stderr.contains("timed out waiting for all hosts"),
        "the hosts gave up before rank 0's reason came:\n{stderr}"
    );
    // MPI's start, the deadline, then the teardown: a call still waiting for its own 30 s
    // would end the run well after this.
    assert!(
        took < timeout + Duration::from_secs(9),
        "the run took {took:?} with --timeout {timeout:?}:\n{stderr}"
    );
    assert_clean(Duration::from_secs(3));
}

/// A rank that never reaches MPI (here msh2's, held before `MPI_Init` by a fault hook of debug
/// builds) holds every other rank in `MPI_Init`, which has no deadline of its own: past the
/// bring-up's deadline the waiting ranks say so, naming their hosts, and the job ends. Rank 0's
/// daemon, started while MPI starts, is gone with it.
#[test]
fn a_rank_that_never_starts_mpi_ends_the_job_at_the_deadline() {
    let Some(_c) = cluster() else { return };
    let t = Instant::now();
    let out = run_with_deadline(
        mpirun_env(
            2,
            2,
            &[("MPISWARM_TEST_FAULT", "mpi-start-late@msh2")],
            &["up", "--timeout", "8s", "--", "true"],
        ),
        Duration::from_secs(60),
    );
    let took = t.elapsed();
    check_failure(
        &out,
        &[
            "error on msh1: failed to start MPI within 8 s (rank 0 to the launcher): MPI_Init did \
             not return",
            "a very large job may need a longer --timeout",
        ],
    );
    assert!(
        took < Duration::from_secs(8 + 12),
        "the job took {took:?} with --timeout 8s"
    );
}

fn child_take(child: &mut std::process::Child) -> std::process::Child {
    std::mem::replace(child, Command::new("true").spawn().unwrap())
}

/// An error that only one host's rank has (here its signal handlers, by a fault hook of debug
/// builds) reaches the user from that rank, naming its host, though it is not rank 0.
#[test]
fn an_error_of_one_host_only_is_said_by_its_rank() {
    let Some(_c) = cluster() else { return };
    let out = run_with_deadline(
        mpirun_env(
            3,
            3,
            &[("MPISWARM_TEST_FAULT", "signal-handlers@msh2")],
            &["up", "--timeout", "40s", "--", "true"],
        ),
        LIMIT,
    );
    check_failure(
        &out,
        &["error on msh2: failed to install signal handlers: fault injected"],
    );
}

/// A teardown that fails after a failed phase is an error of its own (something may be left),
/// reported beside the phase's failure (a fault hook makes msh2's guard say "dirty").
#[test]
fn a_teardown_failure_after_a_failed_phase_is_reported() {
    let Some(_c) = cluster() else { return };
    let out = run_with_deadline(
        mpirun_env(
            2,
            2,
            &[("MPISWARM_TEST_FAULT", "dirty-teardown@msh2")],
            &[
                "up",
                "--timeout",
                "40s",
                "--load",
                "/nonexistent/image.tar",
                "--",
                "true",
            ],
        ),
        LIMIT,
    );
    check_failure(
        &out,
        &[
            "failed to read the image archive",
            "failed to tear down on 1 of 2 host(s)",
            "msh2",
            "fault injected by the tests: the teardown left something",
        ],
    );
}

#[test]
fn bad_flags_are_refused_before_anything_starts() {
    let Some(_c) = cluster() else { return };
    for (args, expect) in [
        (
            vec!["up", "--timeout", "soon"],
            "--timeout \"soon\" is not a valid duration",
        ),
        (vec!["up", "--timeout", "0"], "greater than zero"),
        (
            vec!["up", "--frobnicate"],
            "unexpected argument '--frobnicate'",
        ),
        (
            vec!["up", "--address-pool", "10.0.0.0/8"],
            "overlaps slirp4netns",
        ),
    ] {
        let out = run_with_deadline(mpirun(3, 3, &args), LIMIT);
        let (_, stderr) = text(&out);
        // mpiswarm's own failure, never a code the command could have given.
        assert_eq!(out.status.code(), Some(125), "{args:?}:\n{stderr}");
        assert!(
            stderr.contains(expect),
            "{args:?}: expected {expect:?} in:\n{stderr}"
        );
        // Said once, by rank 0, not once per rank.
        assert_eq!(
            stderr.matches(expect).count(),
            1,
            "{args:?}: repeated:\n{stderr}"
        );
        assert!(host_socket("msh1").is_none(), "nothing may start");
    }
    assert_clean(Duration::from_secs(3));
    // Help is not a failure.
    let out = Command::new(binary())
        .args(["up", "--help"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn doctor_reports_all_green_on_a_healthy_cluster() {
    let Some(_c) = cluster() else { return };
    let out = run_with_deadline(mpirun(3, 3, &["doctor"]), LIMIT);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for h in hosts(3) {
        let row = stdout
            .lines()
            .find(|l| l.starts_with(&h))
            .unwrap_or_else(|| panic!("no row for {h}:\n{stdout}"));
        assert!(!row.contains("FAIL"), "{row}");
    }
    assert!(!stdout.contains("FAIL"), "{stdout}");
    let out = run_with_deadline(mpirun(3, 3, &["doctor", "--json"]), LIMIT);
    let reports: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    assert_eq!(reports.as_array().map(Vec::len), Some(3));
    assert_clean(Duration::from_secs(3));
}

#[test]
fn doctor_fails_exactly_the_broken_hosts_row() {
    let Some(_c) = cluster() else { return };
    let _b = Broken::new("msh2", "no-tun");
    let out = run_with_deadline(mpirun(3, 3, &["doctor"]), LIMIT);
    let (stdout, _) = text(&out);
    // 1: a check failed (125 would be doctor itself failing).
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for h in hosts(3) {
        let row = stdout.lines().find(|l| l.starts_with(&h)).unwrap();
        assert_eq!(
            row.contains("FAIL"),
            h == "msh2",
            "row of {h}: {row}\n{stdout}"
        );
    }
    assert!(stdout.contains("FAIL msh2 tun"), "{stdout}");
    assert!(stdout.contains("chmod 0666 /dev/net/tun"), "{stdout}");
    assert_clean(Duration::from_secs(3));
}

/// The harness reads a run's output while it runs: 1 MiB on each pipe (a pipe holds 64 KiB)
/// does not block the child, which ends, and all of it is read.
#[test]
fn the_harness_reads_more_than_a_pipe_holds_while_waiting() {
    let child = std::process::Command::new("sh")
        .args([
            "-c",
            "head -c 1048576 /dev/zero; head -c 1048576 /dev/zero >&2",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_output(child, Duration::from_secs(10));
    assert_eq!((out.stdout.len(), out.stderr.len()), (1 << 20, 1 << 20));
}
