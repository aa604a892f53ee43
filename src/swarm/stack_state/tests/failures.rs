//! Steadiness, and failures allowed or not, on recorded JSON.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::super::steady::{STEADY_AFTER, Steady};
use super::super::verdict::*;
use super::{
    T0, T1, T2, judged, judged_with, parse_services, parse_tasks, service, steady_after, task,
};
use crate::plan::config::TaskFailures;

#[test]
fn a_task_is_steady_once_seen_running_long_enough_and_forgotten_when_it_ends() {
    let running = parse_tasks(&json!([task(
        "a", "f", 1, "n1", "running", "running", None, T0
    )]));
    let ended = parse_tasks(&json!([task(
        "a",
        "f",
        1,
        "n1",
        "failed",
        "shutdown",
        Some(3),
        T1
    )]));
    let t0 = Instant::now();
    let mut steady = Steady::default();
    steady.observe(&running, t0);
    assert!(!steady.is_steady(&running[0]));
    steady.observe(&running, t0 + STEADY_AFTER);
    assert!(steady.is_steady(&running[0]));
    // Gone from the running tasks: its time starts again if it is ever seen running.
    steady.observe(&ended, t0 + STEADY_AFTER);
    steady.observe(&running, t0 + STEADY_AFTER * 2);
    assert!(!steady.is_steady(&running[0]));
}

/// Two one-shots beside a lasting service whose restart attempts are used up.
fn failing_stack() -> (Value, Value) {
    let once = Some(json!({"Condition": "none"}));
    let services = json!([
        service(
            "a",
            "st_a",
            json!({"Replicated": {"Replicas": 1}}),
            once.clone()
        ),
        service("b", "st_b", json!({"Replicated": {"Replicas": 2}}), once),
        service(
            "l",
            "st_db",
            json!({"Replicated": {"Replicas": 1}}),
            Some(json!({"Condition": "any", "MaxAttempts": 1}))
        ),
    ]);
    let tasks = json!([
        task("x", "a", 1, "n1", "failed", "shutdown", Some(5), T2),
        task("y", "b", 1, "n2", "failed", "shutdown", Some(6), T1),
        task("z", "b", 2, "n3", "running", "running", None, T0),
        task("w", "l", 1, "n1", "failed", "shutdown", Some(7), T0),
    ]);
    (services, tasks)
}

#[test]
fn allowed_failures_end_their_slots_and_are_all_listed_earliest_first() {
    let (services, tasks) = failing_stack();
    let got = judged(services.clone(), tasks.clone(), Goal::Up, false);
    assert!(got.starts_with("failed 7: task st_db.1"), "{got}");
    let parsed = parse_tasks(&tasks);
    let steady = steady_after(&parsed, STEADY_AFTER);
    let allowed = |goal| {
        judged_with(
            services.clone(),
            tasks.clone(),
            goal,
            false,
            &steady,
            TaskFailures::Allowed,
        )
    };
    assert_eq!(allowed(Goal::Up), "reached");
    // The steady one-shot still has to run a while first.
    let brief = steady_after(&parsed, Duration::ZERO);
    let got = judged_with(
        services.clone(),
        tasks,
        Goal::Up,
        false,
        &brief,
        TaskFailures::Allowed,
    );
    assert!(
        got.contains("st_b (replicated): 0/2 tasks exited 0 or running for 5 s, 1 running"),
        "{got}"
    );
    let svc = parse_services(&services);
    let reports = reports(&svc, &parsed, &steady);
    let listed: Vec<String> = failed_for_good(&reports, Goal::Up)
        .iter()
        .map(|f| f.task.id.clone())
        .collect();
    assert_eq!(listed, ["w", "y", "x"]);
}

#[test]
fn a_missing_image_fails_the_stack_though_failures_are_allowed() {
    let services = json!([service(
        "r",
        "st_ghost",
        json!({"Replicated": {"Replicas": 1}}),
        None
    )]);
    let mut t = task("a", "r", 1, "n1", "rejected", "shutdown", None, T0);
    t["Status"]["Err"] = json!("No such image: mpiswarm/nonexistent:1");
    let got = judged_with(
        services,
        json!([t]),
        Goal::Up,
        false,
        &Steady::default(),
        TaskFailures::Allowed,
    );
    assert!(got.starts_with("failed 1: task of st_ghost.1"), "{got}");
}
