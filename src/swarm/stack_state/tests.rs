//! The stack_state model and verdicts against Engine API JSON as Swarm writes it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::steady::{STEADY_AFTER, Steady};
use super::verdict::*;
use super::*;
use crate::plan::config::TaskFailures;

mod failures;

/// The typed parse of JSON written as Swarm writes it.
fn typed<T: serde::de::DeserializeOwned>(value: &Value) -> Vec<T> {
    serde_json::from_value::<crate::swarm::api::List<T>>(value.clone())
        .unwrap()
        .0
}

fn parse_nodes(nodes: &Value) -> Nodes {
    super::parse_nodes(&typed(nodes))
}

fn parse_services(services: &Value) -> Vec<Service> {
    super::parse_services(&typed(services))
}

fn parse_tasks(tasks: &Value) -> Vec<Task> {
    super::parse_tasks(&typed(tasks))
}

#[test]
fn recorded_replies_of_both_docker_releases_are_judged() {
    let recorded = |release: &str, name: &str| -> Value {
        serde_json::from_str(&crate::swarm::api::tests::recorded(release, name)).unwrap()
    };
    // Docker 20.10: three one-shot tasks that exited 3, and a lasting service's task running.
    let services = parse_services(&recorded("20.10", "services"));
    let tasks = parse_tasks(&recorded("20.10", "tasks"));
    let work = services.iter().find(|s| s.name == "rec_work").unwrap();
    assert_eq!(work.mode, Mode::Replicated { replicas: 3 });
    assert_eq!(work.restart.condition, Condition::Never);
    let failed: Vec<_> = tasks.iter().filter(|t| t.state == State::Failed).collect();
    assert_eq!(failed.len(), 3);
    assert!(
        failed
            .iter()
            .all(|t| t.exit_code == Some(3) && t.service_id == work.id)
    );
    assert_eq!(
        failed[0].failure(),
        "failed with exit code 3 (task: non-zero exit (3))"
    );
    let nodes = parse_nodes(&recorded("20.10", "nodes"));
    assert_eq!(host_of(&nodes, failed[0]).len(), 4, "{nodes:?}");
    // Docker 26.1: a replicated job of 3 and a global job on 2 nodes, all complete.
    let services = parse_services(&recorded("26.1", "services"));
    let tasks = parse_tasks(&recorded("26.1", "tasks"));
    let modes: Vec<_> = services.iter().map(|s| (s.name.as_str(), s.mode)).collect();
    assert!(modes.contains(&("rec_work", Mode::ReplicatedJob { total: 3 })));
    assert!(modes.contains(&("rec_each", Mode::GlobalJob)));
    assert_eq!(tasks.len(), 6);
    assert_eq!(
        tasks.iter().filter(|t| t.state == State::Complete).count(),
        5
    );
}

fn nodes() -> Nodes {
    parse_nodes(&json!([
        {"ID": "n1", "Description": {"Hostname": "msh1"}, "Status": {"State": "ready"}},
        {"ID": "n2", "Description": {"Hostname": "msh2"}, "Status": {"State": "ready"}},
        {"ID": "n3", "Description": {"Hostname": "msh3"}, "Status": {"State": "ready"}},
    ]))
}

/// A service as `GET /services?status=true` lists it (Docker 20.10, stack-deployed).
fn service(id: &str, name: &str, mode: Value, restart: Option<Value>) -> Value {
    let mut s = json!({
        "ID": id,
        "Version": {"Index": 20},
        "CreatedAt": "2026-01-10T10:00:00.1Z",
        "UpdatedAt": "2026-01-10T10:00:00.1Z",
        "Spec": {
            "Name": name,
            "Labels": {"com.docker.stack.namespace": "st"},
            "TaskTemplate": {
                "ContainerSpec": {"Image": "mpiswarm/busybox:latest", "Isolation": "default"},
                "Resources": {},
                "Placement": {"Platforms": [{"Architecture": "amd64", "OS": "linux"}]},
                "ForceUpdate": 0,
                "Runtime": "container"
            },
            "Mode": mode,
            "EndpointSpec": {"Mode": "dnsrr"}
        },
        "Endpoint": {"Spec": {}},
        "ServiceStatus": {"RunningTasks": 0, "DesiredTasks": 0, "CompletedTasks": 0}
    });
    if let Some(r) = restart {
        s["Spec"]["TaskTemplate"]["RestartPolicy"] = r;
    }
    s
}

