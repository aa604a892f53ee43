//! Command-line surface: raw flags only. `config` turns them into a validated plan before anything runs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "mpiswarm",
    version,
    about = "A rootless Docker Swarm across the nodes of an MPI job, built in seconds and torn down without a trace",
    after_help = "Run under a launcher, one or more ranks per node: mpirun -np N mpiswarm up -- ./workload.sh"
)]
pub struct Cli {
    /// More logging (-v: debug, -vv: trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Log lines as plain text, or one JSON object per line for log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
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
    Verify(UpArgs),
    /// Check every node's prerequisites for rootless Docker and print one table at rank 0.
    Doctor(DoctorArgs),
    /// Remove what earlier runs of this user left on this host (daemons, directories).
    Cleanup(CleanupArgs),
    /// Internal: the per-host guard that owns the daemon and cleans up even if the rank is killed.
    #[command(hide = true)]
    Guard(GuardArgs),
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Address other nodes reach this node's swarm ports on [default: the address the hostname
    /// resolves to, else that of the interface with the default route].
    #[arg(long, value_name = "ADDR", conflicts_with = "iface")]
    pub advertise_addr: Option<String>,

    /// Take the advertise address from this network interface.
    #[arg(long, value_name = "NAME")]
    pub iface: Option<String>,

    /// Parent of the per-job state directories [default: ${TMPDIR:-/tmp}]; must be node-local.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// One deadline for bring-up, in seconds (or with a unit: 90s, 2m).
    #[arg(long, value_name = "DURATION", default_value = "120s")]
    pub timeout: String,

    /// Write a file a shell can source (DOCKER_HOST=...) once the swarm is ready; removed at teardown.
    #[arg(long, value_name = "PATH")]
    pub ready_file: Option<PathBuf>,

    /// Address pool for overlay networks; must not overlap slirp4netns' 10.0.2.0/24.
    #[arg(long, value_name = "CIDR", default_value = "10.128.0.0/12")]
    pub address_pool: String,

    /// The containers' network: `overlay` (each daemon in its own network namespace behind
    /// slirp4netns; overlay networks, names across hosts) or `host` (containers use the node's
    /// own interfaces at the network's speed; no overlay networks; needs rootlesskit >= 2.0 and
    /// Docker >= 26.0). See README: the data path.
    #[arg(long, value_enum, default_value_t = Net::Overlay)]
    pub net: Net,

    /// How rootlesskit forwards the swarm ports with --net overlay [default: slirp4netns; see
    /// README: why].
    #[arg(long, value_enum)]
    pub port_driver: Option<PortDriver>,

    /// Image archive (as `docker save` writes it) to load on every node; repeatable. Read once on
    /// rank 0 and broadcast over MPI: no registry or shared filesystem needed.
    #[arg(long = "load", value_name = "FILE.tar")]
    pub load: Vec<PathBuf>,

    /// Compose file to deploy as a stack once the swarm is ready and the images are loaded.
    #[arg(long, value_name = "FILE")]
    pub stack: Option<PathBuf>,

    /// Name of the deployed stack.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "mpiswarm",
        requires = "stack"
    )]
    pub stack_name: String,

    /// The stack is the workload: instead of a command, wait until every task of its services
    /// that end (deploy mode replicated-job or global-job, or restart_policy condition none or
    /// on-failure) has exited, then tear down; exit 0 if all exited 0, else with the exit code
    /// of the first task that failed for good. Its other services only have to be up.
    #[arg(long, requires = "stack", conflicts_with = "command")]
    pub until_jobs_complete: bool,

    /// A task of the stack that fails for good (restart condition none, or its restart attempts
    /// used up) is reported as a warning and counts as ended, and the run goes on with the
    /// command's exit code. Without it, such a failure, before or after the swarm is ready,
    /// stops the command and the run exits 1.
    #[arg(long, requires = "stack", conflicts_with = "until_jobs_complete")]
    pub allow_task_failures: bool,

    /// After bring-up, prove the overlay network connects every pair of hosts (needs --probe-image).
    #[arg(long)]
    pub verify: bool,

    /// Image for the overlay probe (must have sh and a busybox-compatible nc); load it with --load.
    #[arg(long, value_name = "IMAGE")]
    pub probe_image: Option<String>,

    /// Write per-host, per-phase timings, peak RSS and CPU time (gathered at rank 0) as JSON.
    #[arg(long, value_name = "FILE.json")]
    pub report: Option<PathBuf>,

    /// At teardown, before anything is killed, keep what the job produced under DIR/<job>/:
    /// every service's logs from every host, tasks.json, nodes.json, each host's daemon log and
    /// report.json (written by rank 0; DIR must be writable by you and by no other user).
    #[arg(long, value_name = "DIR")]
    pub collect: Option<PathBuf>,

    /// Time --collect may add to the teardown (what is not collected by then is named in
    /// DIR/<job>/INCOMPLETE), in seconds or with a unit: 5s, 1500ms.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "5s",
        requires = "collect"
    )]
    pub collect_timeout: String,

    /// The first K hosts become managers (a Raft majority survives the loss of a minority);
    /// the other hosts join through them in turn.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub managers: u16,

    /// How many workers join through each manager at once; the next joins as one finishes, so a
    /// manager is never hit by every host of a large job at the same instant (README: scale;
    /// measured: a join costs its manager about 16 ms of CPU).
    #[arg(long, value_name = "N", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub joins_per_manager: u16,

    /// MTU option of the overlay networks mpiswarm creates (Docker's meaning: the link under
    /// VXLAN; containers get 50 bytes less), exported to the command, the ready file and `docker
    /// stack deploy` as MPISWARM_OVERLAY_MTU [default: 65520, slirp4netns' MTU; see README: the
    /// data path]. Lower it (e.g. 1500) if a host's network drops IP fragments.
    #[arg(long, value_name = "BYTES")]
    pub overlay_mtu: Option<u32>,

    /// Turn learning off on the overlay's vxlan devices (needed for cross-host overlay traffic
    /// with --port-driver builtin; see README).
    #[arg(long)]
    pub vxlan_nolearning: bool,

    /// Which hosts start their daemon while MPI is still starting: `all` overlaps every host's
    /// daemon start with MPI's; `rank0` only rank 0's (on small nodes the others would compete
    /// with MPI and rank 0 for the CPUs); `auto` is `all` on nodes with 4 or more usable CPUs.
    #[arg(long, value_enum, default_value_t = EarlyStart::Auto)]
    pub early_start: EarlyStart,

    /// Skip the prerequisite checks that normally run before anything starts.
    #[arg(long)]
    pub no_preflight: bool,

    /// Command to run on rank 0 against the swarm; its exit code becomes mpiswarm's.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    pub common: CommonArgs,

    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,

    /// Check what this network path needs (see `up --net`).
    #[arg(long, value_enum, default_value_t = Net::Overlay)]
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
