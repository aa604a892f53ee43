//! Site defaults: every flag of `up`, `verify`, `doctor` and `cleanup` (and the global ones) can
//! come from an `MPISWARM_<FLAG>` variable, as a module file sets them; the command line wins.
//! Added to the parser in one place, so that a new flag gets its variable too.

use clap::builder::BoolishValueParser;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

use crate::plan::cli::{Net, UpArgs};

/// Subcommands whose flags take site defaults (the guard is internal: it gets its flags only).
const WITH_SITE_DEFAULTS: [&str; 4] = ["up", "verify", "doctor", "cleanup"];

/// The variable of a flag: `--state-dir` reads `MPISWARM_STATE_DIR`.
pub fn variable(long: &str) -> String {
    format!("MPISWARM_{}", long.to_ascii_uppercase().replace('-', "_"))
}

/// The parser with a variable for every long flag of the root and of `WITH_SITE_DEFAULTS`.
pub fn add(cmd: Command) -> Command {
    let cmd = with_variables(cmd);
    WITH_SITE_DEFAULTS
        .iter()
        .fold(cmd, |cmd, name| cmd.mut_subcommand(*name, with_variables))
}

fn with_variables(cmd: Command) -> Command {
    cmd.mut_args(|arg| match arg.get_long().map(variable) {
        // A switch's variable takes what shells and module files say: 1/0, yes/no, on/off too.
        Some(name) if matches!(arg.get_action(), ArgAction::SetTrue) => {
            arg.env(name).value_parser(BoolishValueParser::new())
        }
        Some(name) if !arg.is_positional() => arg.env(name),
        _ => arg,
    })
}

/// Flags that mean something on the overlay path only (`--net host` refuses them), and how each
/// is unset.
type Unset = fn(&mut UpArgs);
const OVERLAY_ONLY: [(&str, Unset); 4] = [
    ("port_driver", |a| a.options.port_driver = None),
    ("vxlan_nolearning", |a| a.options.vxlan_nolearning = false),
    ("overlay_mtu", |a| a.options.overlay_mtu = None),
    ("verify", |a| a.verify = false),
];

