//! output

pub mod logging;
pub mod outputs;
pub mod report;
