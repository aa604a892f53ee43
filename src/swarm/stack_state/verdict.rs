//! Verdicts on a stack from its services and tasks: each service's report (slots running, done,
//! failed for good), whether the stack reached its goal, is on its way or failed, and the counts
//! and words rank 0 shows while it waits.

use std::collections::BTreeMap;

use super::steady::{STEADY_AFTER, Steady};
use super::{Condition, Mode, Nodes, Purpose, Service, SlotKey, State, Task, host_of};
use crate::plan::config::TaskFailures;

/// Where one slot stands, judged by its newest task.
#[derive(Debug, Clone, Copy)]
enum Slot<'a> {
    /// On its way (or waiting for the orchestrator's decision about an ended task).
    Starting,
    Running,
    /// Exited 0 and stays so.
    Done,
    /// Failed, and Swarm starts no new task for it.
    Failed(&'a Task),
    /// Shut down by Swarm with no successor (a node that left, a slot scaled away).
    Gone,
}

/// The newest task of a slot decides it.
fn judge_slot<'a>(service: &Service, newest: &'a Task) -> Slot<'a> {
    let final_by_policy = match (newest.state, service.restart.condition) {
        (State::Complete, Condition::Never | Condition::OnFailure) => true,
        (State::Complete, Condition::Any) => service.mode.is_job(),
        (State::Failed | State::Rejected, Condition::Never) => true,
        _ => false,
    };
    let ended = newest.state > State::Running;
    match newest.state {
        State::Running if newest.desired <= State::Complete => Slot::Running,
        State::Complete if final_by_policy || newest.settled() => Slot::Done,
        s if s.is_failure() && (final_by_policy || newest.settled()) => Slot::Failed(newest),
        _ if ended && newest.settled() => Slot::Gone,
        _ => Slot::Starting,
    }
}

/// One service's tasks, slot by slot.
#[derive(Debug, Clone)]
pub struct ServiceReport<'a> {
    pub service: &'a Service,
    /// The slots Swarm fills: replicas, completions, or (global) the nodes it gave a task.
    pub expected: u64,
    pub running: u64,
    /// The running tasks that have run long enough to count as up (see `steady`).
    pub steady: u64,
    pub done: u64,
    pub failed: Vec<&'a Task>,
    /// The service's tasks with an error, newest first (failed attempts included).
    pub errors: Vec<&'a Task>,
}

impl ServiceReport<'_> {
    /// Whether the service has got where `goal` wants it; `settled` says that Swarm has had
    /// time to create a global service's tasks (none then means: no node is eligible). A
    /// one-shot task counts as up once it has exited 0, or has run steadily (a task that runs
    /// for a moment and fails must not make the stack up while it happens to run).
    fn reached(&self, goal: Goal, settled: bool, failures: TaskFailures) -> bool {
        if self.service.mode.is_global() && self.expected == 0 {
            return settled;
        }
        // Allowed failures have ended their slots: nothing will come of them.
        let ended = match failures {
            TaskFailures::Allowed => self.failed.len() as u64,
            TaskFailures::EndRun => 0,
        };
        match (self.service.purpose(), goal) {
            (Purpose::Lasting, Goal::WorkDone) | (Purpose::Work, Goal::Infrastructure) => true,
            (Purpose::Lasting, _) => self.running + self.done + ended >= self.expected,
            (Purpose::Work, Goal::Up) if !self.service.mode.is_job() => {
                self.steady + self.done + ended >= self.expected
            }
            (Purpose::Work, _) => self.done + ended >= self.expected,
        }
    }

    /// Whether a failure of this service ends the wait for `goal`.
    fn counts_for(&self, goal: Goal) -> bool {
        goal != Goal::Infrastructure || self.service.purpose() == Purpose::Lasting
    }
}

/// Every service of the stack with its report; `steady` says which running tasks have run long
/// enough to count as up.
pub fn reports<'a>(
    services: &'a [Service],
    tasks: &'a [Task],
    steady: &Steady,
) -> Vec<ServiceReport<'a>> {
    services.iter().map(|s| report(s, tasks, steady)).collect()
}

