//! One target, output passed through: remote stdout to stdout and remote stderr to stderr,
//! byte for byte, as it comes; one line of diagnosis on stderr when the run did not end by
//! itself.

use std::time::Duration;

use crate::engine::{Renderer, Stop};
use crate::exit;
use crate::outcome::Outcome;
use crate::output::Passthrough;
use crate::render::diagnosis;
use crate::target::Target;

/// The pass-through renderer.
pub struct Single {
    timeout: Option<Duration>,
    status: u8,
}

impl Single {
    /// `timeout` is the `--timeout` given, for the message when it runs out.
    pub fn new(timeout: Option<Duration>) -> Self {
        Self {
            timeout,
            // Stays so only when the target was never started (a stop came first).
            status: exit::UNREACHABLE,
        }
    }
}

impl Renderer<Outcome> for Single {
    type Sink = Passthrough;

    fn start(&mut self, _target: &Target, _stop: &Stop) -> Passthrough {
        Passthrough::new()
    }

    fn finish(&mut self, target: Target, outcome: Outcome, _sink: Passthrough) {
        if let Some(line) = diagnosis(&target, &outcome, self.timeout) {
            eprint!("{line}");
        }
        self.status = outcome.exit_code();
    }

    fn lost(&mut self, why: String) {
        eprintln!("ctl: {why}");
        self.status = exit::UNREACHABLE;
    }

    fn end(&mut self, _skipped: Vec<Target>) -> u8 {
        self.status
    }
}
