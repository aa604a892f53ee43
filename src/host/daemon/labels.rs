//! The host's labels as the daemon's own (engine labels), set before the host's node joins or
//! inits the swarm: the node then carries them from its first description, and the managers
//! write nothing to their Raft log for them. A daemon launched once they were known has them in
//! its daemon.json from the start; one launched earlier (rank 0's, before MPI was up) takes them
//! on a configuration reload.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::host::engine::Engine;
use crate::host::statedir::StateDir;
use crate::sys::deadline::{Backoff, Deadline};

/// Labels as daemon.json lists them (`key=value`).
pub fn encode(labels: &[(String, String)]) -> Vec<String> {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Adds `labels` (`key=value`) to the daemon's configuration, has dockerd reload it (SIGHUP) and
/// waits until its Engine API reports them.
pub fn apply(
    host: &str,
    dir: &StateDir,
    guard_pid: i32,
    engine: &Engine,
    wanted: &[String],
    deadline: Deadline,
) -> Result<()> {
    write_config(&dir.path.join("daemon.json"), wanted)?;
    reload(guard_pid)?;
    let mut backoff = Backoff::default();
    loop {
        let info = engine.get_json("/info", deadline)?;
        if has_labels(&info, wanted) {
            return Ok(());
        }
        let pause = backoff.next();
        if deadline.left() <= pause {
            bail!(
                "dockerd on {} did not take its labels ({}) from {} within the deadline after \
                 SIGHUP (a configuration reload); see its log at {}",
                host,
                wanted.join(", "),
                dir.path.join("daemon.json").display(),
                dir.log().display()
            );
        }
        std::thread::sleep(pause.min(Duration::from_millis(20)));
    }
}

/// daemon.json with `labels` set, written in one step (dockerd may read it at any time).
fn write_config(path: &std::path::Path, labels: &[String]) -> Result<()> {
    let text = std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    let mut config: serde_json::Map<String, Value> = serde_json::from_slice(&text)
        .with_context(|| format!("failed to parse {}", path.display()))?;
    config.insert("labels".into(), Value::from(labels.to_vec()));
    crate::sys::private_file::write(path, &serde_json::to_vec_pretty(&config)?)
}

/// SIGHUP to the dockerd in the guard's tree (its pid in the node's PID namespace).
fn reload(guard_pid: i32) -> Result<()> {
    let dockerd = crate::sys::procfs::descendants(guard_pid)
        .into_iter()
        .find(|p| p.program() == "dockerd")
        .ok_or_else(|| {
            anyhow!("no dockerd runs under the guard (pid {guard_pid}) to take the host's labels")
        })?;
    let pinned =
        crate::sys::pinned::Pinned::new(dockerd.pid, dockerd.start_time)?.ok_or_else(|| {
            anyhow!(
                "dockerd (pid {}) ended before it took the host's labels",
                dockerd.pid
            )
        })?;
    pinned
        .send(rustix::process::Signal::HUP)
        .with_context(|| format!("failed to signal dockerd (pid {}) to reload", dockerd.pid))
}

/// Whether `GET /info` lists every label of `wanted` ("key=value").
fn has_labels(info: &Value, wanted: &[String]) -> bool {
    let Some(have) = info.get("Labels").and_then(Value::as_array) else {
        return wanted.is_empty();
    };
    wanted
        .iter()
        .all(|w| have.iter().any(|h| h.as_str() == Some(w.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_taken_only_when_every_one_is_reported() {
        let wanted = ["mpiswarm.index=2".to_owned(), "mpiswarm.ranks=1".to_owned()];
        let info = serde_json::json!({"Labels": ["mpiswarm.index=2", "mpiswarm.ranks=1", "x=y"]});
        assert!(has_labels(&info, &wanted));
        let partial = serde_json::json!({"Labels": ["mpiswarm.index=2"]});
        assert!(!has_labels(&partial, &wanted));
        assert!(!has_labels(&serde_json::json!({"Labels": null}), &wanted));
    }
}
