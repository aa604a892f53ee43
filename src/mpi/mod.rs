//! mpi

pub mod cluster;
pub mod collective;
pub mod job;
pub mod messages;
pub mod mpi_buffer;
pub mod progress;
