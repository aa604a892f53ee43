//! `--collect DIR`: whatever ends the run, the service logs of every host, the tasks with their
//! exit codes and nodes, the nodes with their labels, each host's daemon log and the report are
//! kept under DIR/<job>/, owned by the user; within the time budget, else INCOMPLETE says what
//! is missing; and nothing is left on any host.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const RUN_LIMIT: Duration = Duration::from_secs(180);
const HOSTS: usize = 3;
/// Rank 0's command: waits (at most 60 s) until the failing task has failed.
const WAIT_FOR_FAILURE: &str = "for i in $(seq 200); do \
     docker service ps col_failer --format '{{.CurrentState}}' | grep -q Failed && exit 0; \
     sleep 0.3; done; exit 1";

/// A fresh DIR below the test user's directory (mpiswarm makes it).
fn collect_dir(name: &str) -> PathBuf {
    let dir = user_dir().join(format!("collect-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The one job directory a run left in `dir`.
fn job_dir(dir: &Path) -> PathBuf {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "one job directory in {}: {entries:?}",
        dir.display()
    );
    entries[0].clone()
}

fn stack_args<'a>(image: &'a str, stack: &'a str, dir: &'a str) -> Vec<&'a str> {
    vec![
        "--load",
        image,
        "--stack",
        stack,
        "--stack-name",
        "col",
        "--collect",
        dir,
    ]
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file and directory below `root` belongs to the test user, private.
fn owned_by_the_user(root: &Path) {
    let uid = uid_of(USER);
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(
            meta.uid(),
            uid,
            "{} belongs to uid {}",
            p.display(),
            meta.uid()
        );
        let want = if meta.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(meta.mode() & 0o777, want, "{}", p.display());
        if meta.is_dir() {
            stack.extend(std::fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        }
    }
}

/// What a complete collection of the collect stack holds.
fn check_complete(root: &Path) {
    assert!(
        !root.join("INCOMPLETE").exists(),
        "INCOMPLETE: {}",
        read(&root.join("INCOMPLETE"))
    );
    let talker = read(&root.join("services/col_talker.log"));
    for h in hosts(HOSTS) {
        for line in [
            "stdout known line 1",
            "stdout known line 3",
            "stderr known error line",
        ] {
            assert!(
                talker
                    .lines()
                    .any(|l| l.contains(&format!("@{h} ")) && l.ends_with(line)),
                "no {line:?} from {h} in col_talker.log:\n{talker}\ntasks: {}",
                read(&root.join("tasks.json"))
            );
        }
    }
    // Each line starts with its timestamp and names its task and node.
    let first = talker.lines().next().unwrap();
    assert!(
        first.starts_with("20") && first.contains(" col_talker."),
        "{first}"
    );
    let failer = read(&root.join("services/col_failer.log"));
    assert!(
        failer.contains("@msh3 stdout failing soon"),
        "col_failer.log:\n{failer}"
    );
    let tasks = json(&root.join("tasks.json"));
    let failed: Vec<&Value> = tasks
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["service"] == "col_failer")
        .collect();
    assert!(
        failed
            .iter()
            .any(|t| t["exit_code"] == 3 && t["node"] == "msh3" && t["state"] == "failed"),
        "no failed col_failer task with exit code 3 on msh3: {failed:?}"
    );
    let talkers = tasks
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["service"] == "col_talker");
    assert_eq!(talkers.count(), HOSTS, "{tasks}");
    let nodes = json(&root.join("nodes.json"));
    let nodes = nodes.as_array().unwrap();
    assert_eq!(nodes.len(), HOSTS);
    for (i, h) in hosts(HOSTS).iter().enumerate() {
        let node = nodes.iter().find(|n| n["hostname"] == h.as_str()).unwrap();
        assert_eq!(node["labels"]["mpiswarm.index"], i.to_string(), "{node}");
        assert_eq!(
            node["engine_labels"]["mpiswarm.index"],
            i.to_string(),
            "{node}"
        );
        let daemon = read(&root.join(format!("hosts/{h}/daemon.log")));
        assert!(daemon.contains("level=info"), "{h}'s daemon log:\n{daemon}");
    }
    let report = json(&root.join("report.json"));
    assert_eq!(report["hosts"], HOSTS);
    owned_by_the_user(root);
}

