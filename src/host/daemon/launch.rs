//! One host's rootless daemon as a rank sees it: checked and launched (possibly while MPI is
//! still starting), waited for until its Engine API answers, then prepared for the swarm.
//! Dropping it tears the host down through its guard.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use serde_json::json;
use tracing::debug;

use crate::host::engine::Engine;
use crate::host::guard::handle::GuardHandle;
use crate::host::guard::protocol::GuardEvent;
use crate::host::preflight::check::Check;
use crate::host::statedir::StateDir;
use crate::output::report::Timeline;
use crate::plan::config::{Network, UpConfig};
use crate::sys::deadline::Deadline;
use crate::sys::signals::{Interrupted, Signals};

/// How long a host, its daemon up, waits for the guard's word on the swarm ports' accept queues.
const QUEUES_WAIT: Duration = Duration::from_secs(5);

/// One host's running daemon; dropping it tears the host down.
pub struct HostDaemon {
    pub guard: GuardHandle,
    /// Held until the host is torn down (see statedir::hold_run_lock).
    pub run_lock: std::fs::File,
    pub engine: Engine,
    pub addr: Ipv4Addr,
    pub network: Network,
    /// The host's labels were in daemon.json from the start (else they still need a reload).
    pub labelled: bool,
}

impl HostDaemon {
    /// Where swarm's control port listens: every address of the daemon's own namespace on the
    /// overlay path (slirp4netns forwards the host's address to it), only the advertise address
    /// in the node's namespace on the host path.
    pub fn listen_addr(&self) -> String {
        match self.network {
            Network::Overlay { .. } => "0.0.0.0:2377".to_owned(),
            Network::Host => format!("{}:2377", self.addr),
        }
    }
}

/// A daemon whose guard has been started, not yet answering.
pub struct Launched {
    host: String,
    /// Held for the rank's life (see statedir::hold_run_lock).
    run_lock: std::fs::File,
    guard: GuardHandle,
    addr: Ipv4Addr,
    network: Network,
    warnings: Vec<Check>,
    started: Instant,
    labelled: bool,
}

/// Checks the host and starts its guard and daemon without waiting for it: this can run while
/// MPI is still starting up. `labels` (`key=value`): the host's labels, if already known;
/// `docker_release`: the host's Docker release, if already known.
pub fn launch(
    cfg: &UpConfig,
    job: &str,
    host: &str,
    labels: &[String],
    docker_release: Option<(u32, u32)>,
    tl: &mut Timeline,
) -> Result<Launched> {
    let t = Instant::now();
    let addr = crate::host::identity::advertise_addr(&cfg.host.addr)?;
    let warnings = if cfg.preflight {
        crate::host::preflight::require(&cfg.host, addr, cfg.network)?
    } else {
        Vec::new()
    };
    // Overlays the user creates get mpiswarm's MTU where daemon.json can say so: the guard
    // reads the Docker release (overlays only: the host path has none).
    let overlay_default_mtu = (!cfg.network.is_host()).then_some(cfg.overlay_mtu);
    tl.done("checks", t);
    let started = Instant::now();
    let dir = StateDir::create(&cfg.host.state_base, job, host)?;
    let run_lock = crate::host::statedir::hold_run_lock(&dir.path)?;
    let guard = GuardHandle::spawn(
        dir,
        addr,
        cfg.network,
        cfg.vxlan_nolearning,
        overlay_default_mtu,
        docker_release,
        labels,
    )?;
    Ok(Launched {
        host: host.to_owned(),
        run_lock,
        guard,
        addr,
        network: cfg.network,
        warnings,
        started,
        labelled: !labels.is_empty(),
    })
}