/// A task as `GET /tasks` lists it.
#[allow(clippy::too_many_arguments)]
fn task(
    id: &str,
    service: &str,
    slot: u64,
    node: &str,
    state: &str,
    desired: &str,
    exit: Option<i64>,
    created: &str,
) -> Value {
    let mut t = json!({
        "ID": id,
        "Version": {"Index": 30},
        "CreatedAt": created,
        "UpdatedAt": created,
        "Labels": {},
        "ServiceID": service,
        "Status": {
            "Timestamp": created,
            "State": state,
            "Message": state,
            "PortStatus": {}
        },
        "DesiredState": desired
    });
    if slot != 0 {
        t["Slot"] = json!(slot);
    }
    if !node.is_empty() {
        t["NodeID"] = json!(node);
    }
    if let Some(code) = exit {
        t["Status"]["ContainerStatus"] =
            json!({"ContainerID": format!("c-{id}"), "PID": 0, "ExitCode": code});
        if code != 0 {
            t["Status"]["Err"] = json!(format!("task: non-zero exit ({code})"));
        }
    }
    t
}

/// The verdict with every running task steady, failures ending the run.
fn judged(services: Value, tasks: Value, goal: Goal, settled: bool) -> String {
    let parsed = parse_tasks(&tasks);
    let steady = steady_after(&parsed, STEADY_AFTER);
    judged_with(
        services,
        tasks,
        goal,
        settled,
        &steady,
        TaskFailures::EndRun,
    )
}

/// A `Steady` whose running tasks were first seen `ago`.
fn steady_after(tasks: &[Task], ago: Duration) -> Steady {
    let first = Instant::now();
    let mut steady = Steady::default();
    steady.observe(tasks, first);
    steady.observe(tasks, first + ago);
    steady
}

fn judged_with(
    services: Value,
    tasks: Value,
    goal: Goal,
    settled: bool,
    steady: &Steady,
    failures: TaskFailures,
) -> String {
    let services = parse_services(&services);
    let tasks = parse_tasks(&tasks);
    let reports = reports(&services, &tasks, steady);
    match judge(&reports, goal, settled, failures) {
        Verdict::Reached => "reached".to_owned(),
        Verdict::Waiting(w) => {
            let lines: Vec<String> = w.iter().map(|r| describe_waiting(r, &nodes())).collect();
            format!("waiting\n{}", lines.join("\n"))
        }
        Verdict::Failed(f) => format!("failed {}: {}", f.exit_code(), f.describe(&nodes())),
    }
}

const T0: &str = "2026-01-10T10:00:01.5Z";
const T1: &str = "2026-01-10T10:00:02Z";
const T2: &str = "2026-01-10T10:00:07.25Z";

#[test]
fn a_constrained_global_service_needs_only_the_tasks_swarm_made() {
    // `node.hostname==msh1` on 3 nodes: Swarm's global orchestrator makes one task.
    let mut s = service("g", "st_sim1", json!({"Global": {}}), None);
    s["Spec"]["TaskTemplate"]["Placement"]["Constraints"] = json!(["node.hostname==msh1"]);
    let tasks = json!([task("t1", "g", 0, "n1", "running", "running", None, T0)]);
    assert_eq!(judged(json!([s]), tasks, Goal::Up, false), "reached");
    // Before its task runs, it waits, saying so.
    let tasks = json!([task("t1", "g", 0, "n1", "preparing", "running", None, T0)]);
    let got = judged(json!([s]), tasks, Goal::Up, false);
    assert!(got.contains("st_sim1 (global): 0/1 tasks running"), "{got}");
}

#[test]
fn a_global_service_without_tasks_waits_until_swarm_has_had_time() {
    let s = json!([service("g", "st_none", json!({"Global": {}}), None)]);
    let got = judged(s.clone(), json!([]), Goal::Up, false);
    assert!(got.contains("st_none (global): no task yet"), "{got}");
    assert_eq!(judged(s, json!([]), Goal::Up, true), "reached");
}

