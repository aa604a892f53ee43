//! What a dead run leaves on this host (processes of its daemon tree, its state directory) and
//! their removal: for `cleanup`, and for a rank whose guard died and so cannot clean up itself.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::host::teardown;

/// What one cleanup found and did.
#[derive(Debug, Default)]
pub struct Report {
    /// State directories and end sockets.
    pub removed: Vec<String>,
    pub killed: Vec<String>,
    pub skipped_live: Vec<String>,
    pub errors: Vec<String>,
}

/// Kills whatever still runs from a dead run's state directory (orphans of a dead guard) and
/// removes the directory; records what it did in `report`. True when the directory is gone (or
/// would be, on a dry run).
pub fn clean_dir(dir: &Path, me: u32, dry_run: bool, report: &mut Report) -> bool {
    for p in crate::sys::procfs::all_processes() {
        if p.uid == me && !p.zombie && belongs_to_run(p.pid, dir) {
            report
                .killed
                .push(format!("{} ({})", p.pid, short(&p.cmdline)));
            // Pinned first: the pid may have been reused since the scan.
            if !dry_run && let Err(e) = crate::sys::pinned::kill_if_same(p.pid, p.start_time) {
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

/// A rank whose guard died cleans its host as `cleanup` would: the guard's daemon tree (whatever
/// survived it) and the state directory. Returns what was done, or every failure.
pub fn after_guard_death(dir: &Path) -> Result<String> {
    let mut report = Report::default();
    let me = nix::unistd::getuid().as_raw();
    let removed = clean_dir(dir, me, false, &mut report);
    if let Some(root) = dir.parent() {
        // The per-user root goes too once no other run of this user is left on the host.
        crate::sys::user_root::remove_if_empty(root);
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