fn report<'a>(service: &'a Service, tasks: &'a [Task], steady: &Steady) -> ServiceReport<'a> {
    let mine: Vec<&Task> = tasks
        .iter()
        .filter(|t| t.service_id == service.id)
        .filter(|t| service.job_iteration.is_none() || t.job_iteration == service.job_iteration)
        .collect();
    let mut newest: BTreeMap<SlotKey, &Task> = BTreeMap::new();
    for t in &mine {
        let slot = newest.entry(t.slot_key(service.mode)).or_insert(t);
        if t.created > slot.created {
            *slot = t;
        }
    }
    let (mut running, mut steady_ones, mut done, mut failed, mut slots) = (0, 0, 0, Vec::new(), 0);
    for task in newest.values() {
        match judge_slot(service, task) {
            Slot::Running => {
                running += 1;
                steady_ones += u64::from(steady.is_steady(task));
            }
            Slot::Done => done += 1,
            Slot::Failed(t) => failed.push(t),
            Slot::Starting => {}
            Slot::Gone => continue,
        }
        slots += 1;
    }
    if service.mode.is_job() {
        done = done.max(service.completed.unwrap_or(0));
    }
    let expected = match service.mode {
        Mode::Replicated { replicas } => replicas,
        Mode::ReplicatedJob { total } => total,
        Mode::Global | Mode::GlobalJob => slots,
    };
    let mut errors: Vec<&Task> = mine
        .into_iter()
        .filter(|t| !t.err.is_empty() || t.state.is_failure())
        .collect();
    errors.sort_by(|a, b| b.at.cmp(&a.at));
    ServiceReport {
        service,
        expected,
        running,
        steady: steady_ones,
        done,
        failed,
        errors,
    }
}

/// What a wait is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// A stack brought up: lasting services run all their tasks, one-shot tasks run or exited
    /// 0, jobs completed.
    Up,
    /// The stack beside work that runs on: only the lasting services must run (work services
    /// are judged by `WorkDone`).
    Infrastructure,
    /// The work done: every task of every work service exited 0.
    WorkDone,
}

/// A task that failed for good.
#[derive(Debug, Clone)]
pub struct Failure<'a> {
    pub service: &'a Service,
    pub task: &'a Task,
    /// The image is not on the node: no registry will bring it, however often Swarm retries.
    pub missing_image: bool,
}

impl Failure<'_> {
    /// "task web.2 on msh2 failed with exit code 3 (...) and will not be restarted (...)".
    pub fn describe(&self, nodes: &Nodes) -> String {
        let task = self.task;
        // Replicated slots count from 1, a replicated job's from 0; a global task's slot is
        // its node.
        let slot = if self.service.mode.is_global() {
            self.service.name.clone()
        } else {
            format!("{}.{}", self.service.name, task.slot.unwrap_or(0))
        };
        let host = host_of(nodes, task);
        if self.missing_image {
            return format!(
                "task of {slot} on {host}: {}: its image is not on the node (load it with --load)",
                task.failure()
            );
        }
        format!(
            "task {slot} ({}) on {host} {}, and will not be restarted ({})",
            self.service.mode.as_str(),
            task.failure(),
            self.service.why_final()
        )
    }

    /// mpiswarm's exit code for it: the task's own (as a process exit status), else 1.
    pub fn exit_code(&self) -> i32 {
        match self.task.exit_code {
            Some(code) if code & 0xff != 0 => (code & 0xff) as i32,
            _ => 1,
        }
    }
}

