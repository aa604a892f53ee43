//! The end-to-end proof: examples/mpi-in-containers runs an MPI program across one container per
//! host of the swarm, the containers talking over the overlay network by service name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn an_mpi_program_runs_across_containers_on_three_hosts() {
    let Some(_c) = cluster() else { return };
    let example = root().join("examples/mpi-in-containers");
    // The image, built once from this machine's Open MPI (cached by the script itself).
    let tar = shared_dir().join("mpi-ring.tar");
    let built = Command::new(example.join("build-image.sh"))
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

    // run.sh with the simulated cluster's mpirun, as a job script would call it.
    let hostfile = shared_dir().join("hosts-workload");
    std::fs::write(
        &hostfile,
        hosts(3)
            .iter()
            .map(|h| format!("{h} slots=8\n"))
            .collect::<String>(),
    )
    .unwrap();
    let launcher = format!(
        "mpirun.openmpi --allow-run-as-root --hostfile {} -np 3 --map-by node {}",
        hostfile.display(),
        mca_options().join(" ")
    );
    let mut cmd = Command::new(copy.join("run.sh"));
    cmd.current_dir("/tmp")
        .env("MPIRUN", launcher)
        .env("MPI_IMAGE_TAR", &tar)
        .env("MPISWARM", binary());
    let out = run_with_deadline(cmd, Duration::from_secs(300));
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "the example failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("RESULT OK"), "no checked result:\n{stdout}");
    let nodes: BTreeSet<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("rank ") && l.contains(" of 3 "))
        .filter_map(|l| l.rsplit("on node ").next())
        .collect();
    assert_eq!(
        nodes.len(),
        3,
        "the 3 ranks must run on 3 different hosts:\n{stdout}"
    );
    assert_clean(Duration::from_secs(5));
}
