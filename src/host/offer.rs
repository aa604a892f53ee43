//! What a host offers the job, for placement (`mpiswarm.cpus`, `mpiswarm.memory` node labels):
//! the launcher's limits where it sets them, else the cgroup's, else the whole host's.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// CPUs and memory this job may use on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offer {
    pub cpus: u64,
    pub memory_mib: u64,
}

/// This host's offer, read now.
pub fn here() -> Offer {
    let env = |v: &str| std::env::var(v).ok();
    let cgroup = Path::new("/sys/fs/cgroup");
    let read = |p: &str| std::fs::read_to_string(cgroup.join(p)).ok();
    let cpus = env("SLURM_CPUS_ON_NODE")
        .and_then(|v| v.trim().parse().ok())
        .or_else(|| read("cpu.max").and_then(|t| cpus_from_cpu_max(&t)))
        .or_else(|| {
            let quota = read("cpu/cpu.cfs_quota_us")?;
            let period = read("cpu/cpu.cfs_period_us")?;
            cpus_from_cfs(&quota, &period)
        })
        .unwrap_or_else(online_cpus);
    let memory_mib = env("SLURM_MEM_PER_NODE")
        .and_then(|v| v.trim().parse().ok())
        .or_else(|| read("memory.max").and_then(|t| mib_from_limit(&t)))
        .or_else(|| read("memory/memory.limit_in_bytes").and_then(|t| mib_from_limit(&t)))
        .or_else(|| {
            std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|t| mib_from_meminfo(&t))
        })
        .unwrap_or(0);
    Offer { cpus, memory_mib }
}

fn online_cpus() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::_NPROCESSORS_ONLN)
        .ok()
        .flatten()
        .map_or(1, |n| n.max(1) as u64)
}

/// cgroup v2 `cpu.max`: "QUOTA PERIOD", or "max PERIOD" for no limit. Rounded up.
fn cpus_from_cpu_max(text: &str) -> Option<u64> {
    let mut parts = text.split_whitespace();
    let quota = parts.next()?;
    let period = parts.next()?;
    cpus_from_cfs(quota, period)
}

/// cgroup v1 quota and period (quota -1 or "max": no limit). Rounded up.
fn cpus_from_cfs(quota: &str, period: &str) -> Option<u64> {
    let quota: i64 = quota.trim().parse().ok()?;
    let period: i64 = period.trim().parse().ok()?;
    (quota > 0 && period > 0).then(|| (quota as u64).div_ceil(period as u64))
}

/// A memory limit in bytes ("max", or v1's huge "no limit" value, mean none), in MiB.
fn mib_from_limit(text: &str) -> Option<u64> {
    let bytes: u64 = text.trim().parse().ok()?;
    // cgroup v1 says "no limit" with a number near 2^63.
    (bytes < 1 << 60).then_some(bytes >> 20)
}

fn mib_from_meminfo(text: &str) -> Option<u64> {
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib >> 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_limits_or_none() {
        assert_eq!(cpus_from_cpu_max("200000 100000\n"), Some(2));
        assert_eq!(cpus_from_cpu_max("150000 100000"), Some(2));
        assert_eq!(cpus_from_cpu_max("max 100000"), None);
        assert_eq!(cpus_from_cfs("-1", "100000"), None);
        assert_eq!(mib_from_limit("max\n"), None);
        assert_eq!(mib_from_limit("9223372036854771712"), None);
        assert_eq!(mib_from_limit("2147483648"), Some(2048));
        assert_eq!(
            mib_from_meminfo("MemTotal:       24684316 kB\nMemFree: 1 kB\n"),
            Some(24105)
        );
    }
}
