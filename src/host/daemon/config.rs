//! The rootless daemon of one host: rootlesskit (user, mount, network and PID namespaces, with
//! slirp4netns) running dockerd, with the swarm ports published on the host's advertise address
//! (overlay path), or with its network namespace detached and dockerd in the node's (host path).

use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use serde_json::json;

use crate::host::firewall::SWARM_PORTS;
use crate::host::statedir::StateDir;
use crate::plan::config::Network;

/// Inside the namespaces: drop the symlinks copy-up left to the host's runtime files (so the
/// daemon makes its own), then become dockerd. The same steps as Docker's dockerd-rootless.sh.
const CHILD_SCRIPT: &str =
    "rm -f /run/docker /run/containerd /run/xtables.lock && exec dockerd \"$@\"";

/// The name of the OCI runtime `--net host` daemons use by default (oci_runtime.rs).
const HOST_RUNTIME: &str = "mpiswarm-host";

/// Writes daemon.json and returns the rootlesskit command that runs dockerd for this host.
/// `overlay_default_mtu`: the MTU of overlay networks created without one (Docker >= 24 only).
pub fn command(
    dir: &StateDir,
    addr: Ipv4Addr,
    network: Network,
    overlay_default_mtu: Option<u32>,
    labels: &[String],
) -> Result<Command> {
    let p = &dir.path;
    let config_path = p.join("daemon.json");
    let mut config = daemon_config(dir, network)?;
    if !labels.is_empty() {
        // The host's labels from the start (labels.rs sets them by a reload otherwise).
        config["labels"] = json!(labels);
    }
    if let Some(mtu) = overlay_default_mtu {
        // Each node applies it as it instantiates a swarm overlay (unless its creator gave an
        // MTU): a user's `docker network create -d overlay` or compose file needs no edit.
        config["default-network-opts"] = json!({ "overlay": crate::plan::mtu::options(mtu) });
    }
    crate::sys::private_file::write(&config_path, &serde_json::to_vec_pretty(&config)?)?;

    // The daemon's temporary files (e.g. containerd's stack dumps) go with the state directory.
    let tmp = p.join("tmp");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .with_context(|| format!("failed to create {}", tmp.display()))?;
    // Appended to: the guard may start the command a second time (after rootlesskit's nsenter
    // race) and adds its own line between the two starts' output.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.log())
        .with_context(|| format!("failed to create {}", dir.log().display()))?;
    let mut cmd = Command::new("rootlesskit");
    cmd.args(rootlesskit_args(dir, addr, network));
    // With slirp4netns' port driver the swarm ports are closed to all before dockerd starts
    // (no window), and opened to the job's hosts once they are known (firewall.rs). In the
    // node's own namespace (host) the user has no firewall of its own.
    let script = if network.slirp4netns_forwards() {
        format!(
            "{} && {CHILD_SCRIPT}",
            crate::host::firewall::close_script()
        )
    } else {
        CHILD_SCRIPT.to_owned()
    };
    cmd.args(["sh", "-c", &script, "dockerd", "--config-file"]);
    cmd.arg(&config_path);
    cmd.env("XDG_RUNTIME_DIR", p)
        .env("TMPDIR", &tmp)
        // The daemon's own configuration lives in the state directory: nothing is read from or
        // written to the user's home (which may be unwritable, or another user's under a launcher).
        .env("XDG_CONFIG_HOME", p.join("config"))
        // Swarm tasks use an image already present (loaded with --load) instead of first asking
        // a registry, which compute nodes often cannot reach: each such attempt costs a timeout.
        .env("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", "1")
        .env("PATH", daemon_path(std::env::var_os("PATH")))
        .env_remove("DOCKER_HOST")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    die_with_parent(&mut cmd);
    Ok(cmd)
}

