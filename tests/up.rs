//! `mpiswarm up` on the simulated cluster: real mpirun, real rootless dockerd on every host.

mod common;

use std::time::Duration;

use common::*;

const RUN_LIMIT: Duration = Duration::from_secs(120);

#[test]
fn swarm_forms_across_three_hosts_with_rank0_as_manager() {
    let _c = cluster();
    let cmd = mpirun(
        3,
        3,
        &[
            "up",
            "--",
            "docker",
            "node",
            "ls",
            "--format",
            "{{.Hostname}} {{.Status}} {{.ManagerStatus}} {{.Self}}",
        ],
    );
    let out = run_with_deadline(cmd, RUN_LIMIT);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "mpiswarm failed:\n{stderr}");
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 3, "expected 3 nodes, got:\n{stdout}\n{stderr}");
    for (line, h) in lines.iter().zip(hosts(3)) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields[0], h, "node list: {stdout}");
        assert_eq!(fields[1], "Ready", "node list: {stdout}");
    }
    // Rank 0 runs on msh1 and its daemon is the leader: `Self` is true there.
    assert!(
        lines[0].contains("Leader") && lines[0].ends_with("true"),
        "msh1 is not the leader seen from rank 0:\n{stdout}"
    );
    assert!(stderr.contains("swarm ready: 3 node(s)"), "{stderr}");
    assert_clean(Duration::from_secs(3));
}

#[test]
fn command_exit_code_comes_back() {
    let _c = cluster();
    let out = run_with_deadline(
        mpirun(
            2,
            2,
            &["up", "--", "sh", "-c", "docker info >/dev/null && exit 7"],
        ),
        RUN_LIMIT,
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out).1);
    assert_clean(Duration::from_secs(3));
    let out = run_with_deadline(
        mpirun(2, 2, &["up", "--", "sh", "-c", "docker info >/dev/null"]),
        RUN_LIMIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
    assert_clean(Duration::from_secs(3));
}

#[test]
fn two_ranks_per_host_start_one_daemon_per_host() {
    let _c = cluster();
    let bg = Background::start(6, 3, &[]);
    let ranks = ranks();
    assert_eq!(ranks.len(), 6, "expected 6 ranks: {ranks:?}");
    for h in hosts(3) {
        let on_host = ranks.iter().filter(|r| r.1 == h).count();
        assert_eq!(on_host, 2, "expected 2 ranks on {h}: {ranks:?}");
        let daemons: Vec<u32> = pids_matching("^dockerd")
            .into_iter()
            .filter(|p| host_of_tree(*p).as_deref() == Some(h.as_str()))
            .collect();
        assert_eq!(
            daemons.len(),
            1,
            "expected one dockerd on {h}, found {daemons:?}"
        );
    }
    let nodes = bg.docker("node ls -q");
    assert_eq!(
        String::from_utf8_lossy(&nodes.stdout).lines().count(),
        3,
        "{:?}",
        nodes
    );
    bg.signal("INT");
    let out = bg.wait(Duration::from_secs(30));
    assert!(text(&out).1.contains("torn down"), "{}", text(&out).1);
    assert_clean(Duration::from_secs(3));
}

#[test]
fn a_single_rank_makes_a_one_node_swarm() {
    let _c = cluster();
    let out = run_with_deadline(
        mpirun(1, 1, &["up", "--", "docker", "node", "ls", "-q"]),
        RUN_LIMIT,
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert_clean(Duration::from_secs(3));
}

#[test]
fn sigint_to_mpirun_leaves_nothing_on_any_host() {
    let _c = cluster();
    let bg = Background::start(3, 3, &[]);
    assert!(
        residue().is_err(),
        "the residue check must see the running swarm"
    );
    let ready = bg.ready_file.clone();
    bg.signal("INT");
    let _ = bg.wait(Duration::from_secs(30));
    assert!(!ready.exists(), "ready file left behind");
    assert_clean(Duration::from_secs(3));
}

#[test]
fn join_token_is_in_no_process_arguments_or_environment() {
    let _c = cluster();
    let bg = Background::start(3, 3, &[]);
    let out = bg.docker("swarm join-token -q worker");
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(token.starts_with("SWMTKN-"), "no token: {out:?}");
    let mut scanned = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        for file in ["cmdline", "environ"] {
            if let Ok(bytes) = std::fs::read(entry.path().join(file)) {
                scanned += 1;
                let content = String::from_utf8_lossy(&bytes);
                assert!(
                    !content.contains(&token),
                    "token found in /proc/{}/{file}",
                    name.to_string_lossy()
                );
            }
        }
    }
    assert!(scanned > 20, "scanned too few processes ({scanned})");
    bg.signal("TERM");
    let _ = bg.wait(Duration::from_secs(30));
    assert_clean(Duration::from_secs(3));
}

#[test]
fn ready_file_can_be_sourced_for_docker_host() {
    let _c = cluster();
    let bg = Background::start(2, 2, &[]);
    let ready = bg.ready_file.display().to_string();
    let out = on_host(
        &host(1),
        &format!(". {ready} && docker info --format '{{{{.Swarm.Nodes}}}}'"),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2", "{out:?}");
    bg.signal("USR1");
    let _ = bg.wait(Duration::from_secs(30));
    assert!(!bg_ready_exists(&ready));
    assert_clean(Duration::from_secs(3));
}

fn bg_ready_exists(path: &str) -> bool {
    std::path::Path::new(path).exists()
}
