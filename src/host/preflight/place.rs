//! Where a run lives on this host: a state base on a local filesystem, and swarm ports free.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::path::Path;

use crate::host::firewall::SWARM_PORTS;
use crate::host::statedir::{self, StateDir};

use super::check::{Check, Status, bad, ok};

/// Filesystem magic numbers of network and parallel filesystems, on which overlayfs and Unix
/// sockets of a per-node daemon do not work.
pub(super) const NETWORK_FILESYSTEMS: [(i64, &str); 7] = [
    (0x6969, "NFS"),
    (0x0BD0_0BD0, "Lustre"),
    (0x4750_4653, "GPFS"),
    (0xFF53_4D42, "CIFS"),
    (0xFE53_4D42, "SMB2"),
    (0x6573_5546, "FUSE"),
    (0x0102_1997, "9P"),
];

/// Names a filesystem type that cannot hold a state directory: the network filesystems, plus
/// any a site lists in `MPISWARM_UNSUPPORTED_FS` (hex magic numbers as `stat -f -c %t` prints
/// them, comma-separated), e.g. for a parallel filesystem mpiswarm does not know.
pub(super) fn unsupported_fs(magic: i64) -> Option<String> {
    if let Some((_, name)) = NETWORK_FILESYSTEMS.iter().find(|(m, _)| *m == magic) {
        return Some((*name).to_owned());
    }
    let extra = std::env::var("MPISWARM_UNSUPPORTED_FS").unwrap_or_default();
    extra
        .split(',')
        .filter_map(|hex| i64::from_str_radix(hex.trim().trim_start_matches("0x"), 16).ok())
        .find(|m| *m == magic)
        .map(|m| format!("a filesystem of type {m:#x} (listed in MPISWARM_UNSUPPORTED_FS)"))
}

pub(super) fn check_state_base(base: &Path) -> Check {
    let name = "state-dir";
    let probe_path =
        StateDir::path_for(base, "jXXXXXXXXXXXXXX", &crate::host::identity::hostname());
    if let Err(e) = StateDir::check_socket_length(&probe_path) {
        return bad(
            name,
            Status::Fail,
            format!("{e:#}"),
            "use a short node-local --state-dir such as /tmp",
        );
    }
    let stat = match nix::sys::statfs::statfs(base) {
        Ok(s) => s,
        Err(e) => {
            return bad(
                name,
                Status::Fail,
                format!("{} is not usable: {e}", base.display()),
                "create it, or pass a node-local --state-dir such as /tmp",
            );
        }
    };
    let magic = stat.filesystem_type().0 as i64;
    if let Some(fs) = unsupported_fs(magic) {
        return bad(
            name,
            Status::Fail,
            format!(
                "{} is on {fs}, which does not support overlayfs",
                base.display()
            ),
            "pass a node-local --state-dir (e.g. /tmp or local scratch)",
        );
    }
    if let Err(e) = writable(base) {
        return bad(
            name,
            Status::Fail,
            format!("{} is not writable: {e:#}", base.display()),
            "pass a writable node-local --state-dir such as /tmp",
        );
    }
    let free = stat.blocks_available() as u64 * stat.block_size() as u64;
    if free < 2 << 30 {
        return bad(
            name,
            Status::Warn,
            format!("only {} MiB free on {}", free >> 20, base.display()),
            "images and containers need space: free some, or pass another --state-dir",
        );
    }
    ok(
        name,
        format!("{} ({} GiB free)", base.display(), free >> 30),
    )
}

/// Whether this user may make a run's directory under `base` (or in the per-user root there):
/// checked without creating anything, since a check must leave no trace.
fn writable(base: &Path) -> anyhow::Result<()> {
    let root = statedir::user_root(base);
    if root.exists() {
        statedir::check_user_root(&root).and_then(|()| {
            nix::unistd::access(&root, nix::unistd::AccessFlags::W_OK).map_err(Into::into)
        })
    } else {
        nix::unistd::access(
            base,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .map_err(Into::into)
    }
}

pub(super) fn check_ports(addr: Ipv4Addr) -> Check {
    let mut busy = Vec::new();
    for (port, proto) in SWARM_PORTS {
        let sa = SocketAddrV4::new(addr, port);
        let free = match proto {
            "tcp" => TcpListener::bind(sa).is_ok(),
            _ => UdpSocket::bind(sa).is_ok(),
        };
        if !free {
            busy.push(format!("{port}/{proto}"));
        }
    }
    if busy.is_empty() {
        ok(
            "ports",
            format!("2377/tcp 7946/tcp+udp 4789/udp free on {addr}"),
        )
    } else {
        bad(
            "ports",
            Status::Fail,
            format!(
                "{} already in use on {addr} (another swarm on this node?)",
                busy.join(", ")
            ),
            "stop the other swarm (mpiswarm cleanup, if it is yours), or choose another --advertise-addr",
        )
    }
}