/// A site's defaults for the overlay path must not make `--net host` fail: under host, those
/// taken from the environment are dropped (given on the command line, they are still refused).
/// This also covers the MPISWARM_OVERLAY_MTU a run exports to its command, when the command
/// starts another run on the host path.
pub fn drop_overlay_defaults_for_host(args: &mut UpArgs, matches: &ArgMatches) {
    if args.options.net != Net::Host {
        return;
    }
    for (id, unset) in OVERLAY_ONLY {
        if matches.value_source(id) == Some(ValueSource::EnvVariable) {
            tracing::debug!(
                "{} ignored: --net host has no overlay",
                variable(&id.replace('_', "-"))
            );
            unset(args);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use clap::{CommandFactory, FromArgMatches};

    use super::*;
    use crate::plan::cli::{Cli, Command as Sub};

    /// The tests that set variables, one at a time.
    static ENV: Mutex<()> = Mutex::new(());

    /// Parses `args` with `vars` set, then unsets them.
    fn parse(vars: &[(&str, &str)], args: &[&str]) -> (Cli, ArgMatches) {
        let _one = ENV.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the tests that set these variables hold ENV; nothing else reads them.
        unsafe { vars.iter().for_each(|(k, v)| std::env::set_var(k, v)) };
        let matches = add(Cli::command()).try_get_matches_from(args);
        // SAFETY: as above.
        unsafe { vars.iter().for_each(|(k, _)| std::env::remove_var(k)) };
        let matches = matches.unwrap();
        (Cli::from_arg_matches(&matches).unwrap(), matches)
    }

    fn up_args(cli: Cli) -> UpArgs {
        match cli.command {
            Sub::Up(args) => args,
            Sub::Verify(args) => UpArgs {
                options: args.options,
                verify: true,
                until_stack_jobs_complete: false,
                allow_task_failures: false,
                command: Vec::new(),
            },
            other => panic!("not up: {other:?}"),
        }
    }

    #[test]
    fn flags_come_from_the_environment_and_the_command_line_wins() {
        let site = [
            ("MPISWARM_STATE_DIR", "/local/scratch"),
            ("MPISWARM_IFACE", "ib0"),
            ("MPISWARM_ADDRESS_POOL", "10.200.0.0/16"),
            ("MPISWARM_VXLAN_NOLEARNING", "true"),
            ("MPISWARM_MANAGERS", "3"),
            ("MPISWARM_LOG_FORMAT", "json"),
            ("MPISWARM_VERBOSE", "2"),
        ];
        let (cli, _) = parse(&site, &["mpiswarm", "up", "--iface", "eth1", "--", "true"]);
        assert_eq!(cli.log_format, crate::plan::cli::LogFormat::Json);
        assert_eq!(cli.verbose, 2);
        let up = up_args(cli);
        assert_eq!(
            up.options.common.state_dir.as_deref(),
            Some("/local/scratch".as_ref())
        );
        assert_eq!(up.options.common.iface.as_deref(), Some("eth1"));
        assert_eq!(up.options.address_pool, "10.200.0.0/16");
        assert!(up.options.vxlan_nolearning);
        assert_eq!(up.options.managers, 3);
        assert_eq!(up.command, ["true"]);
        let (cli, _) = parse(
            &[
                ("MPISWARM_VXLAN_NOLEARNING", "false"),
                // verify needs a probe image: a site default satisfies it too.
                ("MPISWARM_PROBE_IMAGE", "probe:1"),
            ],
            &["mpiswarm", "verify"],
        );
        assert!(!up_args(cli).options.vxlan_nolearning);
    }

    #[test]
    fn doctor_and_cleanup_take_site_defaults_too() {
        let (cli, _) = parse(
            &[
                ("MPISWARM_STATE_DIR", "/local/s"),
                ("MPISWARM_DRY_RUN", "1"),
                ("MPISWARM_NET", "host"),
            ],
            &["mpiswarm", "cleanup"],
        );
        let Sub::Cleanup(c) = cli.command else {
            panic!("not cleanup")
        };
        assert_eq!(c.state_dir.as_deref(), Some("/local/s".as_ref()));
        assert!(c.dry_run);
        let (cli, _) = parse(
            &[("MPISWARM_NET", "host"), ("MPISWARM_JSON", "true")],
            &["mpiswarm", "doctor"],
        );
        let Sub::Doctor(d) = cli.command else {
            panic!("not doctor")
        };
        assert_eq!(d.net, Net::Host);
        assert!(d.json);
    }

    #[test]
    fn a_bad_value_in_the_environment_is_refused_naming_the_flag() {
        let _one = ENV.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the tests that set these variables hold ENV; nothing else reads them.
        unsafe { std::env::set_var("MPISWARM_MANAGERS", "many") };
        let e = add(Cli::command()).try_get_matches_from(["mpiswarm", "up"]);
        // SAFETY: as above.
        unsafe { std::env::remove_var("MPISWARM_MANAGERS") };
        let text = e.unwrap_err().to_string();
        assert!(
            text.contains("many") && text.contains("--managers"),
            "{text}"
        );
    }

    #[test]
    fn every_flag_has_its_variable_shown_in_help() {
        let mut cmd = add(Cli::command());
        for name in WITH_SITE_DEFAULTS {
            let sub = cmd.find_subcommand_mut(name).unwrap();
            for arg in sub.get_arguments().filter(|a| a.get_long().is_some()) {
                let long = arg.get_long().unwrap();
                if matches!(long, "help" | "version") {
                    continue;
                }
                let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
                assert_eq!(env, Some(variable(long)), "{name} --{long}");
            }
            let help = sub.render_long_help().to_string();
            assert!(help.contains("[env: MPISWARM_STATE_DIR="), "{name}: {help}");
        }
    }

    #[test]
    fn overlay_defaults_from_the_environment_do_not_fail_the_host_path() {
        let site = [("MPISWARM_OVERLAY_MTU", "1500"), ("MPISWARM_NET", "host")];
        let (cli, m) = parse(&site, &["mpiswarm", "up"]);
        let mut up = up_args(cli);
        drop_overlay_defaults_for_host(&mut up, m.subcommand_matches("up").unwrap());
        assert_eq!((up.options.net, up.options.overlay_mtu), (Net::Host, None));
        // On the command line it stays, for the plan to refuse.
        let (cli, m) = parse(&site, &["mpiswarm", "up", "--overlay-mtu", "1400"]);
        let mut up = up_args(cli);
        drop_overlay_defaults_for_host(&mut up, m.subcommand_matches("up").unwrap());
        assert_eq!(up.options.overlay_mtu, Some(1400));
        // On the overlay path the site's MTU holds.
        let (cli, m) = parse(&site[..1], &["mpiswarm", "up"]);
        let mut up = up_args(cli);
        drop_overlay_defaults_for_host(&mut up, m.subcommand_matches("up").unwrap());
        assert_eq!(up.options.overlay_mtu, Some(1500));
    }
}
