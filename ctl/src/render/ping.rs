//! `ctl ping`: one line per target as it answers, `TARGET: ok RTT VERSION` on stdout or
//! `ctl: TARGET: ERROR` on stderr.

use crate::engine::{Renderer, Stop, Unstarted};
use crate::exit;
use crate::outcome::Failure;
use crate::output::Captured;
use crate::remote::Pong;
use crate::render::{visible, Console, To};
use crate::target::Target;

/// The ping renderer.
pub struct Pings {
    console: Console,
    status: u8,
}

impl Pings {
    /// A renderer writing to ctl's stdout and stderr.
    pub fn new() -> Self {
        Self {
            console: Console::new(None),
            status: 0,
        }
    }
}

impl Renderer<Result<Pong, Failure>> for Pings {
    // A ping has no output; the sink is never written to.
    type Sink = Captured;

    fn start(&mut self, _target: &Target, _stop: &Stop) -> Captured {
        Captured::default()
    }

    fn finish(&mut self, target: Target, done: Result<Pong, Failure>, _sink: Captured) {
        let _ = match done {
            Ok(pong) => self.console.write(
                To::Out,
                format!(
                    "{target}: ok {:.2} ms {}\n",
                    pong.rtt.as_secs_f64() * 1000.0,
                    visible(&pong.version)
                )
                .as_bytes(),
            ),
            Err(failure) => {
                self.status = exit::UNREACHABLE;
                self.console.write(
                    To::Err,
                    format!("ctl: {target}: {}\n", visible(&failure.to_string())).as_bytes(),
                )
            }
        };
    }

    fn lost(&mut self, why: String) {
        let _ = self
            .console
            .write(To::Err, format!("ctl: {why}\n").as_bytes());
        self.status = exit::UNREACHABLE;
    }

    fn end(&mut self, skipped: Vec<Target>, _why: Unstarted) -> u8 {
        if skipped.is_empty() {
            self.status
        } else {
            exit::UNREACHABLE
        }
    }
}
