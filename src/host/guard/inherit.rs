//! Which of the rank's descriptors the guard inherits: none past stdio. MPI's sockets are not
//! close-on-exec, and a daemon tree holding a rank's connections keeps a dead rank's connections
//! open for its peers (they would not see it die).

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Context, Result};
use nix::fcntl::{FcntlArg, FdFlag, fcntl};

/// Makes every descriptor past stdio close at `cmd`'s exec: in the child with
/// `close_range(CLOSE_RANGE_CLOEXEC)` where the kernel has it (Linux >= 5.11), else in this
/// process before the fork, on every descriptor open now.
pub fn none_past_stdio(cmd: &mut Command) -> Result<()> {
    if !close_range_cloexec_works() {
        return cloexec_all_from(3);
    }
    // SAFETY: the closure runs in the forked child before exec and makes one async-signal-safe
    // system call; it allocates nothing.
    unsafe {
        cmd.pre_exec(|| {
            let r = libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// Whether this kernel has `close_range` with `CLOSE_RANGE_CLOEXEC`: asked on a range with no
/// descriptor in it, so nothing changes (older kernels answer ENOSYS or EINVAL).
fn close_range_cloexec_works() -> bool {
    // SAFETY: close_range on the range [u32::MAX, u32::MAX] holds no open descriptor: it only
    // reports whether the call and the flag are known.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            u32::MAX,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    r == 0
}

/// Sets FD_CLOEXEC on every descriptor of this process from `first` on. One closed meanwhile
/// (by another thread) is skipped; any other failure is the caller's.
fn cloexec_all_from(first: i32) -> Result<()> {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .context("failed to list this process's descriptors in /proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= first)
        .collect();
    for fd in fds {
        let flags = match fcntl(fd, FcntlArg::F_GETFD) {
            Ok(flags) => FdFlag::from_bits_truncate(flags),
            Err(nix::errno::Errno::EBADF) => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("failed to read descriptor {fd}'s flags"));
            }
        };
        match fcntl(fd, FcntlArg::F_SETFD(flags | FdFlag::FD_CLOEXEC)) {
            Ok(_) | Err(nix::errno::Errno::EBADF) => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("failed to make descriptor {fd} close-on-exec"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// A descriptor without close-on-exec (as MPI's sockets are).
    fn inheritable() -> std::os::fd::OwnedFd {
        let file = std::fs::File::open("/dev/null").unwrap();
        rustix::io::dup(&file).unwrap()
    }

    fn child_sees(fd: i32) -> bool {
        Command::new("sh")
            .args(["-c", &format!("test -e /proc/self/fd/{fd}")])
            .status()
            .unwrap()
            .success()
    }

    /// The fallback for kernels without `CLOSE_RANGE_CLOEXEC`: the child inherits nothing.
    #[test]
    fn the_fallback_leaves_the_child_nothing() {
        let fd = inheritable();
        assert!(
            child_sees(fd.as_raw_fd()),
            "the test's descriptor is not inheritable"
        );
        cloexec_all_from(3).unwrap();
        assert!(!child_sees(fd.as_raw_fd()));
    }

    #[test]
    fn close_range_closes_at_exec_where_the_kernel_has_it() {
        let fd = inheritable();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("test -e /proc/self/fd/{}", fd.as_raw_fd())]);
        none_past_stdio(&mut cmd).unwrap();
        assert!(!cmd.status().unwrap().success());
    }
}
