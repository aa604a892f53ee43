//! Job signals turned into events: handlers only record what arrived; every wait loop polls it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use anyhow::{Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook::iterator::Signals as SignalIter;

/// The signals that mean "tear down": what mpirun, Hydra and Slurm send or forward.
pub const TEARDOWN_SIGNALS: [i32; 4] = [SIGINT, SIGTERM, SIGUSR1, SIGHUP];

#[derive(Clone, Default)]
pub struct Signals {
    first: Arc<AtomicI32>,
    count: Arc<AtomicUsize>,
}

impl Signals {
    /// Installs the handlers; a thread records each arrival.
    pub fn install() -> Result<Self> {
        let signals = Signals::default();
        let mut iter =
            SignalIter::new(TEARDOWN_SIGNALS).context("failed to install signal handlers")?;
        let recorder = signals.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in iter.forever() {
                    let _ =
                        recorder
                            .first
                            .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
                    recorder.count.fetch_add(1, Ordering::SeqCst);
                }
            })
            .context("failed to start the signal thread")?;
        Ok(signals)
    }

    /// The first teardown signal received, if any.
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

pub fn name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| format!("signal {sig}"))
}
