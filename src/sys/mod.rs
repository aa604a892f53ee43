//! Operating-system helpers that know nothing of Docker, MPI or a swarm: processes as /proc
//! shows them (and pinned before a signal), waits with deadlines (a child's output too), signals
//! turned into events, one framing for the messages between processes, small private files
//! written in one step, the per-user root held open, exit codes, and the tests' fault hooks.
//!
//! Layer rule (ARCHITECTURE.md, checked by `layering.rs`): `sys` is the bottom layer; it uses
//! no other folder of mpiswarm.

pub mod child_output;
pub mod deadline;
pub mod exit;
pub mod fault;
pub mod frame;
pub mod pinned;
pub mod private_file;
pub mod procfs;
pub mod signals;
pub mod user_root;
