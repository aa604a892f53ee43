//! Validated configuration: raw flags become a checked plan before MPI starts or anything is created.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::plan::cli::{CommonArgs, EarlyStart, GuardNet, Net, PortDriver, UpArgs};

/// Where and how a host's daemon is reached by the others.
#[derive(Debug, Clone)]
pub enum AddrChoice {
    Explicit(Ipv4Addr),
    Iface(String),
    Auto,
}

/// Usable CPUs from which `--early-start auto` starts every host's daemon before MPI is up. A
/// daemon start takes about one CPU for 0.3 s; with fewer CPUs it slows MPI's own start and rank
/// 0's swarm init more than it gains (measured on 2 cores: 0.13 s slower at 8 hosts, and at 3
/// hosts with 32 ranks each 1.82 s of own cost against 1.44 s).
const EARLY_START_MIN_CPUS: usize = 4;

/// The containers' network, with what each path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// Each daemon in its own network namespace behind slirp4netns, the swarm ports forwarded by
    /// `port_driver`; overlay networks carry container traffic.
    Overlay { port_driver: PortDriver },
    /// The daemons (rootlesskit's detached network namespace) and every container in the node's
    /// own network namespace: no port forwarding, no overlay networks.
    Host,
}

impl Network {
    /// The path `--net` names, with slirp4netns' port driver unless another is given.
    pub fn new(net: Net, port_driver: Option<PortDriver>) -> Network {
        match net {
            Net::Overlay => Network::Overlay {
                port_driver: port_driver.unwrap_or(PortDriver::Slirp4netns),
            },
            Net::Host => Network::Host,
        }
    }

    /// slirp4netns forwards the swarm ports: it keeps source addresses (the firewall can filter
    /// by them) and listens with an accept queue of one (the guard deepens it).
    pub fn slirp4netns_forwards(self) -> bool {
        self == Network::Overlay {
            port_driver: PortDriver::Slirp4netns,
        }
    }

    /// The one flag the guard gets.
    pub fn guard_net(self) -> GuardNet {
        match self {
            Network::Overlay {
                port_driver: PortDriver::Slirp4netns,
            } => GuardNet::Slirp4netns,
            Network::Overlay {
                port_driver: PortDriver::Builtin,
            } => GuardNet::Builtin,
            Network::Host => GuardNet::Host,
        }
    }

    pub fn from_guard_net(net: GuardNet) -> Network {
        match net {
            GuardNet::Slirp4netns => Network::Overlay {
                port_driver: PortDriver::Slirp4netns,
            },
            GuardNet::Builtin => Network::Overlay {
                port_driver: PortDriver::Builtin,
            },
            GuardNet::Host => Network::Host,
        }
    }

    pub fn is_host(self) -> bool {
        self == Network::Host
    }

    /// The name users give it (`--net`).
    pub fn as_str(self) -> &'static str {
        match self {
            Network::Overlay { .. } => "overlay",
            Network::Host => "host",
        }
    }
}

#[derive(Debug, Clone)]
pub struct HostConfig {
    pub addr: AddrChoice,
    /// Parent of `mpiswarm-<uid>/`; node-local.
    pub state_base: PathBuf,
}

#[derive(Debug, Clone)]
pub struct UpConfig {
    pub host: HostConfig,
    pub timeout: Duration,
    pub ready_file: Option<PathBuf>,
    pub address_pool: (Ipv4Addr, u8),
    pub network: Network,
    pub preflight: bool,
    pub load: Vec<PathBuf>,
    pub stack: Option<(PathBuf, String)>,
    /// The overlay probe's image, when the overlay is to be verified.
    pub probe_image: Option<String>,
    pub report: Option<PathBuf>,
    pub managers: usize,
    /// `--node-labels`: the hosts' labels as node labels too (else only when the stack uses them).
    pub node_labels: bool,
    /// Workers joining through one manager at once.
    pub joins_per_manager: usize,
    /// Every host leader starts its daemon before MPI is up (else only rank 0 does).
    pub early_start_all: bool,
    pub vxlan_nolearning: bool,
    /// MTU of the overlay networks mpiswarm creates (and exports as MPISWARM_OVERLAY_MTU).
    pub overlay_mtu: u32,
    /// `--collect`: where to keep the job's logs and facts at teardown, and in how much time.
    pub collect: Option<Collect>,
    pub workload: Workload,
    /// What a stack's task that fails for good does to the run.
    pub task_failures: TaskFailures,
}

