//! What the user reads: log lines (prefixed with host and rank), the run's per-phase timings
//! (`--report`), the files rank 0 writes (the ready file), and host sets in hostlist notation.
//!
//! Layer rule: `output` uses `plan` and `sys`.

pub mod hostlist;
pub mod logging;
pub mod outputs;
pub mod report;
