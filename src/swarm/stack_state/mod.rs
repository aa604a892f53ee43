//! What a stack's services and tasks say, decided from the Engine API's JSON alone: each
//! service's mode and restart policy, each slot's newest task, and whether the stack reached a
//! goal, is still on its way, or failed for good. Swarm decides where tasks go (a global
//! service's constraints, a job's completions): this counts the tasks Swarm made, never nodes.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

/// How Swarm runs a service's tasks (`Spec.Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `replicas` tasks that keep running.
    Replicated { replicas: u64 },
    /// One task on every node the constraints and platforms allow (Swarm's global orchestrator
    /// creates exactly those tasks).
    Global,
    /// `total` tasks that must complete (exit 0), `MaxConcurrent` at a time (API >= 1.41).
    ReplicatedJob { total: u64 },
    /// One task to complete on every node the constraints allow (API >= 1.41).
    GlobalJob,
}

impl Mode {
    pub fn is_job(self) -> bool {
        matches!(self, Mode::ReplicatedJob { .. } | Mode::GlobalJob)
    }

    pub fn is_global(self) -> bool {
        matches!(self, Mode::Global | Mode::GlobalJob)
    }

    /// The name compose files and `docker service create --mode` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Replicated { .. } => "replicated",
            Mode::Global => "global",
            Mode::ReplicatedJob { .. } => "replicated-job",
            Mode::GlobalJob => "global-job",
        }
    }
}

/// `RestartPolicy.Condition`; Swarm's default (no policy in the spec) is `any`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Any,
    OnFailure,
    Never,
}

/// When Swarm starts a new task in place of one that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restart {
    pub condition: Condition,
    /// 0: without limit.
    pub max_attempts: u64,
}

/// What a service is for, as far as waiting goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Its tasks keep running (restart condition `any`, not a job): it is up when they run.
    Lasting,
    /// Its tasks end and stay ended: a job mode, or restart condition `none` / `on-failure`.
    Work,
}

/// A task's state (`Status.State`, `DesiredState`), in Swarm's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum State {
    New,
    Allocated,
    Pending,
    Assigned,
    Accepted,
    Preparing,
    Ready,
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
    Remove,
    Orphaned,
}

impl State {
    fn parse(text: &str) -> Option<State> {
        Some(match text {
            "new" => State::New,
            "allocated" => State::Allocated,
            "pending" => State::Pending,
            "assigned" => State::Assigned,
            "accepted" => State::Accepted,
            "preparing" => State::Preparing,
            "ready" => State::Ready,
            "starting" => State::Starting,
            "running" => State::Running,
            "complete" => State::Complete,
            "shutdown" => State::Shutdown,
            "failed" => State::Failed,
            "rejected" => State::Rejected,
            "remove" => State::Remove,
            "orphaned" => State::Orphaned,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::New => "new",
            State::Allocated => "allocated",
            State::Pending => "pending",
            State::Assigned => "assigned",
            State::Accepted => "accepted",
            State::Preparing => "preparing",
            State::Ready => "ready",
            State::Starting => "starting",
            State::Running => "running",
            State::Complete => "complete",
            State::Shutdown => "shutdown",
            State::Failed => "failed",
            State::Rejected => "rejected",
            State::Remove => "remove",
            State::Orphaned => "orphaned",
        }
    }

    fn is_failure(self) -> bool {
        matches!(self, State::Failed | State::Rejected)
    }
}

/// A time as the Engine API writes it (RFC 3339 in UTC, fraction of any length), comparable:
/// the seconds part as written, then the fraction in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeKey(String, u32);

impl TimeKey {
    pub fn parse(text: &str) -> TimeKey {
        let text = text.trim_end_matches('Z');
        let (seconds, fraction) = text.split_once('.').unwrap_or((text, ""));
        let digits: String = fraction
            .chars()
            .take_while(char::is_ascii_digit)
            .chain(std::iter::repeat('0'))
            .take(9)
            .collect();
        TimeKey(seconds.to_owned(), digits.parse().unwrap_or(0))
    }
}

/// One service of the stack.
#[derive(Debug, Clone)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub mode: Mode,
    pub restart: Restart,
    /// A job's current run (`JobStatus.JobIteration.Index`): older tasks are not counted.
    job_iteration: Option<u64>,
    /// `ServiceStatus.CompletedTasks`, when the list was asked for with `status=true`.
    completed: Option<u64>,
}

impl Service {
    pub fn purpose(&self) -> Purpose {
        if self.mode.is_job() || self.restart.condition != Condition::Any {
            Purpose::Work
        } else {
            Purpose::Lasting
        }
    }

