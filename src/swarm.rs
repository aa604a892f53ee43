//! Swarm formation through the Engine API: gateway bridge, init, join with retries, membership.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::engine::{CALL_TIMEOUT, Engine};

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
            Ok(r) if r.is_success() => return Ok(()),
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

/// A swarm node as the Engine API's `GET /nodes` describes it (the fields membership needs).
/// A node that is still joining may lack any of them: absent means "not yet".
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct Node {
    description: NodeDescription,
    status: NodeStatus,
    manager_status: Option<ManagerStatus>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct NodeDescription {
    hostname: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct NodeStatus {
    state: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ManagerStatus {
    reachability: String,
}

/// A node as `POST /nodes/{id}/update` needs it: its spec is sent back whole, with labels added.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EditableNode {
    #[serde(rename = "ID")]
    id: String,
    version: Version,
    #[serde(default)]
    description: NodeDescription,
    spec: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Version {
    index: u64,
}

/// Adds `labels` to each host's node (by host name), keeping the rest of its spec.
pub fn label_nodes(engine: &Engine, labels: &[(String, Vec<(String, String)>)]) -> Result<()> {
    let nodes: Vec<EditableNode> = serde_json::from_value(engine.get_json("/nodes", CALL_TIMEOUT)?)
        .context("unexpected reply to GET /nodes")?;
    for node in nodes {
        let Some((host, wanted)) = labels.iter().find(|(h, _)| *h == node.description.hostname)
        else {
            continue;
        };
        let mut spec = node.spec;
        let entry = spec.entry("Labels").or_insert_with(|| json!({}));
        if !entry.is_object() {
            *entry = json!({});
        }
        if let Some(map) = entry.as_object_mut() {
            for (k, v) in wanted {
                map.insert(k.clone(), Value::String(v.clone()));
            }
        }
        let path = format!("/nodes/{}/update?version={}", node.id, node.version.index);
        engine
            .call("POST", &path, Some(&Value::Object(spec)), CALL_TIMEOUT)
            .with_context(|| format!("failed to label the node of {host}"))?;
    }
    Ok(())
}

/// Waits until every host is a Ready node, and the first `managers` hosts reachable managers.
pub fn wait_members(
    engine: &Engine,
    hosts: &[String],
    managers: usize,
    deadline: Instant,
) -> Result<()> {
    let mut missing = Vec::new();
    let seen = crate::deadline::poll_until(deadline, Duration::from_millis(50), || {
        let nodes = engine.get_json("/nodes", CALL_TIMEOUT).and_then(|v| {
            serde_json::from_value::<Vec<Node>>(v).context("unexpected reply to GET /nodes")
        });
        match nodes {
            Ok(nodes) => {
                missing = missing_members(&nodes, hosts, managers);
                missing.is_empty().then_some(Ok(()))
            }
            Err(e) => Some(Err(e)),
        }
    });
    match seen {
        Some(result) => result,
        None => bail!(
            "failed to see every host as a Ready swarm node before the deadline; missing: {}",
            missing.join(", ")
        ),
    }
}

/// The hosts not (yet) members as they should be: a Ready node with their host name, and for
/// the first `managers` hosts a reachable manager.
fn missing_members<'a>(nodes: &[Node], hosts: &'a [String], managers: usize) -> Vec<&'a str> {
    hosts
        .iter()
        .enumerate()
        .filter(|(i, h)| {
            !nodes.iter().any(|n| {
                n.description.hostname == **h
                    && n.status.state == "ready"
                    && (*i >= managers
                        || n.manager_status
                            .as_ref()
                            .is_some_and(|m| m.reachability == "reachable"))
            })
        })
        .map(|(_, h)| h.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_info_survives_its_encoding_and_refuses_garbage() {
        let info = JoinInfo {
            manager: "10.0.0.1:2377".into(),
            worker_token: "SWMTKN-1-w".into(),
            manager_token: "SWMTKN-1-m".into(),
        };
        let back = JoinInfo::decode(&info.encode()).unwrap();
        assert_eq!(
            (back.manager, back.worker_token, back.manager_token),
            (info.manager, info.worker_token, info.manager_token)
        );
        assert!(JoinInfo::decode(b"only-one-line").is_err());
        assert!(JoinInfo::decode(b"\n\n").is_err());
    }

    #[test]
    fn members_need_ready_nodes_and_reachable_managers() {
        let nodes: Vec<Node> = serde_json::from_value(serde_json::json!([
            {"Description": {"Hostname": "a"}, "Status": {"State": "ready"},
             "ManagerStatus": {"Reachability": "reachable"}},
            {"Description": {"Hostname": "b"}, "Status": {"State": "ready"}},
            {"Description": {"Hostname": "c"}, "Status": {"State": "down"}},
        ]))
        .unwrap();
        let hosts: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        // A node still joining may come without a description yet.
        let joining: Vec<Node> = serde_json::from_value(serde_json::json!([{"ID": "x"}])).unwrap();
        assert_eq!(missing_members(&joining, &hosts, 1), ["a", "b", "c", "d"]);
        assert_eq!(missing_members(&nodes, &hosts, 1), ["c", "d"]);
        // b is Ready but not a manager: with two managers it is missing too.
        assert_eq!(missing_members(&nodes, &hosts, 2), ["b", "c", "d"]);
    }
}