#[test]
fn a_one_shot_task_that_exits_3_fails_at_once_naming_service_node_and_code() {
    let services = json!([
        service("g", "st_talker", json!({"Global": {}}), None),
        service(
            "f",
            "st_failer",
            json!({"Replicated": {"Replicas": 1}}),
            Some(json!({"Condition": "none", "MaxAttempts": 0}))
        ),
    ]);
    // Still desired running: the orchestrator has not seen it yet, and with condition none
    // it never restarts anyway.
    let tasks = json!([
        task("a", "g", 0, "n1", "running", "running", None, T0),
        task("b", "g", 0, "n2", "running", "running", None, T0),
        task("c", "g", 0, "n3", "running", "running", None, T0),
        task("d", "f", 1, "n3", "failed", "running", Some(3), T2),
    ]);
    let got = judged(services, tasks, Goal::Up, false);
    assert_eq!(
        got,
        "failed 3: task st_failer.1 (replicated) on msh3 failed with exit code 3 (task: \
         non-zero exit (3)), and will not be restarted (restart condition none)"
    );
}

#[test]
fn a_one_shot_task_that_exited_0_is_done_and_one_that_runs_steadily_is_up() {
    let services = json!([service(
        "f",
        "st_once",
        json!({"Replicated": {"Replicas": 2}}),
        Some(json!({"Condition": "none"}))
    )]);
    let tasks = json!([
        task("a", "f", 1, "n1", "complete", "shutdown", Some(0), T1),
        task("b", "f", 2, "n2", "running", "running", None, T1),
    ]);
    assert_eq!(
        judged(services.clone(), tasks.clone(), Goal::Up, false),
        "reached"
    );
    // Running for a moment only: it may yet fail, so the stack is not up, and says so.
    let parsed = parse_tasks(&tasks);
    let brief = steady_after(&parsed, STEADY_AFTER - Duration::from_millis(1));
    let got = judged_with(
        services.clone(),
        tasks.clone(),
        Goal::Up,
        false,
        &brief,
        TaskFailures::EndRun,
    );
    assert!(
        got.contains("st_once (replicated): 1/2 tasks exited 0 or running for 5 s, 1 running"),
        "{got}"
    );
    let svc = parse_services(&services);
    let counted = counts(&reports(&svc, &parsed, &brief), Goal::Up);
    assert_eq!(counted.to_string(), "1/2 replicas running");
    // As work, the running one is not done yet.
    let got = judged(services, tasks, Goal::WorkDone, false);
    assert!(got.starts_with("waiting"), "{got}");
}

#[test]
fn a_replicated_service_waits_for_every_replica_with_the_last_errors() {
    let services = json!([service(
        "r",
        "st_web",
        json!({"Replicated": {"Replicas": 3}}),
        None
    )]);
    let mut failed = task("old", "r", 3, "n2", "failed", "shutdown", Some(1), T0);
    failed["Status"]["Err"] = json!("task: non-zero exit (1)");
    let tasks = json!([
        task("a", "r", 1, "n1", "running", "running", None, T1),
        task("b", "r", 2, "n2", "running", "running", None, T1),
        failed,
        // Swarm's replacement for slot 3 (restart condition any), waiting out its delay.
        task("new", "r", 3, "", "pending", "ready", None, T2),
    ]);
    let got = judged(services, tasks, Goal::Up, false);
    assert!(
        got.contains("st_web (replicated): 2/3 tasks running"),
        "{got}"
    );
    assert!(
        got.contains("task on msh2: failed with exit code 1 (task: non-zero exit (1))"),
        "{got}"
    );
}

#[test]
fn a_failure_swarm_still_restarts_is_not_final_until_the_attempts_are_used_up() {
    let services = json!([service(
        "r",
        "st_flaky",
        json!({"Replicated": {"Replicas": 1}}),
        Some(json!({"Condition": "on-failure", "MaxAttempts": 2}))
    )]);
    // Not yet seen by the orchestrator: it may still restart it.
    let tasks = json!([task("a", "r", 1, "n1", "failed", "running", Some(2), T0)]);
    assert!(judged(services.clone(), tasks, Goal::Up, false).starts_with("waiting"));
    // Settled with no successor: final.
    let tasks = json!([
        task("a", "r", 1, "n1", "failed", "shutdown", Some(2), T0),
        task("b", "r", 1, "n2", "failed", "shutdown", Some(2), T1),
        task("c", "r", 1, "n3", "failed", "shutdown", Some(2), T2),
    ]);
    let got = judged(services, tasks, Goal::Up, false);
    assert!(
        got.starts_with("failed 2: task st_flaky.1 (replicated) on msh3"),
        "{got}"
    );
    assert!(
        got.contains("its 2 restart attempt(s) are used up"),
        "{got}"
    );
}