    /// Why Swarm starts no new task after a failed one of this service.
    fn why_final(&self) -> String {
        match (self.restart.condition, self.restart.max_attempts) {
            (Condition::Never, _) => "restart condition none".to_owned(),
            (_, 0) => "Swarm starts no new task for it".to_owned(),
            (_, n) => format!("its {n} restart attempt(s) are used up"),
        }
    }

    /// Swarm retries its failed tasks without limit: a failing task never ends the service.
    pub fn retries_forever(&self) -> bool {
        self.restart.condition != Condition::Never && self.restart.max_attempts == 0
    }
}

/// One task, as the Engine API lists it.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    pub service_id: String,
    slot: Option<u64>,
    pub node_id: Option<String>,
    pub state: State,
    pub desired: State,
    pub exit_code: Option<i64>,
    pub err: String,
    created: TimeKey,
    /// When the task reached its state.
    pub at: TimeKey,
    job_iteration: Option<u64>,
}

impl Task {
    /// The slot a replacement would take: its number, or its node for global modes.
    fn slot_key(&self, mode: Mode) -> SlotKey {
        match (mode.is_global(), &self.node_id) {
            (true, Some(node)) => SlotKey::Node(node.clone()),
            _ => SlotKey::Number(self.slot.unwrap_or(0)),
        }
    }

    /// The orchestrator has dealt with the task (it set the desired state past completion):
    /// if it was to be replaced, the replacement exists (both are written at once).
    fn settled(&self) -> bool {
        self.desired > State::Complete
    }

    /// The task's failure, without its log lines.
    fn failure(&self) -> String {
        let how = match self.exit_code {
            Some(code) if code != 0 || self.state == State::Failed => {
                format!("failed with exit code {code}")
            }
            _ => self.state.as_str().to_owned(),
        };
        if self.err.is_empty() {
            how
        } else {
            format!("{how} ({})", self.err)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SlotKey {
    Number(u64),
    Node(String),
}

/// Node IDs to host names (`GET /nodes`).
pub type Nodes = HashMap<String, String>;

pub fn parse_nodes(nodes: &Value) -> Nodes {
    list(nodes)
        .filter_map(|n| {
            Some((
                text(n, "/ID")?.to_owned(),
                text(n, "/Description/Hostname")?.to_owned(),
            ))
        })
        .collect()
}

/// The host a task runs on, for messages.
pub fn host_of<'a>(nodes: &'a Nodes, task: &Task) -> &'a str {
    task.node_id
        .as_ref()
        .and_then(|id| nodes.get(id))
        .map_or("no node yet", String::as_str)
}

fn list(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn number(value: &Value, pointer: &str) -> Option<u64> {
    value.pointer(pointer).and_then(Value::as_u64)
}

/// `GET /services` (with `status=true` for `ServiceStatus`); services of an unknown mode are
/// left out (a newer Swarm's: nothing here could judge them).
pub fn parse_services(services: &Value) -> Vec<Service> {
    list(services).filter_map(parse_service).collect()
}

fn parse_service(s: &Value) -> Option<Service> {
    let mode = if let Some(r) = s.pointer("/Spec/Mode/Replicated") {
        Mode::Replicated {
            replicas: number(r, "/Replicas").unwrap_or(1),
        }
    } else if s.pointer("/Spec/Mode/Global").is_some() {
        Mode::Global
    } else if let Some(j) = s.pointer("/Spec/Mode/ReplicatedJob") {
        // Swarm's defaults: one at a time, as many completions as concurrent tasks.
        let concurrent = number(j, "/MaxConcurrent").unwrap_or(1);
        Mode::ReplicatedJob {
            total: number(j, "/TotalCompletions").unwrap_or(concurrent),
        }
    } else if s.pointer("/Spec/Mode/GlobalJob").is_some() {
        Mode::GlobalJob
    } else {
        return None;
    };
    let policy = "/Spec/TaskTemplate/RestartPolicy";
    let condition = match text(s, &format!("{policy}/Condition")) {
        Some("none") => Condition::Never,
        Some("on-failure") => Condition::OnFailure,
        _ => Condition::Any,
    };
    Some(Service {
        id: text(s, "/ID")?.to_owned(),
        name: text(s, "/Spec/Name")?.to_owned(),
        mode,
        restart: Restart {
            condition,
            max_attempts: number(s, &format!("{policy}/MaxAttempts")).unwrap_or(0),
        },
        job_iteration: number(s, "/JobStatus/JobIteration/Index"),
        completed: number(s, "/ServiceStatus/CompletedTasks"),
    })
}

/// `GET /tasks`; a task in a state this does not know is left out.
pub fn parse_tasks(tasks: &Value) -> Vec<Task> {
    list(tasks)
        .filter_map(|t| {
            Some(Task {
                id: text(t, "/ID")?.to_owned(),
                service_id: text(t, "/ServiceID")?.to_owned(),
                slot: number(t, "/Slot").filter(|s| *s != 0),
                node_id: text(t, "/NodeID").map(str::to_owned),
                state: State::parse(text(t, "/Status/State")?)?,
                desired: State::parse(text(t, "/DesiredState")?)?,
                exit_code: t
                    .pointer("/Status/ContainerStatus/ExitCode")
                    .and_then(Value::as_i64),
                err: text(t, "/Status/Err").unwrap_or_default().to_owned(),
                created: TimeKey::parse(text(t, "/CreatedAt").unwrap_or_default()),
                at: TimeKey::parse(text(t, "/Status/Timestamp").unwrap_or_default()),
                job_iteration: number(t, "/JobIteration/Index"),
            })
        })
        .collect()
}

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
    pub done: u64,
    pub failed: Vec<&'a Task>,
    /// The service's tasks with an error, newest first (failed attempts included).
    pub errors: Vec<&'a Task>,
}

impl ServiceReport<'_> {
    /// Whether the service has got where `goal` wants it; `settled` says that Swarm has had
    /// time to create a global service's tasks (none then means: no node is eligible).
    fn reached(&self, goal: Goal, settled: bool) -> bool {
        if self.service.mode.is_global() && self.expected == 0 {
            return settled;
        }
        match (self.service.purpose(), goal) {
            (Purpose::Lasting, Goal::WorkDone) | (Purpose::Work, Goal::Infrastructure) => true,
            (Purpose::Lasting, _) => self.running + self.done >= self.expected,
            (Purpose::Work, Goal::Up) if !self.service.mode.is_job() => {
                self.running + self.done >= self.expected
            }
            (Purpose::Work, _) => self.done >= self.expected,
        }
    }

