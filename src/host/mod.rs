//! host

pub mod backlog;
pub mod daemon;
pub mod docker_version;
pub mod end_notice;
pub mod engine;
pub mod firewall;
pub mod guard;
pub mod guard_protocol;
pub mod host_daemon;
pub mod identity;
pub mod leftovers;
pub mod oci_runtime;
pub mod offer;
pub mod preflight;
pub mod squatters;
pub mod teardown;
pub mod vxlan;
