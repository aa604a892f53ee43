//! `mpiswarm completions SHELL` and `mpiswarm man DIR`: shell completions and man pages made
//! from the command line's own definition, so that they never drift from `--help`.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::plan::cli::Cli;

/// Prints the completion script for `shell` on standard output.
pub fn completions(shell: clap_complete::Shell) -> Result<i32> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "mpiswarm", &mut out);
    std::io::stdout()
        .write_all(&out)
        .context("failed to write the completion script to standard output")?;
    Ok(0)
}

/// Writes mpiswarm.1 and mpiswarm-SUBCOMMAND.1 for each visible subcommand into `dir`.
pub fn man_pages(dir: &Path) -> Result<i32> {
    clap_mangen::generate_to(Cli::command(), dir).with_context(|| {
        format!(
            "failed to write man pages into {}: is it a directory you may write in?",
            dir.display()
        )
    })?;
    println!("man pages written into {}", dir.display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_man_page_for_the_command_and_each_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        man_pages(dir.path()).unwrap();
        for page in [
            "mpiswarm",
            "mpiswarm-up",
            "mpiswarm-verify",
            "mpiswarm-doctor",
            "mpiswarm-cleanup",
        ] {
            let text = std::fs::read_to_string(dir.path().join(format!("{page}.1"))).unwrap();
            assert!(text.contains(".TH"), "{page}: {text}");
        }
        let up = std::fs::read_to_string(dir.path().join("mpiswarm-up.1")).unwrap();
        assert!(up.contains("until\\-stack\\-jobs\\-complete"), "{up}");
        assert!(!dir.path().join("mpiswarm-guard.1").exists());
    }

    #[test]
    fn completions_name_the_subcommands_and_flags() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "mpiswarm", &mut out);
            let text = String::from_utf8(out).unwrap();
            for word in [
                "verify",
                "doctor",
                "probe-image",
                "until-stack-jobs-complete",
            ] {
                assert!(text.contains(word), "{shell}: {word} missing");
            }
        }
    }
}