/// What a stack's task that fails for good (Swarm starts no new one) does to the run; it is
/// reported at once either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskFailures {
    /// The run ends and fails (the default).
    EndRun,
    /// `--allow-task-failures`: a warning; the stack counts the task as ended, and the run
    /// goes on.
    Allowed,
}

/// What the swarm is for once it is up (rank 0 runs or waits for it; then every host tears down).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// `-- COMMAND...`: its exit code becomes mpiswarm's.
    Command(Vec<String>),
    /// `--until-stack-jobs-complete`: the work services of the stack of this name (`--stack`);
    /// their status becomes mpiswarm's.
    StackWork(String),
    /// Nothing: the swarm stays up until a signal.
    Signal,
}

/// What `--collect DIR --collect-timeout DURATION` asks for.
#[derive(Debug, Clone)]
pub struct Collect {
    pub dir: PathBuf,
    /// The time collection may add to the teardown.
    pub budget: Duration,
}

impl HostConfig {
    pub fn from_args(args: &CommonArgs) -> Result<Self> {
        let addr = match (&args.advertise_addr, &args.iface) {
            (Some(a), _) => AddrChoice::Explicit(a.parse().with_context(|| {
                format!("--advertise-addr {a:?} is not an IPv4 address (e.g. 192.168.1.10)")
            })?),
            (None, Some(i)) if i.is_empty() => bail!("--iface needs an interface name, e.g. eth0"),
            (None, Some(i)) => AddrChoice::Iface(i.clone()),
            (None, None) => AddrChoice::Auto,
        };
        let state_base = match &args.state_dir {
            Some(dir) => dir.clone(),
            None => std::env::var_os("TMPDIR")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/tmp")),
        };
        if !state_base.is_absolute() {
            bail!(
                "--state-dir {} must be an absolute path (a node-local directory such as /tmp)",
                state_base.display()
            );
        }
        Ok(HostConfig { addr, state_base })
    }
}

impl UpConfig {
    pub fn from_args(args: &UpArgs) -> Result<Self> {
        let timeout = parse_duration(&args.options.timeout).with_context(|| {
            format!(
                "--timeout {:?} is not a valid duration",
                args.options.timeout
            )
        })?;
        let address_pool = parse_cidr(&args.options.address_pool).with_context(|| {
            format!(
                "--address-pool {:?} is not usable",
                args.options.address_pool
            )
        })?;
        if let Some(path) = &args.options.ready_file
            && path.as_os_str().is_empty()
        {
            bail!("--ready-file needs a path");
        }
        Ok(UpConfig {
            host: HostConfig::from_args(&args.options.common)?,
            timeout,
            ready_file: args.options.ready_file.clone(),
            address_pool,
            network: network(args)?,
            preflight: !args.options.no_preflight,
            load: args.options.load.clone(),
            stack: match &args.options.stack {
                Some(file) => {
                    check_stack_name(&args.options.stack_name)?;
                    Some((file.clone(), args.options.stack_name.clone()))
                }
                None => None,
            },
            probe_image: probe_image(args)?,
            report: args.options.report.clone(),
            managers: usize::from(args.options.managers),
            node_labels: args.options.node_labels,
            joins_per_manager: usize::from(args.options.joins_per_manager),
            early_start_all: match args.options.early_start {
                EarlyStart::All => true,
                EarlyStart::Rank0 => false,
                EarlyStart::Auto => std::thread::available_parallelism()
                    .is_ok_and(|n| n.get() >= EARLY_START_MIN_CPUS),
            },
            vxlan_nolearning: args.options.vxlan_nolearning,
            overlay_mtu: crate::plan::mtu::check_overlay(
                args.options
                    .overlay_mtu
                    .unwrap_or(crate::plan::mtu::DEFAULT_OVERLAY_MTU),
            )?,
            collect: collect(args)?,
            workload: match (&args.command[..], args.until_stack_jobs_complete) {
                (_, true) => Workload::StackWork(args.options.stack_name.clone()),
                ([], false) => Workload::Signal,
                (command, false) => Workload::Command(command.to_vec()),
            },
            task_failures: if args.allow_task_failures {
                TaskFailures::Allowed
            } else {
                TaskFailures::EndRun
            },
        })
    }
}