impl Launched {
    /// Waits until the daemon's API answers, then creates `docker_gwbridge`.
    pub fn wait(
        self,
        signals: &Signals,
        deadline: Instant,
        tl: &mut Timeline,
        speak: bool,
    ) -> Result<HostDaemon> {
        for w in &self.warnings {
            // Hosts are usually alike: one voice for the warnings, the others only when asked.
            if speak {
                tracing::warn!("{}: {} ({})", w.name, w.detail, w.fix);
            } else {
                debug!("{}: {} ({})", w.name, w.detail, w.fix);
            }
        }
        let engine = Engine::new(&self.host, self.guard.dir.socket());
        // Until the socket exists a ping only costs a client's set-up; a rank waiting for its
        // daemon polls less often the longer it waits (the daemons of many simulated hosts share
        // the same cores as the waiting ranks).
        let mut backoff = crate::sys::deadline::Backoff::default();
        // Ready also means the published ports take a burst of joins: the guard's word on their
        // accept queues (it comes when slirp4netns listens, usually before the API answers).
        let mut queues_told = !self.network.slirp4netns_forwards();
        let ping = || Deadline::phase(deadline).within(Duration::from_millis(500));
        while !(engine.socket().exists() && engine.ping(ping())) {
            queues_told |= self.take_guard_news(backoff.next())?;
            if let Some(cause) = signals.received() {
                return Err(Interrupted::during(cause, "the daemon was starting").into());
            }
            if Instant::now() >= deadline {
                return Err(self.failed(&format!(
                    "the daemon's API at {} did not answer before the deadline",
                    engine.socket().display()
                )));
            }
        }
        self.await_deep_queues(queues_told, deadline)?;
        tl.done("daemon", self.started);
        // The overlay's gateway bridge; the host path has no overlay (and no bridges).
        if !self.network.is_host() {
            let t = Instant::now();
            create_gwbridge(&engine, Deadline::phase(deadline))?;
            tl.done("gwbridge", t);
        }
        debug!(
            "daemon up at {} (guard pid {})",
            engine.socket().display(),
            self.guard.pid()
        );
        Ok(HostDaemon {
            guard: self.guard,
            run_lock: self.run_lock,
            engine,
            addr: self.addr,
            network: self.network,
            labelled: self.labelled,
        })
    }

    /// Waits (briefly) for the guard's word on the published ports' accept queues, unless it
    /// came already. A slirp4netns that listens late only costs joins a retransmission each, so
    /// past `QUEUES_WAIT` the host goes on, saying so, and the guard deepens them when it can.
    fn await_deep_queues(&self, told: bool, deadline: Instant) -> Result<()> {
        let until = deadline.min(Instant::now() + QUEUES_WAIT);
        let mut told = told;
        let mut backoff = crate::sys::deadline::Backoff::default();
        while !told {
            if Instant::now() >= until {
                tracing::warn!(
                    "the guard did not say within {} s whether the swarm ports' accept queues \
                     were deepened (slirp4netns has not listened on all of them yet): until it \
                     does, hosts that connect at once wait a second for a retransmission",
                    QUEUES_WAIT.as_secs()
                );
                return Ok(());
            }
            told = self.take_guard_news(backoff.next())?;
        }
        Ok(())
    }

    /// The guard's news so far (a wait of `wait` for more paces the caller's loop): whether it
    /// said how the accept queues went; an error if the daemon died.
    fn take_guard_news(&self, wait: Duration) -> Result<bool> {
        let mut wait = wait;
        let mut queues_told = false;
        while let Some(event) = self.guard.next_event(wait) {
            wait = Duration::ZERO;
            match event {
                GuardEvent::Exited(status) => {
                    return Err(self.failed(&format!(
                        "the rootless daemon exited during start-up ({status})"
                    )));
                }
                // Not a failure: the guard started rootlesskit again after its start-up race
                // (its log says so too); the wait goes on for the new one.
                GuardEvent::Restarted { .. } => debug!("guard: {event}"),
                // Only a guard that died sends a verdict now: it says what happened.
                GuardEvent::Dirty(what) => return Err(self.failed(&what)),
                GuardEvent::Backlog(Err(_)) => {
                    queues_told = true;
                    tracing::warn!(
                        "{event}: when many hosts connect at once, some wait a second for a retransmission"
                    );
                }
                GuardEvent::Backlog(Ok(_)) => {
                    queues_told = true;
                    debug!("guard: {event}");
                }
                _ => debug!("guard: {event}"),
            }
        }
        Ok(queues_told)
    }

    /// A start-up failure with the end of the daemon's log.
    fn failed(&self, what: &str) -> anyhow::Error {
        anyhow!(
            "{what}; last lines of {}:\n{}",
            self.guard.dir.log().display(),
            self.guard.dir.log_tail(12)
        )
    }
}

/// docker_gwbridge must exist before the swarm does, with inter-container traffic allowed, or
/// the daemon makes one with defaults unsuited to the rootless network.
fn create_gwbridge(engine: &Engine, deadline: Deadline) -> Result<()> {
    let body = json!({
        "Name": "docker_gwbridge",
        "Driver": "bridge",
        "Options": {
            "com.docker.network.bridge.enable_icc": "true",
            "com.docker.network.bridge.enable_ip_masquerade": "true",
            "com.docker.network.bridge.name": "docker_gwbridge",
            // As large as slirp4netns' link behind it (Docker's default is 1500).
            crate::plan::mtu::DRIVER_OPTION: crate::plan::mtu::SLIRP_MTU.to_string(),
        },
        "IPAM": {"Config": [{"Subnet": "172.30.0.0/16"}]},
    });
    let response = engine.request("POST", "/networks/create", Some(&body), deadline)?;
    match response.status {
        200 | 201 | 409 => Ok(()),
        code => bail!(
            "failed to create docker_gwbridge ({code}): {}",
            response.message()
        ),
    }
}
