//! The ranks of the job: which MPI (built with, loaded, the launcher's), MPI's start (with a deadline) and end, each rank's role (one leader per host), the host
//! leaders' agreements, gathers and broadcasts with deadlines, the point-to-point messages,
//! buffers lent to MPI, the job's key, and rank 0's progress line.
//!
//! Layer rule: `mpi` uses `host`, `output`, `plan` and `sys`.

pub mod cluster;
pub mod collective;
pub mod job;
pub mod library;
pub mod messages;
pub mod mpi_buffer;
pub mod progress;
pub mod start_deadline;
