//! Waiting with a deadline, in one place: for a child process (killed when it overstays) and for
//! a condition polled until it holds. Nothing mpiswarm waits for may hang a job's allocation.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// When a piece of work must end, and what set that moment: the phase it belongs to, or a limit
/// of its own that ends sooner. Every Engine API call takes one, so none can outlast its phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    at: Instant,
    set_by: SetBy,
}

/// What set a deadline, as an error names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetBy {
    /// The phase's deadline (the hosts' agreement, or rank 0's own a little before it).
    Phase,
    /// A limit of the work's own, shorter than what was left of the phase.
    Limit(Duration),
}

impl Deadline {
    /// The phase's deadline.
    pub fn phase(at: Instant) -> Self {
        Deadline {
            at,
            set_by: SetBy::Phase,
        }
    }

    /// A limit of its own from now, for work outside any phase (a ping, a clean-up).
    pub fn after(limit: Duration) -> Self {
        Deadline {
            at: later(Instant::now(), limit),
            set_by: SetBy::Limit(limit),
        }
    }

    /// The earlier of this deadline and `limit` from now.
    pub fn within(self, limit: Duration) -> Self {
        let own = Deadline::after(limit);
        if own.at < self.at { own } else { self }
    }

    pub fn instant(self) -> Instant {
        self.at
    }

    /// The time left, zero once passed.
    pub fn left(self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// What set it, for an error: "the phase's deadline", "its own limit of 30 s".
    pub fn set_by(self) -> String {
        match self.set_by {
            SetBy::Phase => "the phase's deadline".to_owned(),
            SetBy::Limit(limit) => format!("its own limit of {}", seconds(limit)),
        }
    }
}

/// `at + by`, or as far as an `Instant` goes.
fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by)
        .unwrap_or_else(|| at + Duration::from_secs(86_400 * 365))
}

/// A duration as errors print it: "4.2 s".
pub fn seconds(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Waits for `child` at most `timeout`; past it the child is killed and reaped, and `None` says
/// it did not finish. Polls `try_wait` rather than waiting on SIGCHLD: in the guard, a child
/// subreaper, another thread may reap the child first (ECHILD), and that must not be fatal; a
/// child reaped elsewhere counts as finished with status 0 (callers check the effect itself).
pub fn wait_or_kill(child: &mut Child, timeout: Duration) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(Some(status)),
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(nix::libc::ECHILD) => {
                return Ok(Some(std::os::unix::process::ExitStatusExt::from_raw(0)));
            }
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            // Already gone between the check and the kill counts as killed.
            let _ = child.kill();
            if !reap_within(child, REAP_AFTER_KILL) {
                tracing::warn!(
                    "pid {} did not end within {REAP_AFTER_KILL:?} of SIGKILL (uninterruptible \
                     sleep?): left unreaped",
                    child.id()
                );
            }
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(5).min(timeout));
    }
}

/// Calls `probe` every `every` until it returns `Some` or `deadline` passes (then `None`); the
/// probe runs at least once, and never again once the deadline has come (its Engine calls would
/// not be sent, and the caller's own message at the deadline says more).
pub fn poll_until<T>(
    deadline: Instant,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        std::thread::sleep(every.min(left));
        if Instant::now() >= deadline {
            return None;
        }
    }
}

/// As `poll_until`, for a probe whose cost grows with what it reads (a list of every swarm node):
/// the pause after each probe is `PACED_RATIO` times what the probe took, within `every` and
/// `at_most`, so the polled daemon spends at most a fixed share of its time answering.
pub fn poll_until_paced<T>(
    deadline: Instant,
    every: Duration,
    at_most: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    loop {
        let t = Instant::now();
        if let Some(v) = probe() {
            return Some(v);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let pause = (t.elapsed() * PACED_RATIO).clamp(every, at_most);
        std::thread::sleep(pause.min(left));
        if Instant::now() >= deadline {
            return None;
        }
    }
}

/// The pauses of a rank that polls MPI while it waits. Every poll drives MPI's progress engine
/// (about a millisecond of CPU here), so a rank that waits long polls less often: 5 ms at most
/// for the first half second, then 20 ms, then 50 ms after two seconds. At 64 hosts on 2 cores,
/// 64 ranks polling every 5 ms starved the daemons they waited for (joins stalled for minutes);
/// the longer pauses add little to a wait that is already seconds long.
pub struct Backoff {
    since: Instant,
    pause: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            since: Instant::now(),
            pause: Duration::from_micros(50),
        }
    }
}

impl Backoff {
    /// The next pause, without sleeping (for a caller that waits on something else meanwhile).
    pub fn next(&mut self) -> Duration {
        let waited = self.since.elapsed();
        let cap = if waited < Duration::from_millis(500) {
            Duration::from_millis(5)
        } else if waited < Duration::from_secs(2) {
            Duration::from_millis(20)
        } else {
            Duration::from_millis(50)
        };
        self.pause = (self.pause * 2).min(cap);
        self.pause
    }
}

