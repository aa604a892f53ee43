//! Swarm formation through the Engine API: gateway bridge, init, join with retries, membership.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::engine::Engine;

const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// docker_gwbridge must exist before the swarm does, with inter-container traffic allowed, or
/// the daemon makes one with defaults unsuited to the rootless network.
pub fn create_gwbridge(engine: &Engine) -> Result<()> {
    let body = json!({
        "Name": "docker_gwbridge",
        "Driver": "bridge",
        "Options": {
            "com.docker.network.bridge.enable_icc": "true",
            "com.docker.network.bridge.enable_ip_masquerade": "true",
            "com.docker.network.bridge.name": "docker_gwbridge",
            // As large as slirp4netns' link behind it (Docker's default is 1500).
            crate::mtu::DRIVER_OPTION: crate::mtu::SLIRP_MTU.to_string(),
        },
        "IPAM": {"Config": [{"Subnet": "172.30.0.0/16"}]},
    });
    let response = engine.request("POST", "/networks/create", Some(&body), CALL_TIMEOUT)?;
    match response.status {
        200 | 201 | 409 => Ok(()),
        code => bail!(
            "failed to create docker_gwbridge ({code}): {}",
            response.message()
        ),
    }
}

/// What a host needs to join: a manager's address and a token (worker or manager).
pub struct JoinInfo {
    pub manager: String,
    pub worker_token: String,
    pub manager_token: String,
}

impl JoinInfo {
    /// One line each, for the broadcast from rank 0; the tokens never leave memory otherwise.
    pub fn encode(&self) -> Vec<u8> {
        format!(
            "{}\n{}\n{}",
            self.manager, self.worker_token, self.manager_token
        )
        .into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let text = std::str::from_utf8(bytes).context("the join information is not text")?;
        let mut lines = text.split('\n');
        match (lines.next(), lines.next(), lines.next()) {
            (Some(m), Some(w), Some(t)) if !m.is_empty() && !w.is_empty() => Ok(JoinInfo {
                manager: m.to_owned(),
                worker_token: w.to_owned(),
                manager_token: t.to_owned(),
            }),
            _ => bail!("malformed join information from rank 0"),
        }
    }
}

pub fn init(engine: &Engine, addr: Ipv4Addr, pool: (Ipv4Addr, u8)) -> Result<JoinInfo> {
    let body = json!({
        "ListenAddr": "0.0.0.0:2377",
        "AdvertiseAddr": format!("{addr}:2377"),
        "DefaultAddrPool": [format!("{}/{}", pool.0, pool.1)],
        "SubnetSize": 24,
    });
    engine
        .call("POST", "/swarm/init", Some(&body), CALL_TIMEOUT)
        .context("failed to initialize the swarm")?;
    let swarm = engine.get_json("/swarm", CALL_TIMEOUT)?;
    let token = |kind: &str| {
        swarm
            .pointer(&format!("/JoinTokens/{kind}"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .with_context(|| format!("the daemon returned no {kind} join token"))
    };
    Ok(JoinInfo {
        manager: format!("{addr}:2377"),
        worker_token: token("Worker")?,
        manager_token: token("Manager")?,
    })
}

/// Joins, retrying with backoff until the deadline: the manager may still be settling.
/// `remote` is the manager to join through; `as_manager` picks the token.
pub fn join(
    engine: &Engine,
    addr: Ipv4Addr,
    info: &JoinInfo,
    remote: &str,
    as_manager: bool,
    deadline: Instant,
) -> Result<()> {
    let token = if as_manager {
        &info.manager_token
    } else {
        &info.worker_token
    };
    let body = json!({
        "ListenAddr": "0.0.0.0:2377",
        "AdvertiseAddr": format!("{addr}:2377"),
        "RemoteAddrs": [remote],
        "JoinToken": token,
    });
    let mut pause = Duration::from_millis(50);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let result = engine.request(
            "POST",
            "/swarm/join",
            Some(&body),
            left.max(Duration::from_secs(1)),
        );
        let error = match result {
            Ok(r) if (200..300).contains(&r.status) => return Ok(()),
            // Already part of this swarm (a retried request that did succeed).
            Ok(r) if r.status == 503 && r.message().contains("already part of a swarm") => {
                return Ok(());
            }
            Ok(r) => format!("{} {}", r.status, r.message()),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() + pause >= deadline {
            bail!(
                "failed to join the swarm at {} after {attempts} attempt(s): {error}",
                info.manager
            );
        }
        tracing::debug!("join attempt {attempts} failed: {error}; retrying");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

/// Waits until every host is a Ready node, and the first `managers` hosts reachable managers;
/// returns the node list seen last.
pub fn wait_members(
    engine: &Engine,
    hosts: &[String],
    managers: usize,
    deadline: Instant,
) -> Result<Vec<Value>> {
    loop {
        let nodes = engine.get_json("/nodes", CALL_TIMEOUT)?;
        let nodes = nodes.as_array().cloned().unwrap_or_default();
        let missing: Vec<&String> = hosts
            .iter()
            .enumerate()
            .filter(|(i, h)| {
                !nodes.iter().any(|n| {
                    n.pointer("/Description/Hostname").and_then(Value::as_str) == Some(h.as_str())
                        && n.pointer("/Status/State").and_then(Value::as_str) == Some("ready")
                        && (*i >= managers
                            || n.pointer("/ManagerStatus/Reachability")
                                .and_then(Value::as_str)
                                == Some("reachable"))
                })
            })
            .map(|(_, h)| h)
            .collect();
        if missing.is_empty() {
            return Ok(nodes);
        }
        if Instant::now() >= deadline {
            bail!(
                "failed to see every host as a Ready swarm node before the deadline; missing: {}",
                missing
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
