//! What a stack's services and tasks say, decided from the Engine API's JSON alone: each
//! service's mode and restart policy, each slot's newest task, and whether the stack reached a
//! goal, is still on its way, or failed for good. Swarm decides where tasks go (a global
//! service's constraints, a job's completions): this counts the tasks Swarm made, never nodes.

pub mod steady;
#[cfg(test)]
mod tests;
pub mod verdict;

use std::collections::HashMap;

use crate::swarm::api;

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

pub fn parse_nodes(nodes: &[api::Node]) -> Nodes {
    nodes
        .iter()
        .filter_map(|n| {
            Some((
                text(&n.id)?.to_owned(),
                given(&n.description.hostname)?.to_owned(),
            ))
        })
        .collect()
}

/// The host a task runs on, for messages (its node's ID when the node list lacks it).
pub fn host_of(nodes: &Nodes, task: &Task) -> String {
    match &task.node_id {
        Some(id) => nodes
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("node {id}")),
        None => "no node yet".to_owned(),
    }
}

/// A text field that says something: absent and empty are alike.
fn text(value: &str) -> Option<&str> {
    Some(value).filter(|s| !s.is_empty())
}

fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().and_then(text)
}

/// `GET /services` (with `status=true` for `ServiceStatus`); services of an unknown mode are
/// left out (a newer Swarm's: nothing here could judge them).
pub fn parse_services(services: &[api::Service]) -> Vec<Service> {
    services.iter().filter_map(parse_service).collect()
}

fn parse_service(s: &api::Service) -> Option<Service> {
    let modes = &s.spec.mode;
    let mode = if let Some(r) = &modes.replicated {
        Mode::Replicated {
            replicas: r.replicas.unwrap_or(1),
        }
    } else if modes.global.is_some() {
        Mode::Global
    } else if let Some(j) = &modes.replicated_job {
        // Swarm's defaults: one at a time, as many completions as concurrent tasks.
        let concurrent = j.max_concurrent.unwrap_or(1);
        Mode::ReplicatedJob {
            total: j.total_completions.unwrap_or(concurrent),
        }
    } else if modes.global_job.is_some() {
        Mode::GlobalJob
    } else {
        return None;
    };
    let policy = &s.spec.task_template.restart_policy;
    let condition = match given(&policy.condition) {
        Some("none") => Condition::Never,
        Some("on-failure") => Condition::OnFailure,
        _ => Condition::Any,
    };
    Some(Service {
        id: text(&s.id)?.to_owned(),
        name: text(&s.spec.name)?.to_owned(),
        mode,
        restart: Restart {
            condition,
            max_attempts: policy.max_attempts.unwrap_or(0),
        },
        job_iteration: s.job_status.as_ref().and_then(|j| j.job_iteration.index),
        completed: s.service_status.as_ref().and_then(|c| c.completed_tasks),
    })
}

/// `GET /tasks`; a task in a state this does not know is left out.
pub fn parse_tasks(tasks: &[api::Task]) -> Vec<Task> {
    tasks
        .iter()
        .filter_map(|t| {
            Some(Task {
                id: text(&t.id)?.to_owned(),
                service_id: text(&t.service_id)?.to_owned(),
                slot: t.slot.filter(|s| *s != 0),
                node_id: given(&t.node_id).map(str::to_owned),
                state: State::parse(given(&t.status.state)?)?,
                desired: State::parse(given(&t.desired_state)?)?,
                exit_code: t.status.container_status.as_ref().and_then(|c| c.exit_code),
                err: given(&t.status.err).unwrap_or_default().to_owned(),
                created: TimeKey::parse(given(&t.created_at).unwrap_or_default()),
                at: TimeKey::parse(given(&t.status.timestamp).unwrap_or_default()),
                job_iteration: t.job_iteration.and_then(|j| j.index),
            })
        })
        .collect()
}
