//! The tools rootless Docker needs on this host (rootlesskit, slirp4netns, dockerd, nft, the
//! setuid/setcap helpers), found where the daemon will look for them, with their versions.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::check::{Check, Status, bad, ok};
use super::distro::Distro;

/// Finds an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    find_in(&path, name)
}

/// Finds an executable on the PATH the daemon gets (the user's, and the system directories).
pub(super) fn which_for_daemon(name: &str) -> Option<PathBuf> {
    find_in(
        &crate::host::daemon::config::daemon_path(std::env::var_os("PATH")),
        name,
    )
}

pub(super) fn find_in(path: &std::ffi::OsStr, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

pub(super) fn check_tool(name: &str, with_version: bool, distro: &Distro) -> Check {
    check_tool_or(
        name,
        with_version,
        distro,
        Status::Fail,
        "not found on PATH",
    )
}

/// As `check_tool`, with what a missing tool means here.
pub(super) fn check_tool_or(
    name: &str,
    with_version: bool,
    distro: &Distro,
    missing: Status,
    why: &str,
) -> Check {
    match which(name) {
        None => bad(
            name,
            missing,
            why,
            format!(
                "ask your admin to install it ({}), or add it to PATH",
                distro.install(name)
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
pub(super) fn check_nft(distro: &Distro) -> Check {
    match which_for_daemon("nft") {
        Some(path) => ok("nft", path.display().to_string()),
        None => bad(
            "nft",
            Status::Fail,
            "not found (it closes the swarm ports to hosts outside the job)",
            format!(
                "ask your admin to install nftables ({})",
                distro.install("nft")
            ),
        ),
    }
}

/// Oldest releases `--net host` works with: rootlesskit's `--detach-netns` (2.0) and a dockerd
/// that does its network work in that detached namespace (26.0). Older ones start, but the
/// containers cannot use the node's network (README: the data path).
pub(super) const HOST_NET_ROOTLESSKIT: (u32, u32) = (2, 0);

pub(super) const HOST_NET_DOCKERD: (u32, u32) = (26, 0);

/// Major and minor of the first word that starts with a digit ("Docker version 26.1.5+dfsg1, ...").
pub fn major_minor(version_line: &str) -> Option<(u32, u32)> {
    let word = version_line
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    let mut parts = word.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// `--net host` needs both versions; the failure names what this host has and what it needs.
pub(super) fn host_network_check(rootlesskit: Option<String>, dockerd: Option<String>) -> Check {
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

/// The first line `TOOL --version` prints, within a few seconds (a check must never hang).
pub(super) fn tool_version(path: &Path) -> String {
    match output_within(path, &["--version"]) {
        Some(text) => text.lines().next().unwrap_or_default().to_owned(),
        None => "(no answer to --version)".into(),
    }
}

/// What `TOOL ARGS` prints on stdout, if it ends within a few seconds (a check must never hang,
/// not even on a pipe that a grandchild keeps open).
pub(super) fn output_within(path: &Path, args: &[&str]) -> Option<String> {
    let child = std::process::Command::new(path)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    match crate::sys::child_output::output_within(child, std::time::Duration::from_secs(5)) {
        Ok(out) if out.status.is_some() => Some(out.stdout_text()),
        _ => None,
    }
}

pub(super) fn check_setid_tool(name: &str, distro: &Distro) -> Check {
    let Some(path) = which(name) else {
        return bad(
            name,
            Status::Fail,
            "not found on PATH",
            format!("ask your admin to install it ({})", distro.install(name)),
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

pub(super) fn xattr_present(path: &Path, name: &str) -> bool {
    rustix::fs::getxattr_query(path, name).is_ok_and(|size| size > 0)
}
