//! mpiswarm built against MPICH (scripts/test builds it into target/mpich), launched by MPICH's
//! own `mpiexec` (Hydra) through the same rsh agent: the basic multi-host case.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;
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
    let hostfile = shared_dir().join("hosts-mpich");
    std::fs::write(
        &hostfile,
        hosts(3)
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
    .args(["-n", "3"])
    .arg(&bin)
    .args([
        "up",
        "--",
        "docker",
        "node",
        "ls",
        "--format",
        "{{.Hostname}} {{.Status}}",
    ]);
    // Ranks start in the launcher's working directory: one the test user can enter.
    cmd.current_dir("/tmp");
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