/// `--net` with the options that only mean something on the overlay path refused for `host`.
fn network(args: &UpArgs) -> Result<Network> {
    match args.options.net {
        Net::Overlay => Ok(Network::new(args.options.net, args.options.port_driver)),
        Net::Host => {
            let overlay_only = [
                (args.options.port_driver.is_some(), "--port-driver"),
                (args.options.vxlan_nolearning, "--vxlan-nolearning"),
                (args.options.overlay_mtu.is_some(), "--overlay-mtu"),
                (args.verify, "--verify"),
            ];
            if let Some((_, flag)) = overlay_only.iter().find(|(given, _)| *given) {
                bail!(
                    "{flag} is for the overlay network, which --net host does not have (containers \
                     use the node's own interfaces; no port forwarding): drop {flag}, or use --net overlay"
                );
            }
            Ok(Network::Host)
        }
    }
}

/// Parses `90`, `90s`, `1500ms`, `2m`, `1h`: plain numbers are seconds. Zero is refused: a zero
/// deadline could only fail.
pub fn parse_duration(text: &str) -> Result<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        anyhow::anyhow!("expected a number with an optional unit (ms, s, m, h), e.g. 120s")
    })?;
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        other => bail!("unknown unit {other:?}: use ms, s, m or h, e.g. 120s"),
    };
    let seconds = value * scale;
    if !seconds.is_finite() || seconds <= 0.0 {
        bail!("the duration must be greater than zero, e.g. 120s");
    }
    if seconds > 7.0 * 24.0 * 3600.0 {
        bail!("the duration is longer than a week; use e.g. 120s");
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses an IPv4 CIDR for the swarm's default address pool and refuses one that overlaps
/// slirp4netns' 10.0.2.0/24, which every rootless daemon uses for its own network.
pub fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8)> {
    let (addr, len) = text
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("expected ADDRESS/LENGTH, e.g. 10.128.0.0/12"))?;
    let addr: Ipv4Addr = addr.parse().context("the address part is not IPv4")?;
    let len: u8 = len.parse().context("the prefix length is not a number")?;
    if !(8..=24).contains(&len) {
        bail!("the prefix length must be between 8 and 24 (overlay networks take /24s from it)");
    }
    let mask = u32::MAX << (32 - u32::from(len));
    if u32::from(addr) & !mask != 0 {
        bail!(
            "{addr}/{len} has host bits set; use {}/{len}",
            Ipv4Addr::from(u32::from(addr) & mask)
        );
    }
    let slirp = u32::from(Ipv4Addr::new(10, 0, 2, 0));
    if slirp & mask == u32::from(addr) {
        bail!("it overlaps slirp4netns' network 10.0.2.0/24; choose e.g. 10.128.0.0/12");
    }
    Ok((addr, len))
}

/// `--verify`'s probe image, which it cannot do without.
fn probe_image(args: &UpArgs) -> Result<Option<String>> {
    Ok(match (args.verify, &args.options.probe_image) {
        (false, _) => None,
        (true, Some(image)) => Some(image.clone()),
        (true, None) => bail!(
            "--verify needs --probe-image IMAGE: an image with sh and nc, loaded with --load \
             (e.g. a busybox image saved with `docker save`)"
        ),
    })
}

/// `--collect DIR` with its budget.
fn collect(args: &UpArgs) -> Result<Option<Collect>> {
    Ok(match &args.options.collect {
        Some(dir) if dir.as_os_str().is_empty() => bail!("--collect needs a directory"),
        Some(dir) => Some(Collect {
            dir: dir.clone(),
            budget: parse_duration(&args.options.collect_timeout).with_context(|| {
                format!(
                    "--collect-timeout {:?} is not a valid duration",
                    args.options.collect_timeout
                )
            })?,
        }),
        None => None,
    })
}

