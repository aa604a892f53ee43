//! Job signals turned into events: handlers only record what arrived; every wait loop polls it.
//! The signal thread also tells this rank's guard at once (whatever the main thread is blocked
//! in, e.g. an MPI call towards a dead peer), and a guard's death is recorded like a signal.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::Duration;

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals as SignalIter;

/// The signals that mean "tear down": what mpirun, Hydra and Slurm send or forward.
pub const TEARDOWN_SIGNALS: [i32; 4] = [SIGINT, SIGTERM, SIGUSR1, SIGHUP];

/// Why this process tears down: a teardown signal, or an event recorded like one, so that every
/// wait loop ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// One of `TEARDOWN_SIGNALS`.
    Signal(i32),
    /// This host's guard died while the daemon was up (the teardown then reports the host).
    GuardLost,
    /// Another user bound a swarm port on this host (the whole job stops at once; the guard's
    /// verdict names the user).
    Intruder,
}

impl Cause {
    /// The number that stands for it where one number must do (an atomic, an MPI message): the
    /// signal's own, or a negative one for the events. Never 0.
    pub fn code(self) -> i32 {
        match self {
            Cause::Signal(sig) => sig,
            Cause::GuardLost => -1,
            Cause::Intruder => -2,
        }
    }

    /// The cause `code` stands for.
    pub fn from_code(code: i32) -> Cause {
        match code {
            -1 => Cause::GuardLost,
            -2 => Cause::Intruder,
            sig => Cause::Signal(sig),
        }
    }

    /// Whether it is a signal by which the launcher ends the job (see `launcher_ends_job`).
    pub fn launcher_ends_job(self) -> bool {
        matches!(self, Cause::Signal(sig) if launcher_ends_job(sig))
    }
}

/// A wait that a teardown cause ended, said as "interrupted by CAUSE while WHAT". A type, so that
/// whoever adds the cause to an error can tell one that already says it without reading words.
#[derive(Debug)]
pub struct Interrupted {
    pub cause: Cause,
    /// What was going on ("waiting for ..."), when the wait itself was interrupted.
    pub during: Option<String>,
}

impl Interrupted {
    pub fn during(cause: Cause, what: impl Into<String>) -> Self {
        Interrupted {
            cause,
            during: Some(what.into()),
        }
    }
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.during {
            Some(what) => write!(f, "interrupted by {} while {what}", self.cause),
            None => write!(f, "interrupted by {}", self.cause),
        }
    }
}

impl std::error::Error for Interrupted {}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Cause::Signal(sig) => match nix::sys::signal::Signal::try_from(sig) {
                Ok(s) => f.write_str(s.as_str()),
                Err(_) => write!(f, "signal {sig}"),
            },
            Cause::GuardLost => f.write_str("the death of a host's guard"),
            Cause::Intruder => f.write_str("another user's socket on a swarm port"),
        }
    }
}

/// Something the signal thread tells at once when a teardown signal arrives.
pub trait OnSignal: Send + Sync {
    fn on_signal(&self, sig: i32);
}

#[derive(Clone, Default)]
pub struct Signals {
    first: Arc<AtomicI32>,
    count: Arc<AtomicUsize>,
}

/// The process's installed signals (one per process), for `guard_lost`.
static INSTALLED: OnceLock<Signals> = OnceLock::new();
/// Set with --collect: the listeners hear only a second signal.
static FIRST_WAITS: AtomicBool = AtomicBool::new(false);

/// The first teardown signal goes only to the wait loops, not straight to the guards: the
/// daemon must stay up until the job's results are collected. A second signal still goes through.
pub fn first_signal_waits_for_collection() {
    FIRST_WAITS.store(true, Ordering::SeqCst);
}

/// Told by the signal thread; dropped listeners are skipped and forgotten.
static LISTENERS: Mutex<Vec<Weak<dyn OnSignal>>> = Mutex::new(Vec::new());

