//! Faults the multi-host tests inject to reach paths a real cluster takes only by accident (a
//! host leader that cannot listen for its host's ranks, rank 0 away from MPI after a signal, a
//! manager whose API stops answering). Only debug builds read the variable: a release build, the
//! one README tells users to make, has no way in.

/// The variable naming the faults to inject, comma-separated.
pub const VARIABLE: &str = "MPISWARM_TEST_FAULT";

/// Whether the tests asked for fault `name`.
pub fn injected(name: &str) -> bool {
    cfg!(debug_assertions)
        && std::env::var(VARIABLE).is_ok_and(|faults| faults.split(',').any(|f| f == name))
}

/// Stops (SIGSTOP) every process named `program` below `root`: a daemon that still accepts
/// connections on its socket and never answers, as a manager that lost quorum or is starved.
pub fn stop_program(root: i32, program: &str) {
    for p in crate::sys::procfs::descendants(root) {
        let argv0 = p.cmdline.split_whitespace().next().unwrap_or("");
        if argv0.rsplit('/').next() == Some(program) {
            tracing::warn!("test fault: stopping {program} (pid {})", p.pid);
            let pid = nix::unistd::Pid::from_raw(p.pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP);
        }
    }
}
