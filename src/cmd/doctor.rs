//! `mpiswarm doctor`: every host's prerequisites, gathered over MPI into one table at rank 0.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::host::preflight::{
    self,
    check::{Check, Status},
};
use crate::mpi::cluster::{Cluster, Role};
use crate::mpi::collective::{Interrupt, Leaders};
use crate::plan::config::{HostConfig, Network};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostReport {
    pub host: String,
    pub checks: Vec<Check>,
}

const DEADLINE: Duration = Duration::from_secs(60);

pub fn run(host_cfg: &HostConfig, network: Network, json: bool) -> Result<i32> {
    let host = crate::host::identity::hostname();
    let signals = crate::sys::signals::Signals::install()?;
    let job = crate::mpi::job::key();
    let start = crate::mpi::start_deadline::StartLimit {
        within: DEADLINE,
        longer: None,
    };
    let (cluster, mut role) =
        Cluster::init(host.clone(), signals, &host_cfg.state_base, &job, start)?;
    let code = match &mut role {
        Role::Leader(leaders) => match gather(leaders, host_cfg, network) {
            Ok(Some(reports)) => print_reports(&reports, json),
            Ok(None) => 0,
            Err(e) => {
                eprintln!(
                    "mpiswarm doctor: error on {host} (rank {}): {e:#}",
                    cluster.rank
                );
                crate::sys::exit::FAILED
            }
        },
        Role::Follower(follower) => follower.wait_for_end(),
    };
    cluster.finish(role, code);
    Ok(code)
}

/// This host's checks, gathered at rank 0 (`None` elsewhere).
fn gather(
    leaders: &mut Leaders,
    host_cfg: &HostConfig,
    network: Network,
) -> Result<Option<Vec<HostReport>>> {
    let report = HostReport {
        host: leaders.host.clone(),
        checks: host_checks(host_cfg, network),
    };
    let deadline = Instant::now() + DEADLINE;
    let all = leaders.gather_to_root(&report, "run the checks", deadline, Interrupt::BySignal)?;
    Ok(all.map(|mut reports| {
        add_version_consistency(&mut reports);
        reports
    }))
}

fn host_checks(host_cfg: &HostConfig, network: Network) -> Vec<Check> {
    let addr = crate::host::identity::advertise_addr(&host_cfg.addr);
    let mut checks = vec![match &addr {
        Ok(a) => Check {
            name: "address".into(),
            status: Status::Ok,
            detail: a.to_string(),
            fix: String::new(),
        },
        Err(e) => Check {
            name: "address".into(),
            status: Status::Fail,
            detail: format!("{e:#}"),
            fix: "pass --advertise-addr or --iface naming this host's cluster network".into(),
        },
    }];
    checks.extend(preflight::run_checks(host_cfg, addr.ok(), true, network));
    checks
}

/// Warns on hosts whose dockerd version differs from rank 0's host.
fn add_version_consistency(reports: &mut [HostReport]) {
    let version_of = |r: &HostReport| {
        r.checks
            .iter()
            .find(|c| c.name == "dockerd" && c.status == Status::Ok)
            .and_then(|c| c.detail.split_once(' ').map(|(_, v)| v.to_owned()))
    };
    let Some(reference) = reports.first().and_then(version_of) else {
        return;
    };
    let first_host = reports[0].host.clone();
    for r in reports.iter_mut() {
        let check = match version_of(r) {
            Some(v) if v != reference => Check {
                name: "docker-version".into(),
                status: Status::Warn,
                detail: format!("{v} differs from {first_host}'s {reference}"),
                fix: "use the same Docker version on every node".into(),
            },
            _ => Check {
                name: "docker-version".into(),
                status: Status::Ok,
                detail: "same as the other hosts".into(),
                fix: String::new(),
            },
        };
        r.checks.push(check);
    }
}

fn print_reports(reports: &[HostReport], json: bool) -> i32 {
    let failed = reports
        .iter()
        .any(|r| r.checks.iter().any(|c| c.status == Status::Fail));
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(reports).unwrap_or_default()
        );
        return i32::from(failed);
    }
    print_table(reports);
    if !print_problems(reports) {
        println!("\nall {} host(s) ready for mpiswarm", reports.len());
    }
    i32::from(failed)
}

/// One line per host, one column per check.
fn print_table(reports: &[HostReport]) {
    let names: Vec<&str> = reports
        .first()
        .map(|r| r.checks.iter().map(|c| c.name.as_str()).collect())
        .unwrap_or_default();
    let host_width = reports
        .iter()
        .map(|r| r.host.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let mut header = format!("{:host_width$}", "host");
    let width = |n: &str| n.len().max(4);
    for n in &names {
        header.push_str(&format!("  {n:w$}", w = width(n)));
    }
    println!("{}", header.trim_end());
    for r in reports {
        let mut line = format!("{:host_width$}", r.host);
        for n in &names {
            let cell = r
                .checks
                .iter()
                .find(|c| c.name == *n)
                .map_or("-", |c| match c.status {
                    Status::Ok => "ok",
                    Status::Warn => "WARN",
                    Status::Fail => "FAIL",
                });
            line.push_str(&format!("  {cell:w$}", w = width(n)));
        }
        println!("{}", line.trim_end());
    }
}

/// Each warning and failure with its fix; whether there was any.
fn print_problems(reports: &[HostReport]) -> bool {
    let mut problems = false;
    for r in reports {
        for c in r.checks.iter().filter(|c| c.status != Status::Ok) {
            if !problems {
                println!();
                problems = true;
            }
            let tag = if c.status == Status::Fail {
                "FAIL"
            } else {
                "WARN"
            };
            println!(
                "{tag} {} {}: {}\n     fix: {}",
                r.host, c.name, c.detail, c.fix
            );
        }
    }
    problems
}