/// A replicated job as Docker 26's CLI deploys `mode: replicated-job, replicas: 2`.
fn job(total: u64) -> Value {
    let mut s = service(
        "j",
        "st_work",
        json!({"ReplicatedJob": {"MaxConcurrent": total, "TotalCompletions": total}}),
        None,
    );
    s["JobStatus"] = json!({"JobIteration": {"Index": 25}, "LastExecution": T0});
    s
}

fn job_task(id: &str, slot: u64, state: &str, desired: &str, exit: Option<i64>) -> Value {
    let mut t = task(id, "j", slot, "n2", state, desired, exit, T1);
    t["JobIteration"] = json!({"Index": 25});
    t
}

#[test]
fn a_replicated_job_is_up_when_its_completions_are_done() {
    let tasks = json!([
        job_task("a", 0, "complete", "complete", Some(0)),
        job_task("b", 1, "running", "complete", None),
    ]);
    let got = judged(json!([job(2)]), tasks, Goal::Up, false);
    assert!(
        got.contains("st_work (replicated-job): 1/2 tasks complete, 1 running"),
        "{got}"
    );
    let tasks = json!([
        job_task("a", 0, "complete", "complete", Some(0)),
        job_task("b", 1, "complete", "complete", Some(0)),
    ]);
    assert_eq!(
        judged(json!([job(2)]), tasks.clone(), Goal::Up, false),
        "reached"
    );
    assert_eq!(
        judged(json!([job(2)]), tasks, Goal::WorkDone, false),
        "reached"
    );
    // Swarm's own count is enough (ServiceStatus.CompletedTasks), tasks pruned or not.
    let mut s = job(2);
    s["ServiceStatus"]["CompletedTasks"] = json!(2);
    assert_eq!(judged(json!([s]), json!([]), Goal::Up, false), "reached");
}

#[test]
fn a_failed_job_task_that_swarm_will_not_retry_gives_its_exit_code() {
    let mut s = job(2);
    s["Spec"]["TaskTemplate"]["RestartPolicy"] = json!({"Condition": "none"});
    let tasks = json!([
        job_task("a", 0, "complete", "complete", Some(0)),
        job_task("b", 1, "failed", "complete", Some(7)),
    ]);
    let got = judged(json!([s]), tasks, Goal::WorkDone, false);
    assert!(
        got.starts_with(
            "failed 7: task st_work.1 (replicated-job) on msh2 failed with exit code 7"
        ),
        "{got}"
    );
    // Without a policy Swarm retries a job's failed task (condition any): not final. The
    // slot's newest task decides.
    let mut retry = job_task("c", 1, "pending", "ready", None);
    retry["CreatedAt"] = json!(T2);
    let tasks = json!([job_task("b", 1, "failed", "shutdown", Some(7)), retry]);
    let got = judged(json!([job(2)]), tasks, Goal::WorkDone, false);
    assert!(got.starts_with("waiting"), "{got}");
}

#[test]
fn tasks_of_an_earlier_job_run_do_not_count() {
    let mut old = job_task("a", 0, "failed", "shutdown", Some(9));
    old["JobIteration"] = json!({"Index": 11});
    let tasks = json!([old, job_task("b", 0, "complete", "complete", Some(0))]);
    assert_eq!(
        judged(json!([job(1)]), tasks, Goal::WorkDone, false),
        "reached"
    );
}

#[test]
fn a_global_job_completes_on_the_nodes_swarm_chose() {
    let s = service("gj", "st_each", json!({"GlobalJob": {}}), None);
    let tasks = json!([
        task("a", "gj", 0, "n1", "complete", "complete", Some(0), T1),
        task("b", "gj", 0, "n2", "running", "complete", None, T1),
    ]);
    let got = judged(json!([s]), tasks, Goal::WorkDone, false);
    assert!(
        got.contains("st_each (global-job): 1/2 tasks complete, 1 running"),
        "{got}"
    );
    let tasks = json!([
        task("a", "gj", 0, "n1", "complete", "complete", Some(0), T1),
        task("b", "gj", 0, "n2", "complete", "complete", Some(0), T2),
    ]);
    assert_eq!(judged(json!([s]), tasks, Goal::WorkDone, false), "reached");
}

