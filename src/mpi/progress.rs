//! Rank 0's live progress line for the long phases (`hosts with a daemon up 5/8`), fed by the
//! host leaders' `Progress` messages; shown only on a terminal.

use std::io::IsTerminal;

use mpi::topology::SimpleCommunicator;

use crate::mpi::messages::{Kind, Message};

/// The counter of the current phase at rank 0 (other leaders only number phases).
#[derive(Default)]
pub struct Progress {
    /// Phases are numbered so that a late message is never counted in the wrong one.
    phase: i32,
    shown: Option<Shown>,
}

struct Shown {
    phase: i32,
    label: String,
    done: usize,
    total: usize,
}

impl Progress {
    /// Starts counting the hosts that finish the next phase (every leader calls this in step).
    pub fn begin(&mut self, is_root: bool, label: &str, total: usize) {
        self.phase += 1;
        if is_root && std::io::stderr().is_terminal() {
            self.shown = Some(Shown {
                phase: self.phase,
                label: label.to_owned(),
                done: 0,
                total,
            });
            self.render();
        }
    }

    /// This leader finished its part: rank 0 counts itself, the others tell rank 0 (until
    /// `deadline`; `Err` if it was not reached by then).
    pub fn done(
        &mut self,
        leaders: &SimpleCommunicator,
        is_root: bool,
        deadline: std::time::Instant,
    ) -> Result<(), Vec<i32>> {
        if is_root {
            self.count(self.phase);
            return Ok(());
        }
        Message::Progress { phase: self.phase }.send_within(leaders, 0, deadline, None)
    }

    /// Rank 0: counts the messages that arrived.
    pub fn collect(&mut self, leaders: &SimpleCommunicator) {
        while let Some((_, Message::Progress { phase })) =
            Message::poll(leaders, None, Kind::Progress)
        {
            self.count(phase);
        }
    }

    /// Ends the phase's live line.
    pub fn end(&mut self) {
        if self.shown.take().is_some() {
            eprint!("\r\x1b[2K");
        }
    }

    fn count(&mut self, phase: i32) {
        if let Some(s) = self.shown.as_mut()
            && s.phase == phase
        {
            s.done += 1;
            self.render();
        }
    }

    fn render(&self) {
        if let Some(s) = &self.shown {
            eprint!("\r\x1b[2Kmpiswarm: {} {}/{}", s.label, s.done, s.total);
        }
    }
}
