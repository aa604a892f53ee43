//! The host's Docker release, read from `dockerd --version` by the guard just before it writes
//! daemon.json: what daemon.json may say depends on it (Docker 20.10 refuses to start on a key
//! it does not know, and `default-network-opts` came with 24.0). Rank 0 reads its own while the
//! hosts agree, and a host whose `dockerd` is the same file (same size and modification time)
//! takes its word: one probe for the job instead of one per host (each is a Go program's start,
//! about 37 ms of CPU).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};

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

    /// The release, if dockerd has already answered; otherwise it is stopped (a slow probe is
    /// not waited for: each host then reads its own).
    pub fn finish_now(mut self) -> Option<(u32, u32)> {
        if crate::sys::fault::injected("slow-docker-version") {
            // As when the probe is starved of CPU by the host's many ranks.
            return None;
        }
        if crate::sys::fault::injected("await-docker-release") {
            // For a test that the hosts take the release, whatever the probe's pace that day.
            return self.finish();
        }
        match self.0.as_mut()?.try_wait() {
            Ok(Some(_)) => self.finish(),
            _ => None,
        }
    }

    /// Major and minor release, if dockerd answered in time with a version.
    pub fn finish(mut self) -> Option<(u32, u32)> {
        let out = crate::sys::child_output::output_within(self.0.take()?, ANSWER_WITHIN).ok()?;
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

impl Drop for Probe {
    /// A probe not finished is stopped and reaped: no process of the job outlives it.
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `overlay_mtu` if this host's dockerd takes it as daemon.json's `default-network-opts`: by the
/// release the rank passed on (`known`), else asked by the guard, in its own session, not by the
/// rank before MPI starts: under 32 ranks per host `dockerd --version` took 0.7 s there, and
/// every rank of the job waited in `MPI_Init` for rank 0.
pub fn if_network_defaults(overlay_mtu: Option<u32>, known: Option<(u32, u32)>) -> Option<u32> {
    let mtu = overlay_mtu?;
    let release = known.or_else(|| {
        if crate::sys::fault::injected("slow-docker-version") {
            // As when the probe is starved of CPU by the host's many ranks.
            std::thread::sleep(SLOW_FAULT);
        }
        Probe::start().finish()
    });
    has_network_defaults(release).then_some(mtu)
}

/// Which `dockerd` a release was read from: the file on the PATH, by size and modification time
/// (two builds of Docker do not share both).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    size: u64,
    modified_s: i64,
    modified_ns: i64,
}

impl Stamp {
    /// This host's `dockerd` (the one `dockerd --version` runs), if there is one.
    pub fn here() -> Option<Stamp> {
        let path = crate::host::preflight::tools::which("dockerd")?;
        let meta = std::fs::metadata(path).ok()?;
        use std::os::unix::fs::MetadataExt;
        Some(Stamp {
            size: meta.size(),
            modified_s: meta.mtime(),
            modified_ns: meta.mtime_nsec(),
        })
    }
}

/// Rank 0's Docker release, with the file it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shared {
    pub stamp: Stamp,
    pub release: (u32, u32),
}

impl Shared {
    /// The release for a host whose `dockerd` is `here`: rank 0's, if it is the same file.
    pub fn for_host(shared: Option<&Shared>, here: Option<Stamp>) -> Option<(u32, u32)> {
        shared.filter(|s| here == Some(s.stamp)).map(|s| s.release)
    }
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
    fn a_host_takes_rank_0s_release_only_for_the_same_file() {
        let stamp = Stamp {
            size: 80_000_000,
            modified_s: 1_700_000_000,
            modified_ns: 5,
        };
        let shared = Shared {
            stamp,
            release: (20, 10),
        };
        assert_eq!(Shared::for_host(Some(&shared), Some(stamp)), Some((20, 10)));
        let rebuilt = Stamp {
            modified_ns: 6,
            ..stamp
        };
        assert_eq!(Shared::for_host(Some(&shared), Some(rebuilt)), None);
        assert_eq!(Shared::for_host(Some(&shared), None), None);
        assert_eq!(Shared::for_host(None, Some(stamp)), None);
    }

    #[test]
    fn a_release_told_to_the_guard_is_not_probed_for() {
        // No dockerd is run: a release told decides alone (a PATH without dockerd would say None).
        assert_eq!(if_network_defaults(Some(65520), Some((26, 1))), Some(65520));
        assert_eq!(if_network_defaults(Some(65520), Some((20, 10))), None);
        assert_eq!(if_network_defaults(None, Some((26, 1))), None);
    }

    #[test]
    fn network_defaults_from_24_on() {
        assert!(!has_network_defaults(None));
        assert!(!has_network_defaults(Some((20, 10))));
        assert!(!has_network_defaults(Some((23, 0))));
        assert!(has_network_defaults(Some((24, 0))));
        assert!(has_network_defaults(Some((26, 1))));
    }
}
