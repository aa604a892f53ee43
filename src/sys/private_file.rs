//! Small private files written in one step: a reader sees the old file or the new one, never
//! half of one, and nothing already at the path or a temporary name is followed or opened.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes a small private file in one step (no reader sees half of it): a new file with a
/// unique name (O_EXCL, mode 0600) in the same directory, renamed over `path`. A file or
/// symlink already at a temporary name is never opened, and a symlink at `path` is replaced,
/// not followed.
pub fn write(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("failed to create a temporary file in {}", dir.display()))?;
    tmp.write_all(contents)
        .with_context(|| format!("failed to write {}", tmp.path().display()))?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}
