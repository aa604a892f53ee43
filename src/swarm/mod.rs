//! swarm

pub mod collect;
pub mod formation;
pub mod images;
pub mod seal;
pub mod stack;
pub mod stack_state;
pub mod verify;
pub mod versioned;
pub mod workload;
