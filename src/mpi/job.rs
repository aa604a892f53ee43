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
    format!("j{batch}{:x}{:x}", std::process::id(), nanos & 0xfff)
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
        let a = key();
        std::thread::sleep(std::time::Duration::from_micros(10));
        assert!(a.starts_with('j'));
        assert!(key().len() >= 3);
    }
}
