//! The end-to-end proof: examples/mpi-in-containers runs an MPI program across one container per
//! host of the swarm, the containers talking over the overlay network by service name; and the
//! overlay MTU mpiswarm chooses, as a container on another host sees it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;

/// Runs examples/mpi-in-containers with the simulated cluster's mpirun, as a job script would;
/// returns its output after checking that it passed on 3 different hosts.
fn run_example(mpiswarm_args: &str) -> String {
    let example = root().join("examples/mpi-in-containers");
    // The image, built once from the userland's own Open MPI (the launcher's; cached by the script).
    let tar = shared_dir().join("mpi-ring.tar");
    let built = launcher(&example.join("build-image.sh").display().to_string())
        .arg(&tar)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "build-image.sh failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    // The ranks (the test user) run launch.sh: give them a copy they can read.
    let copy = shared_dir().join("mpi-in-containers");
    std::fs::create_dir_all(&copy).unwrap();
    for f in ["launch.sh", "run.sh"] {
        std::fs::copy(example.join(f), copy.join(f)).unwrap();
    }
    let _ = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&copy)
        .status();
    let _ = Command::new("chmod").arg("a+r").arg(&tar).status();

    let hostfile = shared_dir().join("hosts-workload");
    std::fs::write(
        &hostfile,
        hosts(3)
            .iter()
            .map(|h| format!("{h} slots=8\n"))
            .collect::<String>(),
    )
    .unwrap();
    let mpirun = format!(
        "mpirun.openmpi --allow-run-as-root --hostfile {} -np 3 --map-by node {}",
        hostfile.display(),
        mca_options().join(" ")
    );
    let mut cmd = launcher(&copy.join("run.sh").display().to_string());
    cmd.current_dir("/tmp")
        .env("MPIRUN", mpirun)
        .env("MPISWARM_ARGS", mpiswarm_args)
        .env("MPI_IMAGE_TAR", &tar)
        .env("MPISWARM", binary());
    let out = run_with_deadline(cmd, Duration::from_secs(300));
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "the example failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("RESULT OK"), "no checked result:\n{stdout}");
    let nodes: BTreeSet<&str> = rank_lines(&stdout)
        .filter_map(|l| l.rsplit("on node ").next())
        .collect();
    assert_eq!(
        nodes.len(),
        3,
        "the 3 ranks must run on 3 different hosts:\n{stdout}"
    );
    assert_clean(Duration::from_secs(5));
    stdout
}

fn rank_lines(stdout: &str) -> impl Iterator<Item = &str> {
    stdout
        .lines()
        .filter(|l| l.starts_with("rank ") && l.contains(" of 3 "))
}

/// The addresses each rank's container has (ring.c prints them).
fn rank_addresses(stdout: &str) -> impl Iterator<Item = &str> {
    rank_lines(stdout)
        .filter_map(|l| l.split(" at ").nth(1)?.split(' ').next())
        .flat_map(|addrs| addrs.split(','))
}

#[test]
fn an_mpi_program_runs_across_containers_on_three_hosts() {
    let Some(_c) = cluster() else { return };
    let stdout = run_example("");
    // MPI's TCP traffic is confined to the overlay's pool (btl_tcp_if_include in launch.sh): each
    // rank has one address there, and they differ, one per host, so every message of the ring
    // goes from one host to another.
    let pool: BTreeSet<&str> = rank_addresses(&stdout).filter(|a| in_pool(a)).collect();
    assert_eq!(
        pool.len(),
        3,
        "each rank needs its own overlay address (10.128.0.0/12):\n{stdout}"
    );
}

/// The host path (where the userland has it: README, compatibility): each container has its own
/// node's address, so the ring's messages go from node to node on the nodes' own network.
#[test]
fn an_mpi_program_runs_across_containers_on_the_host_network() {
    let Some(_c) = cluster() else { return };
    if !host_path_available() {
        return;
    }
    let stdout = run_example("--net host");
    let node_addrs: BTreeSet<&str> = rank_addresses(&stdout)
        .filter(|a| a.starts_with("10.77.0."))
        .collect();
    assert_eq!(
        node_addrs.len(),
        3,
        "each rank's container must have its own node's address:\n{stdout}"
    );
    assert!(
        rank_addresses(&stdout).all(|a| !in_pool(a)),
        "no overlay on the host path:\n{stdout}"
    );
}

/// In mpiswarm's default address pool, 10.128.0.0/12.
fn in_pool(addr: &str) -> bool {
    addr.parse::<std::net::Ipv4Addr>().is_ok_and(|a| {
        u32::from(a) >> 20 == u32::from(std::net::Ipv4Addr::new(10, 128, 0, 0)) >> 20
    })
}

/// The default overlay MTU reaches the ready file, a network created with it, and a container
/// on another host; docker_gwbridge gets slirp4netns' MTU; a packet far above 1500 bytes crosses
/// hosts inside the overlay.
#[test]
fn the_overlay_mtu_default_reaches_containers_on_other_hosts() {
    let Some(_c) = cluster() else { return };
    let (image, _) = image_archive("mpiswarm/busybox:latest", 0);
    let bg = Background::start(2, 2, &["--load", &image]);
    let ready = std::fs::read_to_string(&bg.ready_file).unwrap();
    assert!(
        ready.contains("MPISWARM_OVERLAY_MTU=65520\n"),
        "ready file:\n{ready}"
    );
    let setup = on_host(
        &host(1),
        &format!(
            ". {ready}; docker network create -d overlay --attachable \
             -o com.docker.network.driver.mtu=$MPISWARM_OVERLAY_MTU mtunet >/dev/null && \
             docker service create -q --detach=false --name far --network mtunet --endpoint-mode dnsrr \
             --constraint node.hostname=={far} mpiswarm/busybox:latest sleep 3600 >/dev/null && \
             docker run -d --name near --network mtunet mpiswarm/busybox:latest sleep 3600 >/dev/null",
            ready = bg.ready_file.display(),
            far = host(2)
        ),
    );
    assert!(setup.status.success(), "{:?}", text(&setup));
    let far = docker_on(&host(2), "ps -q --filter name=far");
    let far = String::from_utf8_lossy(&far.stdout).trim().to_owned();
    assert!(
        !far.is_empty(),
        "no container of the service on {}",
        host(2)
    );
    let mtus = docker_on(
        &host(2),
        &format!("exec {far} cat /sys/class/net/eth0/mtu /sys/class/net/eth1/mtu"),
    );
    let (out, err) = text(&mtus);
    // Docker's overlay driver takes the option as the MTU under VXLAN: containers get 50 less.
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["65470", "65520"],
        "eth0 (overlay) and eth1 (docker_gwbridge) on {}: {err}",
        host(2)
    );
    // 30000 bytes of ICMP: one overlay frame, one VXLAN datagram, fragmented on the host link.
    let ping = bg.docker("exec near ping -c 2 -W 5 -s 30000 far");
    assert!(ping.status.success(), "{:?}", text(&ping));
    bg.signal("USR1");
    let out = bg.wait(Duration::from_secs(60));
    assert!(out.status.success(), "{:?}", text(&out));
    assert_clean(Duration::from_secs(10));
}
