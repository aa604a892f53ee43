//! mpiswarm: a rootless Docker Swarm across the nodes of an MPI job, built in seconds and torn
//! down without a trace.

mod backlog;
mod cleanup;
mod cli;
mod cluster;
mod collect;
mod collect_out;
mod collective;
mod config;
mod daemon;
mod deadline;
mod doctor;
mod engine;
mod firewall;
mod guard;
mod guard_protocol;
mod host;
mod host_daemon;
mod images;
mod job;
mod logging;
mod messages;
mod mpi_buffer;
mod mtu;
mod offer;
mod outputs;
mod preflight;
mod procfs;
mod progress;
mod report;
mod signals;
mod squatters;
mod stack;
mod statedir;
mod swarm;
mod teardown;
mod up;
mod verify;
mod vxlan;
mod workload;

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Under a launcher every rank sees the same bad flags: let one of them say so.
            if launcher_rank() == 0 {
                let _ = e.print();
            } else if e.exit_code() != 0 {
                let_rank_0_speak_first();
            }
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    logging::init(cli.verbose, cli.log_format);
    match run(cli) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            if launcher_rank() == 0 {
                eprintln!("mpiswarm: error on {}: {e:#}", host::hostname());
            } else {
                let_rank_0_speak_first();
            }
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Up(args) => {
            let cfg = config::UpConfig::from_args(&args)?;
            export_overlay_mtu(cfg.overlay_mtu);
            cluster::prefer_yielding_progress();
            if cfg.collect.is_some() {
                signals::first_signal_waits_for_collection();
            }
            let signals = signals::Signals::install()?;
            up::run(&cfg, signals)
        }
        Command::Verify(mut args) => {
            args.verify = true;
            if !args.command.is_empty() {
                anyhow::bail!(
                    "verify runs no command: use `up --verify -- COMMAND` to run one after the check"
                );
            }
            args.command = vec!["true".into()];
            let cfg = config::UpConfig::from_args(&args)?;
            export_overlay_mtu(cfg.overlay_mtu);
            cluster::prefer_yielding_progress();
            let signals = signals::Signals::install()?;
            up::run(&cfg, signals)
        }
        Command::Doctor(args) => {
            let host = config::HostConfig::from_args(&args.common)?;
            doctor::run(&host, args.json)
        }
        Command::Cleanup(args) => {
            let base = config::HostConfig::from_args(&cli::CommonArgs {
                advertise_addr: None,
                iface: None,
                state_dir: args.state_dir.clone(),
            })?
            .state_base;
            cleanup::run(&base, args.dry_run)
        }
        Command::Guard(args) => guard::run(&args),
    }
}

/// Puts the overlay MTU in this process's environment, so that rank 0's command and `docker stack
/// deploy` (compose files: `${MPISWARM_OVERLAY_MTU}`) inherit it.
fn export_overlay_mtu(mtu: u32) {
    // SAFETY: called before MPI, signal handling or any other thread starts: nothing else reads
    // or writes the environment at the same time.
    unsafe { std::env::set_var(mtu::ENV, mtu.to_string()) };
}

/// Launchers abort the whole job when the first rank fails: a rank that stays quiet about an
/// error that every rank has (bad flags) waits a moment, so that rank 0's message gets out.
fn let_rank_0_speak_first() {
    std::thread::sleep(std::time::Duration::from_secs(1));
}

/// This process's rank as the launcher set it, before MPI starts (0 when not under a launcher).
fn launcher_rank() -> u32 {
    cluster::launcher_rank().unwrap_or(0)
}
