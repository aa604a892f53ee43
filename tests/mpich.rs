//! mpiswarm built against MPICH (scripts/test builds it into target/mpich), launched by MPICH's
//! own `mpiexec` (Hydra) through the same rsh agent: the basic multi-host case; and each MPI's
//! launcher starting the other MPI's build, which is refused before anything starts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

fn mpich_binary() -> PathBuf {
    let built = root().join("target/mpich/debug/mpiswarm");
    assert!(
        built.exists(),
        "{} is missing: build it with `MPICC=mpicc.mpich cargo build --target-dir target/mpich` (scripts/test does)",
        built.display()
    );
    let to = shared_dir().join("mpiswarm-mpich");
    std::fs::copy(&built, &to).unwrap();
    let _ = Command::new("chmod").arg("0755").arg(&to).status();
    to
}

#[test]
fn hydra_mpiexec_builds_a_three_host_swarm() {
    let Some(_c) = cluster() else { return };
    let bin = mpich_binary();
    let linked = Command::new("ldd").arg(&bin).output().unwrap();
    assert!(
        String::from_utf8_lossy(&linked.stdout).contains("libmpich"),
        "not linked against MPICH"
    );
    let mut cmd = hydra(&bin, 3);
    cmd.args([
        "up",
        "--",
        "docker",
        "node",
        "ls",
        "--format",
        "{{.Hostname}} {{.Status}}",
    ]);
    let out = run_with_deadline(cmd, Duration::from_secs(60));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for h in hosts(3) {
        assert!(
            stdout.contains(&format!("{h} Ready")),
            "{h} missing:\n{stdout}\n{stderr}"
        );
    }
    assert_clean(Duration::from_secs(3));
}

/// MPICH's `mpiexec` (Hydra) starting `bin`, one rank on each of the first `nhosts` hosts; add
/// mpiswarm's arguments.
fn hydra(bin: &Path, nhosts: usize) -> Command {
    let hostfile = shared_dir().join(format!("hosts-mpich.{nhosts}"));
    std::fs::write(
        &hostfile,
        hosts(nhosts)
            .iter()
            .map(|h| format!("{h}:1\n"))
            .collect::<String>(),
    )
    .unwrap();
    let mut cmd = Command::new("mpiexec.mpich");
    // The proxies on the hosts call back to this machine on the bridge's address.
    cmd.args([
        "-localhost",
        "10.77.0.1",
        "-launcher",
        "rsh",
        "-launcher-exec",
    ])
    .arg(AGENT)
    .arg("-f")
    .arg(&hostfile)
    .args(["-n", &nhosts.to_string()])
    .arg(bin);
    // Ranks start in the launcher's working directory: one the test user can enter.
    cmd.current_dir("/tmp");
    cmd
}

/// The run failed with one error (from one rank, not one per rank) saying all of `expect`,
/// nothing was made under `base` (a daemon's state or an end socket would have made its
/// per-user directory), and nothing is left on the hosts.
fn refused(out: &Output, expect: &[&str], base: UserScratch) {
    let (stdout, stderr) = text(out);
    assert!(
        !out.status.success(),
        "should have failed:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        stderr.matches("mpiswarm: error on").count(),
        1,
        "one error expected:\n{stderr}"
    );
    for e in expect
        .iter()
        .chain(&["load the module of the MPI mpiswarm was built with"])
    {
        assert!(
            stderr.contains(e),
            "the error should mention {e:?}:\n{stderr}"
        );
    }
    assert!(
        !stdout.contains("swarm ready") && !stderr.contains("swarm ready"),
        "a swarm was made:\n{stdout}\n{stderr}"
    );
    let made = base.0.join(format!("mpiswarm-{}", uid_of(USER)));
    assert!(
        !made.exists(),
        "{} exists: a daemon or end socket was started before the refusal",
        made.display()
    );
    drop(base);
    assert_clean(Duration::from_secs(3));
}

#[test]
fn hydra_starting_the_open_mpi_build_is_refused_before_anything_starts() {
    let Some(_c) = cluster() else { return };
    let base = UserScratch::new("base-hydra-ompi");
    let mut cmd = hydra(&binary(), 3);
    cmd.arg("up")
        .arg("--state-dir")
        .arg(&base.0)
        .args(["--", "true"]);
    let out = run_with_deadline(cmd, Duration::from_secs(60));
    refused(
        &out,
        &[
            "MPICH's Hydra (mpiexec), PMI_SIZE=3",
            "world of 1",
            "built with Open MPI",
            "loaded Open MPI",
        ],
        base,
    );
}

#[test]
fn mpirun_starting_the_mpich_build_is_refused_before_anything_starts() {
    let Some(_c) = cluster() else { return };
    let base = UserScratch::new("base-ompi-mpich");
    let mut cmd = mpirun_launcher(2, 2, &[]);
    cmd.arg(mpich_binary())
        .arg("up")
        .arg("--state-dir")
        .arg(&base.0)
        .args(["--", "true"]);
    let out = run_with_deadline(cmd, Duration::from_secs(60));
    refused(
        &out,
        &[
            "Open MPI's mpirun, OMPI_COMM_WORLD_SIZE=2",
            "world of 1",
            "built with MPICH",
            "loaded MPICH",
        ],
        base,
    );
}
