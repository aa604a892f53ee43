//! One host's rootless daemon: how it is configured (`config`: rootlesskit's command line and
//! daemon.json, used inside the guard) and how a rank launches it and waits for it (`launch`).

pub mod config;
pub mod launch;
