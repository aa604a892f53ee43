//! The OCI runtime of `--net host` daemons: containerd calls it as it would call runc; for a
//! container being created it rewrites the bundle's config.json so that the container stays in
//! the node's network namespace (the one runc itself runs in), then runs runc with the same
//! arguments.
//!
//! Docker's own `--network host` cannot work rootless: libnetwork would have to enter the node's
//! namespace, which belongs to the initial user namespace. With rootlesskit's detached network
//! namespace, dockerd, containerd and runc run in the node's namespace while libnetwork works in
//! the detached one, so a container that simply does not get a namespace of its own shares the
//! node's interfaces, as under Apptainer.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The word after the executable that selects this entry point (daemon/config.rs names it in daemon.json).
pub const SUBCOMMAND: &str = "oci-runtime";

/// The runtime this one hands over to.
const RUNC: &str = "runc";

/// runc's global options that take a value as the next argument.
const GLOBAL_WITH_VALUE: [&str; 5] = ["--root", "--log", "--log-format", "--criu", "--rootless"];

/// Entry point: rewrites the bundle for `create` and `run`, then becomes runc.
pub fn main(args: Vec<OsString>) -> ExitCode {
    if let Some(bundle) = bundle_to_rewrite(&args) {
        let config = bundle.join("config.json");
        if let Err(e) = rewrite(&config) {
            // containerd shows this in the container's start error.
            eprintln!(
                "mpiswarm oci-runtime: failed to put the container in the node's network ({}): {e:#}",
                config.display()
            );
            return ExitCode::from(1);
        }
    }
    let err = std::process::Command::new(RUNC).args(&args).exec();
    eprintln!("mpiswarm oci-runtime: failed to run {RUNC}: {err}");
    ExitCode::from(127)
}

/// The bundle directory when the command creates a container (`create`, `run`).
fn bundle_to_rewrite(args: &[OsString]) -> Option<PathBuf> {
    let mut rest = args.iter().map(OsString::as_os_str);
    let command = loop {
        let arg = rest.next()?.to_str()?;
        if !arg.starts_with('-') {
            break arg;
        }
        if GLOBAL_WITH_VALUE.contains(&arg) {
            rest.next();
        }
    };
    if !matches!(command, "create" | "run") {
        return None;
    }
    let rest: Vec<&OsStr> = rest.collect();
    for (i, arg) in rest.iter().enumerate() {
        let Some(text) = arg.to_str() else { continue };
        for flag in ["--bundle", "-b"] {
            if text == flag {
                return rest.get(i + 1).map(PathBuf::from);
            }
            if let Some(value) = text.strip_prefix(flag).and_then(|t| t.strip_prefix('=')) {
                return Some(PathBuf::from(value));
            }
        }
    }
    // runc's default bundle is the working directory.
    std::env::current_dir().ok()
}

/// Rewrites config.json in place (a new file renamed over it: runc never reads half of one).
fn rewrite(config: &Path) -> Result<()> {
    let text = std::fs::read(config).context("failed to read the container's config")?;
    let mut spec: Value = serde_json::from_slice(&text).context("config.json is not JSON")?;
    into_host_network(&mut spec)?;
    let dir = config.parent().context("config.json has no directory")?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("failed to create a file in {}", dir.display()))?;
    tmp.write_all(&serde_json::to_vec(&spec)?)?;
    tmp.persist(config)
        .with_context(|| format!("failed to replace {}", config.display()))?;
    Ok(())
}

