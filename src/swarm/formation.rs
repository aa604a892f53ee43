//! Swarm formation through the Engine API: gateway bridge, init, join with retries, membership.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::host::engine::{Engine, EngineError};
use crate::swarm::api::{self, Info, InfoSwarm, Swarm};
use crate::sys::deadline::Deadline;

/// The role a host joins in; each has its own join token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinRole {
    Worker,
    Manager,
}

impl JoinRole {
    fn as_str(self) -> &'static str {
        match self {
            JoinRole::Worker => "worker",
            JoinRole::Manager => "manager",
        }
    }
}

/// What a host needs to join in one role: a manager's address and that role's token, and no
/// other. Rank 0 broadcasts the worker's invitation to every host and sends the manager's to the
/// hosts that become managers only, so a worker never holds the manager token. No `Debug`: it
/// holds a token.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Invitation {
    pub manager: String,
    role: JoinRole,
    token: String,
}

/// Both invitations, as `swarm init` leaves them on rank 0.
pub struct Invitations {
    pub worker: Invitation,
    pub manager: Invitation,
}

/// What `swarm init` leaves rank 0: the invitations, and the swarm as read right after.
pub struct Founding {
    pub invitations: Invitations,
    pub swarm: Founded,
    /// The ingress network, made again after the joins (`swarm::ingress`).
    pub ingress: Option<crate::swarm::ingress::SetAside>,
}

/// The swarm object (spec, version, both tokens) as read right after `swarm init`: where the
/// seal starts, one read less on the manager at its busiest. No `Debug`: it holds the tokens.
pub struct Founded(pub(crate) Value);

/// Who sends invitations, for the errors of a bad one (never quoted: it holds a token).
const FROM_RANK_0: crate::sys::frame::Peer = crate::sys::frame::Peer {
    name: "rank 0",
    expected: "a join invitation (role, manager, token)",
    secret: true,
};

impl Invitation {
    /// One frame (`sys::frame`), for MPI; the token never leaves memory otherwise. Strings
    /// always serialize: were it not so, the empty frame would be refused as malformed.
    pub fn encode(&self) -> Vec<u8> {
        crate::sys::frame::encode(self).unwrap_or_default()
    }

    /// An invitation received from rank 0, which must be for `role`.
    pub fn decode(bytes: &[u8], role: JoinRole) -> Result<Self> {
        let malformed = "malformed join invitation from rank 0: a bug in mpiswarm; please report it with this run's output (rerun with -v for more)";
        let invitation: Invitation =
            crate::sys::frame::decode(bytes, &FROM_RANK_0).context(malformed)?;
        if invitation.role != role {
            bail!(
                "rank 0 sent a {} join invitation where a {} one was due: a bug in mpiswarm; please report it with this run's output (rerun with -v for more)",
                invitation.role.as_str(),
                role.as_str()
            );
        }
        if invitation.manager.is_empty() || invitation.token.is_empty() {
            bail!(malformed);
        }
        Ok(invitation)
    }
}

pub fn init(
    engine: &Engine,
    addr: Ipv4Addr,
    listen: &str,
    pool: (Ipv4Addr, u8),
    deadline: Deadline,
) -> Result<Founding> {
    let body = json!({
        "ListenAddr": listen,
        "AdvertiseAddr": format!("{addr}:2377"),
        "DefaultAddrPool": [format!("{}/{}", pool.0, pool.1)],
        "SubnetSize": 24,
    });
    engine
        .call("POST", "/swarm/init", Some(&body), deadline)
        .context("failed to initialize the swarm")?;
    let ingress = crate::swarm::ingress::set_aside(engine, deadline)?;
    let read = engine.get_json("/swarm", deadline)?;
    let swarm: Swarm = api::from_value(&read, "/swarm")?;
    let invitation = |role: JoinRole, kind: &str, token: Option<String>| {
        let token = token.with_context(|| format!("the daemon returned no {kind} join token"))?;
        Ok::<_, anyhow::Error>(Invitation {
            manager: format!("{addr}:2377"),
            role,
            token,
        })
    };
    let tokens = swarm.join_tokens;
    let invitations = Invitations {
        worker: invitation(JoinRole::Worker, "Worker", tokens.worker)?,
        manager: invitation(JoinRole::Manager, "Manager", tokens.manager)?,
    };
    Ok(Founding {
        invitations,
        swarm: Founded(read),
        ingress,
    })
}

/// This daemon's node ID in the swarm, once it is an active node: what tells the job's nodes from
/// any other. A join that returned early (a retried request answered "already part of a swarm"
/// while the first was still going on) is waited for here, until the deadline.
pub fn node_id(engine: &Engine, deadline: Deadline) -> Result<String> {
    let mut last = InfoSwarm::default();
    let every = Duration::from_millis(100);
    let active = crate::sys::deadline::poll_until(deadline.instant(), every, || {
        match api::get::<Info>(engine, "/info", deadline) {
            Ok(info) => {
                last = info.swarm;
                active_node_id(&last).map(Ok)
            }
            Err(e) => Some(Err(e)),
        }
    });
    match active {
        Some(id) => id,
        None => bail!(
            "failed to become an active swarm node before the deadline: the daemon says state {}, \
             error {:?}; check that this host reaches the managers on TCP 2377 and every host on \
             TCP and UDP 7946 (`mpiswarm doctor`), or raise --timeout if the hosts are only slow",
            last.local_node_state.as_deref().unwrap_or("unknown"),
            last.error
        ),
    }
}

