//! The files rank 0 writes for the user: the ready file (sourced by a shell to reach the swarm)
//! and, checked here before anything starts, the report's directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::UpConfig;
use crate::statedir::StateDir;

/// The files rank 0 writes later must be writable now: failing after the swarm is up would waste it.
pub fn check(cfg: &UpConfig) -> Result<()> {
    for (flag, path) in [("--ready-file", &cfg.ready_file), ("--report", &cfg.report)] {
        let Some(path) = path else { continue };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK).with_context(|| {
            format!(
                "{flag} {}: cannot write in {}",
                path.display(),
                dir.display()
            )
        })?;
    }
    Ok(())
}

/// The ready file, if one was asked for; removed when dropped (at teardown or on any error path).
pub struct ReadyFile(Option<PathBuf>);

impl ReadyFile {
    pub fn write(cfg: &UpConfig, socket: &Path, nodes: usize) -> Result<ReadyFile> {
        let Some(path) = &cfg.ready_file else {
            return Ok(ReadyFile(None));
        };
        let text = format!(
            "DOCKER_HOST=unix://{}\nMPISWARM_NODES={nodes}\nexport DOCKER_HOST MPISWARM_NODES\n",
            socket.display()
        );
        StateDir::write_private(path, text.as_bytes())
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
