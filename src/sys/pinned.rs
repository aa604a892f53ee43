//! A process found by scanning /proc, pinned by a pidfd before it is signalled: between the scan
//! and the signal its pid may be reused by a process of someone else's, which a kill by pid
//! would hit. The start time read after pinning proves the pidfd holds the process scanned.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use anyhow::{Context, Result};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags, Signal};

/// A process that was the one scanned (pid and start time) when it was pinned.
#[derive(Debug)]
pub struct Pinned {
    pid: i32,
    /// `None` on kernels without pidfds (before 5.3): then signals go by pid, just after the
    /// start time was checked again.
    pidfd: Option<OwnedFd>,
}

impl Pinned {
    /// Pins the process that had `pid` and `start_time`; `None` when it is gone (or its pid
    /// already belongs to another process).
    pub fn new(pid: i32, start_time: u64) -> Result<Option<Pinned>> {
        let target = Pid::from_raw(pid).with_context(|| format!("invalid pid {pid}"))?;
        let pidfd = match rustix::process::pidfd_open(target, PidfdFlags::empty()) {
            Ok(fd) => Some(fd),
            Err(Errno::SRCH) => return Ok(None),
            Err(Errno::NOSYS) => None,
            Err(e) => {
                return Err(e).with_context(|| format!("failed to pin pid {pid} (pidfd_open)"));
            }
        };
        if !crate::sys::procfs::still_running(pid, start_time) {
            return Ok(None);
        }
        Ok(Some(Pinned { pid, pidfd }))
    }

    /// The pidfd, for `pidfd_getfd`; `None` on kernels without pidfds.
    pub fn pidfd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd.as_ref().map(AsFd::as_fd)
    }

    /// Sends SIGKILL; a process already gone counts as killed.
    pub fn kill(&self) -> Result<()> {
        match self.send(Signal::KILL) {
            Ok(()) | Err(Errno::SRCH) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("failed to kill pid {}", self.pid)),
        }
    }

    /// Sends `signal` to the pinned process (ESRCH once it is gone).
    pub fn send(&self, signal: Signal) -> std::result::Result<(), Errno> {
        match &self.pidfd {
            Some(fd) => rustix::process::pidfd_send_signal(fd, signal),
            None => Pid::from_raw(self.pid).map_or(Err(Errno::SRCH), |p| {
                rustix::process::kill_process(p, signal)
            }),
        }
    }
}

/// SIGKILL to the process that had `pid` and `start_time`, if it still runs; never to a process
/// that reused the pid.
pub fn kill_if_same(pid: i32, start_time: u64) -> Result<()> {
    match Pinned::new(pid, start_time)? {
        Some(p) => p.kill(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper() -> std::process::Child {
        std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap()
    }

    #[test]
    fn the_process_scanned_is_killed() {
        let mut child = sleeper();
        let pid = child.id() as i32;
        let start = crate::sys::procfs::proc_info(pid).unwrap().start_time;
        kill_if_same(pid, start).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9));
    }

    /// A pid whose start time differs is another process (the pid was reused): spared.
    #[test]
    fn a_process_that_reused_the_pid_is_spared() {
        let mut child = sleeper();
        let pid = child.id() as i32;
        let start = crate::sys::procfs::proc_info(pid).unwrap().start_time;
        kill_if_same(pid, start + 1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            child.try_wait().unwrap().is_none(),
            "killed a process that was not the one scanned"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
