//! The swarm ports open to the job's hosts only. VXLAN (4789/udp) has no authentication, and
//! gossip (7946) and the managers' port (2377) need not be reachable by anyone else: inside each
//! daemon's network namespace (where the user is root), a chain drops them from every source
//! before dockerd starts, and once the hosts' addresses are agreed, each is let through. The
//! slirp4netns port driver keeps source addresses; rootlesskit's builtin driver hides them, so
//! with it no allowlist can work and the ports stay open (mpiswarm says so).

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::daemon::SWARM_PORTS;

/// The chain every swarm port's traffic passes through.
const CHAIN: &str = "MPISWARM-PEERS";

/// Shell run as root inside the daemon's namespaces before dockerd starts: every swarm port
/// closed to every source but this namespace's own loopback.
pub fn close_script() -> String {
    let mut script = format!(
        "iptables -w -N {CHAIN} && iptables -w -A {CHAIN} -i lo -j RETURN && iptables -w -A {CHAIN} -j DROP"
    );
    for (port, proto) in SWARM_PORTS {
        script.push_str(&format!(
            " && iptables -w -I INPUT -p {proto} --dport {port} -j {CHAIN}"
        ));
    }
    script
}

/// Lets the job's hosts through, inside the namespaces of the daemon that `guard_pid` supervises.
pub fn allow(guard_pid: u32, peers: &[Ipv4Addr]) -> Result<()> {
    let inner = namespaced_child(guard_pid)
        .with_context(|| format!("no rootlesskit child under the guard (pid {guard_pid})"))?;
    // Inserted above the final DROP; one iptables-restore-like batch keeps it quick.
    let script: String = peers
        .iter()
        .map(|a| format!("iptables -w -I {CHAIN} 1 -s {a} -j RETURN || exit 1; "))
        .collect();
    let mut child = Command::new("nsenter")
        .args([
            "-t",
            &inner.to_string(),
            "-U",
            "-m",
            "-n",
            "--preserve-credentials",
        ])
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("failed to run nsenter (util-linux)")?;
    match crate::deadline::wait_or_kill(&mut child, Duration::from_secs(10))? {
        Some(status) if status.success() => Ok(()),
        Some(status) => {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            bail!(
                "failed to open the swarm ports to the job's hosts in the daemon's namespace (pid {inner}): {status}: {}",
                err.trim()
            )
        }
        None => bail!("iptables in the daemon's namespace (pid {inner}) did not finish in 10 s"),
    }
}

/// rootlesskit's namespaced child under the guard `guard_pid`.
fn namespaced_child(guard_pid: u32) -> Option<i32> {
    let rootlesskit = crate::procfs::descendants(guard_pid as i32)
        .into_iter()
        .find(|p| p.ppid == guard_pid as i32 && p.cmdline.starts_with("rootlesskit"))?
        .pid;
    crate::procfs::rootlesskit_child(rootlesskit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_swarm_port_goes_through_the_chain_which_ends_in_drop() {
        let s = close_script();
        for (port, proto) in SWARM_PORTS {
            assert!(
                s.contains(&format!("-p {proto} --dport {port} -j {CHAIN}")),
                "{s}"
            );
        }
        assert!(s.find("-j DROP") < s.find("-I INPUT"), "{s}");
    }
}