impl Signals {
    /// Installs the handlers; a thread records each arrival and tells the listeners.
    pub fn install() -> Result<Self> {
        if let Some(installed) = INSTALLED.get() {
            return Ok(installed.clone());
        }
        if crate::sys::fault::injected("signal-handlers") {
            anyhow::bail!("failed to install signal handlers: fault injected by the tests");
        }
        let signals = Signals::default();
        let mut iter =
            SignalIter::new(TEARDOWN_SIGNALS).context("failed to install signal handlers")?;
        let recorder = signals.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in iter.forever() {
                    recorder.record(Cause::Signal(sig));
                    // With --collect the main thread collects first, and decides.
                    if launcher_ends_job(sig) && !FIRST_WAITS.load(Ordering::SeqCst) {
                        stuck_watchdog::start(sig);
                    }
                    let nth = recorder.count.fetch_add(1, Ordering::SeqCst) + 1;
                    // With --collect the first signal must leave the daemon up for collecting
                    // (the main loop tears down after it); a second one means now.
                    if nth > 1 || !FIRST_WAITS.load(Ordering::SeqCst) {
                        tell_listeners(sig);
                    }
                }
            })
            .context("failed to start the signal thread")?;
        Ok(INSTALLED.get_or_init(|| signals).clone())
    }

    fn record(&self, cause: Cause) {
        let _ = self
            .first
            .compare_exchange(0, cause.code(), Ordering::SeqCst, Ordering::SeqCst);
        // Under the lock, so that a sleeper between its check and its wait cannot miss it.
        let _held = WAKE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        WAKE.notify_all();
    }

    /// Sleeps for `pause`, or less if a teardown signal arrives meanwhile: a wait loop can poll
    /// its other news rarely and still answer a signal at once.
    pub fn sleep(&self, pause: Duration) {
        let held = WAKE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if self.received().is_some() {
            return;
        }
        let _ = WAKE.wait_timeout(held, pause);
    }

    /// The first teardown signal received (or event recorded like one), if any.
    pub fn received(&self) -> Option<Cause> {
        match self.first.load(Ordering::SeqCst) {
            0 => None,
            code => Some(Cause::from_code(code)),
        }
    }

    /// A second signal means: stop waiting for anything, kill now.
    pub fn urgent(&self) -> bool {
        self.count.load(Ordering::SeqCst) >= 2
    }
}

static WAKE_LOCK: Mutex<()> = Mutex::new(());
static WAKE: Condvar = Condvar::new();

/// Registers a listener for teardown signals; it is told until it is dropped.
pub fn listen(listener: Weak<dyn OnSignal>) {
    let mut all = LISTENERS.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|l| l.strong_count() > 0);
    all.push(listener);
}

fn tell_listeners(sig: i32) {
    let live: Vec<Arc<dyn OnSignal>> = LISTENERS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    for l in live {
        l.on_signal(sig);
    }
}

/// Records that this host's guard died: every wait loop sees it as a teardown request.
pub fn guard_lost() {
    record_event(Cause::GuardLost);
}

/// Records that another user took a swarm port on this host.
pub fn intruder() {
    record_event(Cause::Intruder);
}

fn record_event(cause: Cause) {
    if let Some(signals) = INSTALLED.get() {
        signals.record(cause);
    }
}

/// Whether `sig` comes from a launcher that kills the ranks soon after it (Open MPI 4.1's mpirun
/// SIGKILLs them 1 s after its SIGTERM, Open MPI 5's 250 ms after; both also send it when a rank
/// died): a rank whose host is clean then has nothing to wait for. SIGUSR1 is never escalated.
pub fn launcher_ends_job(sig: i32) -> bool {
    sig == SIGINT || sig == SIGTERM || sig == SIGHUP
}

/// The last resort of a host leader whose main thread is stuck when the launcher ends the job:
/// Open MPI 4.1 can block a rank inside any MPI call that touches a dead peer (it retries the
/// connection), where no deadline of ours runs. The guard, told by the signal thread, cleans the
/// host all the same; this waits for the guard's verdict, tells the host's other ranks, and
/// leaves, instead of holding the launcher until it SIGKILLs the rank.
pub mod stuck_watchdog {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    /// Once the host is clean: how long the main thread has to reach the teardown, or past the
    /// time it said it would leave by, before it counts as stuck.
    const MARGIN: Duration = Duration::from_millis(50);

    static ARMED: AtomicBool = AtomicBool::new(false);
    static STARTED: AtomicBool = AtomicBool::new(false);
    static TORN_DOWN: AtomicBool = AtomicBool::new(false);
    static HOLDS: AtomicUsize = AtomicUsize::new(0);
    /// How long the watchdog waits for the guard's verdict (its teardown budget and a margin).
    static VERDICT_WITHIN: Mutex<Option<Duration>> = Mutex::new(None);
    static LEAVE_BY: Mutex<Option<Instant>> = Mutex::new(None);
    type Tell = Box<dyn Fn(i32) + Send>;
    static TELL_OTHERS: Mutex<Option<Tell>> = Mutex::new(None);

    /// The watchdog is armed while this lives: a host leader holds it through every MPI call
    /// that may touch a dead peer, and drops it once every host answered (or when it is done
    /// with MPI).
    #[must_use = "the watchdog is disarmed when this is dropped"]
    pub struct Armed(());

    impl Drop for Armed {
        fn drop(&mut self) {
            ARMED.store(false, Ordering::SeqCst);
        }
    }