/// Waits until the failing task of the collect stack has failed (rank 0's daemon).
fn wait_for_failure(bg: &Background) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ps = bg.docker("service ps col_failer --format '{{.CurrentState}}'");
        if String::from_utf8_lossy(&ps.stdout).contains("Failed") {
            return;
        }
        assert!(Instant::now() < deadline, "col_failer never failed: {ps:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn a_command_run_keeps_every_hosts_logs_and_the_exit_code() {
    let Some(_c) = cluster() else { return };
    let (image, _) = image_archive("mpiswarm/busybox:latest", 0);
    let synced = SyncedFixture::new("collect-stack.yml", "collect");
    let stack = synced.path.clone();
    let dir = collect_dir("cmd");
    let dir_arg = dir.display().to_string();
    let mut args = vec!["up"];
    args.extend(stack_args(&image, &stack, &dir_arg));
    // The run outlives its failed task, whose exit code tasks.json must keep.
    args.extend(["--allow-task-failures", "--", "sh", "-c", WAIT_FOR_FAILURE]);
    let out = run_with_deadline(mpirun(HOSTS, HOSTS, &args), RUN_LIMIT);
    let stderr = text(&out).1;
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("collected into"), "{stderr}");
    check_complete(&job_dir(&dir));
    assert_clean(Duration::from_secs(3));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A long-lived swarm torn down by `sig` to mpirun once the failing task failed.
