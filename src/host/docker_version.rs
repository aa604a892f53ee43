//! The host's Docker release, read from `dockerd --version` by the guard just before it writes
//! daemon.json: what daemon.json may say depends on it (Docker 20.10 refuses to start on a key
//! it does not know, and `default-network-opts` came with 24.0).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The first release whose daemon.json takes `default-network-opts`.
pub const NETWORK_DEFAULTS: (u32, u32) = (24, 0);

/// How long `dockerd --version` may take (it answers in about 60 ms here).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// `dockerd --version` under way.
pub struct Probe(Option<Child>);

impl Probe {
    /// Starts `dockerd --version` (the one on PATH, the one rootlesskit will run).
    pub fn start() -> Probe {
        let child = Command::new("dockerd")
            .arg("--version")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .inspect_err(|e| tracing::debug!("dockerd --version: {e}"))
            .ok();
        Probe(child)
    }

    /// Major and minor release, if dockerd answered in time with a version.
    pub fn finish(self) -> Option<(u32, u32)> {
        let out = crate::sys::child_output::output_within(self.0?, ANSWER_WITHIN).ok()?;
        let text = out.stdout_text();
        let version = out
            .status?
            .success()
            .then(|| crate::host::preflight::tools::major_minor(&text))
            .flatten();
        tracing::debug!("dockerd --version: {:?} -> {version:?}", text.trim());
        version
    }
}

/// `overlay_mtu` if this host's dockerd takes it as daemon.json's `default-network-opts`. Asked
/// by the guard, in its own session, not by the rank before MPI starts: under 32 ranks per host
/// `dockerd --version` took 0.7 s there, and every rank of the job waited in `MPI_Init` for
/// rank 0.
pub fn if_network_defaults(overlay_mtu: Option<u32>) -> Option<u32> {
    let mtu = overlay_mtu?;
    if crate::sys::fault::injected("slow-docker-version") {
        // As when the probe is starved of CPU by the host's many ranks.
        std::thread::sleep(SLOW_FAULT);
    }
    has_network_defaults(Probe::start().finish()).then_some(mtu)
}

/// How long the fault "slow-docker-version" holds up the probe.
pub const SLOW_FAULT: Duration = Duration::from_secs(4);

/// Whether this release's daemon.json takes `default-network-opts`.
pub fn has_network_defaults(version: Option<(u32, u32)>) -> bool {
    version.is_some_and(|v| v >= NETWORK_DEFAULTS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_defaults_from_24_on() {
        assert!(!has_network_defaults(None));
        assert!(!has_network_defaults(Some((20, 10))));
        assert!(!has_network_defaults(Some((23, 0))));
        assert!(has_network_defaults(Some((24, 0))));
        assert!(has_network_defaults(Some((26, 1))));
    }
}