/// The container keeps the runtime's network namespace: no namespace of its own, no `net.*`
/// sysctls (they would change the node's), the node's /sys instead of a new sysfs (which only the
/// owner of a network namespace may mount), and no libnetwork hook (it would configure a sandbox
/// namespace the container no longer uses).
pub fn into_host_network(spec: &mut Value) -> Result<()> {
    let Some(linux) = spec.get_mut("linux").and_then(Value::as_object_mut) else {
        bail!("config.json has no \"linux\" section");
    };
    if let Some(namespaces) = linux.get_mut("namespaces").and_then(Value::as_array_mut) {
        namespaces.retain(|ns| ns.get("type").and_then(Value::as_str) != Some("network"));
    }
    if let Some(sysctl) = linux.get_mut("sysctl").and_then(Value::as_object_mut) {
        sysctl.retain(|key, _| !key.starts_with("net."));
    }
    if let Some(mounts) = spec.get_mut("mounts").and_then(Value::as_array_mut) {
        for mount in mounts.iter_mut() {
            if mount.get("type").and_then(Value::as_str) == Some("sysfs") {
                let destination = mount.get("destination").cloned().unwrap_or(json!("/sys"));
                *mount = json!({
                    "destination": destination,
                    "type": "bind",
                    "source": "/sys",
                    "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
                });
            }
        }
    }
    if let Some(hooks) = spec.get_mut("hooks").and_then(Value::as_object_mut) {
        for list in hooks.values_mut().filter_map(Value::as_array_mut) {
            list.retain(|hook| !is_libnetwork_hook(hook));
        }
    }
    Ok(())
}

fn is_libnetwork_hook(hook: &Value) -> bool {
    hook.get("args")
        .and_then(Value::as_array)
        .is_some_and(|args| args.iter().any(|a| a.as_str() == Some("libnetwork-setkey")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_bundle_of_a_create_is_found_after_runcs_global_options() {
        let args = os(&[
            "--root",
            "/run/x/runtime-runc/moby",
            "--log",
            "/run/x/log.json",
            "--log-format",
            "json",
            "--systemd-cgroup=false",
            "create",
            "--bundle",
            "/run/x/bundle",
            "--pid-file",
            "/run/x/init.pid",
            "abc",
        ]);
        assert_eq!(
            bundle_to_rewrite(&args),
            Some(PathBuf::from("/run/x/bundle"))
        );
        assert_eq!(
            bundle_to_rewrite(&os(&["run", "-b=/b", "id"])),
            Some(PathBuf::from("/b"))
        );
    }

    #[test]
    fn other_commands_are_passed_through_untouched() {
        for cmd in ["start", "state", "kill", "delete", "exec", "--version"] {
            assert_eq!(
                bundle_to_rewrite(&os(&["--root", "/r", cmd, "--bundle", "/b"])),
                None
            );
        }
        // A global option's value that looks like a command is not one.
        assert_eq!(
            bundle_to_rewrite(&os(&["--log-format", "create", "state", "id"])),
            None
        );
    }

    #[test]
    fn a_container_keeps_the_nodes_network() {
        let mut spec = json!({
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro"]}
            ],
            "hooks": {"prestart": [
                {"path": "/proc/1/exe", "args": ["libnetwork-setkey", "-exec-root=/r", "id", "x"]},
                {"path": "/usr/bin/other-hook", "args": ["other"]}
            ]},
            "linux": {
                "namespaces": [
                    {"type": "pid"},
                    {"type": "network", "path": "/run/docker/netns/abc"},
                    {"type": "mount"}
                ],
                "sysctl": {"net.ipv4.ip_unprivileged_port_start": "0", "kernel.msgmax": "1"}
            }
        });
        into_host_network(&mut spec).unwrap();
        assert_eq!(
            spec["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "mount"}])
        );
        assert_eq!(spec["linux"]["sysctl"], json!({"kernel.msgmax": "1"}));
        assert_eq!(spec["mounts"][1]["type"], "bind");
        assert_eq!(spec["mounts"][1]["source"], "/sys");
        assert_eq!(spec["mounts"][0]["type"], "proc");
        assert_eq!(
            spec["hooks"]["prestart"],
            json!([{"path": "/usr/bin/other-hook", "args": ["other"]}])
        );
    }

    #[test]
    fn a_spec_without_a_linux_section_is_refused() {
        assert!(into_host_network(&mut json!({"mounts": []})).is_err());
    }
}
