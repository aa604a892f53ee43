//! sys

pub mod deadline;
pub mod procfs;
pub mod signals;
pub mod statedir;
