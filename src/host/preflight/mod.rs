//! Prerequisite checks for rootless Docker on this host, each with the fix to ask for. `up` runs
//! them before starting anything; `doctor` prints them for every host.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::host::firewall::SWARM_PORTS;
use crate::plan::config::{HostConfig, Network};
use crate::sys::statedir::{self, StateDir};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    /// What to do about a warning or failure.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub fix: String,
}

fn ok(name: &str, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status: Status::Ok,
        detail: detail.into(),
        fix: String::new(),
    }
}

fn bad(name: &str, status: Status, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
        fix: fix.into(),
    }
}

/// Filesystem magic numbers of network and parallel filesystems, on which overlayfs and Unix
/// sockets of a per-node daemon do not work.
const NETWORK_FILESYSTEMS: [(i64, &str); 7] = [
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
fn unsupported_fs(magic: i64) -> Option<String> {
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

/// Finds an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    find_in(&path, name)
}

/// Finds an executable on the PATH the daemon gets (the user's, and the system directories).
fn which_for_daemon(name: &str) -> Option<PathBuf> {
    find_in(
        &crate::host::daemon::daemon_path(std::env::var_os("PATH")),
        name,
    )
}

fn find_in(path: &std::ffi::OsStr, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Runs every check; `addr` is the resolved advertise address, if it could be resolved.
pub fn run_checks(
    host: &HostConfig,
    addr: Option<Ipv4Addr>,
    with_versions: bool,
    network: Network,
) -> Vec<Check> {
    let mut checks = vec![check_not_root()];
    for tool in [
        "rootlesskit",
        "slirp4netns",
        "dockerd",
        "containerd",
        "runc",
    ] {
        checks.push(check_tool(tool, with_versions));
    }
    for tool in ["newuidmap", "newgidmap"] {
        checks.push(check_setid_tool(tool));
    }
    checks.push(check_subids("/etc/subuid", "subuid"));
    checks.push(check_subids("/etc/subgid", "subgid"));
    checks.push(check_userns());
    checks.push(check_tun());
    checks.push(check_kernel_fs("overlay"));
    match network {
        Network::Overlay { .. } => {
            if network.slirp4netns_forwards() {
                checks.push(check_nft());
            }
            checks.push(check_module(
                "vxlan",
                Status::Fail,
                "overlay networks need the vxlan module: ask your admin to load it (modprobe vxlan)",
            ));
            checks.push(check_module(
                "ip_vs",
                Status::Warn,
                "without IPVS, service virtual IPs do not route: use endpoint_mode: dnsrr in compose files",
            ));
        }
        Network::Host => checks.push(host_network_check(
            which("rootlesskit").map(|p| tool_version(&p)),
            which("dockerd").map(|p| tool_version(&p)),
        )),
    }
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
        &crate::sys::procfs::all_processes()
            .iter()
            .map(|p| p.uid)
            .collect::<Vec<_>>(),
        nix::unistd::getuid().as_raw(),
    ));
    checks.push(check_state_base(&host.state_base));
    if let Some(addr) = addr {
        checks.push(check_ports(addr));
    }
    checks.push(check_memory());
    checks
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

fn check_not_root() -> Check {
    if nix::unistd::geteuid().is_root() {
        bad(
            "user",
            Status::Fail,
            "running as root",
            "mpiswarm runs Docker rootless, as an ordinary user; run the job as your own user \
             (as root, use the system's Docker daemon instead)",
        )
    } else {
        ok("user", format!("uid {}", nix::unistd::getuid()))
    }
}

fn check_tool(name: &str, with_version: bool) -> Check {
    match which(name) {
        None => bad(
            name,
            Status::Fail,
            "not found on PATH",
            format!(
                "install {name} (Debian/Ubuntu: apt install {}) or add it to PATH",
                debian_package(name)
            ),
        ),
        Some(path) => {
            let version = if with_version {
                tool_version(&path)
            } else {
                String::new()
            };
            ok(
                name,
                format!("{} {version}", path.display()).trim().to_owned(),
            )
        }
    }
}

/// The firewall of the swarm ports (firewall.rs) is one nftables table in the daemon's namespace.
fn check_nft() -> Check {
    match which_for_daemon("nft") {
        Some(path) => ok("nft", path.display().to_string()),
        None => bad(
            "nft",
            Status::Fail,
            "not found (it closes the swarm ports to hosts outside the job)",
            "ask your admin to install nftables (Debian/Ubuntu: apt install nftables)",
        ),
    }
}

/// Oldest releases `--net host` works with: rootlesskit's `--detach-netns` (2.0) and a dockerd
/// that does its network work in that detached namespace (26.0). Older ones start, but the
/// containers cannot use the node's network (README: the data path).
const HOST_NET_ROOTLESSKIT: (u32, u32) = (2, 0);
const HOST_NET_DOCKERD: (u32, u32) = (26, 0);

/// Major and minor of the first word that starts with a digit ("Docker version 26.1.5+dfsg1, ...").
pub fn major_minor(version_line: &str) -> Option<(u32, u32)> {
    let word = version_line
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = word.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// `--net host` needs both versions; the failure names what this host has and what it needs.
fn host_network_check(rootlesskit: Option<String>, dockerd: Option<String>) -> Check {
    let found = |v: &Option<String>| v.as_deref().and_then(major_minor);
    let (rk, dd) = (found(&rootlesskit), found(&dockerd));
    let new_enough = |v: Option<(u32, u32)>, min: (u32, u32)| v.is_some_and(|v| v >= min);
    let shown = |v: Option<(u32, u32)>| v.map_or("unknown".to_owned(), |(a, b)| format!("{a}.{b}"));
    let detail = format!(
        "rootlesskit {} and Docker {} (--net host needs rootlesskit >= {}.{} and Docker >= {}.{})",
        shown(rk),
        shown(dd),
        HOST_NET_ROOTLESSKIT.0,
        HOST_NET_ROOTLESSKIT.1,
        HOST_NET_DOCKERD.0,
        HOST_NET_DOCKERD.1
    );
    if new_enough(rk, HOST_NET_ROOTLESSKIT) && new_enough(dd, HOST_NET_DOCKERD) {
        ok("host-network", detail)
    } else {
        bad(
            "host-network",
            Status::Fail,
            detail,
            "use --net overlay on this node, or install newer rootlesskit and Docker (e.g. Debian 13's)",
        )
    }
}

fn debian_package(tool: &str) -> &'static str {
    match tool {
        "rootlesskit" => "rootlesskit",
        "slirp4netns" => "slirp4netns",
        "newuidmap" | "newgidmap" => "uidmap",
        "containerd" => "containerd",
        "runc" => "runc",
        _ => "docker.io",
    }
}

/// The first line `TOOL --version` prints, within a few seconds (a check must never hang).
fn tool_version(path: &Path) -> String {
    use std::io::Read;
    let Ok(mut child) = std::process::Command::new(path)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
    else {
        return String::new();
    };
    if !matches!(
        crate::sys::deadline::wait_or_kill(&mut child, std::time::Duration::from_secs(5)),
        Ok(Some(_))
    ) {
        return "(no answer to --version)".into();
    }
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut text);
    }
    text.lines().next().unwrap_or_default().to_owned()
}

