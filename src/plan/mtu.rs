//! MTUs of the rootless data path: slirp4netns' link, docker_gwbridge, and the overlay networks
//! whose VXLAN datagrams slirp4netns relays one by one between hosts (bench/RESULTS.md, README).

use serde_json::{Value, json};

/// rootlesskit's (and so slirp4netns') MTU inside the daemon's namespace: its maximum. Every
/// packet to or from the host crosses slirp4netns one by one, so fewer, larger packets are faster.
pub const SLIRP_MTU: u32 = 65520;

/// Ethernet, VXLAN, UDP and IPv4 headers around an overlay frame.
pub const VXLAN_OVERHEAD: u32 = 50;

/// mpiswarm's default for an overlay's MTU option. Docker's overlay driver takes the option as the
/// MTU of the link under VXLAN and gives containers VXLAN_OVERHEAD less (measured: option 65470,
/// containers' eth0 65420); without the option it assumes 1500 (containers: 1450). So slirp4netns'
/// own MTU, the largest whose datagrams fit its link, gives containers 65470: measured fastest
/// (6x Docker's default for MPI at 1 MiB). The host's own link may have a smaller MTU: the host's
/// kernel then fragments each datagram and reassembles it on arrival.
pub const DEFAULT_OVERLAY_MTU: u32 = SLIRP_MTU;

/// The smallest MTU IPv4 guarantees without fragmentation, and so the lowest that makes sense.
pub const MIN_OVERLAY_MTU: u32 = 576;

/// The variable by which a command, a compose file (`${MPISWARM_OVERLAY_MTU}`) and the ready file
/// learn the overlay MTU, for networks they create themselves.
pub const ENV: &str = "MPISWARM_OVERLAY_MTU";

/// Docker's driver option setting a network's MTU.
pub const DRIVER_OPTION: &str = "com.docker.network.driver.mtu";

/// Network options (`Options` of `/networks/create`) giving a network this MTU.
pub fn options(mtu: u32) -> Value {
    json!({ DRIVER_OPTION: mtu.to_string() })
}

/// Checks a user's `--overlay-mtu`.
pub fn check_overlay(mtu: u32) -> anyhow::Result<u32> {
    if !(MIN_OVERLAY_MTU..=DEFAULT_OVERLAY_MTU).contains(&mtu) {
        anyhow::bail!(
            "--overlay-mtu {mtu} is outside {MIN_OVERLAY_MTU}..={DEFAULT_OVERLAY_MTU}: VXLAN adds \
             {VXLAN_OVERHEAD} bytes inside it and slirp4netns' link carries {SLIRP_MTU} (e.g. \
             1500 for Docker's default, 9000 for jumbo frames)"
        );
    }
    Ok(mtu)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_mtu_fits_slirp4netns_and_a_udp_datagram() {
        // Inner Ethernet (14) + VXLAN (8) + UDP (8) + IPv4 (20) around the frame's payload, and
        // the largest UDP payload over IPv4 is 65507.
        const { assert!(DEFAULT_OVERLAY_MTU <= SLIRP_MTU) };
        const { assert!(DEFAULT_OVERLAY_MTU - VXLAN_OVERHEAD + 14 + 8 <= 65507) };
        assert!(check_overlay(1500).is_ok());
        assert!(check_overlay(DEFAULT_OVERLAY_MTU).is_ok());
        assert!(check_overlay(DEFAULT_OVERLAY_MTU + 1).is_err());
        assert!(check_overlay(100).is_err());
        assert_eq!(options(1450)[DRIVER_OPTION], "1450");
    }
}