/// The node ID of `GET /info`'s Swarm section, if the node is active in a swarm.
fn active_node_id(swarm: &InfoSwarm) -> Option<String> {
    let active = swarm.local_node_state.as_deref() == Some("active");
    (active && !swarm.node_id.is_empty()).then(|| swarm.node_id.clone())
}

/// Joins in the invitation's role, retrying with backoff until the deadline: the manager may
/// still be settling. `remote` is the manager to join through.
pub fn join(
    engine: &Engine,
    addr: Ipv4Addr,
    listen: &str,
    invitation: &Invitation,
    remote: &str,
    deadline: Deadline,
) -> Result<()> {
    let body = json!({
        "ListenAddr": listen,
        "AdvertiseAddr": format!("{addr}:2377"),
        "RemoteAddrs": [remote],
        "JoinToken": invitation.token,
    });
    let mut pause = Duration::from_millis(50);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let error = match engine.call("POST", "/swarm/join", Some(&body), deadline) {
            Ok(_) => return Ok(()),
            Err(e) => match e.downcast::<EngineError>() {
                // Already part of this swarm (a retried request that did succeed).
                Ok(refusal) if api::already_in_swarm(&refusal) => return Ok(()),
                Ok(refusal) => format!("{} {}", refusal.status, refusal.message),
                Err(e) => format!("{e:#}"),
            },
        };
        if Instant::now() + pause >= deadline.instant() {
            bail!(
                "failed to join the swarm as a {} through {remote} after {attempts} attempt(s): \
                 {error}; check that this host reaches {remote} (TCP 2377 and 7946) and run \
                 `mpiswarm doctor`, or raise --timeout if the manager is only busy",
                invitation.role.as_str()
            );
        }
        tracing::debug!("join attempt {attempts} failed: {error}; retrying");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

pub(crate) use crate::swarm::api::Node;

/// Every node of the swarm as `GET /nodes` lists it (a node still joining may lack any field:
/// absent means "not yet").
pub(crate) fn list_nodes(engine: &Engine, deadline: Deadline) -> Result<Vec<Node>> {
    let crate::swarm::api::List(nodes) =
        serde_json::from_value(engine.get_json("/nodes", deadline)?)
            .context("unexpected reply to GET /nodes")?;
    Ok(nodes)
}

/// Labels for one host's node, by node ID (what tells the job's nodes from any other).
pub struct NodeLabels {
    pub host: String,
    pub id: String,
    pub labels: Vec<(String, String)>,
}

/// How many node updates rank 0 has in flight at once: each is one Raft write on the manager,
/// and one at a time made labelling the slowest step of a bring-up at dozens of hosts.
const LABEL_CONCURRENCY: usize = 8;

/// Adds each host's labels to its node, keeping the rest of its spec (user labels included), a
/// few nodes at a time; a node whose version moves between read and write is read again.
pub fn label_nodes(engine: &Engine, nodes: &[NodeLabels], deadline: Deadline) -> Result<()> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = LABEL_CONCURRENCY.min(nodes.len());
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(node) = nodes.get(i) else {
                            return Ok(());
                        };
                        label_node(engine, node, deadline)?;
                    }
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join().unwrap_or_else(|_| {
                bail!(
                    "a node-labelling thread crashed: a bug in mpiswarm; please report it with \
                     this run's output (rerun with -v for more)"
                )
            })
        })
    })
}

fn label_node(
    store: &impl crate::swarm::versioned::ObjectStore,
    node: &NodeLabels,
    deadline: Deadline,
) -> Result<()> {
    let what = format!("the labels of {}'s node", node.host);
    let write_path = |version: u64| format!("/nodes/{}/update?version={version}", node.id);
    let object = crate::swarm::versioned::Object {
        what: &what,
        read_path: format!("/nodes/{}", node.id),
        write_path: &write_path,
    };
    let add = |spec: &mut Value| {
        let entry = spec
            .as_object_mut()
            .map(|s| s.entry("Labels").or_insert_with(|| json!({})));
        if let Some(entry) = entry {
            if !entry.is_object() {
                *entry = json!({});
            }
            for (k, v) in &node.labels {
                entry[k] = Value::String(v.clone());
            }
        }
    };
    crate::swarm::versioned::update(store, &object, add, deadline).map(drop)
}