/// A paced poll keeps its server busy at most 1 / (1 + PACED_RATIO) of the time.
const PACED_RATIO: u32 = 4;

/// The time left until `until`, if any worth starting a call with.
pub fn time_left(until: Instant) -> Option<Duration> {
    let left = until.saturating_duration_since(Instant::now());
    (left >= Duration::from_millis(1)).then_some(left)
}

/// How long a killed child may take to be reaped: SIGKILL takes effect at once unless the
/// process is in uninterruptible sleep (a hung mount, a stuck device), where waiting could block.
pub const REAP_AFTER_KILL: Duration = Duration::from_secs(1);

/// Reaps `child` if it ends within `limit` (true; also when another thread reaped it first);
/// false if it is still there, left unreaped rather than waited for without end.
pub fn reap_within(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return true,
            Err(e) if e.raw_os_error() == Some(nix::libc::ECHILD) => return true,
            Err(_) => return false,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_waits_for_the_earlier_of_its_limit_and_the_phase() {
        let phase = Deadline::phase(Instant::now() + Duration::from_secs(4));
        let short = phase.within(Duration::from_secs(1));
        assert!(short.left() <= Duration::from_secs(1));
        assert_eq!(short.set_by(), "its own limit of 1.0 s");
        let long = phase.within(Duration::from_secs(30));
        assert_eq!(long, phase);
        assert!(long.left() <= Duration::from_secs(4) && long.left() > Duration::from_secs(3));
        assert_eq!(long.set_by(), "the phase's deadline");
        let passed = Deadline::phase(Instant::now() - Duration::from_millis(5));
        assert!(passed.left().is_zero());
        assert_eq!(passed.within(Duration::from_secs(30)), passed);
    }

    #[test]
    fn a_child_that_overstays_is_killed() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let t = Instant::now();
        assert!(
            wait_or_kill(&mut child, Duration::from_millis(100))
                .unwrap()
                .is_none()
        );
        assert!(t.elapsed() < Duration::from_secs(5));
        let mut quick = std::process::Command::new("true").spawn().unwrap();
        assert!(
            wait_or_kill(&mut quick, Duration::from_secs(5))
                .unwrap()
                .is_some_and(|s| s.success())
        );
    }

    #[test]
    fn reaping_stops_at_its_limit() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let t = Instant::now();
        assert!(!reap_within(&mut child, Duration::from_millis(100)));
        assert!(t.elapsed() < Duration::from_secs(2));
        child.kill().unwrap();
        assert!(reap_within(&mut child, REAP_AFTER_KILL));
    }

    #[test]
    fn polling_stops_at_the_condition_or_the_deadline() {
        let mut n = 0;
        let got = poll_until(
            Instant::now() + Duration::from_secs(5),
            Duration::from_millis(1),
            || {
                n += 1;
                (n == 3).then_some(n)
            },
        );
        assert_eq!(got, Some(3));
        let deadline = Instant::now() + Duration::from_millis(20);
        let mut probes = Vec::new();
        let never: Option<()> = poll_until(deadline, Duration::from_millis(3), || {
            probes.push(Instant::now());
            None
        });
        assert!(never.is_none());
        // None at or after the deadline: its calls would not be sent.
        assert!(probes.iter().all(|t| *t < deadline), "{probes:?}");
        assert!(probes.len() >= 2);
        let mut late = Vec::new();
        let paced: Option<()> = poll_until_paced(
            deadline + Duration::from_millis(20),
            Duration::from_millis(3),
            Duration::from_millis(7),
            || {
                late.push(Instant::now());
                None
            },
        );
        assert!(paced.is_none());
        assert!(
            late.iter()
                .all(|t| *t < deadline + Duration::from_millis(20))
        );
    }

    #[test]
    fn paced_polling_waits_longer_after_a_slow_probe() {
        let mut calls = Vec::new();
        let start = Instant::now();
        let got = poll_until_paced(
            start + Duration::from_secs(5),
            Duration::from_millis(1),
            Duration::from_millis(500),
            || {
                calls.push(start.elapsed());
                std::thread::sleep(Duration::from_millis(20));
                (calls.len() == 3).then_some(())
            },
        );
        assert!(got.is_some());
        // 20 ms probes: at least 4 x 20 ms between the end of one and the start of the next.
        assert!(
            calls[2] - calls[1] >= Duration::from_millis(100),
            "{calls:?}"
        );
    }

    #[test]
    fn a_long_wait_polls_less_often() {
        let mut b = Backoff::default();
        let first: Vec<Duration> = (0..12).map(|_| b.next()).collect();
        assert_eq!(first[0], Duration::from_micros(100));
        assert_eq!(*first.last().unwrap(), Duration::from_millis(5));
        b.since -= Duration::from_secs(3);
        assert_eq!(b.next(), Duration::from_millis(10));
        assert_eq!(b.next(), Duration::from_millis(20));
        assert_eq!(b.next(), Duration::from_millis(40));
        assert_eq!(b.next(), Duration::from_millis(50));
    }
}
