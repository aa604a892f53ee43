//! A child's piped stdout and stderr read as they come, by one thread each: a run that prints
//! more than a pipe holds (with `-v`, say) never blocks on a full pipe while the harness waits
//! for it to end, which would be reported as a hang.

use std::io::Read;
use std::process::{Child, ExitStatus, Output};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long the pipes may stay open after the child ended (a process it left may hold them).
const PIPE_GRACE: Duration = Duration::from_secs(5);

pub struct Drained {
    pub child: Child,
    out: Arc<Mutex<Vec<u8>>>,
    err: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
}

fn drain(
    pipe: Option<impl Read + Send + 'static>,
    into: &Arc<Mutex<Vec<u8>>>,
) -> Option<JoinHandle<()>> {
    let mut pipe = pipe?;
    let into = into.clone();
    Some(std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut chunk) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend_from_slice(&chunk[..n]);
        }
    }))
}

impl Drained {
    pub fn new(mut child: Child) -> Drained {
        let out = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(Vec::new()));
        let readers = [
            drain(child.stdout.take(), &out),
            drain(child.stderr.take(), &err),
        ]
        .into_iter()
        .flatten()
        .collect();
        Drained {
            child,
            out,
            err,
            readers,
        }
    }

    /// What stderr said so far.
    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.err.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// The output, once the child ended with `status`: waits for the pipes' ends (at most
    /// `PIPE_GRACE`), then takes what was read.
    pub fn output(self, status: ExitStatus) -> Output {
        let grace = Instant::now() + PIPE_GRACE;
        while self.readers.iter().any(|r| !r.is_finished()) && Instant::now() < grace {
            std::thread::sleep(Duration::from_millis(20));
        }
        let take = |b: &Arc<Mutex<Vec<u8>>>| {
            std::mem::take(&mut *b.lock().unwrap_or_else(|e| e.into_inner()))
        };
        Output {
            status,
            stdout: take(&self.out),
            stderr: take(&self.err),
        }
    }

    /// Kills the child and returns its output.
    pub fn kill(mut self) -> Output {
        let _ = self.child.kill();
        let status = self.child.wait().expect("wait");
        self.output(status)
    }
}
