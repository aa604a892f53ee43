//! `mpiswarm cleanup`: removes what earlier runs of this user left on this host (after a node
//! crash, or a scheduler that killed everything), and never touches a run that is still alive.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::host::guard;

/// How young a directory without a lock or record must be to count as a run still starting.
const STARTING: Duration = Duration::from_secs(10);
use crate::host::teardown;
use crate::sys::statedir;

/// What one cleanup found and did.
#[derive(Debug, Default)]
pub struct Report {
    /// State directories and end sockets.
    pub removed: Vec<String>,
    pub killed: Vec<String>,
    pub skipped_live: Vec<String>,
    pub errors: Vec<String>,
}

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
    let suffix = format!("-{}", crate::host::identity::hostname());
    if std::fs::symlink_metadata(&root).is_err() {
        return report;
    }
    // The same checks as `up`: a per-user root planted by someone else (or a symlink) is refused.
    if let Err(e) = statedir::check_user_root(&root) {
        report.errors.push(format!("{e:#}"));
        return report;
    }
    for dir in statedir::state_dirs_under(&root) {
        // Only this host's runs: a state base shared between hosts must not be cleaned blindly.
        if !dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(&suffix))
        {
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
    clean_end_sockets(&root, &suffix, dry_run, &mut report);
    if !dry_run {
        // The user root itself goes once it is empty; a live run keeps it.
        let _ = std::fs::remove_dir(&root);
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
            let record = guard::read_record(dir);
            if let Some(r) = &record {
                return guard::is_alive(r);
            }
            std::fs::symlink_metadata(dir)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() < STARTING)
        }
    }
}

/// Kills whatever still runs from a dead run's state directory (orphans of a dead guard) and
/// removes the directory; records what it did in `report`. True when the directory is gone (or
/// would be, on a dry run).
fn clean_dir(dir: &Path, me: u32, dry_run: bool, report: &mut Report) -> bool {
    for p in crate::sys::procfs::all_processes() {
        if p.uid == me && !p.zombie && belongs_to_run(p.pid, dir) {
            report
                .killed
                .push(format!("{} ({})", p.pid, short(&p.cmdline)));
            if !dry_run && let Err(e) = teardown::kill_hard(p.pid) {
                report.errors.push(format!("{e:#}"));
            }
        }
    }
    if dry_run {
        return true;
    }
    // Processes inside the daemon's PID namespace die with its init; give them a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline
        && crate::sys::procfs::all_processes()
            .iter()
            .any(|p| p.uid == me && !p.zombie && belongs_to_run(p.pid, dir))
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Err(e) = teardown::remove_state_dir(dir, Duration::from_secs(30)) {
        report.errors.push(format!("{e:#}"));
        return false;
    }
    let _ = std::fs::remove_file(crate::host::end_notice::end_path_of(dir));
    true
}

/// This host's end sockets (`<job>-<host>.end`) that nobody listens on any more: their rank was
/// killed (its guard removes the socket, unless it was killed too).
fn clean_end_sockets(root: &Path, host_suffix: &str, dry_run: bool, report: &mut Report) {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let end = format!("{host_suffix}.end");
    for path in entries.filter_map(|e| Some(e.ok()?.path())) {
        let ours = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(&end))
            && std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_socket());
        // A live rank accepts the connection (and forgets it at its end).
        if !ours || std::os::unix::net::UnixStream::connect(&path).is_ok() {
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

/// A rank whose guard died cleans its host as `cleanup` would: the guard's daemon tree (whatever
/// survived it) and the state directory. Returns what was done, or every failure.
pub fn after_guard_death(dir: &Path) -> Result<String> {
    let mut report = Report::default();
    let me = nix::unistd::getuid().as_raw();
    let removed = clean_dir(dir, me, false, &mut report);
    if let Some(root) = dir.parent() {
        // The per-user root goes too once no other run of this user is left on the host.
        let _ = std::fs::remove_dir(root);
    }
    if !report.errors.is_empty() {
        bail!(
            "could not clean {}: {}",
            dir.display(),
            report.errors.join("; ")
        );
    }
    Ok(format!(
        "killed {} leftover process(es){}",
        report.killed.len(),
        if removed {
            format!(", removed {}", dir.display())
        } else {
            String::new()
        }
    ))
}

/// Whether a process is one of a run's own (its guard, rootlesskit and its child, slirp4netns,
/// dockerd): one of its arguments is exactly one of the paths they are started with, never just
/// a string that contains the directory's name.
fn belongs_to_run(pid: i32, dir: &Path) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let d = dir.display();
    let own = [
        format!("{d}"),
        format!("--state-dir={d}/rk"),
        format!("{d}/rk/.s4nn.sock"),
        format!("{d}/daemon.json"),
    ];
    raw.split(|b| *b == 0)
        .any(|arg| own.iter().any(|o| o.as_bytes() == arg))
}

fn short(cmdline: &str) -> String {
    let mut s: String = cmdline.chars().take(80).collect();
    if cmdline.chars().count() > 80 {
        s.push('…');
    }
    s
}
