//! The files rank 0 writes for the user: the ready file (sourced by a shell to reach the swarm)
//! and, checked here before anything starts, the directories of the report and of `--collect`.

use std::path::{Path, PathBuf};

use std::os::unix::fs::MetadataExt;

use anyhow::{Context, Result, bail};

use crate::plan::config::UpConfig;

/// The files rank 0 writes later must be writable now (failing after the swarm is up would
/// waste it), and in a directory no other user can write: another user could otherwise replace
/// the ready file that the user's shell sources.
pub fn check(cfg: &UpConfig) -> Result<()> {
    for (flag, path) in [("--ready-file", &cfg.ready_file), ("--report", &cfg.report)] {
        let Some(path) = path else { continue };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        check_dir(flag, path, &dir)?;
    }
    // --collect DIR: DIR itself when it exists, else the directory it will be made in.
    if let Some(collect) = &cfg.collect {
        let dir = &collect.dir;
        let checked = match dir.parent() {
            _ if dir.exists() => dir.clone(),
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        check_dir("--collect", dir, &checked)?;
    }
    Ok(())
}

/// `dir` (where `flag`'s `path` goes) must be writable by this user and by no other.
fn check_dir(flag: &str, path: &Path, dir: &Path) -> Result<()> {
    nix::unistd::access(
        dir,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .with_context(|| {
        format!(
            "{flag} {}: cannot write in {}",
            path.display(),
            dir.display()
        )
    })?;
    let meta = std::fs::metadata(dir)
        .with_context(|| format!("{flag} {}: cannot read {}", path.display(), dir.display()))?;
    if !meta.is_dir() {
        bail!(
            "{flag} {}: {} is not a directory",
            path.display(),
            dir.display()
        );
    }
    if let Some(why) = shared_dir_problem(meta.mode(), meta.uid(), nix::unistd::getuid().as_raw()) {
        bail!(
            "{flag} {}: {} {why}: another user could put a file there first, which your job \
             script would then read as mpiswarm's; use a directory only you can write: {}",
            path.display(),
            dir.display(),
            private_places()
        );
    }
    Ok(())
}

/// Directories that work, as this user would write them.
fn private_places() -> String {
    let mut places = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        places.push(format!(
            "your home directory ({})",
            Path::new(&home).display()
        ));
    }
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR") {
        places.push(format!("$XDG_RUNTIME_DIR ({})", Path::new(&run).display()));
    }
    places.push(
        "a private one from `mktemp -d` (e.g. --ready-file \"$(mktemp -d)/swarm.env\")".into(),
    );
    places.join(", or ")
}

/// Why a directory is unsafe for files other users must not replace, if it is.
fn shared_dir_problem(mode: u32, owner: u32, me: u32) -> Option<&'static str> {
    if mode & 0o002 != 0 {
        Some("is writable by every user")
    } else if mode & 0o020 != 0 {
        Some("is writable by its group")
    } else if owner != me && owner != 0 {
        Some("belongs to another user")
    } else {
        None
    }
}

/// A value as one shell word, whatever it contains.
fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "'\\''"))
}

/// The ready file, if one was asked for; removed when dropped (at teardown or on any error path).
pub struct ReadyFile(Option<PathBuf>);

impl ReadyFile {
    pub fn write(cfg: &UpConfig, socket: &Path, nodes: usize) -> Result<ReadyFile> {
        let Some(path) = &cfg.ready_file else {
            return Ok(ReadyFile(None));
        };
        let host = format!("unix://{}", socket.display());
        let text = format!(
            "DOCKER_HOST={}\nMPISWARM_NODES={nodes}\nMPISWARM_OVERLAY_MTU={}\nMPISWARM_NET={}\n\
             export DOCKER_HOST MPISWARM_NODES MPISWARM_OVERLAY_MTU MPISWARM_NET\n",
            shell_quote(&host),
            cfg.overlay_mtu,
            cfg.network.as_str()
        );
        crate::sys::private_file::write(path, text.as_bytes())
            .with_context(|| format!("failed to write the ready file {}", path.display()))?;
        Ok(ReadyFile(Some(path.clone())))
    }
}

impl Drop for ReadyFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0 {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quoting_survives_any_path() {
        assert_eq!(shell_quote("unix:///tmp/a b"), "'unix:///tmp/a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
    }

    #[test]
    fn directories_others_can_write_are_refused() {
        assert!(shared_dir_problem(0o40755, 1000, 1000).is_none());
        assert!(shared_dir_problem(0o40700, 0, 1000).is_none());
        assert!(shared_dir_problem(0o41777, 0, 1000).is_some());
        assert!(shared_dir_problem(0o40775, 1000, 1000).is_some());
        assert!(shared_dir_problem(0o40755, 1001, 1000).is_some());
    }

    #[test]
    fn private_writes_leave_planted_files_and_symlink_targets_alone() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let target = dir.path().join("swarm.env");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        let planted = dir.path().join("swarm.tmp");
        std::fs::write(&planted, "user's own").unwrap();
        crate::sys::private_file::write(&target, b"DOCKER_HOST=x\n").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(std::fs::read_to_string(&planted).unwrap(), "user's own");
        assert!(
            !std::fs::symlink_metadata(&target)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "DOCKER_HOST=x\n");
        let mode = std::fs::metadata(&target).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
