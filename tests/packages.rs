//! The packages as an admin installs them: the .deb built by packaging/deb/build, installed with
//! dpkg into the hosts' userland (the machine's own /usr, or the second userland's root), used by
//! a two-host job as /usr/bin/mpiswarm, then removed, leaving the userland as it was.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const INSTALLED: &str = "/usr/bin/mpiswarm";

/// A command run as root in the hosts' userland: directly, or chrooted into the second one
/// (scripts/userland run, which binds the checkout and /tmp), from the checkout.
fn in_userland(program: &str) -> Command {
    let mut cmd = match userland() {
        Some(name) => {
            let mut cmd = Command::new(script("userland"));
            cmd.args(["run", &name, "env"])
                .arg("PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
                .arg("HOME=/root")
                .arg(program);
            cmd
        }
        None => Command::new(program),
    };
    cmd.current_dir(root());
    cmd
}

fn succeeded(what: &str, out: &Output) -> String {
    let (stdout, stderr) = text(out);
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{stderr}");
    stdout
}

/// The target directory of the binary the tests use (the second userland's is its own), so that
/// the package's build finds it built and builds nothing.
fn target_dir() -> PathBuf {
    let built = std::env::var_os("MPISWARM_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_mpiswarm")));
    // TARGET/debug/mpiswarm
    built.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// Builds the .deb as packaging/deb/build does for an admin, from the tests' debug build (a
/// release build takes minutes on a small machine), with the userland's MPI.
fn build_deb() -> PathBuf {
    let mut cmd = in_userland("env");
    cmd.arg(format!("CARGO_TARGET_DIR={}", target_dir().display()))
        .arg("MPICC=mpicc.openmpi")
        .arg(root().join("packaging/deb/build"))
        .args(["--profile", "dev"]);
    let out = run_with_deadline(cmd, Duration::from_secs(240));
    let deb = PathBuf::from(succeeded("packaging/deb/build", &out).trim());
    assert!(deb.exists(), "packaging/deb/build named {}", deb.display());
    deb
}

/// dpkg's state of the package ("installed", "config-files", ...), `None` when dpkg has no
/// record of it.
fn dpkg_state() -> Option<String> {
    let out = in_userland("dpkg-query")
        .args(["-W", "-f=${Status}", "mpiswarm"])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    status
        .split_whitespace()
        .last()
        .filter(|s| *s != "not-installed")
        .map(str::to_owned)
}

/// The installed binary as seen from outside the userland.
fn installed_path() -> PathBuf {
    match userland() {
        Some(name) => {
            let out = Command::new(script("userland"))
                .args(["path", &name])
                .output()
                .unwrap();
            let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            PathBuf::from(dir).join(INSTALLED.trim_start_matches('/'))
        }
        None => PathBuf::from(INSTALLED),
    }
}

/// Removes the package when the test ends, however it ends.
struct Installed;

impl Installed {
    fn new(deb: &Path) -> Installed {
        let out = in_userland("dpkg").arg("-i").arg(deb).output().unwrap();
        let installed = Installed;
        succeeded("dpkg -i", &out);
        installed
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = in_userland("dpkg").args(["--purge", "mpiswarm"]).output();
    }
}

/// A two-host job with the mpiswarm at `bin`, run where it is installed: both nodes join, the
/// hosts are clean afterwards.
fn two_host_job(bin: &str) {
    let mut cmd = mpirun_launcher(2, 2, &[]);
    cmd.args([
        bin,
        "up",
        "--",
        "docker",
        "node",
        "ls",
        "--format",
        "{{.Hostname}} {{.Status}}",
    ]);
    let out = run_with_deadline(cmd, Duration::from_secs(90));
    let stdout = succeeded(&format!("the job with {bin}"), &out);
    for h in hosts(2) {
        assert!(
            stdout.contains(&format!("{h} Ready")),
            "{h} missing:\n{stdout}"
        );
    }
    assert_clean(Duration::from_secs(3));
}

#[test]
fn deb_installs_runs_a_two_host_job_and_removes_cleanly() {
    let Some(_c) = cluster() else { return };
    // An admin's own installation is not the test's to replace.
    assert!(
        dpkg_state().is_none() && !installed_path().exists(),
        "mpiswarm is already installed in the hosts' userland ({}): remove it (dpkg --purge mpiswarm) to run this test",
        installed_path().display()
    );
    let deb = build_deb();
    let info = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&deb)
        .arg("Depends")
        .output()
        .unwrap();
    let depends = succeeded("dpkg-deb -f", &info);
    for needed in [
        "libopenmpi",
        "rootlesskit",
        "slirp4netns",
        "uidmap",
        "docker",
    ] {
        assert!(
            depends.contains(needed),
            "Depends lacks {needed}: {depends}"
        );
    }
    let listing = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&deb)
        .output()
        .unwrap();
    let listing = succeeded("dpkg-deb -c", &listing);
    let mut expected = vec!["./usr/bin/mpiswarm"];
    // A binary that can generate them brings its man pages and completions.
    let built = target_dir().join("debug/mpiswarm");
    let generates = in_userland(built.to_str().unwrap())
        .args(["completions", "bash"])
        .output()
        .unwrap();
    if generates.status.success() {
        expected.extend([
            "./usr/share/man/man1/mpiswarm.1.gz",
            "./usr/share/man/man1/mpiswarm-up.1.gz",
            "./usr/share/bash-completion/completions/mpiswarm",
            "./usr/share/zsh/vendor-completions/_mpiswarm",
        ]);
    }
    for path in expected {
        assert!(
            listing.contains(path),
            "the package has no {path}:\n{listing}"
        );
    }

    let installed = Installed::new(&deb);
    assert_eq!(dpkg_state().as_deref(), Some("installed"), "dpkg's state");
    two_host_job(INSTALLED);

    drop(installed);
    assert!(
        !installed_path().exists(),
        "{} is left after dpkg --purge",
        installed_path().display()
    );
    assert_eq!(dpkg_state(), None, "dpkg's state after --purge");
}

/// An mpiswarm installed by another package manager (Spack, EasyBuild: their builds take longer
/// than a test may, so packaging/spack/check builds first), named by MPISWARM_INSTALLED_BINARY.
#[test]
fn installed_binary_runs_a_two_host_job() {
    let Some(bin) = std::env::var_os("MPISWARM_INSTALLED_BINARY") else {
        eprintln!(
            "skipped: MPISWARM_INSTALLED_BINARY names no installed mpiswarm (packaging/spack/check)"
        );
        return;
    };
    let Some(_c) = cluster() else { return };
    let bin = bin.to_string_lossy().into_owned();
    let version = Command::new(&bin).arg("--version").output().unwrap();
    succeeded(&format!("{bin} --version"), &version);
    two_host_job(&bin);
}
