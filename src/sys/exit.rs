//! mpiswarm's exit codes, as `docker run` has them, so that a job script can tell mpiswarm's own
//! failures from its command's: 125 mpiswarm failed, 126 the command cannot be executed, 127 it
//! was not found, anything else the command's own code. Also the check, before any bring-up,
//! that the command can be executed at all (PATH resolved as execvp resolves it).

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// mpiswarm itself failed: bad flags, a refused setup, a failed phase.
pub const FAILED: i32 = 125;

/// Why the user's command cannot be run; its code is the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unusable {
    /// It exists but cannot be executed (not executable, a directory): 126.
    NotExecutable,
    /// No such file, or not found in PATH: 127.
    NotFound,
}

impl Unusable {
    pub fn code(self) -> i32 {
        match self {
            Unusable::NotExecutable => 126,
            Unusable::NotFound => 127,
        }
    }
}

/// The user's command cannot be run: the error that carries exit code 126 or 127.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandUnusable {
    pub why: Unusable,
    pub message: String,
}

impl fmt::Display for CommandUnusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CommandUnusable {}

/// The exit code for an error: 126/127 when it says the command cannot be run, else 125.
pub fn code_of(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|c| c.downcast_ref::<CommandUnusable>())
        .map_or(FAILED, |u| u.why.code())
}

/// An error that every rank has alike (from the command line, or the launcher's MPI): said by
/// the launcher's rank 0 alone, not once per rank.
#[derive(Debug)]
pub struct SameOnEveryRank(anyhow::Error);

impl fmt::Display for SameOnEveryRank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for SameOnEveryRank {}

/// Ends the process from a side thread while the main thread may be stuck: what is written is
/// flushed, then `_exit`, with no atexit handler or destructor, which may need a lock the stuck
/// main thread holds (inside Open MPI or libcurl).
pub fn leave_now(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: _exit ends the process at once; it touches no memory of ours and takes no lock.
    unsafe { libc::_exit(code) }
}

/// Marks `e` as one that every rank has alike.
pub fn same_on_every_rank(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(SameOnEveryRank(e))
}

/// Checks that `program` can be executed, finding it as execvp would: a name with a slash is
/// taken as it is; any other is looked for in each directory of `path` (an empty entry is the
/// current directory), the first executable file winning. `host` names where it was checked.
pub fn check_command(
    program: &str,
    path: Option<&OsStr>,
    host: &str,
) -> Result<(), CommandUnusable> {
    if program.contains('/') {
        return match judge(Path::new(program)) {
            Found::Executable => Ok(()),
            Found::Missing => Err(not_found(program, host, "no such file")),
            Found::NotExecutable(why) => Err(not_executable(program, host, why)),
        };
    }
    // glibc's execvp searches this when PATH is unset.
    let path = path.unwrap_or(OsStr::new("/bin:/usr/bin"));
    let mut refused = None;
    for dir in std::env::split_paths(path) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let candidate = dir.join(program);
        match judge(&candidate) {
            Found::Executable => return Ok(()),
            Found::Missing => {}
            // execvp goes on past one it may not execute, and fails with EACCES at the end.
            Found::NotExecutable(why) => {
                refused.get_or_insert((candidate, why));
            }
        }
    }
    match refused {
        Some((candidate, why)) => Err(not_executable(&candidate.to_string_lossy(), host, why)),
        None => Err(not_found(
            program,
            host,
            "not found in any directory of PATH",
        )),
    }
}

