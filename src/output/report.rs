//! The per-phase timings of a run, as each host leader measured them: `--report` and the
//! summary at the end of `up`.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One host's timings, as its leader measured them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HostTimes {
    pub host: String,
    pub rank: i32,
    /// (phase, seconds of this host's own work in it), in order.
    pub phases: Vec<(String, f64)>,
    /// Peak resident memory of this mpiswarm process.
    pub peak_rss_kib: u64,
    /// User plus system CPU time of this mpiswarm process.
    pub cpu_s: f64,
    /// The daemon's process tree (guard included) just before teardown, by program: what the
    /// host spent on the swarm beside mpiswarm's own rank.
    #[serde(default)]
    pub daemon_usage: Vec<ProgramUsage>,
    /// Rank 0: CPU seconds its manager daemon spent from the workers' first join to every node
    /// Ready (the manager's cost of N joins; bench/HOSTS.md models bring-up from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_join_cpu_s: Option<f64>,
}

/// CPU and memory of one program's processes on a host.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProgramUsage {
    pub program: String,
    pub cpu_s: f64,
    pub rss_kib: u64,
}

/// Records phase durations on one rank.
#[derive(Debug)]
pub struct Timeline {
    times: HostTimes,
}

impl Timeline {
    pub fn new(host: &str, rank: i32) -> Self {
        Timeline {
            times: HostTimes {
                host: host.to_owned(),
                rank,
                ..HostTimes::default()
            },
        }
    }

    pub fn set_rank(&mut self, rank: i32) {
        self.times.rank = rank;
    }

    /// Records that `phase` took from `since` until now.
    pub fn done(&mut self, phase: &str, since: Instant) {
        self.add(phase, since.elapsed().as_secs_f64());
    }

    pub fn add(&mut self, phase: &str, seconds: f64) {
        self.times.phases.push((phase.to_owned(), seconds));
    }

    /// Records the daemon tree's usage, by program.
    pub fn set_daemon_usage(&mut self, usage: Vec<(String, f64, u64)>) {
        self.times.daemon_usage = usage
            .into_iter()
            .map(|(program, cpu_s, rss_kib)| ProgramUsage {
                program,
                cpu_s,
                rss_kib,
            })
            .collect();
    }

    pub fn set_manager_join_cpu(&mut self, seconds: f64) {
        self.times.manager_join_cpu_s = Some(seconds);
    }

    /// The timings with this process's resource usage so far.
    pub fn snapshot(&self) -> HostTimes {
        let mut times = self.times.clone();
        if let Ok(usage) = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        {
            times.peak_rss_kib = usage.max_rss() as u64;
            let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
            times.cpu_s = secs(usage.user_time()) + secs(usage.system_time());
        }
        times
    }
}

/// Seconds since this process started (the launcher's share of start-up is in it).
pub fn since_process_start() -> f64 {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let start = crate::sys::procfs::proc_info(std::process::id() as i32)
        .map(|p| p.start_time as f64 / ticks);
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next()?.parse::<f64>().ok());
    match (start, uptime) {
        (Some(s), Some(u)) if u >= s => u - s,
        _ => 0.0,
    }
}

/// min / median / max of each phase over hosts, in the order phases first appear.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PhaseStats {
    pub phase: String,
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub hosts: usize,
}

pub fn phase_stats(all: &[HostTimes]) -> Vec<PhaseStats> {
    let mut order: Vec<&str> = Vec::new();
    for h in all {
        for (p, _) in &h.phases {
            if !order.contains(&p.as_str()) {
                order.push(p);
            }
        }
    }
    order
        .into_iter()
        .map(|phase| {
            let mut v: Vec<f64> = all
                .iter()
                .flat_map(|h| h.phases.iter().filter(|(p, _)| p == phase).map(|(_, s)| *s))
                .collect();
            v.sort_by(f64::total_cmp);
            PhaseStats {
                phase: phase.to_owned(),
                min: v[0],
                median: v[v.len() / 2],
                max: v[v.len() - 1],
                hosts: v.len(),
            }
        })
        .collect()
}

/// The whole report, as `--report FILE.json` writes it.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunReport {
    pub hosts: usize,
    pub ranks: i32,
    /// From rank 0's process start to every host being a Ready swarm node.
    pub swarm_ready_s: f64,
    /// From rank 0's process start to the end of bring-up (images, stack, verify included).
    pub bring_up_s: f64,
    pub phases: Vec<PhaseStats>,
    pub per_host: Vec<HostTimes>,
}

impl RunReport {
    pub fn summary(&self) -> String {
        let mut out = format!("timings over {} host(s) (min / median / max):", self.hosts);
        for p in &self.phases {
            out.push_str(&format!(
                "\n  {:<14} {:>8.3} {:>8.3} {:>8.3} s",
                p.phase, p.min, p.median, p.max
            ));
        }
        let rss = self
            .per_host
            .iter()
            .map(|h| h.peak_rss_kib)
            .max()
            .unwrap_or(0);
        let cpu = self.per_host.iter().map(|h| h.cpu_s).fold(0.0, f64::max);
        out.push_str(&format!(
            "\n  peak RSS {} KiB, CPU {:.2} s (largest over hosts)",
            rss, cpu
        ));
        if let Some(line) = self.daemon_summary() {
            out.push_str(&line);
        }
        out
    }

    /// The daemon trees' CPU and memory per host (medians over hosts) of the programs that use
    /// the most, on one line.
    fn daemon_summary(&self) -> Option<String> {
        let mut programs: Vec<&str> = Vec::new();
        for h in &self.per_host {
            for u in &h.daemon_usage {
                if !programs.contains(&u.program.as_str()) {
                    programs.push(&u.program);
                }
            }
        }
        let median_of = |program: &str, f: &dyn Fn(&ProgramUsage) -> f64| {
            let mut v: Vec<f64> = self
                .per_host
                .iter()
                .map(|h| {
                    h.daemon_usage
                        .iter()
                        .filter(|u| u.program == program)
                        .map(f)
                        .sum()
                })
                .collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(0.0)
        };
        let mut rows: Vec<(&str, f64, f64)> = programs
            .iter()
            .map(|p| {
                (
                    *p,
                    median_of(p, &|u| u.cpu_s),
                    median_of(p, &|u| u.rss_kib as f64),
                )
            })
            .collect();
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        let parts: Vec<String> = rows
            .iter()
            .take(5)
            .map(|(p, cpu, rss)| format!("{p} {cpu:.2} s {:.0} MiB", rss / 1024.0))
            .collect();
        (!parts.is_empty()).then(|| format!("\n  daemons per host (median): {}", parts.join(", ")))
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self)?;
        crate::sys::private_file::write(path, &text)
            .with_context(|| format!("failed to write the report {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_over_hosts() {
        let h = |name: &str, secs: &[f64]| HostTimes {
            host: name.into(),
            phases: secs
                .iter()
                .enumerate()
                .map(|(i, s)| (format!("p{i}"), *s))
                .collect(),
            ..HostTimes::default()
        };
        let stats = phase_stats(&[h("a", &[1.0, 5.0]), h("b", &[3.0]), h("c", &[2.0, 4.0])]);
        assert_eq!(stats[0].phase, "p0");
        assert_eq!(
            (stats[0].min, stats[0].median, stats[0].max),
            (1.0, 2.0, 3.0)
        );
        assert_eq!(stats[1].hosts, 2);
        assert_eq!(stats[1].max, 5.0);
    }
}
