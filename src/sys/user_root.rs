//! The per-user root (`$BASE/mpiswarm-<uid>`) in a directory other users share, opened once and
//! used through that handle: no other user can redirect what a run makes below it by swapping
//! the path between a check and a use.
//!
//! Why the handle is enough. The root is removed only when empty (`rmdir`), and in a sticky base
//! (or one only its owner writes) nobody else can rename it. An entry made through the handle is
//! made in the checked directory (or fails, if that directory was removed meanwhile); from then
//! on the root is not empty, so it stays the directory its path names for as long as the entry
//! lives, and every later use by path (dockerd's configuration, its sockets) reaches it.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::fs::{AtFlags, Mode, OFlags};
use rustix::io::Errno;

/// The checked per-user root, held open.
#[derive(Debug)]
pub struct UserRoot {
    path: PathBuf,
    dir: OwnedFd,
}

/// `$BASE/mpiswarm-<uid>`: every run of this user on this host lives below it.
pub fn path_under(base: &Path) -> PathBuf {
    base.join(format!("mpiswarm-{}", rustix::process::getuid().as_raw()))
}

/// The error for a root that is not this user's own real directory.
fn not_ours(path: &Path) -> anyhow::Error {
    anyhow::anyhow!(
        "{} exists but is not a directory owned by you (uid {}): remove it or use --state-dir",
        path.display(),
        rustix::process::getuid().as_raw()
    )
}

impl UserRoot {
    /// Makes the root if need be, opens it and makes it private. Another run's teardown (or a
    /// `cleanup`) removes the root once it is empty: if it vanishes before it is opened, it is
    /// made again.
    pub fn create(base: &Path) -> Result<UserRoot> {
        check_base(base)?;
        let path = path_under(base);
        for _ in 0..20 {
            match rustix::fs::mkdir(&path, Mode::RWXU) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!(
                            "failed to create {} (is {} writable and node-local? set --state-dir)",
                            path.display(),
                            base.display()
                        )
                    });
                }
            }
            match Self::open(&path) {
                Ok(Some(root)) => {
                    root.make_private()?;
                    pause_for_test(&root);
                    return Ok(root);
                }
                Ok(None) => continue,
                Err(e) => return Err(e),
            }
        }
        bail!(
            "failed to create {}: it vanished 20 times in a row (something keeps removing it)",
            path.display()
        )
    }

    /// Opens an existing root (`None` when there is none), refusing a symlink or a directory
    /// that is not this user's.
    pub fn open(path: &Path) -> Result<Option<UserRoot>> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dir = match rustix::fs::open(path, flags, Mode::empty()) {
            Ok(dir) => dir,
            Err(Errno::NOENT) => return Ok(None),
            Err(Errno::LOOP | Errno::NOTDIR) => return Err(not_ours(path)),
            Err(e) => {
                return Err(e).with_context(|| format!("failed to open {}", path.display()));
            }
        };
        let st = rustix::fs::fstat(&dir)
            .with_context(|| format!("failed to inspect {}", path.display()))?;
        if st.st_uid != rustix::process::getuid().as_raw() {
            return Err(not_ours(path));
        }
        Ok(Some(UserRoot {
            path: path.to_path_buf(),
            dir,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes `name` below the root, mode 0700, through the handle.
    pub fn mkdir(&self, name: &str) -> rustix::io::Result<()> {
        rustix::fs::mkdirat(&self.dir, name, Mode::RWXU)
    }

    /// Removes the entry `name` (not a directory) below the root, through the handle.
    pub fn unlink(&self, name: &str) -> rustix::io::Result<()> {
        rustix::fs::unlinkat(&self.dir, name, AtFlags::empty())
    }

    /// Whether the root's path still names the directory held open: true after an entry made by
    /// path (a socket's bind) proves that entry is in it, since a removed directory never comes
    /// back and nobody renames the root.
    pub fn still_at_path(&self) -> bool {
        let (Ok(held), Ok(named)) = (rustix::fs::fstat(&self.dir), rustix::fs::lstat(&self.path))
        else {
            return false;
        };
        held.st_dev == named.st_dev && held.st_ino == named.st_ino
    }

    fn make_private(&self) -> Result<()> {
        let st = rustix::fs::fstat(&self.dir)
            .with_context(|| format!("failed to inspect {}", self.path.display()))?;
        if st.st_mode & 0o077 != 0 {
            rustix::fs::fchmod(self.dir.as_fd(), Mode::RWXU)
                .with_context(|| format!("failed to make {} private", self.path.display()))?;
        }
        Ok(())
    }
}

/// Removes the per-user root under `base` if it is empty (another run of the user may still be
/// in it). A symlink or another user's directory there is never followed nor removed: `rmdir`
/// does not follow a final symlink, and the sticky base keeps others' entries.
pub fn remove_if_empty(root: &Path) {
    let _ = rustix::fs::rmdir(root);
}

/// Refuses a base that other users may write without the sticky bit: there they could rename the
/// root away while a run uses it by path.
fn check_base(base: &Path) -> Result<()> {
    let st = rustix::fs::stat(base).with_context(|| {
        format!(
            "failed to inspect {} (set --state-dir to a node-local directory)",
            base.display()
        )
    })?;
    if shared_unsafely(st.st_mode) {
        bail!(
            "{} is writable by other users and not sticky: another user could swap {} while a run \
             uses it; use a sticky directory such as /tmp or one of your own (--state-dir)",
            base.display(),
            path_under(base).display()
        );
    }
    Ok(())
}

/// A mode others may write (group or world) without the sticky bit.
fn shared_unsafely(mode: u32) -> bool {
    mode & 0o022 != 0 && mode & 0o1000 == 0
}

/// The tests' fault `user-root-swap`: once per process, after the root is opened and checked,
/// wait (10 s at most) until the root's path names something else (not merely nothing), as
/// another user who swapped it in between would have arranged.
fn pause_for_test(root: &UserRoot) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if !crate::sys::fault::injected("user-root-swap") || DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    eprintln!(
        "fault user-root-swap: waiting for {} to be replaced",
        root.path.display()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let replaced = || rustix::fs::lstat(&root.path).is_ok() && !root.still_at_path();
    while !replaced() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_base_needs_the_sticky_bit() {
        assert!(!shared_unsafely(0o1777));
        assert!(!shared_unsafely(0o755));
        assert!(shared_unsafely(0o777));
        assert!(shared_unsafely(0o775));
    }

    #[test]
    fn a_symlink_is_refused_and_not_followed() {
        let base = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), path_under(base.path())).unwrap();
        let err = UserRoot::create(base.path()).unwrap_err();
        assert!(
            format!("{err:#}").contains("is not a directory owned by you"),
            "{err:#}"
        );
        remove_if_empty(&path_under(base.path()));
        assert!(std::fs::symlink_metadata(path_under(base.path())).is_ok());
    }

    /// The handle keeps pointing at the checked directory: once it is removed and the path
    /// planted, making an entry through the handle fails instead of landing in the planted one.
    #[test]
    fn entries_go_through_the_handle_not_the_path() {
        let base = tempfile::tempdir().unwrap();
        let root = UserRoot::create(base.path()).unwrap();
        assert!(root.still_at_path());
        std::fs::remove_dir(root.path()).unwrap();
        let planted = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(planted.path(), root.path()).unwrap();
        assert!(!root.still_at_path());
        assert_eq!(root.mkdir("j1-h1"), Err(Errno::NOENT));
        assert_eq!(std::fs::read_dir(planted.path()).unwrap().count(), 0);
    }
}