enum Found {
    Executable,
    Missing,
    NotExecutable(&'static str),
}

fn judge(candidate: &Path) -> Found {
    let Ok(meta) = std::fs::metadata(candidate) else {
        return Found::Missing;
    };
    if meta.is_dir() {
        return Found::NotExecutable("it is a directory");
    }
    if rustix::fs::access(candidate, rustix::fs::Access::EXEC_OK).is_err() {
        return Found::NotExecutable("you may not execute it");
    }
    // The kernel runs ELF programs and #! scripts; anything else fails with ENOEXEC (a file
    // that may not be read is left to the kernel).
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(candidate).and_then(|mut f| {
        use std::io::Read;
        f.read(&mut magic)
    });
    match read {
        Ok(n) if !(magic[..n].starts_with(b"\x7fELF") || magic[..n].starts_with(b"#!")) => {
            Found::NotExecutable("it is neither a program nor a script starting with #!")
        }
        _ => Found::Executable,
    }
}

fn not_found(program: &str, host: &str, why: &str) -> CommandUnusable {
    CommandUnusable {
        why: Unusable::NotFound,
        message: format!(
            "failed to find the command {program:?} on {host}: {why}; check its spelling, give its \
             full path, or add its directory to PATH (nothing was started)"
        ),
    }
}

fn not_executable(program: &str, host: &str, why: &str) -> CommandUnusable {
    CommandUnusable {
        why: Unusable::NotExecutable,
        message: format!(
            "failed to execute the command {program:?} on {host}: {why}; make it executable \
             (chmod +x) or name the program that runs it, e.g. `-- sh {program}` (nothing was \
             started)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Run by `leaving_skips_atexit_handlers_and_flushes` in a process of its own.
    #[test]
    #[ignore = "leaves the process; run by leaving_skips_atexit_handlers_and_flushes"]
    fn leave_with_a_hanging_atexit_handler() {
        extern "C" fn hang() {
            std::thread::sleep(Duration::from_secs(30));
        }
        // SAFETY: registers a plain function with no state; atexit is safe to call.
        unsafe { libc::atexit(hang) };
        print!("written before leaving");
        leave_now(7);
    }

    #[test]
    fn leaving_skips_atexit_handlers_and_flushes() {
        let exe = std::env::current_exe().unwrap();
        let child = std::process::Command::new(exe)
            .args([
                "--exact",
                "sys::exit::tests::leave_with_a_hanging_atexit_handler",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let out = crate::sys::child_output::output_within(child, Duration::from_secs(10)).unwrap();
        let code = out.status.and_then(|s| s.code());
        assert_eq!(code, Some(7), "{:?}: {}", out.status, out.stdout_text());
        assert!(
            out.stdout_text().contains("written before leaving"),
            "{}",
            out.stdout_text()
        );
    }

    use std::os::unix::fs::PermissionsExt;

    fn why(program: &str, path: &str) -> Option<Unusable> {
        check_command(program, Some(OsStr::new(path)), "h1")
            .err()
            .map(|e| e.why)
    }

    #[test]
    fn paths_are_judged_as_execvp_would() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "data").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        std::fs::write(&data, "x\n").unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.path().to_string_lossy().into_owned();
        // Executable by its mode, yet neither ELF nor #!: the kernel refuses it (ENOEXEC).
        assert_eq!(why(&format!("{d}/data"), ""), Some(Unusable::NotExecutable));
        assert_eq!(why("/bin/sh", ""), None);
        assert_eq!(why(&format!("{d}/tool"), ""), None);
        assert_eq!(why(&format!("{d}/nope"), "/bin"), Some(Unusable::NotFound));
        assert_eq!(why(&d, "/bin"), Some(Unusable::NotExecutable));
        // In PATH: the first executable wins, one that is not executable is skipped.
        std::fs::copy(&plain, dir.path().join("sh")).unwrap();
        assert_eq!(why("sh", &format!("{d}:/bin:/usr/bin")), None);
        assert_eq!(why("tool", &format!("/nonexistent:{d}")), None);
        assert_eq!(why("plain", &d), Some(Unusable::NotExecutable));
        assert_eq!(why("no-such-tool-here", &d), Some(Unusable::NotFound));
    }

    #[test]
    fn only_a_command_that_cannot_run_changes_the_code() {
        let e = anyhow::Error::new(CommandUnusable {
            why: Unusable::NotFound,
            message: "x".into(),
        })
        .context("wrapped");
        assert_eq!(code_of(&e), 127);
        assert_eq!(code_of(&anyhow::anyhow!("phase failed")), FAILED);
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = check_command("/nonexistent/tool", None, "h1").unwrap_err();
        assert!(e.message.contains("h1"), "{e}");
        assert!(e.message.contains("full path"), "{e}");
    }
}
