//! cmd

pub mod cleanup;
pub mod doctor;
pub mod up;
