//! Command-line surface: raw flags only. `config` turns them into a validated plan before anything runs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The `--help` sections, everyday ones first.
const PLACEMENT: &str = "Placement";
const NETWORK: &str = "Network";
const IMAGES: &str = "Images and stacks";
const RESULTS: &str = "Results";
const TIMEOUTS: &str = "Timeouts";
const EXPERT: &str = "Expert";
const LOGGING: &str = "Logging";

#[derive(Debug, Parser)]
#[command(
    name = "mpiswarm",
    version,
    about = "A rootless Docker Swarm across the nodes of an MPI job, built in seconds and torn down without a trace",
    after_help = "Run under a launcher, one or more ranks per node: mpirun -np N --map-by node mpiswarm up -- ./workload.sh\n\
                  Exit codes: 125 mpiswarm failed; 126 the command cannot be executed; 127 it was not found; else the command's own.\n\
                  See docs/user-guide.md."
)]
pub struct Cli {
    /// More logging (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, help_heading = LOGGING)]
    pub verbose: u8,

    /// Log lines as plain text, or one JSON object per line for log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, help_heading = LOGGING)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the swarm on every node, run COMMAND on rank 0 (or wait for a signal), tear down.
    Up(UpArgs),
    /// Build the swarm, prove that every host reaches every other by name over an overlay
    /// network, print the N×N result, tear down (the same as `up --verify` with no command).
    #[command(mut_arg("probe_image", |a| a.required(true)))]
    Verify(VerifyArgs),
    /// Check every node's prerequisites for rootless Docker and print one table at rank 0 (exit
    /// 0: all ready; 1: a check failed; 125: the checks could not run).
    Doctor(DoctorArgs),
    /// Remove what earlier runs of this user left on this host (daemons, directories).
    Cleanup(CleanupArgs),
    /// Print a completion script for SHELL (e.g. `mpiswarm completions bash >
    /// ~/.local/share/bash-completion/completions/mpiswarm`).
    Completions(CompletionsArgs),
    /// Write man pages for mpiswarm and each of its subcommands into DIR.
    Man(ManArgs),
    /// Internal: the per-host guard that owns the daemon and cleans up even if the rank is killed.
    #[command(hide = true)]
    Guard(GuardArgs),
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Parent of the per-job state directories [default: ${TMPDIR:-/tmp}]; must be node-local.
    #[arg(long, value_name = "DIR", help_heading = PLACEMENT)]
    pub state_dir: Option<PathBuf>,

    /// Address other nodes reach this node's swarm ports on [default: the address the hostname
    /// resolves to, else that of the interface with the default route].
    #[arg(long, value_name = "ADDR", conflicts_with = "iface", help_heading = NETWORK)]
    pub advertise_addr: Option<String>,

    /// Take the advertise address from this network interface.
    #[arg(long, value_name = "NAME", help_heading = NETWORK)]
    pub iface: Option<String>,
}

/// `up`: the swarm's options, what to run on it, and whether to check it first.
#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub options: UpOptions,

    /// After bring-up, prove the overlay network connects every pair of hosts.
    #[arg(long, requires = "probe_image", help_heading = IMAGES)]
    pub verify: bool,

    /// The stack is the workload: instead of a command, wait until every task of its services
    /// that end (deploy mode replicated-job or global-job, or restart_policy condition none or
    /// on-failure) has exited, then tear down; exit 0 if all exited 0, else with the exit code
    /// of the first task that failed for good. Its other services only have to be up.
    #[arg(
        long,
        alias = "until-jobs-complete",
        requires = "stack",
        conflicts_with = "command",
        help_heading = IMAGES
    )]
    pub until_stack_jobs_complete: bool,

    /// A task of the stack that fails for good (restart condition none, or its restart attempts
    /// used up) is reported as a warning and counts as ended, and the run goes on with the
    /// command's exit code. Without it, such a failure, before or after the swarm is ready,
    /// stops the command and the run fails.
    #[arg(
        long,
        requires = "stack",
        conflicts_with = "until_stack_jobs_complete",
        help_heading = IMAGES
    )]
    pub allow_task_failures: bool,

    /// Command to run on rank 0 against the swarm; its exit code becomes mpiswarm's.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `verify`: the swarm's options only; it runs no command.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub options: UpOptions,
}

/// What `up` and `verify` share: how the swarm is built and what is kept of it.
#[derive(Debug, Args)]
pub struct UpOptions {
    #[command(flatten)]
    pub common: CommonArgs,

    /// The first K hosts become managers (a Raft majority survives the loss of a minority);
    /// the other hosts join through them in turn.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..), help_heading = PLACEMENT)]
    pub managers: u16,

    /// Also set the hosts' labels as node labels (`node.labels.mpiswarm.*`: one write to the
    /// managers' Raft log per host) beside the engine labels (`engine.labels.mpiswarm.*`), which
    /// are always set. On by itself when the --stack file names `node.labels.mpiswarm.`.
    #[arg(long, help_heading = PLACEMENT)]
    pub node_labels: bool,