/// Where a stack stands against a goal.
#[derive(Debug)]
pub enum Verdict<'a> {
    Reached,
    /// The services not there yet.
    Waiting(Vec<ServiceReport<'a>>),
    /// The earliest failure that ends the wait.
    Failed(Failure<'a>),
}

/// Judges the stack against `goal` (see `ServiceReport::reached` for `settled`). A missing
/// image fails the stack whatever `failures` says: its tasks never ran, and never will.
pub fn judge<'a>(
    reports: &[ServiceReport<'a>],
    goal: Goal,
    settled: bool,
    failures: TaskFailures,
) -> Verdict<'a> {
    if let Some(failure) = missing_image(reports, goal) {
        return Verdict::Failed(failure);
    }
    if failures == TaskFailures::EndRun
        && let Some(first) = failed_for_good(reports, goal).into_iter().next()
    {
        return Verdict::Failed(first);
    }
    let waiting: Vec<ServiceReport> = reports
        .iter()
        .filter(|r| !r.reached(goal, settled, failures))
        .cloned()
        .collect();
    if waiting.is_empty() {
        Verdict::Reached
    } else {
        Verdict::Waiting(waiting)
    }
}

/// A task whose image is not on its node, among the services whose failures count for `goal`.
pub fn missing_image<'a>(reports: &[ServiceReport<'a>], goal: Goal) -> Option<Failure<'a>> {
    reports.iter().filter(|r| r.counts_for(goal)).find_map(|r| {
        let task = r
            .errors
            .iter()
            .find(|t| crate::swarm::api::lacks_image(&t.err))?;
        Some(Failure {
            service: r.service,
            task,
            missing_image: true,
        })
    })
}

/// Every task that failed for good, among the services whose failures count for `goal`, the
/// earliest first.
pub fn failed_for_good<'a>(reports: &[ServiceReport<'a>], goal: Goal) -> Vec<Failure<'a>> {
    let mut all: Vec<Failure<'a>> = reports
        .iter()
        .filter(|r| r.counts_for(goal))
        .flat_map(|r| {
            r.failed.iter().map(move |task| Failure {
                service: r.service,
                task,
                missing_image: false,
            })
        })
        .collect();
    all.sort_by(|a, b| a.task.at.cmp(&b.task.at));
    all
}

/// Counts for a progress line: tasks running of those that must run, tasks done of those that
/// must complete.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub running: u64,
    pub to_run: u64,
    pub done: u64,
    pub to_do: u64,
}

pub fn counts(reports: &[ServiceReport], goal: Goal) -> Counts {
    let mut c = Counts::default();
    for r in reports {
        let work = r.service.purpose() == Purpose::Work;
        let must_complete = match goal {
            Goal::Infrastructure if work => continue,
            Goal::WorkDone if !work => continue,
            Goal::WorkDone => true,
            Goal::Up | Goal::Infrastructure => r.service.mode.is_job(),
        };
        if must_complete {
            c.done += r.done.min(r.expected);
            c.to_do += r.expected;
        } else {
            // A one-shot's tasks count once steady, as for `reached`.
            let running = if work { r.steady } else { r.running };
            c.running += (running + r.done).min(r.expected);
            c.to_run += r.expected;
        }
    }
    c
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if self.to_run > 0 || self.to_do == 0 {
            parts.push(format!("{}/{} replicas running", self.running, self.to_run));
        }
        if self.to_do > 0 {
            parts.push(format!("{}/{} job tasks complete", self.done, self.to_do));
        }
        write!(f, "{}", parts.join(", "))
    }
}

/// What a service still waits for, for a message at a deadline: its counts and its tasks'
/// latest errors.
pub fn describe_waiting(report: &ServiceReport, nodes: &Nodes) -> String {
    let s = report.service;
    let what = if s.mode.is_global() && report.expected == 0 {
        "no task yet".to_owned()
    } else if s.mode.is_job() {
        format!(
            "{}/{} tasks complete, {} running",
            report.done, report.expected, report.running
        )
    } else if s.purpose() == Purpose::Work {
        format!(
            "{}/{} tasks exited 0 or running for {} s, {} running",
            report.done + report.steady,
            report.expected,
            STEADY_AFTER.as_secs(),
            report.running
        )
    } else {
        format!("{}/{} tasks running", report.running, report.expected)
    };
    let mut line = format!("  {} ({}): {what}", s.name, s.mode.as_str());
    for t in report.errors.iter().take(3) {
        line.push_str(&format!(
            "\n    task on {}: {}",
            host_of(nodes, t),
            t.failure()
        ));
    }
    line
}