    /// Whether a failure of this service ends the wait for `goal`.
    fn counts_for(&self, goal: Goal) -> bool {
        goal != Goal::Infrastructure || self.service.purpose() == Purpose::Lasting
    }
}

/// Every service of the stack with its report.
pub fn reports<'a>(services: &'a [Service], tasks: &'a [Task]) -> Vec<ServiceReport<'a>> {
    services.iter().map(|s| report(s, tasks)).collect()
}

fn report<'a>(service: &'a Service, tasks: &'a [Task]) -> ServiceReport<'a> {
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
    let (mut running, mut done, mut failed, mut slots) = (0, 0, Vec::new(), 0);
    for task in newest.values() {
        match judge_slot(service, task) {
            Slot::Running => running += 1,
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

/// Judges the stack against `goal` (see `ServiceReport::reached` for `settled`).
pub fn judge<'a>(reports: &[ServiceReport<'a>], goal: Goal, settled: bool) -> Verdict<'a> {
    let counted = || reports.iter().filter(|r| r.counts_for(goal));
    let missing = counted().find_map(|r| {
        let task = r.errors.iter().find(|t| t.err.contains("No such image"))?;
        Some(Failure {
            service: r.service,
            task,
            missing_image: true,
        })
    });
    if let Some(failure) = missing {
        return Verdict::Failed(failure);
    }
    let first = counted()
        .flat_map(|r| r.failed.iter().map(move |t| (r.service, *t)))
        .min_by(|a, b| a.1.at.cmp(&b.1.at));
    if let Some((service, task)) = first {
        return Verdict::Failed(Failure {
            service,
            task,
            missing_image: false,
        });
    }
    let waiting: Vec<ServiceReport> = reports
        .iter()
        .filter(|r| !r.reached(goal, settled))
        .cloned()
        .collect();
    if waiting.is_empty() {
        Verdict::Reached
    } else {
        Verdict::Waiting(waiting)
    }
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
            c.running += (r.running + r.done).min(r.expected);
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    fn judged(services: Value, tasks: Value, goal: Goal, settled: bool) -> String {
        let services = parse_services(&services);
        let tasks = parse_tasks(&tasks);
        let reports = reports(&services, &tasks);
        match judge(&reports, goal, settled) {
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
    fn a_one_shot_task_that_exited_0_is_done_and_one_that_runs_is_up() {
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
}
