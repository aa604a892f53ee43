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

/// Not a signal: this host's guard died while the daemon was up (recorded like a signal, so that
/// every wait loop ends and the run tears down; the teardown then reports the host).
pub const GUARD_LOST: i32 = -1;

/// Not a signal: another user bound a swarm port on this host (recorded like a signal, so that
/// the whole job stops at once; the guard's verdict names the user).
pub const INTRUDER: i32 = -2;

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
        let signals = Signals::default();
        let mut iter =
            SignalIter::new(TEARDOWN_SIGNALS).context("failed to install signal handlers")?;
        let recorder = signals.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in iter.forever() {
                    recorder.record(sig);
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

    fn record(&self, sig: i32) {
        let _ = self
            .first
            .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
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

    /// The first teardown signal received (or `GUARD_LOST`), if any.
    pub fn received(&self) -> Option<i32> {
        match self.first.load(Ordering::SeqCst) {
            0 => None,
            sig => Some(sig),
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
    record_event(GUARD_LOST);
}

/// Records that another user took a swarm port on this host.
pub fn intruder() {
    record_event(INTRUDER);
}

fn record_event(code: i32) {
    if let Some(signals) = INSTALLED.get() {
        signals.record(code);
    }
}

pub fn name(sig: i32) -> String {
    match sig {
        GUARD_LOST => return "the death of a host's guard".to_owned(),
        INTRUDER => return "another user's socket on a swarm port".to_owned(),
        _ => {}
    }
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| format!("signal {sig}"))
}
