//! The host path (`up --net host`): every container on its node's own interfaces, the daemons
//! reached on the nodes' addresses without any port forwarding; and its refusal, naming the
//! versions, where rootlesskit and Docker are too old for it (Debian 12's).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;

fn addr_of(host: &str) -> String {
    format!(
        "10.77.0.{}",
        10 + host.trim_start_matches("msh").parse::<u32>().unwrap()
    )
}

/// The one container of service `name` on `host`.
fn container_on(host: &str, name: &str) -> String {
    for _ in 0..200 {
        let out = docker_on(host, &format!("ps -q --filter name={name}"));
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !id.is_empty() {
            return id;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no container of {name} on {host}");
}

#[test]
fn the_host_path_puts_every_container_on_its_nodes_interfaces() {
    let Some(_c) = cluster() else { return };
    if !host_path_available() {
        return;
    }
    let (image, _) = image_archive("mpiswarm/busybox:latest", 0);
    let bg = Background::start(3, 3, &["--net", "host", "--load", &image]);
    let ready = std::fs::read_to_string(&bg.ready_file).unwrap();
    assert!(ready.contains("MPISWARM_NET=host\n"), "{ready}");
    // The swarm's ports are dockerd's own sockets in each node's namespace: no forwarder
    // (gossip on every node, the control port on the manager).
    for (h, port) in [
        (host(1), 2377),
        (host(1), 7946),
        (host(2), 7946),
        (host(3), 7946),
    ] {
        let ss = on_host_as_root(&h, &format!("ss -Htlnp 'sport = :{port}'"));
        let ss = String::from_utf8_lossy(&ss.stdout).into_owned();
        assert!(
            ss.contains(&format!("{}:{port}", addr_of(&h))) && ss.contains("dockerd"),
            "{h}: {port} should be dockerd's, on the node's address:\n{ss}"
        );
    }
    // A service with a container on every node; each one serves a line naming its node.
    let created = bg.docker(
        "service create -q --detach=false --mode global --name hn mpiswarm/busybox:latest \
         sh -c 'nc -ll -p 5555 -e echo from-$(ip -4 -o addr show eth0 | tr -s \" \" | cut -d\" \" -f4)'",
    );
    assert!(created.status.success(), "{:?}", text(&created));
    for h in hosts(3) {
        let id = container_on(&h, "hn");
        let ip = docker_on(&h, &format!("exec {id} ip -4 -o addr show eth0"));
        let ip = String::from_utf8_lossy(&ip.stdout).into_owned();
        assert!(
            ip.contains(&format!("{}/24", addr_of(&h))),
            "{h}: the container must have the node's address:\n{ip}"
        );
    }
    // From the container on msh1 to the ones on the other nodes, at the nodes' addresses.
    let here = container_on(&host(1), "hn");
    for far in [host(2), host(3)] {
        let got = docker_on(
            &host(1),
            &format!("exec {here} sh -c 'nc {} 5555 </dev/null'", addr_of(&far)),
        );
        let got = String::from_utf8_lossy(&got.stdout).into_owned();
        assert!(
            got.contains(&format!("from-{}/24", addr_of(&far))),
            "msh1 -> {far}: {got:?}"
        );
    }
    bg.signal("USR1");
    let out = bg.wait(Duration::from_secs(30));
    assert!(
        text(&out).1.contains("torn down: 3 host(s) clean"),
        "{}",
        text(&out).1
    );
    assert_clean(Duration::from_secs(5));
}

#[test]
fn the_host_path_is_refused_where_rootlesskit_and_docker_are_too_old() {
    let Some(_c) = cluster() else { return };
    if userland().is_some() {
        // Where it works, doctor says so for the host path.
        let out = run_with_deadline(
            mpirun(3, 3, &["doctor", "--json", "--net", "host"]),
            Duration::from_secs(60),
        );
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(
            stdout.contains("rootlesskit 2.0 and Docker 26.1"),
            "{stdout}"
        );
        return;
    }
    let out = run_with_deadline(
        mpirun(3, 3, &["up", "--net", "host", "--", "true"]),
        Duration::from_secs(60),
    );
    let (_, stderr) = text(&out);
    assert!(!out.status.success(), "{stderr}");
    for needed in [
        "msh1",
        "host-network",
        "rootlesskit 1.1 and Docker 20.10",
        "--net overlay",
    ] {
        assert!(stderr.contains(needed), "{needed:?} missing:\n{stderr}");
    }
    assert_clean(Duration::from_secs(5));
}
