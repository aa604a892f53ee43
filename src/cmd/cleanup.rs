//! `mpiswarm cleanup`: removes what earlier runs of this user left on this host (after a node
//! crash, or a scheduler that killed everything), and never touches a run that is still alive.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::host::leftovers::{Report, clean_dir};
use crate::host::statedir::{self, GuardRecord};
use crate::sys::user_root::UserRoot;

/// How young a directory without a lock or record must be to count as a run still starting.
const STARTING: Duration = Duration::from_secs(10);

pub fn run(base: &Path, dry_run: bool) -> Result<i32> {
    let report = clean(base, dry_run);
    let verb = if dry_run { "would remove" } else { "removed" };
    for k in &report.killed {
        println!("{verb} process {k}");
    }
    for d in &report.removed {
        println!("{verb} {d}");
    }
    for s in &report.skipped_live {
        println!("kept {s}: its run is still alive");
    }
    if report.removed.is_empty() && report.killed.is_empty() {
        println!("nothing to clean on {}", crate::host::identity::hostname());
    }
    if !report.errors.is_empty() {
        bail!(
            "could not clean everything:\n  {}",
            report.errors.join("\n  ")
        );
    }
    Ok(0)
}

pub fn clean(base: &Path, dry_run: bool) -> Report {
    let mut report = Report::default();
    let root = statedir::user_root(base);
    let me = nix::unistd::getuid().as_raw();
    let host = crate::host::identity::hostname();
    // The same checks as `up`: a per-user root planted by someone else (or a symlink) is refused.
    let held = match UserRoot::open(&root) {
        Ok(Some(held)) => held,
        Ok(None) => return report,
        Err(e) => {
            report.errors.push(format!("{e:#}"));
            return report;
        }
    };
    for dir in statedir::state_dirs_under(&root) {
        // Removed and planted by someone else since it was checked: nothing below it is ours.
        if !held.still_at_path() {
            report.errors.push(format!(
                "{} was replaced while it was being cleaned: stopped",
                root.display()
            ));
            return report;
        }
        // Only this host's runs: a state base shared between hosts must not be cleaned blindly.
        if !is_for_host(&dir, &host) {
            continue;
        }
        let shown = dir.display().to_string();
        if is_live(&dir) {
            report.skipped_live.push(shown);
            continue;
        }
        if clean_dir(&dir, me, dry_run, &mut report) {
            report.removed.push(shown);
        }
    }
    clean_end_sockets(&root, &host, dry_run, &mut report);
    if !dry_run {
        // The user root itself goes once it is empty; a live run keeps it.
        crate::sys::user_root::remove_if_empty(&root);
    }
    report
}

/// A run is live while its rank or guard holds the run lock, or (without a lock file) while its
/// guard's record names a live process, or while it is only starting: a directory younger than
/// `STARTING` with neither lock nor record may be a run that has not taken its lock yet.
fn is_live(dir: &Path) -> bool {
    match statedir::run_lock_held(dir) {
        Some(held) => held,
        None => {
            if let Some(record) = GuardRecord::read(dir) {
                return record.is_alive();
            }
            std::fs::symlink_metadata(dir)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() < STARTING)
        }
    }
}

/// Whether a directory entry below the root is a run's on `host` (exactly that host: `n1` is
/// not `a-n1`).
fn is_for_host(entry: &Path, host: &str) -> bool {
    entry
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(statedir::host_of_entry)
        == Some(host)
}

/// This host's end sockets (`<job>-<host>.end`) that nobody listens on any more: their rank was
/// killed (its guard removes the socket, unless it was killed too).
fn clean_end_sockets(root: &Path, host: &str, dry_run: bool, report: &mut Report) {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for path in entries.filter_map(|e| Some(e.ok()?.path())) {
        let ours = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(".end"))
            && is_for_host(&path, host)
            && std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket());
        // A live rank listens there. Looked up, not connected to: the rank would count a
        // connection as one of its host's ranks, and stop listening before the last one came.
        if !ours || crate::sys::procfs::unix_listener_at(&path) {
            continue;
        }
        if !dry_run && let Err(e) = std::fs::remove_file(&path) {
            report
                .errors
                .push(format!("failed to remove {}: {e}", path.display()));
            continue;
        }
        report.removed.push(path.display().to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::end_notice::Announcer;
    use crate::host::end_notice::protocol::{End, MpiEnd};

    /// Host `n1` cleans its own runs only, never those of host `a-n1` beside it.
    #[test]
    fn a_host_claims_only_its_own_entries() {
        let root = Path::new("/tmp/mpiswarm-1000");
        assert!(is_for_host(&root.join("j1ab-n1"), "n1"));
        assert!(is_for_host(&root.join("j1ab-n1.end"), "n1"));
        assert!(!is_for_host(&root.join("j1ab-a-n1"), "n1"));
        assert!(!is_for_host(&root.join("j1ab-a-n1.end"), "n1"));
        assert!(is_for_host(&root.join("j1ab-a-n1"), "a-n1"));
    }

    /// A host whose last rank has not connected yet: cleanup's look at the socket must not be
    /// taken for that rank (the leader stops listening once every rank of the host is there).
    #[test]
    fn a_live_end_socket_is_left_to_its_ranks() {
        use std::io::Read;
        let base = tempfile::tempdir().unwrap();
        // Two ranks to come; the end is known already, so each connection hears it once taken.
        let announcer = Announcer::listen(base.path(), "j1", "h", 2).unwrap();
        announcer.announce(End {
            code: 7,
            mpi: MpiEnd::Finalize,
        });
        let mut report = Report::default();
        clean_end_sockets(&statedir::user_root(base.path()), "h", false, &mut report);
        assert!(report.removed.is_empty(), "{:?}", report.removed);
        // A rank connects and hears the end: the accepting thread has taken every connection
        // made before this one (a listener's queue is first in, first out), so a probe of
        // cleanup's would have been counted, and the second connection removes the path.
        let mut rank = std::os::unix::net::UnixStream::connect(announcer.path()).unwrap();
        rank.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut end = [0u8; 5];
        rank.read_exact(&mut end).expect("the rank hears the end");
        assert!(
            announcer.path().exists(),
            "cleanup's look was counted as one of the host's ranks"
        );
    }
}