fn check_setid_tool(name: &str) -> Check {
    let Some(path) = which(name) else {
        return bad(
            name,
            Status::Fail,
            "not found on PATH",
            "ask your admin to install the uidmap package",
        );
    };
    let meta = std::fs::metadata(&path);
    let setuid = meta
        .as_ref()
        .is_ok_and(|m| m.permissions().mode() & 0o4000 != 0);
    let has_caps = xattr_present(&path, "security.capability");
    if setuid || has_caps {
        ok(name, path.display().to_string())
    } else {
        bad(
            name,
            Status::Fail,
            format!(
                "{} is neither setuid root nor has file capabilities",
                path.display()
            ),
            format!(
                "ask your admin: chmod u+s {} (or setcap cap_setuid/cap_setgid)",
                path.display()
            ),
        )
    }
}

fn xattr_present(path: &Path, name: &str) -> bool {
    rustix::fs::getxattr_query(path, name).is_ok_and(|size| size > 0)
}

/// Counts the ids /etc/subuid (or subgid) grants this user, by name or uid.
pub fn subid_count(text: &str, user: &str, uid: u32) -> u64 {
    text.lines()
        .filter_map(|line| {
            let mut parts = line.trim().split(':');
            let who = parts.next()?;
            let _start: u64 = parts.next()?.parse().ok()?;
            let count: u64 = parts.next()?.parse().ok()?;
            (who == user || who == uid.to_string()).then_some(count)
        })
        .sum()
}

