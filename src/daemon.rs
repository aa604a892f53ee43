//! The rootless daemon of one host: rootlesskit (user, mount, network and PID namespaces, with
//! slirp4netns) running dockerd, with the swarm ports published on the host's advertise address.

use std::fs::File;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use serde_json::json;

use crate::cli::PortDriver;
use crate::statedir::StateDir;

/// Swarm's ports: cluster management, gossip (both protocols) and VXLAN data.
pub const SWARM_PORTS: [(u16, &str); 4] =
    [(2377, "tcp"), (7946, "tcp"), (7946, "udp"), (4789, "udp")];

/// Inside the namespaces: drop the symlinks copy-up left to the host's runtime files (so the
/// daemon makes its own), then become dockerd. The same steps as Docker's dockerd-rootless.sh.
const CHILD_SCRIPT: &str =
    "rm -f /run/docker /run/containerd /run/xtables.lock && exec dockerd \"$@\"";

/// Writes daemon.json and returns the rootlesskit command that runs dockerd for this host.
pub fn command(dir: &StateDir, addr: Ipv4Addr, port_driver: PortDriver) -> Result<Command> {
    let p = &dir.path;
    let config = json!({
        "data-root": p.join("data"),
        "exec-root": p.join("run"),
        "pidfile": p.join("dockerd.pid"),
        "hosts": [format!("unix://{}", dir.socket().display())],
        // The swarm's own network, not slirp4netns', must carry container traffic.
        "bip": "172.29.0.1/16",
    });
    let config_path = p.join("daemon.json");
    StateDir::write_private(&config_path, &serde_json::to_vec_pretty(&config)?)?;

    let log = File::create(dir.log())
        .with_context(|| format!("failed to create {}", dir.log().display()))?;
    let mut cmd = Command::new("rootlesskit");
    cmd.args([
        "--net=slirp4netns",
        &format!("--mtu={}", crate::mtu::SLIRP_MTU),
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
    ]);
    cmd.arg(format!("--port-driver={}", port_driver.as_str()));
    cmd.arg(format!("--state-dir={}", p.join("rk").display()));
    for (port, proto) in SWARM_PORTS {
        cmd.arg(format!("--publish={addr}:{port}:{port}/{proto}"));
    }
    cmd.args(["sh", "-c", CHILD_SCRIPT, "dockerd", "--config-file"]);
    cmd.arg(&config_path);
    cmd.env("XDG_RUNTIME_DIR", p)
        // The daemon's own configuration lives in the state directory: nothing is read from or
        // written to the user's home (which may be unwritable, or another user's under a launcher).
        .env("XDG_CONFIG_HOME", p.join("config"))
        // Swarm tasks use an image already present (loaded with --load) instead of first asking
        // a registry, which compute nodes often cannot reach: each such attempt costs a timeout.
        .env("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", "1")
        .env_remove("DOCKER_HOST")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    Ok(cmd)
}
