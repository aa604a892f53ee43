//! The per-host state directory: where it lives, what is in it, and who may see it.
//!
//! Layout (all private to the user; documented in README.md):
//!
//! ```text
//! $BASE/mpiswarm-<uid>/              0700, owned by the user, never a symlink
//!   <job>-<host>/                    0700: one per job and host (hosts may share /tmp)
//!     guard.json                     the guard's pid and start time: `cleanup` skips live jobs
//!     daemon.log                     rootlesskit and dockerd output (its tail is shown on failure)
//!     daemon.json                    the dockerd configuration mpiswarm wrote
//!     docker.sock                    the Engine API
//!     rk/                            rootlesskit's state (its API and slirp4netns sockets)
//!     tmp/                           the daemons' TMPDIR (e.g. containerd's stack dumps)
//!     data/  run/                    dockerd's data root and exec root
//!   <job>-<host>.end                 the leader's socket: its host's other ranks hear the end there
//! ```

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::sys::user_root::{self, UserRoot};

/// Longest Unix socket path below the state directory (containerd's ttrpc socket), so that
/// `sun_path`'s 108 bytes are never exceeded.
const LONGEST_SOCKET_SUFFIX: &str = "/run/containerd/containerd.sock.ttrpc";
pub const SUN_PATH_MAX: usize = 107;

/// What `guard.json` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GuardRecord {
    pub pid: i32,
    pub start_time: u64,
    pub host: String,
    pub job: String,
}

impl GuardRecord {
    /// Reads a run's guard record, for `cleanup`.
    pub fn read(dir: &Path) -> Option<GuardRecord> {
        let mut text = String::new();
        std::fs::File::open(
            StateDir {
                path: dir.to_path_buf(),
            }
            .guard_record(),
        )
        .ok()?
        .read_to_string(&mut text)
        .ok()?;
        serde_json::from_str(&text).ok()
    }

    /// True while the guard that wrote this record is still running (pid and start time both
    /// match).
    pub fn is_alive(&self) -> bool {
        crate::sys::procfs::still_running(self.pid, self.start_time)
    }
}

#[derive(Debug, Clone)]
pub struct StateDir {
    pub path: PathBuf,
}

/// `$BASE/mpiswarm-<uid>`: every run of this user on this host lives below it.
pub fn user_root(base: &Path) -> PathBuf {
    user_root::path_under(base)
}

/// Job directories are named `<job>-<host>`; job keys never contain '-'.
pub fn job_dir_name(job: &str, host: &str) -> String {
    format!("{job}-{host}")
}

/// The host a job directory's name (or its end socket's, `<job>-<host>.end`) is for: everything
/// after the first '-' (host names may hold '-', job keys never do).
pub fn host_of_entry(name: &str) -> Option<&str> {
    let (job, host) = name.strip_suffix(".end").unwrap_or(name).split_once('-')?;
    (!job.is_empty() && !host.is_empty()).then_some(host)
}

/// Refuses a per-user root that is not a real directory owned by this user (a missing one is
/// fine: nothing to refuse).
pub fn check_user_root(root: &Path) -> Result<()> {
    UserRoot::open(root).map(drop)
}

/// The run lock: every process of a live run (its rank and its guard) holds a shared lock on
/// `run.lock` in the state directory, so `cleanup` can tell a live run from a dead one without
/// trusting pids (the lock goes with the last of them, whatever kills it).
pub fn hold_run_lock(dir: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("run.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("failed to open {}", path.display()))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockShared)
        .with_context(|| format!("failed to lock {}", path.display()))?;
    Ok(file)
}

/// Whether some process holds the run lock of `dir` (a missing lock file proves nothing).
pub fn run_lock_held(dir: &Path) -> Option<bool> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(dir.join("run.lock"))
        .ok()?;
    Some(rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err())
}

/// This user's state directories under `root`: real directories only (a symlink is never
/// followed), owned by this user.
pub fn state_dirs_under(root: &Path) -> Vec<PathBuf> {
    let me = nix::unistd::getuid().as_raw();
    std::fs::read_dir(root)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir() && m.uid() == me))
                .collect()
        })
        .unwrap_or_default()
}

