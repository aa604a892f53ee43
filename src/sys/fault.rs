//! Faults the multi-host tests inject to reach paths a real cluster takes only by accident (a
//! host leader that cannot listen for its host's ranks, rank 0 away from MPI after a signal, a slow
//! `dockerd --version`). Only debug builds read the variable: a
//! release build, the one README tells users to make, has no way in.

/// The variable naming the faults to inject, comma-separated.
pub const VARIABLE: &str = "MPISWARM_TEST_FAULT";

/// Whether the tests asked for fault `name`.
pub fn injected(name: &str) -> bool {
    cfg!(debug_assertions)
        && std::env::var(VARIABLE).is_ok_and(|faults| faults.split(',').any(|f| f == name))
}
