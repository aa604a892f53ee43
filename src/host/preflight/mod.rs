//! Prerequisite checks for rootless Docker on this host, each with the fix to ask for. `up` runs
//! them before starting anything; `doctor` prints them for every host.

pub mod check;
mod distro;
mod kernel;
mod place;
mod subids;
pub mod tools;

use std::net::Ipv4Addr;

use anyhow::{Result, bail};

use crate::plan::config::{HostConfig, Network};

use check::{Check, Status};
use distro::Distro;
use kernel::{
    apparmor_userns, check_kernel_fs, check_memory, check_module, check_not_root, check_tun,
    check_userns, ptrace_check, shared_node_check, udp_buffer_check,
};
use place::{check_ports, check_state_base};
use subids::{Kind, check_subids};
use tools::{
    check_nft, check_setid_tool, check_tool, check_tool_or, host_network_check, tool_version, which,
};

/// Runs every check; `addr` is the resolved advertise address, if it could be resolved.
pub fn run_checks(
    host: &HostConfig,
    addr: Option<Ipv4Addr>,
    with_versions: bool,
    network: Network,
) -> Vec<Check> {
    let distro = Distro::of_host();
    let mut checks = vec![check_not_root()];
    for tool in [
        "rootlesskit",
        "slirp4netns",
        "dockerd",
        "containerd",
        "runc",
        // mpiswarm enters the daemon's namespaces with it (the swarm ports' firewall).
        "nsenter",
    ] {
        checks.push(check_tool(tool, with_versions, &distro));
    }
    checks.push(check_tool_or(
        "ip",
        with_versions,
        &distro,
        Status::Warn,
        "not found on PATH (--vxlan-nolearning needs it)",
    ));
    for tool in ["newuidmap", "newgidmap"] {
        checks.push(check_setid_tool(tool, &distro));
    }
    checks.push(check_subids(Kind::Uid, &distro));
    checks.push(check_subids(Kind::Gid, &distro));
    checks.push(check_userns());
    checks.push(apparmor_userns());
    checks.push(check_tun());
    checks.push(check_kernel_fs("overlay"));
    checks.extend(network_checks(network, &distro));
    checks.push(ptrace_check(
        std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
            .ok()
            .and_then(|s| s.trim().parse().ok()),
    ));
    checks.push(udp_buffer_check(
        std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse().ok()),
    ));
    checks.push(shared_node_check(
        &crate::sys::procfs::process_owners(),
        nix::unistd::getuid().as_raw(),
    ));
    checks.push(check_state_base(&host.state_base));
    if let Some(addr) = addr {
        checks.push(check_ports(addr));
    }
    checks.push(check_memory());
    checks
}

/// What the chosen data path needs: for overlays nft (with the slirp4netns port driver), vxlan
/// and ip_vs; for `--net host`, recent enough rootlesskit and dockerd.
fn network_checks(network: Network, distro: &Distro) -> Vec<Check> {
    let mut found = Vec::new();
    match network {
        Network::Overlay { .. } => {
            if network.slirp4netns_forwards() {
                found.push(check_nft(distro));
            }
            found.push(check_module(
                "vxlan",
                Status::Fail,
                "overlay networks need the vxlan module: ask your admin to load it (modprobe vxlan)",
            ));
            found.push(check_module(
                "ip_vs",
                Status::Warn,
                "without IPVS, service virtual IPs do not route: use endpoint_mode: dnsrr in compose files",
            ));
        }
        Network::Host => found.push(host_network_check(
            which("rootlesskit").map(|p| tool_version(&p)),
            which("dockerd").map(|p| tool_version(&p)),
        )),
    }
    found
}

