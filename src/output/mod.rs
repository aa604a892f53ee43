//! What the user reads: log lines (prefixed with host and rank), the run's per-phase timings
//! (`--report`), and the files rank 0 writes (the ready file).
//!
//! Layer rule: `output` uses `plan` and `sys`.

pub mod logging;
pub mod outputs;
pub mod report;