#[test]
fn a_missing_image_fails_at_once_though_swarm_would_retry() {
    let services = json!([service(
        "r",
        "st_ghost",
        json!({"Replicated": {"Replicas": 1}}),
        None
    )]);
    let mut t = task("a", "r", 1, "n1", "rejected", "shutdown", None, T0);
    t["Status"]["Err"] = json!("No such image: mpiswarm/nonexistent:1");
    let tasks = json!([t, task("b", "r", 1, "", "pending", "ready", None, T1)]);
    let got = judged(services, tasks, Goal::Up, false);
    assert!(
        got.starts_with("failed 1: task of st_ghost.1 on msh1: rejected (No such image"),
        "{got}"
    );
}

#[test]
fn the_infrastructure_goal_leaves_work_to_the_workload_and_work_done_ignores_lasting() {
    let mut work = job(1);
    work["Spec"]["TaskTemplate"]["RestartPolicy"] = json!({"Condition": "none"});
    let services = json!([
        service("l", "st_db", json!({"Replicated": {"Replicas": 1}}), None),
        work,
    ]);
    let tasks = json!([
        task("a", "l", 1, "n1", "running", "running", None, T0),
        job_task("b", 0, "failed", "shutdown", Some(4)),
    ]);
    assert_eq!(
        judged(services.clone(), tasks.clone(), Goal::Infrastructure, false),
        "reached"
    );
    let got = judged(services, tasks, Goal::WorkDone, false);
    assert!(
        got.starts_with("failed 4: task st_work.0 (replicated-job) on msh2"),
        "{got}"
    );
}

#[test]
fn the_earliest_failure_is_the_one_reported() {
    let services = json!([
        service(
            "a",
            "st_a",
            json!({"Replicated": {"Replicas": 1}}),
            Some(json!({"Condition": "none"}))
        ),
        service(
            "b",
            "st_b",
            json!({"Replicated": {"Replicas": 1}}),
            Some(json!({"Condition": "none"}))
        ),
    ]);
    let tasks = json!([
        task("x", "a", 1, "n1", "failed", "shutdown", Some(5), T2),
        task("y", "b", 1, "n2", "failed", "shutdown", Some(6), T1),
    ]);
    let got = judged(services, tasks, Goal::WorkDone, false);
    assert!(got.starts_with("failed 6: task st_b.1"), "{got}");
}

#[test]
fn purposes_and_exit_codes() {
    let s = parse_services(&json!([
        service("a", "a", json!({"Replicated": {}}), None),
        service(
            "b",
            "b",
            json!({"Global": {}}),
            Some(json!({"Condition": "on-failure"}))
        ),
        service("c", "c", json!({"GlobalJob": {}}), None),
        service("d", "d", json!({"FutureMode": {}}), None),
    ]));
    assert_eq!(s.len(), 3, "an unknown mode is left out");
    assert_eq!(s[0].mode, Mode::Replicated { replicas: 1 });
    assert_eq!(s[0].purpose(), Purpose::Lasting);
    assert_eq!(s[1].purpose(), Purpose::Work);
    assert!(s[1].retries_forever());
    assert_eq!(s[2].purpose(), Purpose::Work);
    let t = parse_tasks(&json!([
        task("a", "a", 1, "n1", "failed", "shutdown", Some(256 + 3), T0),
        task("b", "a", 1, "n1", "failed", "shutdown", Some(256), T0),
    ]));
    let f = |t| Failure {
        service: &s[0],
        task: t,
        missing_image: false,
    };
    assert_eq!(f(&t[0]).exit_code(), 3);
    assert_eq!(f(&t[1]).exit_code(), 1);
}

#[test]
fn times_compare_whatever_the_fraction() {
    let k = TimeKey::parse;
    assert!(k("2026-01-10T10:00:00Z") < k("2026-01-10T10:00:00.1Z"));
    assert!(k("2026-01-10T10:00:00.45Z") < k("2026-01-10T10:00:00.5Z"));
    assert!(k("2026-01-10T10:00:00.999999999Z") < k("2026-01-10T10:00:01Z"));
    assert_eq!(k("2026-01-10T10:00:00.5Z"), k("2026-01-10T10:00:00.500Z"));
}

#[test]
fn counts_read_as_a_progress_line() {
    let c = Counts {
        running: 60,
        to_run: 60,
        done: 0,
        to_do: 0,
    };
    assert_eq!(c.to_string(), "60/60 replicas running");
    let c = Counts {
        running: 1,
        to_run: 2,
        done: 3,
        to_do: 4,
    };
    assert_eq!(
        c.to_string(),
        "1/2 replicas running, 3/4 job tasks complete"
    );
}
