//! mpiswarm: a rootless Docker Swarm across the nodes of an MPI job, built in seconds and torn
//! down without a trace.

mod cmd;
mod host;
#[cfg(test)]
mod layering;
mod mpi;
mod output;
mod plan;
mod swarm;
mod sys;

use std::process::ExitCode;

use anyhow::Result;
use clap::{ArgMatches, CommandFactory, FromArgMatches};

use crate::cmd::{cleanup, doctor, generate, up};
use crate::host::{guard, identity, oci_runtime};
use crate::mpi::{cluster, library};
use crate::output::logging;
use crate::plan::cli::{self, Cli, Command};
use crate::plan::{config, mtu, site_env};
use crate::sys::{exit, signals};

fn main() -> ExitCode {
    // The OCI runtime of `--net host` daemons is called as runc is (containerd's calling
    // convention, runc's flags): not through the command line parser.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == oci_runtime::SUBCOMMAND)
    {
        return oci_runtime::main(std::env::args_os().skip(2).collect());
    }
    // Read before MPI starts: an MPI that is not the launcher's may set its own rank variables.
    let launcher_rank = launcher_rank();
    let (cli, matches) = match parse() {
        Ok(parsed) => parsed,
        Err(e) => {
            // Under a launcher every rank sees the same bad flags: let one of them say so.
            if launcher_rank == 0 {
                let _ = e.print();
            } else if e.exit_code() != 0 {
                let_rank_0_speak_first();
            }
            return ExitCode::from(flag_error_code(&e));
        }
    };
    logging::init(cli.verbose, cli.log_format);
    match run(cli, &matches) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            // An error of this rank's own (MPI's start, a host-only problem) is said by every
            // rank that has it; one that every rank has (the flags) by rank 0 alone.
            if launcher_rank == 0 || e.downcast_ref::<exit::SameOnEveryRank>().is_none() {
                logging::print_error(&identity::hostname(), &e);
            } else {
                let_rank_0_speak_first();
            }
            ExitCode::from(exit::code_of(&e) as u8)
        }
    }
}

/// `--help` and `--version` succeed; bad flags are mpiswarm's failure (125), not clap's 2, which
/// a command's own code could be.
fn flag_error_code(e: &clap::Error) -> u8 {
    match e.exit_code() {
        0 => 0,
        _ => exit::FAILED as u8,
    }
}

/// The command line, with the site's defaults from the environment (`MPISWARM_<FLAG>`).
fn parse() -> Result<(Cli, ArgMatches), clap::Error> {
    let parser = site_env::add(Cli::command())
        .version(format!(
            "{} (commit {})",
            env!("CARGO_PKG_VERSION"),
            library::COMMIT
        ))
        .long_version(format!(
            "{}\ncommit: {}\nMPI built with: {}\nMPI loaded: {}",
            env!("CARGO_PKG_VERSION"),
            library::COMMIT,
            library::BUILT_WITH,
            library::loaded()
        ));
    let matches = parser.try_get_matches()?;
    Ok((Cli::from_arg_matches(&matches)?, matches))
}

fn run(cli: Cli, matches: &ArgMatches) -> Result<i32> {
    match cli.command {
        Command::Up(mut args) => {
            if let Some(("up", m)) = matches.subcommand() {
                site_env::drop_overlay_defaults_for_host(&mut args, m);
            }
            run_up(&args)
        }
        // `up --verify` without a command.
        Command::Verify(args) => {
            let mut args = cli::UpArgs {
                options: args.options,
                verify: true,
                until_stack_jobs_complete: false,
                allow_task_failures: false,
                command: vec!["true".into()],
            };
            if let Some(("verify", m)) = matches.subcommand() {
                site_env::drop_overlay_defaults_for_host(&mut args, m);
            }
            run_up(&args)
        }
        Command::Doctor(args) => {
            let host =
                config::HostConfig::from_args(&args.common).map_err(exit::same_on_every_rank)?;
            doctor::run(&host, config::Network::new(args.net, None), args.json)
        }
        Command::Cleanup(args) => {
            let base = config::HostConfig::from_args(&cli::CommonArgs {
                advertise_addr: None,
                iface: None,
                state_dir: args.state_dir.clone(),
            })
            .map_err(exit::same_on_every_rank)?
            .state_base;
            cleanup::run(&base, args.dry_run)
        }
        Command::Completions(args) => generate::completions(args.shell),
        Command::Man(args) => generate::man_pages(&args.dir),
        Command::Guard(args) => guard::run(&args),
    }
}

fn run_up(args: &cli::UpArgs) -> Result<i32> {
    let cfg = config::UpConfig::from_args(args).map_err(exit::same_on_every_rank)?;
    export_for_the_command(&cfg);
    cluster::prefer_yielding_progress();
    if cfg.collect.is_some() {
        signals::first_signal_waits_for_collection();
    }
    let signals = signals::Signals::install()?;
    up::run(&cfg, signals)
}

/// Puts the overlay MTU and the network path in this process's environment, so that rank 0's
/// command and `docker stack deploy` (compose files: `${MPISWARM_OVERLAY_MTU}`) inherit them.
fn export_for_the_command(cfg: &config::UpConfig) {
    // SAFETY: called before MPI, signal handling or any other thread starts: nothing else reads
    // or writes the environment at the same time.
    unsafe {
        std::env::set_var(mtu::ENV, cfg.overlay_mtu.to_string());
        std::env::set_var("MPISWARM_NET", cfg.network.as_str());
    }
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
