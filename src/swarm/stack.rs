//! Deploying the user's compose stack and waiting, through the manager, until it reaches a goal
//! (`stack_state` judges each service by its mode); a task that failed for good ends the wait
//! at once, named with its node, exit code and last log lines.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use crate::host::engine::Engine;
use crate::plan::config::TaskFailures;
use crate::swarm::api::{self, List};
use crate::swarm::stack_state::steady::Steady;
use crate::swarm::stack_state::verdict::{self, Counts, Failure, Goal, Verdict};
use crate::swarm::stack_state::{self, Nodes, Service, Task};
use crate::sys::deadline::Deadline;

/// How much of the CLI's output is kept for an error message (its end).
const KEEP_OUTPUT: usize = 16 << 10;

/// Whether the compose file places anything by mpiswarm's node labels (a plain text search: a
/// mention in a comment only costs the labels' writes). An unreadable file says no here; the
/// deploy then names the problem.
pub fn uses_node_labels(file: &Path) -> bool {
    std::fs::read_to_string(file).is_ok_and(|text| text.contains("node.labels.mpiswarm."))
}

/// `docker stack deploy`: compose files are parsed by the Docker CLI, which has no Engine API
/// equivalent, so this one step runs the CLI against the manager's socket.
pub fn deploy(engine: &Engine, file: &Path, name: &str, deadline: Instant) -> Result<()> {
    let child = Command::new("docker")
        .args([
            "stack",
            "deploy",
            "--resolve-image",
            "never",
            "--compose-file",
        ])
        .arg(file)
        .arg(name)
        .env(
            "DOCKER_HOST",
            format!("unix://{}", engine.socket().display()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context(
            "failed to run `docker stack deploy` (is the docker CLI installed on rank 0's node?)",
        )?;
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(1));
    // Both pipes are read while the CLI runs: a deploy that prints more than a pipe holds
    // (many services, long warnings) would otherwise block until the deadline.
    let out = crate::sys::child_output::output_within(child, left)?;
    let Some(status) = out.status else {
        bail!(
            "`docker stack deploy` of {} did not finish before the deadline: raise --timeout if \
             the manager is only slow",
            file.display()
        );
    };
    if !status.success() {
        // The end of an error message is what matters.
        let err =
            String::from_utf8_lossy(&out.stderr[out.stderr.len().saturating_sub(KEEP_OUTPUT)..]);
        // Docker's CLI learnt the job modes in compose files in 23.0 (its engine API in 20.10).
        let hint = if err.contains("Unknown mode: replicated-job")
            || err.contains("Unknown mode: global-job")
        {
            "\n(this docker CLI cannot deploy job modes from a compose file: that needs docker >= \
             23.0, e.g. Debian 13's 26.1; with Debian 12's 20.10, make one-shot work a service with \
             restart_policy condition none)"
        } else {
            ""
        };
        bail!(
            "failed to deploy the stack {name} from {} ({status}): {}{hint}",
            file.display(),
            err.trim()
        );
    }
    Ok(())
}

/// How long Swarm may take to give a global service its tasks; none after that means that no
/// node is eligible (its orchestrator creates them as soon as the service exists).
const GLOBAL_SETTLE: Duration = Duration::from_secs(5);
/// How often a wait asks the manager.
const POLL: Duration = Duration::from_millis(250);
/// Lines of a failed task's log shown with its failure.
const LOG_LINES: usize = 12;
/// The most a failed task's log lines may add to the wait.
const LOG_TIMEOUT: Duration = Duration::from_secs(3);

/// A stack as the manager sees it at one moment (its nodes are read only for a message).
pub struct Snapshot {
    pub services: Vec<Service>,
    pub tasks: Vec<Task>,
}

impl Snapshot {
    pub fn take(engine: &Engine, name: &str, deadline: Deadline) -> Result<Snapshot> {
        let filter = json!({"label": [format!("com.docker.stack.namespace={name}")]}).to_string();
        let filter = encode(&filter);
        // `status=true` (API 1.41) adds Swarm's own counts; jobs' completions are read there.
        let services: List<api::Service> = api::get(
            engine,
            &format!("/services?status=true&filters={filter}"),
            deadline,
        )?;
        let tasks: List<api::Task> =
            api::get(engine, &format!("/tasks?filters={filter}"), deadline)?;
        Ok(Snapshot {
            services: stack_state::parse_services(&services.0),
            tasks: stack_state::parse_tasks(&tasks.0),
        })
    }
}

/// The swarm's nodes for a message; without them, messages name node IDs.
fn nodes(engine: &Engine, deadline: Deadline) -> Nodes {
    match api::get::<List<api::Node>>(engine, "/nodes", deadline) {
        Ok(nodes) => stack_state::parse_nodes(&nodes.0),
        Err(e) => {
            tracing::debug!("failed to list the swarm's nodes: {e:#}");
            Nodes::default()
        }
    }
}

/// Rank 0's watch over the stack from its deploy to the teardown: a task that fails for good
/// is reported at once, whenever it fails (each once), and ends the run unless failures are
/// allowed (`--allow-task-failures`).
pub struct Watch<'a> {
    engine: &'a Engine,
    name: &'a str,
    failures: TaskFailures,
    /// The failed tasks already reported.
    reported: HashSet<String>,
    /// When the next look is due while the swarm is in use.
    next: Instant,
    /// The manager did not answer the latest look (said once, until it answers again).
    unanswered: bool,
}

