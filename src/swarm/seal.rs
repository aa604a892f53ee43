//! The swarm sealed once its membership is confirmed: both join tokens rotated, so that a token
//! seen during bring-up (on the wire, in a daemon's memory, by a poll of the API) lets nobody in
//! afterwards, then every node that is not one of the job's hosts' daemons removed, loudly.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::host::engine::Engine;
use crate::swarm::api::{self, Swarm};
use crate::swarm::formation::{Founded, Node};
use crate::swarm::versioned::{self, Object};
use crate::sys::deadline::Deadline;

/// Rotates the worker and the manager join token (on a manager), starting from the swarm as
/// `init` left it when known. Nodes that already joined keep their certificates. Returns the
/// swarm as it was before, for `check_rotated`.
pub fn rotate_tokens(
    engine: &Engine,
    founded: Option<Founded>,
    deadline: Deadline,
) -> Result<Before> {
    let write_path = |version: u64| {
        format!("/swarm/update?version={version}&rotateWorkerToken=true&rotateManagerToken=true")
    };
    let object = Object {
        what: "the swarm's join tokens",
        read_path: "/swarm".into(),
        write_path: &write_path,
    };
    // The spec goes back unchanged: the query asks for the rotation.
    let known = founded.map(|f| f.0);
    let before = versioned::update_from(engine, &object, known, |_| {}, deadline)?;
    Ok(Before(before))
}

/// The swarm object as it was before the rotation. No `Debug`: it holds the old tokens.
pub struct Before(Value);

/// Checks that the daemon no longer gives out the tokens of `before`.
pub fn check_rotated(engine: &Engine, before: &Before, deadline: Deadline) -> Result<()> {
    let before: Swarm = api::from_value(&before.0, "/swarm")?;
    let after: Swarm = api::get(engine, "/swarm", deadline)?;
    let (old, new) = (before.join_tokens, after.join_tokens);
    for (kind, old, new) in [
        ("worker", old.worker, new.worker),
        ("manager", old.manager, new.manager),
    ] {
        if new.is_none_or(|t| Some(t) == old) {
            bail!("failed to rotate the join tokens: the {kind} token is unchanged");
        }
    }
    Ok(())
}

/// Removes every node of `nodes` (a list taken after the tokens were rotated) whose ID is not in
/// `members` (the job's hosts' own node IDs), with a warning naming it; fails if one cannot be
/// removed before `deadline`. Returns how many went.
pub fn remove_strangers(
    engine: &Engine,
    nodes: &[Node],
    members: &[String],
    deadline: Deadline,
) -> Result<usize> {
    let strangers = strangers(nodes, members);
    for node in &strangers {
        tracing::warn!(
            "swarm node {} is not one of the job's hosts: removing it (someone outside the job \
             joined with this run's join token before it was rotated)",
            describe(node)
        );
        remove(engine, node, deadline)?;
    }
    Ok(strangers.len())
}

/// The nodes that are none of the job's hosts' daemons. By node ID, which the swarm's CA
/// assigned, not by host name or address, which a joining daemon may choose.
fn strangers<'a>(nodes: &'a [Node], members: &[String]) -> Vec<&'a Node> {
    nodes.iter().filter(|n| !members.contains(&n.id)).collect()
}

/// A node as a warning names it: ID, host name and address, whichever it has said so far (a node
/// still joining may have none yet).
fn describe(node: &Node) -> String {
    let or_unknown = |s: Option<&str>| match s {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => "unknown yet".to_owned(),
    };
    let manager_addr = node.manager_status.as_ref().and_then(|m| m.addr.as_deref());
    let addr = match manager_addr {
        Some(a) if !a.is_empty() => Some(a),
        _ => node.status.addr.as_deref(),
    };
    format!(
        "{} (host name {}, address {})",
        node.id,
        or_unknown(node.description.hostname.as_deref()),
        or_unknown(addr)
    )
}

/// Removes a node by force, demoting it first if it is a manager (the swarm refuses to remove a
/// member of its Raft group); retries until the demotion has taken effect or `deadline`.
fn remove(engine: &Engine, node: &Node, deadline: Deadline) -> Result<()> {
    if node.manager_status.is_some() {
        demote(engine, &node.id, deadline)
            .with_context(|| format!("failed to demote the stranger node {}", describe(node)))?;
    }
    let path = format!("/nodes/{}?force=true", node.id);
    let mut error = String::new();
    let every = Duration::from_millis(200);
    let removed = crate::sys::deadline::poll_until(deadline.instant(), every, || {
        match engine.request("DELETE", &path, None, deadline) {
            // Gone already counts as removed.
            Ok(r) if r.is_success() || r.status == 404 => Some(()),
            Ok(r) => {
                error = format!("{} {}", r.status, r.message());
                None
            }
            Err(e) => {
                error = format!("{e:#}");
                None
            }
        }
    });
    removed.with_context(|| {
        format!(
            "failed to remove the stranger node {} before the deadline: {error}",
            describe(node)
        )
    })
}

/// Makes a node a worker, keeping the rest of its spec.
fn demote(engine: &Engine, id: &str, deadline: Deadline) -> Result<()> {
    let write_path = |version: u64| format!("/nodes/{id}/update?version={version}");
    let what = format!("the role of node {id}");
    let object = Object {
        what: &what,
        read_path: format!("/nodes/{id}"),
        write_path: &write_path,
    };
    let demote = |spec: &mut Value| spec["Role"] = Value::String("worker".into());
    versioned::update(engine, &object, demote, deadline).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes() -> Vec<Node> {
        serde_json::from_value(serde_json::json!([
            {"ID": "a1", "Description": {"Hostname": "n1"}, "Status": {"Addr": "10.0.0.1"},
             "ManagerStatus": {"Addr": "10.0.0.1:2377"}},
            {"ID": "b2", "Description": {"Hostname": "n2"}, "Status": {"Addr": "10.0.0.2"}},
            // Another daemon calling itself n2: its host name proves nothing.
            {"ID": "x9", "Description": {"Hostname": "n2"}, "Status": {"Addr": "10.0.0.9"}},
            // Still joining: no description or status yet.
            {"ID": "y8"},
        ]))
        .unwrap()
    }

    #[test]
    fn strangers_are_told_by_node_id_not_host_name() {
        let nodes = nodes();
        let members = ["a1".to_owned(), "b2".to_owned()];
        let ids: Vec<&str> = strangers(&nodes, &members)
            .iter()
            .map(|n| n.id.as_str())
            .collect();
        assert_eq!(ids, ["x9", "y8"]);
        let all = ["a1", "b2", "x9", "y8"].map(String::from);
        assert!(strangers(&nodes, &all).is_empty());
    }

    #[test]
    fn a_stranger_is_named_by_what_it_said_so_far() {
        let nodes = nodes();
        assert_eq!(
            describe(&nodes[0]),
            "a1 (host name n1, address 10.0.0.1:2377)"
        );
        assert_eq!(describe(&nodes[2]), "x9 (host name n2, address 10.0.0.9)");
        assert_eq!(
            describe(&nodes[3]),
            "y8 (host name unknown yet, address unknown yet)"
        );
    }
}
