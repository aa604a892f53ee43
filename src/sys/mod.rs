//! Operating-system helpers that know nothing of Docker, MPI or a swarm: processes as /proc
//! shows them, waits with deadlines (a child's output too), signals turned into events, the per-host state
//! directory's layout and permissions, and the tests' fault hooks.
//!
//! Layer rule (ARCHITECTURE.md, checked by `layering.rs`): `sys` is the bottom layer; it uses
//! no other folder of mpiswarm.

pub mod child_output;
pub mod deadline;
pub mod fault;
pub mod procfs;
pub mod signals;
pub mod statedir;