/// What a look at the stack found while the swarm is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Fine,
    /// A task failed for good (reported), and the run must end and fail with this code: the
    /// task's exit code (1 if it had none), as `--until-stack-jobs-complete` ends.
    Failed(i32),
}

/// Waits until a stack reaches `goal`, a failed task failing the wait (see `Watch::wait_for`).
pub fn wait_for(
    engine: &Engine,
    name: &str,
    goal: Goal,
    deadline: Instant,
    on_progress: impl FnMut(Counts),
) -> Result<()> {
    Watch::new(engine, name, TaskFailures::EndRun).wait_for(goal, deadline, on_progress)
}

/// How often the watch looks while the swarm is in use...
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// ...or less often, so that looks keep the manager busy at most 1/WATCH_COST_RATIO of the time
/// (a stack of thousands of tasks: its task list is megabytes of JSON).
const WATCH_COST_RATIO: u32 = 20;
/// How long one call of a look may take while the swarm is in use: rank 0 leaves MPI (its
/// heartbeats, a passed-on signal) alone meanwhile.
const WATCH_CALL_TIMEOUT: Duration = Duration::from_secs(2);

impl<'a> Watch<'a> {
    pub fn new(engine: &'a Engine, name: &'a str, failures: TaskFailures) -> Self {
        Watch {
            engine,
            name,
            failures,
            reported: HashSet::new(),
            next: Instant::now(),
            unanswered: false,
        }
    }