fn check_subids(file: &str, name: &str) -> Check {
    let uid = nix::unistd::getuid();
    let user = nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_default();
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let count = subid_count(&text, &user, uid.as_raw());
    if count >= 65536 {
        ok(name, format!("{count} ids for {user}"))
    } else {
        bad(
            name,
            Status::Fail,
            format!("{file} grants {user} {count} ids; rootless Docker needs 65536"),
            format!("ask your admin: usermod --add-{name}s 100000-165535 {user} (on every node)"),
        )
    }
}

fn check_userns() -> Check {
    let max = std::fs::read_to_string("/proc/sys/user/max_user_namespaces")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let clone = std::fs::read_to_string("/proc/sys/kernel/unprivileged_userns_clone")
        .ok()
        .map(|s| s.trim().to_owned());
    if max == Some(0) {
        return bad(
            "userns",
            Status::Fail,
            "user namespaces are disabled (user.max_user_namespaces = 0)",
            "ask your admin: sysctl user.max_user_namespaces=28633",
        );
    }
    if clone.as_deref() == Some("0") {
        return bad(
            "userns",
            Status::Fail,
            "unprivileged user namespaces are disabled (kernel.unprivileged_userns_clone = 0)",
            "ask your admin: sysctl kernel.unprivileged_userns_clone=1",
        );
    }
    ok(
        "userns",
        format!(
            "max_user_namespaces {}",
            max.map_or("?".into(), |m| m.to_string())
        ),
    )
}

/// The guard deepens slirp4netns' accept queues through `pidfd_getfd`, which Yama allows an
/// ancestor of the same user at scope 0 or 1 only.
fn ptrace_check(yama_scope: Option<u32>) -> Check {
    match yama_scope {
        None => ok("ptrace", "no Yama restrictions"),
        Some(scope @ (0 | 1)) => ok("ptrace", format!("Yama ptrace_scope {scope}")),
        Some(scope) => bad(
            "ptrace",
            Status::Warn,
            format!(
                "Yama ptrace_scope {scope}: the swarm ports keep slirp4netns' accept queue of one, \
                 so hosts joining at once may wait a second each for a retransmission"
            ),
            "ask your admin: sysctl kernel.yama.ptrace_scope=1 (a process may then inspect only \
             its own descendants); or use --managers K to spread the joins",
        ),
    }
}

/// Below this, slirp4netns' VXLAN socket drops large overlay datagrams under load (README: the
/// data path); measured here: 4 MiB drops none.
const UDP_BUFFER_WANTED: u64 = 4 << 20;

/// The overlay's speed with large MTUs needs a large receive buffer on slirp4netns' VXLAN socket,
/// which mpiswarm can raise only up to `net.core.rmem_max`.
fn udp_buffer_check(rmem_max: Option<u64>) -> Check {
    match rmem_max {
        Some(max) if max < UDP_BUFFER_WANTED => bad(
            "udp-buffer",
            Status::Warn,
            format!(
                "net.core.rmem_max is {max}: overlay datagrams may be dropped under MPI traffic"
            ),
            "ask your admin: sysctl net.core.rmem_max=4194304 (or use a smaller --overlay-mtu)",
        ),
        Some(max) => ok("udp-buffer", format!("net.core.rmem_max {max}")),
        None => ok("udp-buffer", "net.core.rmem_max unknown"),
    }
}

