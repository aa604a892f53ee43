//! Other users' sockets on the swarm's UDP ports. slirp4netns binds its forwarded UDP sockets
//! with SO_REUSEADDR, so Linux lets a socket of another user bind the same address and port, and
//! then delivers unicast datagrams to the newest one: that user would read the job's overlay
//! traffic and break its gossip. The guard watches for such sockets and the job stops, loudly.

use std::net::Ipv4Addr;

/// A UDP socket of another user on a swarm port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Squatter {
    pub uid: u32,
    pub port: u16,
    pub addr: Ipv4Addr,
}

/// From a /proc/net/udp table: sockets bound to `addr` or the wildcard at one of `ports`, owned
/// by a uid other than `me` and root (root, e.g. the kernel's own VXLAN sockets, could take
/// anything anyway, and preflight finds a port taken before the job starts).
pub fn find(table: &str, addr: Ipv4Addr, ports: &[u16], me: u32) -> Vec<Squatter> {
    // The kernel prints the address as the u32 in host order.
    let mine = u32::from_ne_bytes(addr.octets());
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (ip, port) = fields.get(1)?.split_once(':')?;
            let ip = u32::from_str_radix(ip, 16).ok()?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let uid: u32 = fields.get(7)?.parse().ok()?;
            let bound_here = ip == mine || ip == 0;
            (bound_here && ports.contains(&port) && uid != me && uid != 0).then(|| Squatter {
                uid,
                port,
                addr: Ipv4Addr::from(u32::from_be_bytes(ip.to_ne_bytes())),
            })
        })
        .collect()
}

/// The squatters on this host now (the caller's network namespace).
pub fn scan(addr: Ipv4Addr, ports: &[u16]) -> Vec<Squatter> {
    let me = nix::unistd::getuid().as_raw();
    std::fs::read_to_string("/proc/net/udp")
        .map(|t| find(&t, addr, ports, me))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  100: 0B004D0A:12B5 00000000:0000 07 00000000:00000000 00:00000000 00000000  1001        0 41250 2 0000000000000000 0
  101: 0B004D0A:12B5 00000000:0000 07 00000000:00000000 00:00000000 00000000  1002        0 41251 2 0000000000000000 0
  102: 00000000:1F0A 00000000:0000 07 00000000:00000000 00:00000000 00000000  1003        0 41252 2 0000000000000000 0
  103: 0C004D0A:12B5 00000000:0000 07 00000000:00000000 00:00000000 00000000  1004        0 41253 2 0000000000000000 0
  104: 0B004D0A:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000  1005        0 41254 2 0000000000000000 0
";

    #[test]
    fn other_users_on_our_address_or_the_wildcard_at_swarm_ports() {
        let found = find(TABLE, Ipv4Addr::new(10, 77, 0, 11), &[4789, 7946], 1001);
        assert_eq!(
            found,
            vec![
                Squatter {
                    uid: 1002,
                    port: 4789,
                    addr: Ipv4Addr::new(10, 77, 0, 11)
                },
                Squatter {
                    uid: 1003,
                    port: 7946,
                    addr: Ipv4Addr::UNSPECIFIED
                },
            ]
        );
    }
}
