//! Faults the multi-host tests inject to reach paths a real cluster takes only by accident (a
//! host leader that cannot listen for its host's ranks, rank 0 away from MPI after a signal, a
//! manager whose API stops answering, a slow `dockerd --version`). Only debug builds read the
//! variable: a release build, the one the install guide tells users to make, has no way in.

use std::time::{Duration, Instant};

/// The variable naming the faults to inject, comma-separated.
pub const VARIABLE: &str = "MPISWARM_TEST_FAULT";

/// Whether the tests asked for fault `name`, everywhere (`name`) or on this host (`name@HOST`).
pub fn injected(name: &str) -> bool {
    cfg!(debug_assertions)
        && std::env::var(VARIABLE).is_ok_and(|faults| {
            faults.split(',').any(|f| match f.split_once('@') {
                None => f == name,
                Some((f, host)) => f == name && this_host().is_some_and(|h| h == host),
            })
        })
}

fn this_host() -> Option<String> {
    nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().into_owned())
}

/// Stops (SIGSTOP) every process named `program` below `root`: a daemon that still accepts
/// connections on its socket and never answers, as a manager that lost quorum or is starved.
/// Returns once each is stopped: until one of its threads runs to take the signal, the others
/// go on answering (seen on a loaded machine).
pub fn stop_program(root: i32, program: &str) {
    for p in crate::sys::procfs::descendants(root) {
        let argv0 = p.cmdline.split_whitespace().next().unwrap_or("");
        if argv0.rsplit('/').next() != Some(program) {
            continue;
        }
        let pid = nix::unistd::Pid::from_raw(p.pid);
        let sent = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP);
        let by = Instant::now() + Duration::from_secs(2);
        let stopped = sent.is_ok()
            && crate::sys::deadline::poll_until(by, Duration::from_millis(2), || {
                all_threads_stopped(p.pid).then_some(())
            })
            .is_some();
        tracing::warn!(
            "test fault: stopping {program} (pid {}): stopped {stopped}",
            p.pid
        );
    }
}

/// Whether every thread of `pid` is in the stopped state (`T`).
fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| {
                s.rfind(')')
                    .and_then(|i| s.get(i + 2..i + 3))
                    .map(|c| c == "T")
            })
            .unwrap_or(false)
    })
}
