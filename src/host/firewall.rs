//! The swarm ports open to the job's hosts only. VXLAN (4789/udp) has no authentication, and
//! gossip (7946) and the managers' port (2377) need not be reachable by anyone else: inside each
//! daemon's network namespace (where the user is root), an nftables chain drops them from every
//! source before dockerd starts, but from the members of one set; once the hosts' addresses are
//! agreed, all of them go into the set in one call. A set is one hash lookup per packet and one
//! process per host at any job size (a rule per peer was one `iptables` run per peer per host,
//! and a walk of N rules for every VXLAN packet). The slirp4netns port driver keeps source
//! addresses; rootlesskit's builtin driver hides them, so with it no allowlist can work and the
//! ports stay open (mpiswarm says so).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Swarm's ports: cluster management, gossip (both protocols) and VXLAN data.
pub const SWARM_PORTS: [(u16, &str); 4] =
    [(2377, "tcp"), (7946, "tcp"), (7946, "udp"), (4789, "udp")];

/// mpiswarm's own table in the daemon's namespace (Docker's rules live in tables of their own).
const TABLE: &str = "ip mpiswarm";
/// The job's hosts' addresses.
const PEERS: &str = "peers";

/// The nftables commands that close every swarm port to every source but this namespace's own
/// loopback and the members of the (still empty) peer set.
fn close_ruleset() -> String {
    let ports = |proto: &str| {
        SWARM_PORTS
            .iter()
            .filter(|(_, p)| *p == proto)
            .map(|(port, _)| port.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    [
        format!("add table {TABLE}"),
        format!("add set {TABLE} {PEERS} {{ type ipv4_addr; }}"),
        format!(
            "add chain {TABLE} input {{ type filter hook input priority filter; policy accept; }}"
        ),
        format!("add rule {TABLE} input iifname \"lo\" return"),
        format!("add rule {TABLE} input ip saddr @{PEERS} return"),
        format!(
            "add rule {TABLE} input tcp dport {{ {} }} counter drop",
            ports("tcp")
        ),
        format!(
            "add rule {TABLE} input udp dport {{ {} }} counter drop",
            ports("udp")
        ),
    ]
    .join("; ")
}

/// Shell run as root inside the daemon's namespaces before dockerd starts: the swarm ports
/// closed (one `nft` process).
pub fn close_script() -> String {
    format!("nft '{}'", close_ruleset())
}

/// Lets the job's hosts through, inside the namespaces of the daemon that `guard_pid` supervises:
/// every address into the set in one `nft` call, whatever the number of hosts.
pub fn allow(guard_pid: u32, peers: &[Ipv4Addr]) -> Result<()> {
    let inner = namespaced_child(guard_pid)
        .with_context(|| format!("no rootlesskit child under the guard (pid {guard_pid})"))?;
    let child = Command::new("nsenter")
        .args([
            "-t",
            &inner.to_string(),
            "-U",
            "-m",
            "-n",
            "--preserve-credentials",
        ])
        .arg("nft")
        .arg(add_peers(peers))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("failed to run nsenter (util-linux)")?;
    let out = crate::sys::child_output::output_within(child, Duration::from_secs(10))?;
    match out.status {
        Some(status) if status.success() => Ok(()),
        Some(status) => bail!(
            "failed to open the swarm ports to the job's hosts in the daemon's namespace (pid {inner}): nft: {status}: {}",
            out.stderr_text().trim()
        ),
        None => bail!("nft in the daemon's namespace (pid {inner}) did not finish in 10 s"),
    }
}

/// One nftables command that puts every peer into the set.
fn add_peers(peers: &[Ipv4Addr]) -> String {
    let list: Vec<String> = peers.iter().map(Ipv4Addr::to_string).collect();
    format!("add element {TABLE} {PEERS} {{ {} }}", list.join(", "))
}

/// rootlesskit's namespaced child under the guard `guard_pid`.
fn namespaced_child(guard_pid: u32) -> Option<i32> {
    let rootlesskit = crate::sys::procfs::descendants(guard_pid as i32)
        .into_iter()
        .find(|p| p.ppid == guard_pid as i32 && p.cmdline.starts_with("rootlesskit"))?
        .pid;
    crate::host::daemon::rootlesskit::rootlesskit_child(rootlesskit).map(|(pid, _)| pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_swarm_port_is_dropped_unless_its_source_is_a_peer() {
        let s = close_ruleset();
        let drops: Vec<&str> = s.split("; ").filter(|r| r.ends_with("drop")).collect();
        for (port, proto) in SWARM_PORTS {
            assert!(
                drops
                    .iter()
                    .any(|r| r.contains(&format!("{proto} dport")) && r.contains(&port.to_string())),
                "{s}"
            );
        }
        // The peers' exemption comes before the drops.
        assert!(s.find("@peers return") < s.find("drop"), "{s}");
    }

    #[test]
    fn every_peer_goes_into_the_set_in_one_command() {
        let peers: Vec<Ipv4Addr> = (1..=200).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect();
        let cmd = add_peers(&peers);
        assert!(cmd.starts_with("add element ip mpiswarm peers { 10.1.0.1, 10.1.0.2,"));
        assert_eq!(cmd.matches(", ").count(), 199);
    }
}
