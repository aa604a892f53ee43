//! Dozens of hosts: a 32-host swarm with labels, a global service on every host, and nothing
//! left on any host afterwards (README: scale).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use common::*;

const HOSTS: usize = 32;

/// The simulated cluster grown to `HOSTS` for one test, and shrunk back when it ends (even on a
/// failure), so the other tests keep their small cluster.
struct Grown;

impl Grown {
    fn to(n: usize) -> Grown {
        let status = Command::new(script("simcluster"))
            .args(["up", &n.to_string()])
            .status()
            .expect("simcluster up");
        assert!(status.success(), "simcluster up {n} failed");
        Grown
    }
}

impl Drop for Grown {
    fn drop(&mut self) {
        let _ = Command::new(script("simcluster"))
            .args(["up", &MAX_HOSTS.to_string()])
            .status();
    }
}

#[test]
fn thirty_two_hosts_form_a_labelled_swarm_run_a_global_service_on_each_and_leave_nothing() {
    let Some(_c) = cluster() else { return };
    // The machine's MAC on the hosts' bridge must not follow the hosts that come and go: the
    // hosts would keep one that no longer exists (scripts/simcluster, bridge_mac).
    let bridge_mac = || std::fs::read_to_string("/sys/class/net/msbr0/address").unwrap();
    let mac_before = bridge_mac();
    let grown = Grown::to(HOSTS);
    let (image, _) = image_archive("mpiswarm/busybox:latest", 0);
    let stack = fixture("everywhere.yml");
    let extra = ["--timeout", "300s", "--load", &image, "--stack", &stack];
    let bg = Background::start_within(HOSTS, HOSTS, &extra, Duration::from_secs(300));

    // Every host's own node is there, Ready, with its index label (the daemon's own).
    let ids = bg.docker("node ls -q");
    let ids = String::from_utf8_lossy(&ids.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let out = bg.docker(&format!(
        "node inspect --format '{{{{.Description.Hostname}}}} {{{{.Status.State}}}} \
         {{{{index .Description.Engine.Labels \"mpiswarm.index\"}}}}' {ids}"
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    let nodes: BTreeMap<String, (String, String)> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((
                w.next()?.to_owned(),
                (w.next()?.to_owned(), w.next()?.to_owned()),
            ))
        })
        .collect();
    for (i, h) in hosts(HOSTS).iter().enumerate() {
        assert_eq!(
            nodes.get(h),
            Some(&("ready".to_owned(), i.to_string())),
            "{h}'s node:\n{text}"
        );
    }
    // The global service runs one task on every host, each on its own host.
    let out = bg.docker(
        "service ps mpiswarm_everywhere --filter desired-state=running \
         --format '{{.Node}} {{.CurrentState}}'",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut running: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("Running"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    running.sort_unstable();
    let mut expected: Vec<String> = hosts(HOSTS);
    expected.sort_unstable();
    assert_eq!(running, expected, "tasks of the global service:\n{text}");
    // On every host, the container itself (not only the swarm's word for it).
    for h in hosts(HOSTS) {
        let ps = docker_on(&h, "ps --format '{{.Names}}'");
        let names = String::from_utf8_lossy(&ps.stdout);
        assert!(
            names.contains("mpiswarm_everywhere."),
            "no container of the global service on {h}: {names}"
        );
    }

    bg.signal("USR1");
    let out = bg.wait(Duration::from_secs(120));
    assert!(
        out.status.success(),
        "mpiswarm failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Nothing on any of the 32 hosts (checked before the cluster shrinks back).
    assert_clean(Duration::from_secs(30));
    drop(grown);
    assert_eq!(
        bridge_mac(),
        mac_before,
        "the bridge's MAC changed with the hosts"
    );
}

/// An error that every one of 8 hosts has is printed once, with the hosts in hostlist notation
/// (the unit tests of output/hostlist.rs cover gaps, padding and larger lists).
#[test]
fn a_refusal_on_eight_hosts_is_said_once_with_a_hostlist() {
    let Some(_c) = cluster() else { return };
    let _grown = Grown::to(8);
    let args = [
        "up",
        "--timeout",
        "60s",
        "--state-dir",
        "/proc/nope",
        "--",
        "true",
    ];
    let out = run_with_deadline(mpirun(8, 8, &args), Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert_eq!(
        stderr.matches("/proc/nope is not usable").count(),
        1,
        "said more than once:\n{stderr}"
    );
    assert!(stderr.contains("msh[1-8]"), "no hostlist:\n{stderr}");
    assert_clean(Duration::from_secs(5));
}