/// Waits until every host's node (`ids[i]` is host `i`'s node ID) is Ready, and the first
/// `managers` hosts' reachable managers; returns the node list that showed it.
pub fn wait_members(
    engine: &Engine,
    hosts: &[String],
    ids: &[String],
    managers: usize,
    deadline: Deadline,
) -> Result<Vec<Node>> {
    let mut missing = Vec::new();
    // Each poll lists every node: at hundreds of nodes a fixed 50 ms would keep the manager busy.
    let seen = crate::sys::deadline::poll_until_paced(
        deadline.instant(),
        Duration::from_millis(50),
        Duration::from_secs(1),
        || match list_nodes(engine, deadline) {
            Ok(nodes) => {
                missing = missing_members(&nodes, hosts, ids, managers);
                missing.is_empty().then_some(Ok(nodes))
            }
            Err(e) => Some(Err(e)),
        },
    );
    match seen {
        Some(result) => result,
        None => bail!(
            "failed to see every host as a Ready swarm node before the deadline; missing: {}. \
             A host joins only if it reaches the managers on TCP 2377 and every host on TCP and \
             UDP 7946 and UDP 4789: run `mpiswarm doctor` under the same launcher, check the \
             firewall between the hosts, or raise --timeout if they are only slow",
            missing.join(", ")
        ),
    }
}

/// The hosts not (yet) members as they should be: their own node (by ID, and with their host
/// name) Ready, and for the first `managers` hosts a reachable manager. By ID, so that another
/// daemon calling itself by a host's name does not stand in for it.
fn missing_members<'a>(
    nodes: &[Node],
    hosts: &'a [String],
    ids: &[String],
    managers: usize,
) -> Vec<&'a str> {
    hosts
        .iter()
        .enumerate()
        .filter(|(i, h)| {
            !nodes.iter().any(|n| {
                ids.get(*i).is_some_and(|id| *id == n.id)
                    && n.description.hostname.as_deref() == Some(h.as_str())
                    && n.status.state.as_deref() == Some("ready")
                    && (*i >= managers
                        || n.manager_status
                            .as_ref()
                            .is_some_and(|m| m.reachability.as_deref() == Some("reachable")))
            })
        })
        .map(|(_, h)| h.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invitation_survives_its_encoding_and_keeps_its_role() {
        let worker = Invitation {
            manager: "10.0.0.1:2377".into(),
            role: JoinRole::Worker,
            token: "SWMTKN-1-w".into(),
        };
        let back = Invitation::decode(&worker.encode(), JoinRole::Worker).unwrap();
        assert_eq!(
            (back.manager.as_str(), back.role, back.token.as_str()),
            ("10.0.0.1:2377", JoinRole::Worker, "SWMTKN-1-w")
        );
        // A worker's invitation is never taken for a manager's, nor garbage for either.
        assert!(Invitation::decode(&worker.encode(), JoinRole::Manager).is_err());
        let empty = Invitation {
            token: String::new(),
            ..back
        };
        let cut = worker.encode();
        let cut = &cut[..cut.len() - 5];
        for bad in [
            &b"worker\n10.0.0.1:2377\nSWMTKN-1-w"[..],
            b"{\"manager\":\"10.0.0.1:2377\",\"role\":\"worker\"}",
            &empty.encode(),
            cut,
            b"",
        ] {
            let err = format!(
                "{:#}",
                Invitation::decode(bad, JoinRole::Worker).err().unwrap()
            );
            assert!(
                err.starts_with("malformed join invitation from rank 0: a bug in mpiswarm"),
                "{err}"
            );
            // Never quoted: it may hold a token.
            assert!(!err.contains("SWMTKN"), "{err}");
        }
    }

    #[test]
    fn members_need_ready_nodes_and_reachable_managers() {
        let nodes: Vec<Node> = serde_json::from_value(serde_json::json!([
            {"ID": "ia", "Description": {"Hostname": "a"}, "Status": {"State": "ready"},
             "ManagerStatus": {"Reachability": "reachable"}},
            {"ID": "ib", "Description": {"Hostname": "b"}, "Status": {"State": "ready"}},
            {"ID": "ic", "Description": {"Hostname": "c"}, "Status": {"State": "down"}},
            // Another daemon calling itself d does not stand in for d's own node.
            {"ID": "xd", "Description": {"Hostname": "d"}, "Status": {"State": "ready"}},
        ]))
        .unwrap();
        let hosts: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let ids: Vec<String> = ["ia", "ib", "ic", "id"].map(String::from).to_vec();
        // A node still joining may come without a description yet.
        let joining: Vec<Node> = serde_json::from_value(serde_json::json!([{"ID": "ia"}])).unwrap();
        assert_eq!(
            missing_members(&joining, &hosts, &ids, 1),
            ["a", "b", "c", "d"]
        );
        assert_eq!(missing_members(&nodes, &hosts, &ids, 1), ["c", "d"]);
        // b is Ready but not a manager: with two managers it is missing too.
        assert_eq!(missing_members(&nodes, &hosts, &ids, 2), ["b", "c", "d"]);
    }
}