    /// Address pool for overlay networks; must not overlap slirp4netns' 10.0.2.0/24.
    #[arg(long, value_name = "CIDR", default_value = "10.128.0.0/12", help_heading = NETWORK)]
    pub address_pool: String,

    /// The containers' network: `overlay` (each daemon in its own network namespace behind
    /// slirp4netns; overlay networks, names across hosts) or `host` (containers use the node's
    /// own interfaces at the network's speed; no overlay networks; needs rootlesskit >= 2.0 and
    /// Docker >= 26.0). See docs/networking.md: Overlay or host network.
    #[arg(long, value_enum, default_value_t = Net::Overlay, help_heading = NETWORK)]
    pub net: Net,

    /// How rootlesskit forwards the swarm ports with --net overlay [default: slirp4netns; see
    /// docs/networking.md: Port drivers].
    #[arg(long, value_enum, help_heading = NETWORK)]
    pub port_driver: Option<PortDriver>,

    /// MTU option of the overlay networks mpiswarm creates (Docker's meaning: the link under
    /// VXLAN; containers get 50 bytes less), exported to the command, the ready file and `docker
    /// stack deploy` as MPISWARM_OVERLAY_MTU [default: 65520, slirp4netns' MTU; see
    /// docs/networking.md: MTU]. Lower it (e.g. 1500) if a host's network drops IP fragments.
    #[arg(long, value_name = "BYTES", help_heading = NETWORK)]
    pub overlay_mtu: Option<u32>,

    /// Image archive (as `docker save` writes it) to load on every node; repeatable. Read once on
    /// rank 0 and broadcast over MPI: no registry or shared filesystem needed.
    #[arg(long = "load", value_name = "FILE.tar", help_heading = IMAGES)]
    pub load: Vec<PathBuf>,

    /// Compose file to deploy as a stack once the swarm is ready and the images are loaded.
    #[arg(long, value_name = "FILE", help_heading = IMAGES)]
    pub stack: Option<PathBuf>,

    /// Name of the deployed stack.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "mpiswarm",
        requires = "stack",
        help_heading = IMAGES
    )]
    pub stack_name: String,

    /// Image for the overlay probe of --verify (must have sh and a busybox-compatible nc); load
    /// it with --load.
    #[arg(long, value_name = "IMAGE", help_heading = IMAGES)]
    pub probe_image: Option<String>,

    /// Write a file a shell can source (DOCKER_HOST=...) once the swarm is ready; removed at teardown.
    #[arg(long, value_name = "PATH", help_heading = RESULTS)]
    pub ready_file: Option<PathBuf>,

    /// Write per-host, per-phase timings, peak RSS and CPU time (gathered at rank 0) as JSON.
    #[arg(long, value_name = "FILE.json", help_heading = RESULTS)]
    pub report: Option<PathBuf>,

    /// At teardown, before anything is killed, keep what the job produced under DIR/<job>/:
    /// every service's logs from every host, tasks.json, nodes.json, each host's daemon log and
    /// report.json (written by rank 0; DIR must be writable by you and by no other user).
    #[arg(long, value_name = "DIR", help_heading = RESULTS)]
    pub collect: Option<PathBuf>,

    /// One deadline for bring-up, in seconds (or with a unit: 90s, 2m); each rank's start of MPI
    /// has the same.
    #[arg(long, value_name = "DURATION", default_value = "120s", help_heading = TIMEOUTS)]
    pub timeout: String,

    /// Time --collect may add to the teardown (what is not collected by then is named in
    /// DIR/<job>/INCOMPLETE), in seconds or with a unit: 5s, 1500ms.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "5s",
        requires = "collect",
        help_heading = TIMEOUTS
    )]
    pub collect_timeout: String,

    /// How many workers join through each manager at once; the next joins as one finishes, so a
    /// manager of a very large job is never hit by every host at the same instant (a join costs
    /// its manager about 16 ms of CPU). Waves are slower than one burst up to this size: later
    /// joins compete with the sessions of the earlier ones.
    #[arg(long, value_name = "N", default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..), help_heading = EXPERT)]
    pub joins_per_manager: u16,

    /// Turn learning off on the overlay's vxlan devices (needed for cross-host overlay traffic
    /// with --port-driver builtin; see docs/networking.md: Port drivers).
    #[arg(long, help_heading = EXPERT)]
    pub vxlan_nolearning: bool,

    /// Which hosts start their daemon while MPI is still starting: `all` overlaps every host's
    /// daemon start with MPI's; `rank0` only rank 0's (on small nodes the others would compete
    /// with MPI and rank 0 for the CPUs); `auto` is `all` on nodes with 4 or more usable CPUs.
    #[arg(long, value_enum, default_value_t = EarlyStart::Auto, help_heading = EXPERT)]
    pub early_start: EarlyStart,

    /// Skip the prerequisite checks that normally run before anything starts.
    #[arg(long, help_heading = EXPERT)]
    pub no_preflight: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Check what this network path needs (see `up --net`).
    #[arg(help_heading = NETWORK, long, value_enum, default_value_t = Net::Overlay)]
    pub net: Net,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Parent of the per-job state directories [default: ${TMPDIR:-/tmp}].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Only say what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Where to write mpiswarm.1 and one page per subcommand (mpiswarm-up.1, ...).
    #[arg(value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct GuardArgs {
    /// The job's state directory on this host (created by the rank, empty).
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long)]
    pub advertise_addr: String,
    #[arg(long, value_enum)]
    pub net: GuardNet,
    #[arg(long)]
    pub vxlan_nolearning: bool,
    /// The MTU overlay networks get when their creator gives none (daemon.json's
    /// `default-network-opts`, Docker >= 24).
    #[arg(long)]
    pub overlay_default_mtu: Option<u32>,
    /// The daemon's labels (`KEY=VALUE`), when the rank knew them at launch.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// The host's Docker release (`MAJOR.MINOR`), when the rank knew it (rank 0's, read from the
    /// same `dockerd` file): the guard then runs no `dockerd --version` of its own.
    #[arg(long, value_parser = release)]
    pub docker_release: Option<(u32, u32)>,
}

