//! What the user asked for: the command line's flags (with the site's defaults from the
//! environment), and the validated plan they become before
//! MPI starts or anything is created (with the MTU limits the plan is checked against).
//!
//! Layer rule: `plan` uses only `sys`.

pub mod cli;
pub mod config;
pub mod mtu;
pub mod site_env;
