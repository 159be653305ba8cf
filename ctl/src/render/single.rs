//! One target, output passed through: remote stdout to stdout and remote stderr to stderr,
//! byte for byte, as it comes; one line of diagnosis on stderr when the run did not end by
//! itself.

use std::path::PathBuf;
use std::time::Duration;

use crate::engine::{Renderer, Stop, Unstarted};
use crate::exit;
use crate::outcome::Outcome;
use crate::output::{Console, Passthrough, Tee};
use crate::render::{copy_failure, diagnosis};
use crate::target::Target;

/// The pass-through renderer.
pub struct Single {
    timeout: Option<Duration>,
    output_dir: Option<PathBuf>,
    console: Option<Console>,
    status: u8,
}

impl Single {
    /// `timeout` is the `--timeout` given, for the message when it runs out; output is also
    /// copied to `output_dir` when given. Output goes through `console` when given (see
    /// [`Passthrough::on`]).
    pub fn new(
        timeout: Option<Duration>,
        output_dir: Option<PathBuf>,
        console: Option<Console>,
    ) -> Self {
        Self {
            timeout,
            output_dir,
            console,
            // Stays so only when the target was never started (a stop came first).
            status: exit::UNREACHABLE,
        }
    }
}

impl Renderer<Outcome> for Single {
    type Sink = Tee<Passthrough>;

    fn start(&mut self, target: &Target, _stop: &Stop) -> Tee<Passthrough> {
        let io = match self.console.take() {
            Some(console) => Passthrough::on(console),
            None => Passthrough::new(),
        };
        match &self.output_dir {
            None => Tee::plain(io),
            Some(dir) => Tee::to_dir(dir, &target.spelling, io).unwrap_or_else(|(e, io)| {
                eprintln!("ctl: {target}: {e}");
                Tee::plain(io)
            }),
        }
    }

    fn finish(&mut self, target: Target, outcome: Outcome, sink: Tee<Passthrough>) {
        if let Some(line) = diagnosis(&target, &outcome, self.timeout) {
            eprint!("{line}");
        }
        self.status = outcome.exit_code();
        if let Some(line) = copy_failure(&target, sink.into_parts().1) {
            eprint!("{line}");
            self.status = self.status.max(exit::FAILURE);
        }
    }

    fn lost(&mut self, why: String) {
        eprintln!("ctl: {why}");
        self.status = exit::UNREACHABLE;
    }

    fn end(&mut self, _skipped: Vec<Target>, _why: Unstarted) -> u8 {
        self.status
    }
}
