//! Facts about this host: its name and the IPv4 address the other nodes reach it on.

use std::net::{Ipv4Addr, ToSocketAddrs};

use anyhow::{Result, bail};
use nix::ifaddrs::getifaddrs;

use crate::plan::config::AddrChoice;

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown-host".into())
}

/// IPv4 addresses of this host's interfaces, by interface name.
pub fn interface_addrs() -> Vec<(String, Ipv4Addr)> {
    let Ok(addrs) = getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|ifa| {
            let ip = ifa.address?.as_sockaddr_in()?.ip();
            Some((ifa.interface_name, ip))
        })
        .collect()
}

/// The interface that carries the default route, from /proc/net/route.
fn default_route_iface() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&"00000000")).then(|| fields[0].to_owned())
    })
}

/// Resolves the advertise address and checks that it belongs to this host.
pub fn advertise_addr(choice: &AddrChoice) -> Result<Ipv4Addr> {
    let ifaces = interface_addrs();
    let host = hostname();
    let on_host = |ip: Ipv4Addr| ifaces.iter().any(|(_, a)| *a == ip);
    match choice {
        AddrChoice::Explicit(ip) => {
            if !on_host(*ip) {
                bail!(
                    "--advertise-addr {ip} is not an address of host {host} (its addresses: {}); \
                     give one of them, or use --iface",
                    list(&ifaces)
                );
            }
            Ok(*ip)
        }
        AddrChoice::Iface(name) => match ifaces.iter().find(|(n, _)| n == name) {
            Some((_, ip)) => Ok(*ip),
            None => bail!(
                "--iface {name}: host {host} has no interface of that name with an IPv4 address \
                 (it has: {})",
                list(&ifaces)
            ),
        },
        AddrChoice::Auto => {
            let resolved = (host.as_str(), 0)
                .to_socket_addrs()
                .ok()
                .into_iter()
                .flatten()
                .filter_map(|sa| match sa.ip() {
                    std::net::IpAddr::V4(ip) if !ip.is_loopback() && on_host(ip) => Some(ip),
                    _ => None,
                })
                .next();
            if let Some(ip) = resolved {
                return Ok(ip);
            }
            let via_route = default_route_iface()
                .and_then(|name| ifaces.iter().find(|(n, _)| *n == name).map(|(_, ip)| *ip));
            match via_route {
                Some(ip) => Ok(ip),
                None => bail!(
                    "host {host}: its name does not resolve to one of its addresses and it has no \
                     default route; pass --advertise-addr or --iface (addresses: {})",
                    list(&ifaces)
                ),
            }
        }
    }
}

fn list(ifaces: &[(String, Ipv4Addr)]) -> String {
    if ifaces.is_empty() {
        return "none".into();
    }
    ifaces
        .iter()
        .map(|(n, a)| format!("{n} {a}"))
        .collect::<Vec<_>>()
        .join(", ")
}