impl StateDir {
    pub fn path_for(base: &Path, job: &str, host: &str) -> PathBuf {
        user_root(base).join(job_dir_name(job, host))
    }

    /// Checks that the socket paths below `path` fit in a Unix socket address.
    pub fn check_socket_length(path: &Path) -> Result<()> {
        let longest = path.as_os_str().len() + LONGEST_SOCKET_SUFFIX.len();
        if longest > SUN_PATH_MAX {
            bail!(
                "the state directory {} is too long for Unix socket paths ({longest} > {SUN_PATH_MAX} bytes): \
                 use a shorter --state-dir such as /tmp",
                path.display()
            );
        }
        Ok(())
    }

    /// Creates the job's directory, empty and private, through the checked per-user root (see
    /// `sys/user_root.rs`). An existing one means another run of the same job on this host,
    /// which must not be touched.
    pub fn create(base: &Path, job: &str, host: &str) -> Result<Self> {
        let path = Self::path_for(base, job, host);
        Self::check_socket_length(&path)?;
        let name = job_dir_name(job, host);
        // Another run's teardown (or a `cleanup`) may remove the empty root between opening and
        // making the directory in it: open it again.
        let mut created = Err(rustix::io::Errno::NOENT);
        for _ in 0..20 {
            let root = UserRoot::create(base)?;
            created = root.mkdir(&name);
            if created != Err(rustix::io::Errno::NOENT) {
                if created.is_ok() && !root.still_at_path() {
                    bail!(
                        "{} was replaced while {} was being created in it: refusing to use it",
                        root.path().display(),
                        path.display()
                    );
                }
                break;
            }
        }
        created.with_context(|| {
            format!(
                "failed to create the state directory {} (a leftover of an earlier run? `mpiswarm cleanup` removes it)",
                path.display()
            )
        })?;
        Ok(StateDir { path })
    }

    pub fn socket(&self) -> PathBuf {
        self.path.join("docker.sock")
    }

    pub fn log(&self) -> PathBuf {
        self.path.join("daemon.log")
    }

    pub fn guard_record(&self) -> PathBuf {
        self.path.join("guard.json")
    }

    /// What the daemon log says about a failure: its fatal and error lines (the cause is
    /// usually there, followed by pages of shutdown noise), else its last lines.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.contains("level=fatal")
                    || l.contains("level=error")
                    || l.starts_with("[rootlesskit")
                    || !l.starts_with("time=")
            })
            .collect();
        let shown = if errors.is_empty() {
            text.lines().collect()
        } else {
            errors
        };
        shown[shown.len().saturating_sub(lines)..].join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_length_is_checked() {
        assert!(StateDir::check_socket_length(Path::new("/tmp/mpiswarm-1000/j1234-host1")).is_ok());
        let long = format!("/scratch/{}/mpiswarm-1000/j1-h", "x".repeat(70));
        assert!(StateDir::check_socket_length(Path::new(&long)).is_err());
    }

    /// Host `n1` must not claim `a-n1`'s directories (a suffix match did).
    #[test]
    fn an_entry_names_its_host_exactly() {
        assert_eq!(host_of_entry(&job_dir_name("j12ab", "n1")), Some("n1"));
        assert_eq!(host_of_entry(&job_dir_name("j12ab", "a-n1")), Some("a-n1"));
        assert_eq!(host_of_entry("j12ab-a-n1.end"), Some("a-n1"));
        assert_eq!(host_of_entry("j12ab"), None);
        assert_eq!(host_of_entry("-n1"), None);
    }

    #[test]
    fn job_dir_is_keyed_by_job_and_host() {
        let a = StateDir::path_for(Path::new("/tmp"), "j1", "h1");
        let b = StateDir::path_for(Path::new("/tmp"), "j2", "h1");
        let c = StateDir::path_for(Path::new("/tmp"), "j1", "h2");
        assert!(a != b && a != c && b != c);
        assert!(a.starts_with(user_root(Path::new("/tmp"))));
    }
}
