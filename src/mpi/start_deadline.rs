//! MPI's start has a deadline. `MPI_Init` and the splits after it wait for every rank of the job:
//! a rank that never arrives, or a launcher's start-up exchange that lost a message, would hold
//! the others there until the allocation's time limit. Past the bring-up's deadline each waiting
//! rank says so, naming its host, and leaves; the launcher then ends the job.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use anyhow::anyhow;

/// How long a rank may take to start MPI, and how the user gives it more (if the command lets
/// them).
#[derive(Debug, Clone, Copy)]
pub struct StartLimit {
    pub within: Duration,
    pub longer: Option<&'static str>,
}

/// Armed while this rank starts MPI; dropping it says MPI started.
pub struct StartDeadline {
    _started: mpsc::Sender<()>,
}

impl StartDeadline {
    /// Gives this rank (`rank` as the launcher numbers it, if it says) `limit` to start MPI
    /// (`MPI_Init` and the splits that find its role).
    pub fn arm(host: &str, rank: Option<u32>, limit: StartLimit) -> StartDeadline {
        let (started, wait) = mpsc::channel::<()>();
        let host = host.to_owned();
        let watch = move || {
            if wait.recv_timeout(limit.within) == Err(RecvTimeoutError::Timeout) {
                crate::output::logging::print_error(&host, &not_started(rank, limit));
                crate::sys::exit::leave_now(crate::sys::exit::FAILED);
            }
        };
        // Without the thread MPI's start has no deadline: say so and go on.
        if let Err(e) = std::thread::Builder::new()
            .name("mpi-start-deadline".into())
            .spawn(watch)
        {
            tracing::warn!("failed to start the watch on MPI's start: {e}");
        }
        StartDeadline { _started: started }
    }
}

fn not_started(rank: Option<u32>, limit: StartLimit) -> anyhow::Error {
    let rank = rank.map_or_else(String::new, |r| format!(" (rank {r} to the launcher)"));
    anyhow!(
        "failed to start MPI within {} s{rank}: MPI_Init did not return, as every rank of the \
         job waits there for all the others. A rank that never started (its node failed, or the \
         launcher is not the MPI mpiswarm was built with) or a launcher's start-up exchange that \
         lost a message holds the rest (see 'MPI_Init did not return' in the troubleshooting \
         guide){}",
        limit.within.as_secs_f64(),
        limit.longer.map_or_else(String::new, |how| format!(
            "; a very large job may need {how}"
        ))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_names_the_rank_and_the_way_to_wait_longer_only_where_there_is_one() {
        let up = StartLimit {
            within: Duration::from_secs(120),
            longer: Some("a longer --timeout"),
        };
        let said = format!("{:#}", not_started(Some(3), up));
        assert!(
            said.starts_with("failed to start MPI within 120 s (rank 3 to the launcher): "),
            "{said}"
        );
        assert!(
            said.ends_with("; a very large job may need a longer --timeout"),
            "{said}"
        );
        let doctor = StartLimit {
            within: Duration::from_secs(60),
            longer: None,
        };
        let said = format!("{:#}", not_started(None, doctor));
        assert!(
            said.starts_with("failed to start MPI within 60 s: "),
            "{said}"
        );
        assert!(said.ends_with("in the troubleshooting guide)"), "{said}");
    }
}