/// The user's PATH with the system directories after it: in the daemon's namespaces the user is
/// root, and the tools it runs there (nft, Docker's iptables) live in sbin, which an ordinary
/// user's PATH (and so a launcher's remote shell) lacks on Debian.
pub fn daemon_path(user: Option<std::ffi::OsString>) -> std::ffi::OsString {
    let mut dirs: Vec<std::path::PathBuf> = user
        .as_deref()
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    for system in [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ] {
        if !dirs.iter().any(|d| d == std::path::Path::new(system)) {
            dirs.push(system.into());
        }
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// daemon.json: paths in the state directory; for `host`, no bridge, no iptables (the node's
/// namespace is not the user's to change) and the runtime that puts containers in it.
fn daemon_config(dir: &StateDir, network: Network) -> Result<serde_json::Value> {
    let p = &dir.path;
    let mut config = json!({
        "data-root": p.join("data"),
        "exec-root": p.join("run"),
        "pidfile": p.join("dockerd.pid"),
        "hosts": [format!("unix://{}", dir.socket().display())],
    });
    match network {
        // The swarm's own network, not slirp4netns', must carry container traffic.
        Network::Overlay { .. } => config["bip"] = json!("172.29.0.1/16"),
        Network::Host => {
            let exe = std::env::current_exe().context("failed to find the mpiswarm executable")?;
            config["bridge"] = json!("none");
            config["iptables"] = json!(false);
            config["ip-forward"] = json!(false);
            config["ip-masq"] = json!(false);
            config["runtimes"] = json!({
                HOST_RUNTIME: { "path": exe, "runtimeArgs": [crate::host::oci_runtime::SUBCOMMAND] }
            });
            config["default-runtime"] = json!(HOST_RUNTIME);
        }
    }
    Ok(config)
}

/// rootlesskit's flags: slirp4netns for the daemon's own network namespace; on the overlay path
/// the swarm ports published on the host's address, on the host path that namespace detached
/// (dockerd stays in the node's, where it listens on the host's address itself).
fn rootlesskit_args(dir: &StateDir, addr: Ipv4Addr, network: Network) -> Vec<String> {
    let mut args: Vec<String> = [
        "--net=slirp4netns",
        &format!("--mtu={}", crate::plan::mtu::SLIRP_MTU),
        "--slirp4netns-sandbox=auto",
        "--slirp4netns-seccomp=auto",
        "--disable-host-loopback",
        "--copy-up=/etc",
        "--copy-up=/run",
        // Swarm tasks create /var/lib/docker paths even with another data root.
        "--copy-up=/var/lib",
        "--propagation=rslave",
        // A PID namespace: killing its init kills every daemon and container at once.
        "--pidns",
    ]
    .map(str::to_owned)
    .to_vec();
    args.push(format!(
        "--state-dir={}",
        rootlesskit_state_dir(dir).display()
    ));
    match network {
        Network::Overlay { port_driver } => {
            args.push(format!("--port-driver={}", port_driver.as_str()));
            for (port, proto) in SWARM_PORTS {
                args.push(format!("--publish={addr}:{port}:{port}/{proto}"));
            }
        }
        Network::Host => args.push("--detach-netns".to_owned()),
    }
    args
}

/// rootlesskit's own state directory (its API socket, slirp4netns' socket, its lock).
pub fn rootlesskit_state_dir(dir: &StateDir) -> std::path::PathBuf {
    dir.path.join("rk")
}

/// rootlesskit gets SIGKILL when the thread that started it (the guard's main thread) dies, even
/// by SIGKILL. rootlesskit 1.1 passes that on by itself: its namespaced child (the PID
/// namespace's init, whose death kills every daemon and container) and slirp4netns run with a
/// parent death signal of SIGKILL. Rank 0's command gets the same from its rank.
pub fn die_with_parent(cmd: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and makes only async-signal-safe
    // system calls (prctl, getppid); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then nobody would send the signal.
            if nix::unistd::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(overlay_default_mtu: Option<u32>) -> serde_json::Value {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir {
            path: tmp.path().to_path_buf(),
        };
        let network = Network::Overlay {
            port_driver: crate::plan::cli::PortDriver::Slirp4netns,
        };
        command(&dir, Ipv4Addr::LOCALHOST, network, overlay_default_mtu, &[]).unwrap();
        serde_json::from_slice(&std::fs::read(tmp.path().join("daemon.json")).unwrap()).unwrap()
    }

    #[test]
    fn overlays_default_to_the_mtu_only_where_docker_takes_the_key() {
        let config = written(Some(65520));
        assert_eq!(
            config["default-network-opts"],
            json!({"overlay": {"com.docker.network.driver.mtu": "65520"}})
        );
        // Docker 20.10 would refuse to start on it.
        assert!(written(None).get("default-network-opts").is_none());
    }
}
