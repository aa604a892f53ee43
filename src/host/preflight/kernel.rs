//! What the kernel and the user's account must allow: not root, user namespaces (and
//! AppArmor's restriction of them), ptrace, UDP buffers, /dev/net/tun, overlayfs and modules, memory, other users.

use std::path::Path;

use super::check::{Check, Status, bad, ok};

pub(super) fn check_not_root() -> Check {
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

pub(super) fn check_userns() -> Check {
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

/// Ubuntu (23.10 and later) sets kernel.apparmor_restrict_unprivileged_userns: a program's user
/// namespace then gets no capabilities unless an AppArmor profile allows it `userns`, and
/// rootlesskit cannot set up the daemon's. `profiles` are the texts under /etc/apparmor.d.
pub(super) fn apparmor_userns_check(
    restricted: Option<u32>,
    rootlesskit: Option<&Path>,
    profiles: &[String],
) -> Check {
    const NAME: &str = "apparmor-userns";
    if restricted.is_none_or(|r| r == 0) {
        return ok(NAME, "AppArmor does not restrict user namespaces");
    }
    let path = rootlesskit.map_or("/usr/bin/rootlesskit".into(), |p| p.display().to_string());
    let allowed = profiles
        .iter()
        .any(|text| text.contains(&path) && text.contains("userns"));
    if allowed {
        return ok(
            NAME,
            format!("user namespaces restricted; an AppArmor profile allows {path}"),
        );
    }
    bad(
        NAME,
        Status::Fail,
        format!(
            "kernel.apparmor_restrict_unprivileged_userns = 1 and no AppArmor profile allows \
             {path} user namespaces: rootlesskit's namespace gets no capabilities"
        ),
        format!(
            "ask your admin for a profile, /etc/apparmor.d/rootlesskit: `abi <abi/4.0>, include \
             <tunables/global> profile rootlesskit {path} flags=(unconfined) {{ userns, }}`, \
             loaded with apparmor_parser -r /etc/apparmor.d/rootlesskit (or, for the whole node: \
             sysctl kernel.apparmor_restrict_unprivileged_userns=0)"
        ),
    )
}

/// The restriction's setting, and the profiles to look in when it is on.
pub(super) fn apparmor_userns() -> Check {
    let restricted =
        std::fs::read_to_string("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
            .ok()
            .and_then(|s| s.trim().parse().ok());
    let profiles: Vec<String> = if restricted.is_some_and(|r: u32| r != 0) {
        std::fs::read_dir("/etc/apparmor.d")
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect()
    } else {
        Vec::new()
    };
    let rootlesskit = super::tools::which("rootlesskit");
    apparmor_userns_check(restricted, rootlesskit.as_deref(), &profiles)
}

/// The guard deepens slirp4netns' accept queues through `pidfd_getfd`, which Yama allows an
/// ancestor of the same user at scope 0 or 1 only.
pub(super) fn ptrace_check(yama_scope: Option<u32>) -> Check {
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
pub(super) const UDP_BUFFER_WANTED: u64 = 4 << 20;

/// The overlay's speed with large MTUs needs a large receive buffer on slirp4netns' VXLAN socket,
/// which mpiswarm can raise only up to `net.core.rmem_max`.
pub(super) fn udp_buffer_check(rmem_max: Option<u64>) -> Check {
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
pub(super) fn shared_node_check(uids: &[u32], me: u32) -> Check {
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

pub(super) fn check_tun() -> Check {
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

pub(super) fn check_kernel_fs(fs: &str) -> Check {
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

pub(super) fn module_available(name: &str) -> bool {
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

pub(super) fn check_module(name: &str, missing: Status, fix: &str) -> Check {
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

pub(super) fn check_memory() -> Check {
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