/// The checks `up` needs to pass, as one error listing every failure with its fix.
/// Returns the warnings when nothing failed.
pub fn require(host: &HostConfig, addr: Ipv4Addr, network: Network) -> Result<Vec<Check>> {
    let (failures, warnings): (Vec<Check>, Vec<Check>) =
        run_checks(host, Some(addr), false, network)
            .into_iter()
            .filter(|c| c.status != Status::Ok)
            .partition(|c| c.status == Status::Fail);
    if failures.is_empty() {
        return Ok(warnings);
    }
    let lines: Vec<String> = failures
        .iter()
        .map(|c| format!("{}: {} (fix: {})", c.name, c.detail, c.fix))
        .collect();
    bail!("prerequisites missing: {}", lines.join("; "));
}

#[cfg(test)]
mod tests {
    use super::kernel::*;
    use super::tools::*;
    use super::*;

    #[test]
    fn host_network_needs_rootlesskit_2_and_docker_26() {
        let check = |rk: &str, dd: &str| host_network_check(Some(rk.into()), Some(dd.into()));
        let debian13 = check(
            "rootlesskit version 2.0.2",
            "Docker version 26.1.5+dfsg1, build 411e817",
        );
        assert_eq!(debian13.status, Status::Ok, "{debian13:?}");
        let debian12 = check(
            "rootlesskit version 1.1.0",
            "Docker version 20.10.24+dfsg1, build 297e128",
        );
        assert_eq!(debian12.status, Status::Fail);
        assert!(
            debian12.detail.contains("rootlesskit 1.1 and Docker 20.10"),
            "{debian12:?}"
        );
        assert_eq!(
            check("rootlesskit version 2.0.2", "Docker version 25.0.3").status,
            Status::Fail
        );
        assert_eq!(
            host_network_check(None, Some("Docker version 27.0.1".into())).status,
            Status::Fail
        );
    }

    #[test]
    fn small_udp_buffers_are_a_warning_with_a_fix() {
        assert_eq!(udp_buffer_check(Some(4 << 20)).status, Status::Ok);
        let small = udp_buffer_check(Some(212_992));
        assert_eq!(small.status, Status::Warn);
        assert!(small.fix.contains("rmem_max"), "{small:?}");
    }

    #[test]
    fn other_users_on_the_node_are_a_warning_naming_them() {
        assert_eq!(
            shared_node_check(&[0, 100, 1001, 65534], 1001).status,
            Status::Ok
        );
        let shared = shared_node_check(&[1001, 1002, 1002, 0], 1001);
        assert_eq!(shared.status, Status::Warn);
        assert!(shared.detail.contains("1 other user(s)") && shared.detail.contains("1002"));
    }

    #[test]
    fn ptrace_scope_above_one_is_a_warning_with_a_fix() {
        assert_eq!(ptrace_check(None).status, Status::Ok);
        assert_eq!(ptrace_check(Some(1)).status, Status::Ok);
        let strict = ptrace_check(Some(2));
        assert_eq!(strict.status, Status::Warn);
        assert!(strict.fix.contains("ptrace_scope=1"), "{strict:?}");
    }

    #[test]
    fn apparmors_userns_restriction_is_a_failure_unless_a_profile_allows_rootlesskit() {
        let rk = std::path::Path::new("/usr/bin/rootlesskit");
        assert_eq!(
            apparmor_userns_check(None, Some(rk), &[]).status,
            Status::Ok
        );
        assert_eq!(
            apparmor_userns_check(Some(0), Some(rk), &[]).status,
            Status::Ok
        );
        let other = "profile man /usr/bin/man { }".to_owned();
        let restricted = apparmor_userns_check(Some(1), Some(rk), &[other]);
        assert_eq!(restricted.status, Status::Fail);
        assert!(
            restricted
                .detail
                .contains("apparmor_restrict_unprivileged_userns = 1")
                && restricted
                    .fix
                    .contains("profile rootlesskit /usr/bin/rootlesskit")
                && restricted.fix.contains("userns,"),
            "{restricted:?}"
        );
        let profile = "abi <abi/4.0>,\nprofile rootlesskit /usr/bin/rootlesskit flags=(unconfined) {\n  userns,\n}\n";
        let allowed = apparmor_userns_check(Some(1), Some(rk), &[profile.to_owned()]);
        assert_eq!(allowed.status, Status::Ok, "{allowed:?}");
    }
}
