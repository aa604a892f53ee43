//! Deep accept queues for the published swarm ports. slirp4netns listens on them with a backlog
//! of one, so when several hosts connect at once (the workers' joins, their agents' sessions,
//! gossip) the host's kernel drops the extra SYNs and each of those clients waits a whole second
//! for its retransmission. The guard re-issues `listen` on those same sockets with a deep queue:
//! nothing else about them changes. It also enlarges the receive buffer of slirp4netns' VXLAN
//! socket (4789/udp): each large overlay datagram arrives as IP fragments and, reassembled,
//! takes far more buffer than its size; with the default buffer slirp4netns lost about one
//! datagram in eight under MPI traffic (UdpRcvbufErrors), each loss a TCP retransmission inside.

use std::net::Ipv4Addr;
use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use nix::sys::socket::{Backlog, listen};
use rustix::net::getsockname;
use rustix::net::sockopt::socket_acceptconn;
use rustix::process::{PidfdGetfdFlags, pidfd_getfd};

/// A listening TCP socket held by some process: where to find it, and what it listens on.
#[derive(Debug)]
struct Listener {
    pid: i32,
    /// The process's start time, to tell it from a later process with the same pid.
    start_time: u64,
    fd: i32,
    port: u16,
}

/// Waits until slirp4netns (a descendant of `root`) listens on `addr` (or the wildcard) at every
/// port of `ports`, then deepens those queues; gives up at `deadline` or when `stop` is set.
/// Returns the ports it deepened.
pub fn deepen(
    root: i32,
    addr: Ipv4Addr,
    ports: &[u16],
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<Vec<u16>> {
    let give_up = || stop.load(Ordering::SeqCst) || Instant::now() >= deadline;
    let (mut slirp, mut slirp_start) = (0, 0);
    // Each look scans slirp4netns' descriptors: at the pace of the work awaited (a daemon's
    // start takes from 0.3 s on a quiet node to seconds on a busy one), not every 10 ms.
    let mut backoff = crate::sys::deadline::Backoff::default();
    loop {
        // Found again whenever the one found is gone: rootlesskit first runs slirp4netns briefly
        // to learn its features, and a guard that found that one waited in vain (seen on rank 0's
        // host, whose daemon starts early, while the machine is still quiet).
        if slirp == 0 || !crate::sys::procfs::still_running(slirp, slirp_start) {
            (slirp, slirp_start) = find_slirp4netns(root).unwrap_or((0, 0));
        }
        let found = if slirp == 0 {
            Vec::new()
        } else {
            find_listeners(slirp, slirp_start, addr, ports)
        };
        if ports.iter().all(|p| found.iter().any(|l| l.port == *p)) {
            for l in &found {
                deepen_one(l, addr).with_context(|| {
                    format!(
                        "failed to deepen the accept queue of port {} (pid {}, fd {})",
                        l.port, l.pid, l.fd
                    )
                })?;
            }
            // Best effort: a smaller buffer only costs throughput.
            let _ = enlarge_vxlan_buffer(slirp, slirp_start, addr);
            let mut done: Vec<u16> = found.iter().map(|l| l.port).collect();
            done.sort_unstable();
            return Ok(done);
        }
        if give_up() && slirp == 0 {
            bail!("no slirp4netns process appeared under pid {root} in time");
        }
        if give_up() {
            bail!(
                "slirp4netns (pid {slirp}) did not listen on {addr} at port(s) {ports:?} in time"
            );
        }
        std::thread::sleep(backoff.next());
    }
}

/// The slirp4netns under `root` (pid and start time), if one runs.
fn find_slirp4netns(root: i32) -> Option<(i32, u64)> {
    crate::sys::procfs::descendants(root)
        .into_iter()
        .find(|p| {
            let argv0 = p.cmdline.split_whitespace().next().unwrap_or("");
            argv0.rsplit('/').next() == Some("slirp4netns")
        })
        .map(|p| (p.pid, p.start_time))
}

/// The VXLAN port, published through slirp4netns.
const VXLAN_PORT: u16 = 4789;

/// Sets the receive buffer of slirp4netns' socket on `addr`:4789/udp to the system's maximum.
fn enlarge_vxlan_buffer(slirp: i32, slirp_start: u64, addr: Ipv4Addr) -> Result<()> {
    let max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .context("read net.core.rmem_max")?
        .trim()
        .parse()
        .context("parse net.core.rmem_max")?;
    let table = std::fs::read_to_string(format!("/proc/{slirp}/net/udp"))
        .with_context(|| format!("read /proc/{slirp}/net/udp"))?;
    let wanted = bound_inodes(&table, addr, VXLAN_PORT);
    for fd in socket_fds(slirp, |inode| wanted.iter().any(|w| w == inode)) {
        let socket = take_socket(slirp, slirp_start, fd)?;
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::RcvBuf, &max)
            .context("setsockopt SO_RCVBUF")?;
    }
    Ok(())
}

/// Socket inodes bound to `addr` (or the wildcard) at `port`, from a /proc/net/udp table.
fn bound_inodes(table: &str, addr: Ipv4Addr, port: u16) -> Vec<String> {
    let mine = format!("{:08X}:{port:04X}", u32::from_ne_bytes(addr.octets()));
    let any = format!("00000000:{port:04X}");
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 10 && (f[1] == mine || f[1] == any))
        .map(|f| f[9].to_owned())
        .collect()
}

