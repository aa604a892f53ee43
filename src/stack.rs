//! Deploying the user's compose stack and waiting until every service runs all its replicas;
//! on failure, the failing tasks with their hosts and the daemon's error for each.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::engine::Engine;

const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of the CLI's output is kept for an error message (its end).
const KEEP_OUTPUT: usize = 16 << 10;

/// `docker stack deploy`: compose files are parsed by the Docker CLI, which has no Engine API
/// equivalent, so this one step runs the CLI against the manager's socket.
pub fn deploy(engine: &Engine, file: &Path, name: &str, deadline: Instant) -> Result<()> {
    let mut child = Command::new("docker")
        .args([
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "--compose-file",
        ])
        .arg(file)
        .arg(name)
        .env(
            "DOCKER_HOST",
            format!("unix://{}", engine.socket().display()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(
            "failed to run `docker stack deploy` (is the docker CLI installed on rank 0's node?)",
        )?;
    // Both pipes are read while the CLI runs: a deploy that prints more than a pipe holds
    // (many services, long warnings) would otherwise block until the deadline.
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    let Some(status) = crate::deadline::wait_or_kill(&mut child, left)? else {
        bail!(
            "`docker stack deploy` of {} did not finish before the deadline",
            file.display()
        );
    };
    // The pipes end with the CLI (unless something it started keeps them): a short wait at most.
    let _ = stdout.recv_timeout(Duration::from_secs(1));
    let err = stderr
        .recv_timeout(Duration::from_secs(1))
        .unwrap_or_default();
    if !status.success() {
        bail!(
            "failed to deploy the stack {name} from {} ({status}): {}",
            file.display(),
            String::from_utf8_lossy(&err).trim()
        );
    }
    Ok(())
}

/// Reads a child's pipe to its end on a thread; the bytes are kept only up to a bound (the end
/// of an error message is what matters, and the CLI ends on a deadline anyway).
fn drain(pipe: Option<impl Read + Send + 'static>) -> Receiver<Vec<u8>> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let Some(mut pipe) = pipe else {
            let _ = tx.send(kept);
            return;
        };
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > KEEP_OUTPUT {
                kept.drain(..kept.len() - KEEP_OUTPUT);
            }
        }
        let _ = tx.send(kept);
    });
    rx
}

/// Progress of a stack: services with their running and desired replica counts.
#[derive(Debug, Default)]
pub struct Progress {
    pub running: usize,
    pub desired: usize,
    pub failures: Vec<String>,
}

/// Waits until every service of the stack runs all its replicas; on the deadline, an error that
/// lists what did not run, where and why.
pub fn wait_converged(
    engine: &Engine,
    name: &str,
    deadline: Instant,
    mut on_progress: impl FnMut(&Progress),
) -> Result<()> {
    let mut last = (usize::MAX, usize::MAX);
    loop {
        let progress = progress(engine, name)?;
        if (progress.running, progress.desired) != last {
            on_progress(&progress);
            last = (progress.running, progress.desired);
        }
        if progress.desired > 0 && progress.running >= progress.desired {
            return Ok(());
        }
        // No registry will ever supply an image that is not on the node: waiting cannot help.
        if let Some(missing) = progress
            .failures
            .iter()
            .find(|f| f.contains("No such image"))
        {
            bail!(
                "failed to start stack {name}: an image is not on the node (load it with --load):\n{missing}"
            );
        }
        if Instant::now() >= deadline {
            let detail = if progress.failures.is_empty() {
                "no task reported an error yet (slow image pulls or scheduling?)".to_owned()
            } else {
                progress.failures.join("\n")
            };
            bail!(
                "failed to converge stack {name} before the deadline: {}/{} replicas running\n{detail}",
                progress.running,
                progress.desired
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

pub fn progress(engine: &Engine, name: &str) -> Result<Progress> {
    let filter = json!({"label": [format!("com.docker.stack.namespace={name}")]}).to_string();
    let services = engine.get_json(
        &format!("/services?filters={}", encode(&filter)),
        CALL_TIMEOUT,
    )?;
    let tasks = engine.get_json(&format!("/tasks?filters={}", encode(&filter)), CALL_TIMEOUT)?;
    let nodes = engine.get_json("/nodes", CALL_TIMEOUT)?;
    let hostnames: HashMap<&str, &str> = nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            Some((
                n.get("ID")?.as_str()?,
                n.pointer("/Description/Hostname")?.as_str()?,
            ))
        })
        .collect();
    let mut p = Progress::default();
    let service_names: HashMap<&str, &str> = services
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s.get("ID")?.as_str()?, s.pointer("/Spec/Name")?.as_str()?)))
        .collect();
    for s in services.as_array().into_iter().flatten() {
        p.desired += if s.pointer("/Spec/Mode/Global").is_some() {
            hostnames.len()
        } else {
            s.pointer("/Spec/Mode/Replicated/Replicas")
                .and_then(Value::as_u64)
                .unwrap_or(1) as usize
        };
    }
    for t in tasks.as_array().into_iter().flatten() {
        let state = t
            .pointer("/Status/State")
            .and_then(Value::as_str)
            .unwrap_or("");
        let desired = t.get("DesiredState").and_then(Value::as_str).unwrap_or("");
        if state == "running" && desired == "running" {
            p.running += 1;
        }
        let err = t
            .pointer("/Status/Err")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !err.is_empty() || matches!(state, "failed" | "rejected") {
            let node = t
                .get("NodeID")
                .and_then(Value::as_str)
                .and_then(|id| hostnames.get(id))
                .unwrap_or(&"unassigned");
            let svc = t
                .get("ServiceID")
                .and_then(Value::as_str)
                .and_then(|id| service_names.get(id))
                .unwrap_or(&"?");
            let msg = format!("  task of {svc} on {node}: {state}: {err}");
            if !p.failures.contains(&msg) {
                p.failures.push(msg);
            }
        }
    }
    Ok(p)
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Checks a stack name before anything starts (Docker's rules for names).
pub fn check_name(name: &str) -> Result<()> {
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
    fn names_and_encoding() {
        assert!(check_name("demo").is_ok());
        assert!(check_name("Demo").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name("").is_err());
        assert_eq!(encode("{\"a\":1}"), "%7B%22a%22%3A1%7D");
    }
}