    /// Waits until the stack reaches `goal`: fails as soon as a task fails for good (naming its
    /// service, node, exit code and last log lines; allowed failures are warnings), and at the
    /// deadline with what it still waits for. `on_progress` hears the counts when they change.
    pub fn wait_for(
        &mut self,
        goal: Goal,
        deadline: Instant,
        mut on_progress: impl FnMut(Counts),
    ) -> Result<()> {
        let (engine, name) = (self.engine, self.name);
        let start = Instant::now();
        let mut last = None;
        let mut steady = Steady::default();
        loop {
            let snap = Snapshot::take(engine, name, Deadline::phase(deadline))
                .with_context(|| format!("failed to read the state of stack {name}"))?;
            steady.observe(&snap.tasks, Instant::now());
            let reports = verdict::reports(&snap.services, &snap.tasks, &steady);
            if self.failures == TaskFailures::Allowed {
                self.warn_new(&verdict::failed_for_good(&reports, goal), deadline);
            }
            let counts = verdict::counts(&reports, goal);
            if last != Some(counts) {
                on_progress(counts);
                last = Some(counts);
            }
            let settled = start.elapsed() >= GLOBAL_SETTLE;
            match verdict::judge(&reports, goal, settled, self.failures) {
                Verdict::Reached => {
                    warn_taskless(name, &reports);
                    return Ok(());
                }
                Verdict::Failed(failure) => {
                    let nodes = nodes(engine, Deadline::phase(deadline));
                    self.reported.insert(failure.task.id.clone());
                    bail!(failure_message(engine, &failure, &nodes, deadline))
                }
                // The last look before the deadline: a next one could not be answered in time.
                Verdict::Waiting(waiting) if Instant::now() + POLL >= deadline => {
                    let nodes = nodes(engine, Deadline::phase(deadline));
                    let lines: Vec<String> = waiting
                        .iter()
                        .map(|r| verdict::describe_waiting(r, &nodes))
                        .collect();
                    bail!(
                        "stack {name} was not up before the deadline ({counts}); still waiting \
                         for:\n{}",
                        lines.join("\n")
                    );
                }
                Verdict::Waiting(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// A look if one is due (the swarm in use: rank 0 calls this between its other duties).
    pub fn poll(&mut self) -> Health {
        if Instant::now() < self.next {
            return Health::Fine;
        }
        self.look()
    }

    /// A look now (also when the command has ended: a failure since the last look counts).
    pub fn look(&mut self) -> Health {
        let (engine, name) = (self.engine, self.name);
        let began = Instant::now();
        let snap = Snapshot::take(engine, name, Deadline::after(WATCH_CALL_TIMEOUT));
        let took = began.elapsed();
        tracing::trace!("stack {name}: looked in {took:?}");
        // A slow manager is asked less often: the watch must not become its load.
        self.next = Instant::now() + WATCH_EVERY.max(took * WATCH_COST_RATIO);
        let snap = match snap {
            Ok(snap) => snap,
            Err(e) => {
                if !self.unanswered {
                    tracing::warn!(
                        "failed to read the state of stack {name}: {e:#} (asking again; a task's \
                         failure is reported once the manager answers)"
                    );
                }
                self.unanswered = true;
                return Health::Fine;
            }
        };
        if std::mem::take(&mut self.unanswered) {
            tracing::info!("stack {name}: the manager answers again");
        }
        // Only failures matter now: no task has to be steady.
        let reports = verdict::reports(&snap.services, &snap.tasks, &Steady::default());
        let until = Instant::now() + LOG_TIMEOUT;
        let failed = verdict::failed_for_good(&reports, Goal::Up);
        let fatal = match self.failures {
            TaskFailures::Allowed => verdict::missing_image(&reports, Goal::Up),
            TaskFailures::EndRun => verdict::missing_image(&reports, Goal::Up)
                .or_else(|| failed.iter().find(|f| self.is_new(f)).cloned()),
        };
        let Some(failure) = fatal else {
            self.warn_new(&failed, until);
            return Health::Fine;
        };
        let nodes = nodes(engine, Deadline::after(WATCH_CALL_TIMEOUT));
        self.reported.insert(failure.task.id.clone());
        tracing::error!(
            "stack {name}: {}",
            failure_message(engine, &failure, &nodes, until)
        );
        Health::Failed(failure.exit_code())
    }

    fn is_new(&self, failure: &Failure) -> bool {
        !self.reported.contains(&failure.task.id)
    }

    /// Allowed failures: each reported once, as a warning.
    fn warn_new(&mut self, failed: &[Failure], deadline: Instant) {
        let new: Vec<&Failure> = failed.iter().filter(|f| self.is_new(f)).collect();
        if new.is_empty() {
            return;
        }
        let nodes = nodes(self.engine, Deadline::after(WATCH_CALL_TIMEOUT));
        for failure in new {
            self.reported.insert(failure.task.id.clone());
            tracing::warn!(
                "stack {} (failures allowed: the run goes on): {}",
                self.name,
                failure_message(self.engine, failure, &nodes, deadline)
            );
        }
    }
}

/// Where the work of a stack stands (`--until-stack-jobs-complete`).
#[derive(Debug)]
pub enum Work {
    Running(Counts),
    /// Every task of every work service exited 0.
    Done(Counts),
    /// The earliest task that failed for good: the run's exit code and what to say.
    Failed {
        code: i32,
        message: String,
    },
}

/// How long one look at the work may take: rank 0 sends heartbeats between looks.
const WORK_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One look at the stack's work; `settled` as for `verdict::judge`.
pub fn work(engine: &Engine, name: &str, settled: bool) -> Result<Work> {
    let snap = Snapshot::take(engine, name, Deadline::after(WORK_CALL_TIMEOUT))
        .with_context(|| format!("failed to read the state of stack {name}"))?;
    let reports = verdict::reports(&snap.services, &snap.tasks, &Steady::default());
    let counts = verdict::counts(&reports, Goal::WorkDone);
    Ok(
        match verdict::judge(&reports, Goal::WorkDone, settled, TaskFailures::EndRun) {
            Verdict::Reached => Work::Done(counts),
            Verdict::Waiting(_) => Work::Running(counts),
            Verdict::Failed(failure) => {
                let nodes = nodes(engine, Deadline::after(WORK_CALL_TIMEOUT));
                Work::Failed {
                    code: failure.exit_code(),
                    message: failure_message(
                        engine,
                        &failure,
                        &nodes,
                        Instant::now() + LOG_TIMEOUT,
                    ),
                }
            }
        },
    )
}

/// `--until-stack-jobs-complete` needs work to wait for: a service whose tasks end. Warns about work
/// Swarm retries without end (a failing task then never ends the run).
pub fn check_work(engine: &Engine, name: &str, deadline: Instant) -> Result<()> {
    let snap = Snapshot::take(engine, name, Deadline::phase(deadline))?;
    let work: Vec<&Service> = snap
        .services
        .iter()
        .filter(|s| s.purpose() == stack_state::Purpose::Work)
        .collect();
    if work.is_empty() {
        bail!(
            "--until-stack-jobs-complete: stack {name} has no service whose tasks end (deploy mode \
             replicated-job or global-job, or restart_policy condition none or on-failure): \
             there is nothing to wait for"
        );
    }
    for s in work.iter().filter(|s| s.retries_forever()) {
        tracing::warn!(
            "stack {name}: Swarm restarts the failed tasks of {} ({}) without limit: a failing \
             task will not end the run (set restart_policy condition none, or max_attempts)",
            s.name,
            s.mode.as_str()
        );
    }
    Ok(())
}

/// A global service Swarm gave no task: no node matches its constraints or platforms.
fn warn_taskless(name: &str, reports: &[verdict::ServiceReport]) {
    for r in reports
        .iter()
        .filter(|r| r.expected == 0 && r.service.mode.is_global())
    {
        tracing::warn!(
            "stack {name}: service {} ({}) has no task: no node matches its placement constraints",
            r.service.name,
            r.service.mode.as_str()
        );
    }
}

/// A failed task's description with the last lines of its log, read through the manager
/// (which gathers them from the task's node) as time allows.
pub fn failure_message(
    engine: &Engine,
    failure: &Failure,
    nodes: &Nodes,
    deadline: Instant,
) -> String {
    let mut text = failure.describe(nodes);
    if failure.task.exit_code.is_none() {
        // No container ran (a rejected task): there is no log to read.
        return text;
    }
    if crate::sys::deadline::time_left(deadline).is_none() {
        text.push_str("\n  (its log was not read: no time was left before the deadline)");
        return text;
    }
    let limit = Deadline::phase(deadline).within(LOG_TIMEOUT);
    match log_tail(engine, &failure.task.id, LOG_LINES, limit) {
        Ok(lines) if lines.is_empty() => text.push_str("\n  (its log is empty)"),
        Ok(lines) => {
            text.push_str("\n  last lines of its log:");
            for line in lines {
                text.push_str(&format!("\n    {line}"));
            }
        }
        Err(e) => text.push_str(&format!("\n  (failed to read its log: {e:#})")),
    }
    text
}

/// The last `lines` lines a task wrote (stdout and stderr, in order).
pub fn log_tail(
    engine: &Engine,
    task: &str,
    lines: usize,
    deadline: Deadline,
) -> Result<Vec<String>> {
    let path = format!("/tasks/{task}/logs?stdout=1&stderr=1&tail={lines}");
    let (response, _) = engine.get_bounded(&path, 256 << 10, deadline)?;
    if !response.is_success() {
        bail!("GET {path}: {}", response.message());
    }
    let mut kept: Vec<String> = crate::host::engine::frames(&response.body)
        .into_iter()
        .flat_map(|(_, payload)| payload.split(|b| *b == b'\n'))
        .filter(|l| !l.is_empty())
        .map(|l| String::from_utf8_lossy(l).trim_end().to_owned())
        .collect();
    let skip = kept.len().saturating_sub(lines);
    kept.drain(..skip);
    Ok(kept)
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded() {
        assert_eq!(encode("{\"a\":1}"), "%7B%22a%22%3A1%7D");
    }
}
