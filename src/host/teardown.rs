//! Tearing down a host fast and completely: kill a whole process tree with SIGKILL (the data is
//! discarded anyway), then delete the state directory, including files owned by sub-uids.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// Reaps any exited children of this process without blocking.
pub fn reap_children() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == nix::sys::wait::WaitStatus::StillAlive {
            break;
        }
    }
}

/// How long a teardown lets rootlesskit's child finish setting up the namespaces (it takes
/// milliseconds once rootlesskit has the network ready).
const SETUP_GRACE: Duration = Duration::from_secs(3);

/// Lets a rootlesskit child of this process's tree that is setting up the daemon's namespaces
/// finish first, up to `SETUP_GRACE` or `deadline`: SIGKILL during the setup leaves its
/// directories in /tmp behind (see `rootlesskit::setting_up`), and nothing else would remove them.
pub fn let_namespace_setup_finish(deadline: Instant) {
    let until = deadline.min(Instant::now() + SETUP_GRACE);
    let me = std::process::id() as i32;
    while Instant::now() < until
        && crate::host::daemon::rootlesskit::setting_up(&crate::sys::procfs::descendants(me))
    {
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Kills every descendant of this process (which should be a child subreaper, so that orphans
/// stay in its tree) until none is left, or fails at the deadline naming every survivor and
/// every kill that failed. A failed kill does not stop the sweep: the others are still killed.
pub fn kill_own_tree(deadline: Instant) -> Result<()> {
    let me = std::process::id() as i32;
    let mut failed: HashMap<i32, String> = HashMap::new();
    loop {
        let alive = crate::sys::procfs::descendant_pids(me);
        if alive.is_empty() {
            reap_children();
            return Ok(());
        }
        let mut refused = 0;
        for &(pid, start_time) in &alive {
            // Pinned first: a pid freed since the look may already be someone else's.
            if let Err(e) = crate::sys::pinned::kill_if_same(pid, start_time) {
                failed.insert(pid, format!("{e:#}"));
                refused += 1;
            }
        }
        reap_children();
        // Waiting cannot help when every survivor refused the signal (EPERM does not pass).
        if Instant::now() >= deadline || refused == alive.len() {
            let list: Vec<String> = alive
                .iter()
                .map(|&(pid, _)| {
                    let cmd = crate::sys::procfs::proc_info(pid)
                        .map(|p| p.cmdline)
                        .unwrap_or_default();
                    match failed.get(&pid) {
                        Some(e) => format!("{pid} ({cmd}): {e}"),
                        None => format!("{pid} ({cmd})"),
                    }
                })
                .collect();
            bail!(
                "failed to kill {} process(es) of the daemon's tree: {}",
                list.len(),
                list.join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Deletes a state directory. Files written by containers belong to sub-uids the user cannot
/// delete directly, so the removal runs inside a fresh user namespace with the sub-uid mapping:
/// util-linux's `unshare --map-auto` first (about 15 ms), rootlesskit's (about 100 ms, and it maps
/// the whole range as the daemon's namespace did) if that is missing or leaves something.
pub fn remove_state_dir(dir: &Path, timeout: Duration) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    // Plain removal first: it suffices when no container ever wrote files.
    if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
        return Ok(());
    }
    let deadline = Instant::now() + timeout;
    let fast = rm_in_userns("unshare", &["--map-auto", "--map-root-user"], dir, deadline);
    if fast.is_ok() && !dir.exists() {
        return Ok(());
    }
    let full = rm_in_userns(
        "rootlesskit",
        &["--net=host", "--copy-up-mode=tmpfs+symlink"],
        dir,
        deadline,
    );
    match (fast, full) {
        (_, Ok(())) => Ok(()),
        (Ok(()), Err(e)) => Err(e),
        (Err(a), Err(b)) => Err(anyhow!("{b:#} (before that: {a:#})")),
    }
}

/// `PROGRAM ARGS... rm -rf -- DIR` with a deadline; fails unless DIR is gone, with rm's last word.
fn rm_in_userns(program: &str, args: &[&str], dir: &Path, deadline: Instant) -> Result<()> {
    let mut child = Command::new(program)
        .args(args)
        .args(["rm", "-rf", "--"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start {program} to remove {}", dir.display()))?;
    // Read while it runs: many undeletable files would fill the pipe and block rm.
    let stderr = child.stderr.take();
    let (tx, last_line) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut last = String::new();
        if let Some(e) = stderr {
            for line in std::io::BufReader::new(e).lines().map_while(Result::ok) {
                last = line;
            }
        }
        let _ = tx.send(last);
    });
    let left = deadline.saturating_duration_since(Instant::now());
    let Some(status) = crate::sys::deadline::wait_or_kill(&mut child, left)? else {
        bail!(
            "failed to remove {} before the deadline: {program} rm inside a user namespace hung",
            dir.display()
        );
    };
    if dir.exists() {
        let last = last_line
            .recv_timeout(Duration::from_millis(200))
            .unwrap_or_default();
        bail!(
            "failed to remove {} with {program} ({status}): {}",
            dir.display(),
            if last.is_empty() {
                "no message"
            } else {
                last.trim()
            }
        );
    }
    Ok(())
}
