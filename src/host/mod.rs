//! One host: its name and address, its prerequisites (preflight), its rootless daemon tree
//! (rootlesskit, slirp4netns, dockerd) and the guard that owns and tears it down, the swarm
//! ports' firewall and the data path's fixes (backlogs, VXLAN learning, squatters), the OCI
//! runtime of `--net host`, the Engine API client, the end notice to the host's other ranks,
//! and what a dead run leaves behind. Nothing here speaks MPI: the guard runs without it.
//!
//! Layer rule: `host` uses `output`, `plan` and `sys`.

pub mod backlog;
pub mod daemon;
pub mod docker_version;
pub mod end_notice;
pub mod engine;
pub mod firewall;
pub mod guard;
pub mod identity;
pub mod leftovers;
pub mod oci_runtime;
pub mod offer;
pub mod preflight;
pub mod squatters;
pub mod statedir;
pub mod teardown;
pub mod vxlan;