/// A Docker release as `MAJOR.MINOR`.
fn release(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{text:?} is not MAJOR.MINOR");
    let (major, minor) = text.split_once('.').ok_or_else(bad)?;
    let number = |s: &str| s.parse::<u32>().map_err(|_| bad());
    Ok((number(major)?, number(minor)?))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EarlyStart {
    Auto,
    All,
    Rank0,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Net {
    Overlay,
    Host,
}

/// The guard's daemon network, as one flag: the overlay path with its port driver, or host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GuardNet {
    Slirp4netns,
    Builtin,
    Host,
}

impl GuardNet {
    pub fn as_str(self) -> &'static str {
        match self {
            GuardNet::Slirp4netns => "slirp4netns",
            GuardNet::Builtin => "builtin",
            GuardNet::Host => "host",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PortDriver {
    /// slirp4netns' own port forwarding: keeps the source address of incoming packets.
    Slirp4netns,
    /// rootlesskit's builtin forwarder: faster for TCP, but rewrites UDP source addresses.
    Builtin,
}

impl PortDriver {
    pub fn as_str(self) -> &'static str {
        match self {
            PortDriver::Slirp4netns => "slirp4netns",
            PortDriver::Builtin => "builtin",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(argv: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(["mpiswarm"].iter().chain(argv))
    }

    #[test]
    fn a_docker_release_is_major_dot_minor() {
        assert_eq!(release("26.1"), Ok((26, 1)));
        assert!(release("26").is_err());
        assert!(release("26.x").is_err());
    }

    #[test]
    fn verify_takes_no_command_and_needs_a_probe_image() {
        let mut cmd = Cli::command();
        let help = cmd
            .find_subcommand_mut("verify")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(!help.contains("COMMAND"), "{help}");
        assert!(parse(&["verify"]).is_err());
        assert!(parse(&["verify", "--probe-image", "x", "--", "true"]).is_err());
        assert!(parse(&["verify", "--probe-image", "x"]).is_ok());
        // `up --verify` too is refused by the parser without its image.
        assert!(parse(&["up", "--verify"]).is_err());
        assert!(parse(&["up", "--verify", "--probe-image", "x"]).is_ok());
    }

    #[test]
    fn the_old_name_of_until_stack_jobs_complete_still_works_unseen() {
        for flag in ["--until-stack-jobs-complete", "--until-jobs-complete"] {
            let Command::Up(args) = parse(&["up", "--stack", "s.yml", flag]).unwrap().command
            else {
                unreachable!("up was parsed")
            };
            assert!(args.until_stack_jobs_complete, "{flag}");
        }
        let help = Cli::command()
            .find_subcommand_mut("up")
            .unwrap()
            .render_long_help()
            .to_string();
        assert!(!help.contains("until-jobs-complete"), "{help}");
    }

    #[test]
    fn expert_knobs_are_apart_from_everyday_options() {
        let help = Cli::command()
            .find_subcommand_mut("up")
            .unwrap()
            .render_help()
            .to_string();
        let expert = help.find("Expert:").unwrap();
        for knob in ["--early-start", "--joins-per-manager", "--vxlan-nolearning"] {
            assert!(help.find(knob).unwrap() > expert, "{knob}:\n{help}");
        }
        for everyday in ["--timeout", "--load", "--stack ", "--collect ", "--net "] {
            assert!(help.find(everyday).unwrap() < expert, "{everyday}:\n{help}");
        }
    }

    #[test]
    fn help_points_to_docs_files_not_readme_headings() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut texts = vec![cmd.render_long_help().to_string()];
        for sub in cmd.get_subcommands_mut() {
            texts.push(sub.render_long_help().to_string());
        }
        for text in texts {
            assert!(!text.contains("README"), "{text}");
        }
    }
}
