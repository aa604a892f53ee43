//! One host's rootless daemon: how it is configured (`config`: rootlesskit's command line and
//! daemon.json, used inside the guard), how a rank launches it and waits for it (`launch`), and
//! where its namespaces are entered (`rootlesskit`: rootlesskit's own child), and the host's
//! labels as its own (`labels`).

pub mod config;
pub mod labels;
pub mod launch;
pub mod rootlesskit;