/// Other users' processes on the node (regular uids from 1000, not `nobody`): they could send
/// from this node's own address, which no firewall tells from the job's, or take a swarm port.
fn shared_node_check(uids: &[u32], me: u32) -> Check {
    let mut others: Vec<u32> = uids
        .iter()
        .copied()
        .filter(|&u| u >= 1000 && u != me && u != 65534)
        .collect();
    others.sort_unstable();
    others.dedup();
    if others.is_empty() {
        return ok("shared-node", "no other user's processes here");
    }
    let shown: Vec<String> = others.iter().take(5).map(u32::to_string).collect();
    bad(
        "shared-node",
        Status::Warn,
        format!(
            "processes of {} other user(s) run on this node (uid {})",
            others.len(),
            shown.join(", ")
        ),
        "they could reach the swarm from this node's own address: ask for whole nodes (#SBATCH --exclusive)",
    )
}

fn check_tun() -> Check {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        Ok(_) => ok("tun", "/dev/net/tun usable"),
        Err(e) => bad(
            "tun",
            Status::Fail,
            format!("cannot open /dev/net/tun: {e}"),
            "ask your admin: chmod 0666 /dev/net/tun (and modprobe tun); slirp4netns needs it",
        ),
    }
}

fn check_kernel_fs(fs: &str) -> Check {
    let known = std::fs::read_to_string("/proc/filesystems")
        .is_ok_and(|t| t.lines().any(|l| l.split_whitespace().last() == Some(fs)));
    if known || module_available(fs) {
        ok(fs, "supported by the kernel")
    } else {
        bad(
            fs,
            Status::Fail,
            format!("the kernel has no {fs} filesystem"),
            format!("ask your admin: modprobe {fs}"),
        )
    }
}

fn module_available(name: &str) -> bool {
    if Path::new("/sys/module").join(name).exists() {
        return true;
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let dep =
        std::fs::read_to_string(format!("/lib/modules/{release}/modules.dep")).unwrap_or_default();
    let builtin = std::fs::read_to_string(format!("/lib/modules/{release}/modules.builtin"))
        .unwrap_or_default();
    let needle = format!("/{name}.ko");
    dep.lines()
        .chain(builtin.lines())
        .any(|l| l.split(':').next().is_some_and(|m| m.contains(&needle)))
}

fn check_module(name: &str, missing: Status, fix: &str) -> Check {
    if module_available(name) {
        ok(name, "available")
    } else {
        bad(
            name,
            missing,
            format!("kernel module {name} is not available"),
            fix,
        )
    }
}

fn check_state_base(base: &Path) -> Check {
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
    // Checked without creating anything: a check must leave no trace.
    let root = statedir::user_root(base);
    let writable = if root.exists() {
        statedir::check_user_root(&root).and_then(|()| {
            nix::unistd::access(&root, nix::unistd::AccessFlags::W_OK).map_err(Into::into)
        })
    } else {
        nix::unistd::access(
            base,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .map_err(Into::into)
    };
    if let Err(e) = writable {
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

fn check_ports(addr: Ipv4Addr) -> Check {
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

fn check_memory() -> Check {
    let available_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    if available_kib < 512 * 1024 {
        bad(
            "memory",
            Status::Warn,
            format!("only {} MiB available", available_kib / 1024),
            "a daemon needs a few hundred MiB; request more memory for the job",
        )
    } else {
        ok("memory", format!("{} MiB available", available_kib / 1024))
    }
}

#[cfg(test)]
mod tests {
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
    fn subids_by_name_or_uid() {
        let text = "alice:100000:65536\nbob:165536:65536\n1002:231072:1000\n";
        assert_eq!(subid_count(text, "alice", 1000), 65536);
        assert_eq!(subid_count(text, "carol", 1002), 1000);
        assert_eq!(subid_count(text, "dave", 1003), 0);
        assert_eq!(subid_count("garbage\n", "alice", 1000), 0);
    }
}