/// Descriptors of process `pid` that are sockets whose inode `wanted` accepts.
fn socket_fds(pid: i32, wanted: impl Fn(&str) -> bool) -> Vec<i32> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| {
                let t = t.to_string_lossy();
                t.strip_prefix("socket:[")
                    .and_then(|s| s.strip_suffix(']'))
                    .is_some_and(&wanted)
            })
        })
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

/// Re-issues `listen` with the deepest queue on one listener, once the descriptor is known to be
/// still the listening socket on the expected address and port (descriptors are reused).
fn deepen_one(l: &Listener, addr: Ipv4Addr) -> Result<()> {
    let socket = take_socket(l.pid, l.start_time, l.fd)?;
    let listening = socket_acceptconn(&socket).unwrap_or(false);
    let bound = getsockname(&socket)
        .ok()
        .and_then(|a| SocketAddrV4::try_from(a).ok());
    match bound {
        Some(b)
            if listening && b.port() == l.port && (*b.ip() == addr || b.ip().is_unspecified()) => {}
        _ => bail!(
            "descriptor {} of pid {} is no longer the listener on port {} (found {bound:?}, listening: {listening})",
            l.fd,
            l.pid,
            l.port
        ),
    }
    // Calling listen on a listening socket only changes the length of its queue.
    listen(&socket, Backlog::MAXCONN).context("listen")?;
    Ok(())
}

/// A duplicate, in this process, of descriptor `fd` of process `pid` (the same socket), once the
/// process is known to be still the one found earlier (pids are reused): its start time matches
/// after the pidfd pins it.
fn take_socket(pid: i32, start_time: u64, fd: i32) -> Result<std::os::fd::OwnedFd> {
    let pinned = crate::sys::pinned::Pinned::new(pid, start_time)?
        .with_context(|| format!("pid {pid} is no longer the slirp4netns found earlier"))?;
    let pidfd = pinned
        .pidfd()
        .context("this kernel has no pidfd_open (Linux >= 5.3 needed)")?;
    pidfd_getfd(pidfd, fd, PidfdGetfdFlags::empty()).context("pidfd_getfd")
}

/// The TCP listeners of process `pid` on `addr` (or 0.0.0.0) at one of `ports`: each of its
/// sockets asked directly (SO_ACCEPTCONN, getsockname) through a duplicate of its descriptor.
/// Not through /proc/PID/net/tcp: reading that walks the kernel's whole TCP hash table, every
/// socket of the node (at 64 simulated hosts the guards' looks at it cost about 3 CPU-s).
fn find_listeners(pid: i32, start_time: u64, addr: Ipv4Addr, ports: &[u16]) -> Vec<Listener> {
    let Ok(Some(pinned)) = crate::sys::pinned::Pinned::new(pid, start_time) else {
        return Vec::new();
    };
    let Some(pidfd) = pinned.pidfd() else {
        return Vec::new();
    };
    socket_fds(pid, |_| true)
        .into_iter()
        .filter_map(|fd| {
            let socket = pidfd_getfd(pidfd, fd, PidfdGetfdFlags::empty()).ok()?;
            let port = listening_port(&socket, addr)?;
            ports.contains(&port).then_some(Listener {
                pid,
                start_time,
                fd,
                port,
            })
        })
        .collect()
}

/// The port `socket` listens on, if it is a listening TCP socket bound to `addr` or the wildcard.
fn listening_port(socket: &std::os::fd::OwnedFd, addr: Ipv4Addr) -> Option<u16> {
    if !socket_acceptconn(socket).unwrap_or(false) {
        return None;
    }
    let bound = SocketAddrV4::try_from(getsockname(socket).ok()?).ok()?;
    (*bound.ip() == addr || bound.ip().is_unspecified()).then_some(bound.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket is taken for a listener only if it listens (not UDP, not merely bound) on the
    /// address or the wildcard.
    #[test]
    fn a_listening_socket_is_told_by_asking_it() {
        let loopback = Ipv4Addr::LOCALHOST;
        let listener = std::net::TcpListener::bind((loopback, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let listener: std::os::fd::OwnedFd = listener.into();
        assert_eq!(listening_port(&listener, loopback), Some(port));
        assert_eq!(listening_port(&listener, Ipv4Addr::new(10, 0, 0, 1)), None);
        let wildcard = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let any_port = wildcard.local_addr().unwrap().port();
        let wildcard: std::os::fd::OwnedFd = wildcard.into();
        assert_eq!(listening_port(&wildcard, loopback), Some(any_port));
        let udp: std::os::fd::OwnedFd = std::net::UdpSocket::bind((loopback, 0)).unwrap().into();
        assert_eq!(listening_port(&udp, loopback), None);
    }

    #[test]
    fn picks_the_vxlan_socket_on_the_address_or_wildcard() {
        let udp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  1: 0B004D0A:12B5 00000000:0000 07 00000000:00000000 00:00000000 00000000  1001        0 500 2 0000000000000000 0
  2: 0C004D0A:12B5 00000000:0000 07 00000000:00000000 00:00000000 00000000  1001        0 501 2 0000000000000000 0
  3: 0B004D0A:1F0A 00000000:0000 07 00000000:00000000 00:00000000 00000000  1001        0 502 2 0000000000000000 0
";
        assert_eq!(
            bound_inodes(udp, Ipv4Addr::new(10, 77, 0, 11), 4789),
            vec!["500".to_owned()]
        );
    }
}
