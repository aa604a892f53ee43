//! Which running tasks have run long enough to count as up: a one-shot task that runs for a
//! moment and then fails must not make its stack look up while it happens to run.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::{State, Task};

/// How long a one-shot task must have been seen running to count as up; the Docker CLI waits
/// as long (a service's default update monitor) before it calls a service converged.
pub const STEADY_AFTER: Duration = Duration::from_secs(5);

/// When each running task was first seen running, as of the latest look. Measured on rank 0's
/// clock, look by look: the tasks' own timestamps come from their nodes' clocks.
#[derive(Debug)]
pub struct Steady {
    since: HashMap<String, Instant>,
    now: Instant,
}

impl Default for Steady {
    fn default() -> Self {
        Steady {
            since: HashMap::new(),
            now: Instant::now(),
        }
    }
}

impl Steady {
    /// Takes in a look at the tasks made at `now`: tasks no longer running are forgotten.
    pub fn observe(&mut self, tasks: &[Task], now: Instant) {
        let running: HashSet<&str> = tasks
            .iter()
            .filter(|t| t.state == State::Running)
            .map(|t| t.id.as_str())
            .collect();
        self.since.retain(|id, _| running.contains(id.as_str()));
        for id in running {
            self.since.entry(id.to_owned()).or_insert(now);
        }
        self.now = now;
    }

    /// Whether `task` has been running for `STEADY_AFTER` as of the latest look.
    pub fn is_steady(&self, task: &Task) -> bool {
        self.since
            .get(&task.id)
            .is_some_and(|since| self.now.saturating_duration_since(*since) >= STEADY_AFTER)
    }
}
