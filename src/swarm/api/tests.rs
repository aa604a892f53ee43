//! The types against replies recorded from the Docker releases mpiswarm supports.

use super::*;

/// Docker 20.10 (Debian 12) and 26.1 (Debian 13), as recorded on a two-host swarm.
const RELEASES: [&str; 2] = ["20.10", "26.1"];

pub(crate) fn recorded(release: &str, name: &str) -> String {
    let path = format!(
        "{}/tests/engine-api/{release}/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn parsed<T: DeserializeOwned>(release: &str, name: &str) -> T {
    serde_json::from_str(&recorded(release, name))
        .unwrap_or_else(|e| panic!("{release}/{name}.json: {e}"))
}

#[test]
fn swarm_and_info_give_tokens_and_the_node_id() {
    for release in RELEASES {
        let swarm: Swarm = parsed(release, "swarm");
        assert_eq!(
            swarm.join_tokens,
            JoinTokens {
                worker: Some("SWMTKN-1-redacted-worker".into()),
                manager: Some("SWMTKN-1-redacted-manager".into()),
            },
            "{release}"
        );
        let info: Info = parsed(release, "info");
        assert_eq!(
            info.swarm.local_node_state.as_deref(),
            Some("active"),
            "{release}"
        );
        assert_eq!(info.swarm.node_id.len(), 25, "{release}");
        assert_eq!(info.swarm.error, "", "{release}");
    }
}

#[test]
fn a_node_read_for_a_write_keeps_its_version_and_whole_spec() {
    for release in RELEASES {
        let node: Versioned = parsed(release, "node");
        assert!(node.version.index.is_some_and(|i| i > 0), "{release}");
        let spec = node.spec.unwrap();
        assert_eq!(spec["Role"], "manager", "{release}");
        assert_eq!(spec["Labels"]["mpiswarm.index"], "0", "{release}");
        let swarm: Versioned = parsed(release, "swarm");
        assert!(
            swarm.spec.is_some_and(|s| s["Name"] == "default"),
            "{release}"
        );
    }
}

#[test]
fn nodes_name_their_hosts_roles_and_leader() {
    for release in RELEASES {
        let List(nodes): List<Node> = parsed(release, "nodes");
        let hosts: Vec<_> = nodes
            .iter()
            .map(|n| n.description.hostname.as_deref())
            .collect();
        assert_eq!(hosts, [Some("msh1"), Some("msh2")], "{release}");
        let manager = &nodes[0];
        assert_eq!(manager.spec.role.as_deref(), Some("manager"));
        assert_eq!(manager.spec.availability.as_deref(), Some("active"));
        assert_eq!(manager.status.state.as_deref(), Some("ready"));
        assert!(manager.status.addr.is_some());
        assert!(manager.manager_status.as_ref().is_some_and(|m| m.leader));
        assert!(nodes[1].manager_status.is_none());
        assert_eq!(nodes[1].spec.labels["mpiswarm.index"], "1");
        let engine = manager
            .description
            .engine
            .engine_version
            .as_deref()
            .unwrap();
        assert!(engine.starts_with(release), "{release}: {engine}");
    }
}

#[test]
fn services_give_their_modes_policies_and_counts() {
    // 20.10: a replicated service and one-shot work (restart condition none); 26.1: jobs.
    let List(old): List<Service> = parsed("20.10", "services");
    let work = old.iter().find(|s| s.spec.name == "rec_work").unwrap();
    assert_eq!(
        work.spec.mode.replicated.as_ref().unwrap().replicas,
        Some(3)
    );
    let policy = &work.spec.task_template.restart_policy;
    assert_eq!(policy.condition.as_deref(), Some("none"));
    assert_eq!(policy.max_attempts, Some(0));
    assert_eq!(
        work.service_status.as_ref().unwrap().completed_tasks,
        Some(0)
    );
    assert!(work.job_status.is_none());
    let List(new): List<Service> = parsed("26.1", "services");
    let work = new.iter().find(|s| s.spec.name == "rec_work").unwrap();
    let job = work.spec.mode.replicated_job.as_ref().unwrap();
    assert_eq!(
        (job.max_concurrent, job.total_completions),
        (Some(3), Some(3))
    );
    assert_eq!(
        work.service_status.as_ref().unwrap().completed_tasks,
        Some(3)
    );
    // The first iteration's index is 0, which Docker leaves out.
    assert_eq!(work.job_status.as_ref().unwrap().job_iteration.index, None);
    let each = new.iter().find(|s| s.spec.name == "rec_each").unwrap();
    assert!(each.spec.mode.global_job.is_some() && each.spec.mode.replicated.is_none());
    let db = new.iter().find(|s| s.spec.name == "rec_db").unwrap();
    assert!(db.spec.mode.replicated.is_some() && db.spec.mode.global.is_none());
}

#[test]
fn tasks_give_their_states_exit_codes_and_errors() {
    let List(old): List<Task> = parsed("20.10", "tasks");
    let failed: Vec<_> = old
        .iter()
        .filter(|t| t.status.state.as_deref() == Some("failed"))
        .collect();
    assert_eq!(failed.len(), 3);
    for t in failed {
        assert_eq!(t.desired_state.as_deref(), Some("shutdown"));
        assert_eq!(t.status.err.as_deref(), Some("task: non-zero exit (3)"));
        let container = t.status.container_status.as_ref().unwrap();
        assert_eq!(container.exit_code, Some(3));
        assert!(container.container_id.is_some());
        assert!(t.slot.is_some_and(|s| s > 0) && t.node_id.is_some());
        assert!(t.created_at.is_some() && t.updated_at.is_some() && t.status.timestamp.is_some());
    }
    let List(new): List<Task> = parsed("26.1", "tasks");
    let done = new
        .iter()
        .filter(|t| t.status.state.as_deref() == Some("complete"))
        .count();
    assert_eq!(done, 5);
    // A global job's tasks have no slot; a job's tasks an iteration.
    assert!(
        new.iter()
            .any(|t| t.slot.is_none() && t.job_iteration.is_some())
    );
    assert!(
        new.iter()
            .all(|t| !t.id.is_empty() && !t.service_id.is_empty())
    );
}

#[test]
fn containers_and_creations_give_their_ids() {
    for release in RELEASES {
        let List(containers): List<Container> = parsed(release, "containers");
        assert!(!containers.is_empty(), "{release}");
        for c in containers {
            assert_eq!(c.id.len(), 64, "{release}");
            assert!(c.labels.contains_key("com.docker.swarm.service.name"));
        }
    }
    let created: Created = parsed("26.1", "exec-create");
    assert_eq!(created.id.map(|id| id.len()), Some(64));
}

#[test]
fn an_empty_list_may_come_as_null() {
    let List(nodes): List<Node> = serde_json::from_str("null").unwrap();
    assert!(nodes.is_empty());
    let c: Container = serde_json::from_str(r#"{"Id": "x", "Labels": null}"#).unwrap();
    assert!(c.labels.is_empty());
}

#[test]
fn an_image_load_stream_gives_names_and_errors() {
    let ok: LoadMessage = serde_json::from_str(r#"{"stream":"Loaded image: a:1\n"}"#).unwrap();
    assert_eq!(ok.stream.as_deref(), Some("Loaded image: a:1\n"));
    let bad: LoadMessage =
        serde_json::from_str(r#"{"errorDetail":{"message":"bad"},"error":"bad"}"#).unwrap();
    assert_eq!(bad.error_detail.unwrap().message.as_deref(), Some("bad"));
}

/// A recorded error reply (`<name>.<status>.json`) as the refusal the engine makes of it.
fn refusal(release: &str, name: &str, status: u32) -> EngineError {
    let body = recorded(release, &format!("{name}.{status}"));
    EngineError {
        host: "msh1".into(),
        call: "POST /x".into(),
        status,
        message: Response {
            status,
            body: body.into_bytes(),
        }
        .message(),
    }
}

#[test]
fn a_daemon_already_in_a_swarm_is_told_on_both_releases() {
    for release in RELEASES {
        let join = refusal(release, "error-join-already-in-swarm", 503);
        assert!(already_in_swarm(&join), "{release}: {join}");
        assert!(already_in_swarm(&refusal(
            release,
            "error-init-already-in-swarm",
            503
        )));
        // Other refusals are not taken for it, nor the same words with another status.
        assert!(!already_in_swarm(&refusal(
            release,
            "error-no-such-node",
            404
        )));
        assert!(!already_in_swarm(&refusal(
            release,
            "error-update-out-of-sequence",
            500
        )));
        let other = EngineError {
            status: 500,
            ..join
        };
        assert!(!already_in_swarm(&other));
    }
}

#[test]
fn a_write_out_of_sequence_is_told_on_both_releases() {
    for release in RELEASES {
        let stale = refusal(release, "error-update-out-of-sequence", 500);
        assert!(out_of_sequence(&stale), "{release}: {stale}");
        assert!(!out_of_sequence(&refusal(
            release,
            "error-no-such-node",
            404
        )));
        assert!(!out_of_sequence(&refusal(
            release,
            "error-join-already-in-swarm",
            503
        )));
    }
}

/// Both releases word a missing image the same way (the text a task's status carries).
#[test]
fn a_task_without_its_image_is_told_on_both_releases() {
    // As 20.10.24 and 26.1.5 print it: "No such image: " and the reference.
    assert!(lacks_image("No such image: mpiswarm/busybox:latest"));
    assert!(!lacks_image("starting container failed: exit status 1"));
}