/// Checks a stack name before anything starts (Docker's rules for names).
fn check_stack_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if !valid {
        bail!(
            "--stack-name {name:?} is not valid: use lower-case letters, digits, '-' and '_', starting with a letter or digit"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_names() {
        assert!(check_stack_name("demo").is_ok());
        assert!(check_stack_name("Demo").is_err());
        assert!(check_stack_name("-x").is_err());
        assert!(check_stack_name("").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(
            parse_duration("1500ms").unwrap(),
            Duration::from_millis(1500)
        );
        assert_eq!(parse_duration("0.5").unwrap(), Duration::from_millis(500));
        for bad in ["", "0", "-3", "abc", "10x", "1e9", "9999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be refused");
        }
    }

    fn up_args(flags: &[&str]) -> UpArgs {
        use clap::Parser;
        let argv = ["mpiswarm", "up"].iter().chain(flags);
        match crate::plan::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::plan::cli::Command::Up(args) => args,
            _ => unreachable!("up was parsed"),
        }
    }

    #[test]
    fn the_host_path_refuses_what_only_overlays_have() {
        assert_eq!(
            network(&up_args(&["--net", "host"])).unwrap(),
            Network::Host
        );
        for flags in [
            &["--net", "host", "--verify", "--probe-image", "x"][..],
            &["--net", "host", "--port-driver", "builtin"],
            &["--net", "host", "--overlay-mtu", "9000"],
            &["--net", "host", "--vxlan-nolearning"],
        ] {
            let err = network(&up_args(flags)).unwrap_err().to_string();
            assert!(err.contains("--net host does not have"), "{flags:?}: {err}");
            assert!(err.contains(flags[2]), "{flags:?} names the flag: {err}");
        }
        assert_eq!(
            network(&up_args(&["--port-driver", "builtin"])).unwrap(),
            Network::Overlay {
                port_driver: PortDriver::Builtin
            }
        );
    }

    #[test]
    fn task_failures_end_the_run_unless_allowed_beside_a_command() {
        let cfg = |flags: &[&str]| UpConfig::from_args(&up_args(flags)).map(|c| c.task_failures);
        assert_eq!(cfg(&["--stack", "s.yml"]).unwrap(), TaskFailures::EndRun);
        assert_eq!(
            cfg(&["--stack", "s.yml", "--allow-task-failures"]).unwrap(),
            TaskFailures::Allowed
        );
        use clap::Parser;
        for refused in [
            &["mpiswarm", "up", "--allow-task-failures"][..],
            &[
                "mpiswarm",
                "up",
                "--stack",
                "s.yml",
                "--until-jobs-complete",
                "--allow-task-failures",
            ],
        ] {
            assert!(
                crate::plan::cli::Cli::try_parse_from(refused).is_err(),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn the_workload_is_a_command_the_stacks_work_or_a_signal() {
        let cfg = |flags: &[&str]| UpConfig::from_args(&up_args(flags)).map(|c| c.workload);
        assert_eq!(
            cfg(&["--", "echo", "hi"]).unwrap(),
            Workload::Command(vec!["echo".into(), "hi".into()])
        );
        assert_eq!(cfg(&[]).unwrap(), Workload::Signal);
        assert_eq!(
            cfg(&["--stack", "s.yml", "--until-jobs-complete"]).unwrap(),
            Workload::StackWork("mpiswarm".into())
        );
        use clap::Parser;
        for refused in [
            &["mpiswarm", "up", "--until-jobs-complete"][..],
            &[
                "mpiswarm",
                "up",
                "--stack",
                "s.yml",
                "--until-jobs-complete",
                "--",
                "true",
            ],
        ] {
            assert!(
                crate::plan::cli::Cli::try_parse_from(refused).is_err(),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.128.0.0/12").unwrap().1, 12);
        assert!(parse_cidr("10.0.0.0/8").is_err(), "overlaps slirp4netns");
        assert!(parse_cidr("10.0.2.0/24").is_err());
        assert!(parse_cidr("10.128.0.1/12").is_err(), "host bits");
        assert!(parse_cidr("10.128.0.0").is_err());
        assert!(parse_cidr("10.128.0.0/30").is_err());
    }
}
