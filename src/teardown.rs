//! Tearing down a host fast and completely: kill a whole process tree with SIGKILL (the data is
//! discarded anyway), then delete the state directory, including files owned by sub-uids.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;

/// Sends SIGKILL; a process already gone counts as killed.
pub fn kill_hard(pid: i32) -> Result<()> {
    match kill(Pid::from_raw(pid), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("failed to kill pid {pid}")),
    }
}

/// Reaps any exited children of this process without blocking.
pub fn reap_children() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == nix::sys::wait::WaitStatus::StillAlive {
            break;
        }
    }
}

/// Kills every descendant of this process (which should be a child subreaper, so that orphans
/// stay in its tree) until none is left, or fails at the deadline naming every survivor and
/// every kill that failed. A failed kill does not stop the sweep: the others are still killed.
pub fn kill_own_tree(deadline: Instant) -> Result<()> {
    let me = std::process::id() as i32;
    let mut failed: HashMap<i32, String> = HashMap::new();
    loop {
        let alive = crate::procfs::descendant_pids(me);
        if alive.is_empty() {
            reap_children();
            return Ok(());
        }
        let mut refused = 0;
        for &pid in &alive {
            if let Err(e) = kill_hard(pid) {
                failed.insert(pid, format!("{e:#}"));
                refused += 1;
            }
        }
        reap_children();
        // Waiting cannot help when every survivor refused the signal (EPERM does not pass).
        if Instant::now() >= deadline || refused == alive.len() {
            let list: Vec<String> = alive
                .iter()
                .map(|&pid| {
                    let cmd = crate::procfs::proc_info(pid)
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
/// delete directly, so the removal runs inside a fresh user namespace with the same mapping.
pub fn remove_state_dir(dir: &Path, timeout: Duration) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    // Plain removal first: it suffices when no container ever wrote files.
    if std::fs::remove_dir_all(dir).is_ok() || !dir.exists() {
        return Ok(());
    }
    let mut child = Command::new("rootlesskit")
        .args([
            "--net=host",
            "--copy-up-mode=tmpfs+symlink",
            "rm",
            "-rf",
            "--",
        ])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("failed to start rootlesskit to remove {}", dir.display()))?;
    let Some(status) = crate::deadline::wait_or_kill(&mut child, timeout)? else {
        bail!(
            "failed to remove {} within {:?}: rm inside the user namespace hung",
            dir.display(),
            timeout
        );
    };
    if dir.exists() {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        bail!(
            "failed to remove {} ({status}): {}",
            dir.display(),
            err.trim().lines().last().unwrap_or("no message")
        );
    }
    Ok(())
}
