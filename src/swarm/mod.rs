//! The swarm, over the Engine API and the leaders' collectives: formation (init, joins,
//! membership, labels), the ingress network made after the joins, the seal (tokens rotated, strangers removed), images without a registry,
//! stacks and their state, the overlay check (`verify`), the user's workload, and `--collect`.
//!
//! Layer rule: `swarm` uses `mpi`, `host`, `output`, `plan` and `sys`.

pub mod api;
pub mod collect;
pub mod formation;
pub mod images;
pub mod ingress;
pub mod seal;
pub mod stack;
pub mod stack_state;
pub mod verify;
pub mod versioned;
pub mod workload;
