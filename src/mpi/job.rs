//! What identifies this run and its hosts: the key its state directories are named by, and the
//! check that every host leader stands for a distinct host.

use anyhow::{Result, bail};

/// Names this run's state directory on this host: the batch job id when there is one (so that
/// admins can match them), plus this process's pid and clock, so two runs never collide.
pub fn key() -> String {
    let batch = ["SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID"]
        .iter()
        .find_map(|v| std::env::var(v).ok())
        .map(|id| {
            id.chars()
                .filter(|ch| ch.is_ascii_alphanumeric())
                .take(12)
                .collect::<String>()
        })
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    key_of(&batch, std::process::id(), nanos)
}

/// The key from its parts: the clock's part has a fixed width, so that no two (pid, clock)
/// pairs read alike (pid 0x1234 at 0x5ab is not pid 0x12345 at 0xab).
fn key_of(batch: &str, pid: u32, nanos: u32) -> String {
    format!("j{batch}{pid:x}{:03x}", nanos & 0xfff)
}

/// The host leaders' names, in host order; two leaders claiming one name (ranks that do not
/// share memory, so not one host) would share a state directory.
pub fn distinct_hosts(names: Vec<String>) -> Result<Vec<String>> {
    for (i, name) in names.iter().enumerate() {
        if names[..i].contains(name) {
            bail!(
                "two ranks that do not share memory both report host name {name:?}: every node needs a distinct host name"
            );
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_hosts_keeps_order_and_refuses_a_repeated_name() {
        let ok = distinct_hosts(vec!["b".into(), "a".into()]).unwrap();
        assert_eq!(ok, ["b", "a"]);
        let err = distinct_hosts(vec!["a".into(), "b".into(), "a".into()]).unwrap_err();
        assert!(err.to_string().contains("\"a\""), "{err}");
    }

    #[test]
    fn keys_differ_between_runs_of_one_process() {
        // Two runs of one process differ by the clock alone.
        let a = key_of("123", 0x1a2b, 0x10);
        let b = key_of("123", 0x1a2b, 0x11);
        assert_ne!(a, b);
        assert!(a.starts_with("j123") && !a.contains('-'), "{a}");
        // And runs of two processes never read alike.
        assert_ne!(key_of("", 0x1234, 0x5ab), key_of("", 0x12345, 0xab));
        let live = key();
        assert!(live.starts_with('j') && !live.contains('-'), "{live}");
    }
}