    /// Arms the watchdog; it can act only once a guard is watched (`guard_started`).
    pub fn arm() -> Armed {
        ARMED.store(true, Ordering::SeqCst);
        Armed(())
    }

    /// This host's guard runs; its verdict is due within `budget` of a teardown signal.
    pub fn guard_started(budget: Duration) {
        *VERDICT_WITHIN.lock().unwrap_or_else(|e| e.into_inner()) = Some(budget);
    }

    /// The host's teardown is over: the guard gave its verdict, or the rank cleaned the host
    /// after the guard's death.
    pub fn torn_down() {
        TORN_DOWN.store(true, Ordering::SeqCst);
    }

    /// How the leader tells its host's other ranks the exit code, when it leaves this way.
    pub fn tell_others_with(tell: Tell) {
        *TELL_OTHERS.lock().unwrap_or_else(|e| e.into_inner()) = Some(tell);
    }

    /// The main thread is in the teardown and will have left by `when`, unless stuck.
    pub fn leaving_by(when: Instant) {
        *LEAVE_BY.lock().unwrap_or_else(|e| e.into_inner()) = Some(when);
    }

    fn armed() -> bool {
        ARMED.load(Ordering::SeqCst)
    }

    /// Held while the main thread does work of its own after the signal (stopping the user's
    /// command): it is busy, not stuck.
    pub struct Hold;

    impl Hold {
        pub fn new() -> Hold {
            HOLDS.fetch_add(1, Ordering::SeqCst);
            Hold
        }
    }

    impl Drop for Hold {
        fn drop(&mut self) {
            HOLDS.fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub(super) fn start(sig: i32) {
        let budget = *VERDICT_WITHIN.lock().unwrap_or_else(|e| e.into_inner());
        let Some(budget) = budget else { return };
        if !armed() || STARTED.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = std::thread::Builder::new()
            .name("stuck-watchdog".into())
            .spawn(move || watch(sig, budget));
    }

    fn watch(sig: i32, budget: Duration) {
        let clean = wait_for_verdict(Instant::now() + budget);
        loop {
            if !armed() {
                return;
            }
            let leave_by = *LEAVE_BY.lock().unwrap_or_else(|e| e.into_inner());
            let stuck_since = leave_by.unwrap_or(clean) + MARGIN;
            if HOLDS.load(Ordering::SeqCst) == 0 && Instant::now() >= stuck_since {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let code = 128 + sig;
        if let Some(tell) = TELL_OTHERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            tell(code);
        }
        tracing::debug!(
            "the main thread is stuck (inside MPI, towards a dead rank?) after {}: leaving",
            super::Cause::Signal(sig)
        );
        crate::sys::exit::leave_now(code);
    }

    /// Waits until the host's teardown is over, or `until`; returns when it stopped waiting.
    fn wait_for_verdict(until: Instant) -> Instant {
        while !TORN_DOWN.load(Ordering::SeqCst) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        Instant::now()
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn dropping_the_handle_disarms() {
            let armed = arm();
            assert!(super::armed());
            drop(armed);
            assert!(!super::armed());
        }

        /// Longer than the 3 s the watchdog used to give the guard: it waits for the verdict.
        #[test]
        fn the_watchdog_waits_for_the_verdict_within_the_budget() {
            let t = Instant::now();
            let teller = std::thread::spawn(|| {
                std::thread::sleep(Duration::from_millis(3300));
                torn_down();
            });
            let budget = Duration::from_secs(12);
            let done = wait_for_verdict(t + budget);
            teller.join().unwrap();
            let waited = done - t;
            assert!(
                waited >= Duration::from_millis(3300) && waited < Duration::from_secs(5),
                "{waited:?}"
            );
        }
    }
}

#[cfg(test)]
mod cause_tests {
    use super::*;

    /// The codes are what an older rank of the same job would send: signals as themselves, the
    /// events as -1 and -2; each reads back as itself.
    #[test]
    fn a_cause_survives_its_code_and_reads_well() {
        let all = [
            (Cause::Signal(SIGTERM), 15, "SIGTERM"),
            (Cause::Signal(SIGUSR1), 10, "SIGUSR1"),
            (Cause::Signal(99), 99, "signal 99"),
            (Cause::GuardLost, -1, "the death of a host's guard"),
            (Cause::Intruder, -2, "another user's socket on a swarm port"),
        ];
        for (cause, code, text) in all {
            assert_eq!(cause.code(), code);
            assert_eq!(Cause::from_code(code), cause);
            assert_eq!(cause.to_string(), text);
        }
        assert!(Cause::Signal(SIGTERM).launcher_ends_job());
        assert!(!Cause::Signal(SIGUSR1).launcher_ends_job());
        assert!(!Cause::GuardLost.launcher_ends_job() && !Cause::Intruder.launcher_ends_job());
    }
}
