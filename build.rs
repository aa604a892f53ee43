//! Records what `--version` says of the build: the commit, and the MPI library the `mpi` crate
//! was built against (the same `$MPICC` its build probes), so that a binary run under another
//! MPI's launcher can name both.

use std::process::{Command, Stdio};

fn main() {
    println!("cargo:rustc-env=MPISWARM_BUILD_COMMIT={}", commit());
    println!("cargo:rustc-env=MPISWARM_BUILD_MPI={}", built_mpi());
    println!("cargo:rerun-if-env-changed=MPISWARM_GIT_COMMIT");
    println!("cargo:rerun-if-env-changed=MPICC");
    println!("cargo:rerun-if-changed=build.rs");
}

/// A packager building from a tarball sets MPISWARM_GIT_COMMIT; a checkout asks git.
fn commit() -> String {
    if let Ok(given) = std::env::var("MPISWARM_GIT_COMMIT")
        && !given.trim().is_empty()
    {
        return given.trim().to_owned();
    }
    let Some(head) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown (built without git)".to_owned();
    };
    // A new commit or checkout changes these: the build script runs again.
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for file in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
        watch(git(&["rev-parse", "--git-path", file]));
    }
    head
}

/// Cargo takes a missing file for a changed one (every build would run this script again).
fn watch(path: Option<String>) {
    if let Some(path) = path.filter(|p| std::path::Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={path}");
    }
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// The MPI of `mpi.h` as `$MPICC` (else `mpicc`, as the `mpi` crate's probe) sees it.
fn built_mpi() -> String {
    let mpicc = std::env::var("MPICC").unwrap_or_else(|_| "mpicc".to_owned());
    let macros = preprocess(&mpicc).unwrap_or_default();
    let name = library_of(&macros).unwrap_or_else(|| "an unknown MPI".to_owned());
    format!("{name} (via {mpicc})")
}

fn preprocess(mpicc: &str) -> Option<String> {
    use std::io::Write;
    let mut child = Command::new(mpicc)
        .args(["-E", "-dM", "-x", "c", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(b"#include <mpi.h>\n").ok()?;
    let out = child.wait_with_output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The library and its version from mpi.h's macros.
fn library_of(macros: &str) -> Option<String> {
    let get = |name: &str| {
        macros.lines().find_map(|l| {
            let rest = l.strip_prefix("#define ")?.strip_prefix(name)?;
            rest.starts_with(' ')
                .then(|| rest.trim().trim_matches('"').to_owned())
        })
    };
    if let Some(major) = get("OMPI_MAJOR_VERSION") {
        let minor = get("OMPI_MINOR_VERSION").unwrap_or_default();
        let release = get("OMPI_RELEASE_VERSION").unwrap_or_default();
        return Some(format!("Open MPI {major}.{minor}.{release}"));
    }
    for (macro_name, library) in [
        ("I_MPI_VERSION", "Intel MPI"),
        ("MVAPICH2_VERSION", "MVAPICH2"),
        ("MVAPICH_VERSION", "MVAPICH"),
        ("MPICH_VERSION", "MPICH"),
    ] {
        if let Some(v) = get(macro_name) {
            return Some(format!("{library} {v}"));
        }
    }
    None
}