fn signal_keeps_everything(sig: &str) {
    let (image, _) = image_archive("mpiswarm/busybox:latest", 0);
    let synced = SyncedFixture::new("collect-stack.yml", "collect");
    let stack = synced.path.clone();
    let dir = collect_dir(sig);
    let dir_arg = dir.display().to_string();
    let mut args = stack_args(&image, &stack, &dir_arg);
    args.push("--allow-task-failures");
    let bg = Background::start(HOSTS, HOSTS, &args);
    wait_for_failure(&bg);
    bg.signal(sig);
    let out = bg.wait(Duration::from_secs(30));
    let stderr = text(&out).1;
    assert!(stderr.contains("collected into"), "{stderr}");
    check_complete(&job_dir(&dir));
    assert_clean(Duration::from_secs(3));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_sigusr1_teardown_keeps_everything() {
    let Some(_c) = cluster() else { return };
    signal_keeps_everything("USR1");
}

/// Open MPI's mpirun passes SIGTERM on to the ranks a second before it SIGKILLs them: the
/// collection (well under the default budget here) fits.
#[test]
fn a_sigterm_teardown_keeps_everything() {
    let Some(_c) = cluster() else { return };
    signal_keeps_everything("TERM");
}

#[test]
fn with_the_smallest_budget_incomplete_names_what_is_missing() {
    let Some(_c) = cluster() else { return };
    let (image, _) = image_archive("mpiswarm/busybox:latest", 0);
    let synced = SyncedFixture::new("collect-stack.yml", "collect");
    let stack = synced.path.clone();
    let dir = collect_dir("budget");
    let dir_arg = dir.display().to_string();
    let mut args = stack_args(&image, &stack, &dir_arg);
    args.extend(["--collect-timeout", "1ms", "--allow-task-failures"]);
    let bg = Background::start(HOSTS, HOSTS, &args);
    // SIGUSR1: the summary checked below is sure to come only after it (README, Signals).
    bg.signal("USR1");
    let out = bg.wait(Duration::from_secs(30));
    let stderr = text(&out).1;
    assert!(stderr.contains("torn down: 3 host(s) clean"), "{stderr}");
    let root = job_dir(&dir);
    let incomplete = read(&root.join("INCOMPLETE"));
    assert!(incomplete.contains("time budget ran out"), "{incomplete}");
    assert!(incomplete.contains("tasks.json"), "{incomplete}");
    // Each host is named with what of it is missing: its whole share when the transfer ran out
    // too ("- msh2: its logs and daemon log did not all reach rank 0"), or, when the share
    // arrived in the transfer's grace, each part its own reading ran out on ("the logs on msh2",
    // "hosts/msh2/daemon.log"). Which one depends on the hosts' speed: both are right.
    for h in hosts(HOSTS) {
        assert!(
            incomplete.lines().any(|l| l.starts_with("- ")
                && (l.contains(&format!("{h}: ")) || l.contains(&format!("/{h}/")))),
            "{h}:\n{incomplete}"
        );
    }
    // What did not need the budget is there.
    assert_eq!(json(&root.join("report.json"))["hosts"], HOSTS);
    owned_by_the_user(&root);
    assert_clean(Duration::from_secs(3));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_dir_the_user_cannot_write_or_others_can_is_refused_before_anything_starts() {
    let Some(_c) = cluster() else { return };
    // Root's directory: the test user cannot make DIR in it.
    let unwritable = shared_dir().join("collect-refused");
    for (dir, why) in [
        (unwritable.display().to_string(), "cannot write in"),
        ("/tmp".to_owned(), "/tmp is writable by every user"),
    ] {
        let out = run_with_deadline(
            mpirun(2, 2, &["up", "--collect", &dir, "--", "true"]),
            RUN_LIMIT,
        );
        let stderr = text(&out).1;
        assert_eq!(out.status.code(), Some(125), "{stderr}");
        assert!(stderr.contains(&format!("--collect {dir}")), "{stderr}");
        assert!(stderr.contains(why), "{stderr}");
        assert!(!stderr.contains("swarm ready"), "{stderr}");
        assert_clean(Duration::from_secs(3));
    }
    assert!(!unwritable.exists());
}

/// A stack phase that fails (a one-shot task exits 3 while the stack is coming up): every
/// host's service logs and daemon log are kept, with the failed task in tasks.json.
#[test]
fn a_failed_stack_phase_keeps_every_hosts_logs() {
    let Some(_c) = cluster() else { return };
    let (image, _) = image_archive("mpiswarm/busybox:latest", 0);
    let synced = SyncedFixture::new("stack-fails.yml", "collect");
    let stack = synced.path.clone();
    let dir = collect_dir("failed-stack");
    let dir_arg = dir.display().to_string();
    let mut args = vec!["up"];
    args.extend(stack_args(&image, &stack, &dir_arg));
    args.extend(["--", "true"]);
    let out = run_with_deadline(mpirun(HOSTS, HOSTS, &args), RUN_LIMIT);
    let stderr = text(&out).1;
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("failed with exit code 3"), "{stderr}");
    assert!(stderr.contains("collected into"), "{stderr}");
    check_complete(&job_dir(&dir));
    assert_clean(Duration::from_secs(3));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A host hangs (its rank stopped) while the others agree on the stack phase: the agreement is
/// abandoned at the deadline and MPI can carry no other host's share, yet rank 0 keeps every
/// host's service logs, read through the swarm manager; INCOMPLETE names the daemon logs it
/// could not keep and why.
#[test]
fn a_hung_host_still_leaves_every_hosts_service_logs() {
    let Some(_c) = cluster() else { return };
    let (image, _) = image_archive("mpiswarm/busybox:latest", 0);
    let synced = SyncedFixture::new("collect-stack.yml", "collect");
    let stack = synced.path.clone();
    let dir = collect_dir("hung");
    let dir_arg = dir.display().to_string();
    let mut args = vec!["up"];
    args.extend(stack_args(&image, &stack, &dir_arg));
    args.extend(["--timeout", "40s", "--", "true"]);
    let mut run = Streamed::start(mpirun(HOSTS, HOSTS, &args));
    // Rank 0 deploys; the other hosts wait in the phase's agreement meanwhile.
    run.wait_for("stack col: ", Duration::from_secs(90));
    let (hung, _, _) = ranks()
        .into_iter()
        .find(|r| r.1 == host(3))
        .unwrap_or_else(|| panic!("no rank on {}:\n{}", host(3), run.text()));
    let kill = |sig: &str| {
        let _ = std::process::Command::new("kill")
            .args([sig, &hung.to_string()])
            .status();
    };
    kill("-STOP");
    run.wait_for("collected into", Duration::from_secs(120));
    kill("-CONT");
    let (status, stderr) = run.finish(Duration::from_secs(60));
    assert!(!status.success(), "{stderr}");
    let root = job_dir(&dir);
    let talker = read(&root.join("services/col_talker.log"));
    for h in hosts(HOSTS) {
        assert!(
            talker
                .lines()
                .any(|l| l.contains(&format!("@{h} ")) && l.ends_with("stdout known line 1")),
            "no line from {h} in col_talker.log:\n{talker}"
        );
    }
    // MPI could not carry the stopped host's share: INCOMPLETE says why, and names the daemon
    // logs that only MPI could have brought (the service logs came through the manager).
    let incomplete = read(&root.join("INCOMPLETE"));
    assert!(
        incomplete.contains("abandoned") || incomplete.contains("did not arrive"),
        "{incomplete}"
    );
    let hung = host(3);
    assert!(
        incomplete.contains(&format!("hosts/{hung}/daemon.log: not kept")),
        "{hung}:\n{incomplete}"
    );
    owned_by_the_user(&root);
    assert_clean(Duration::from_secs(15));
    let _ = std::fs::remove_dir_all(&dir);
}
