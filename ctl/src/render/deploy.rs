//! `ctl deploy`: one line per host as it finishes, `TARGET: deployed ...` on stdout or
//! `TARGET: ERROR` on stderr, then the summary line as for a many-target exec.

use std::collections::HashMap;

use crate::deploy::{Done, Started};
use crate::engine::{Renderer, Stop, Unstarted};
use crate::exit;
use crate::outcome::Ending;
use crate::output::Captured;
use crate::render::summary::Summary;
use crate::render::{Console, To};
use crate::target::Target;

/// The deploy renderer.
pub struct Deploys {
    console: Console,
    summary: Summary,
    order: HashMap<String, usize>,
    worst: u8,
    many: bool,
}

impl Deploys {
    /// `many`: end with the summary line (several targets, or -H/--hosts-file).
    pub fn new(many: bool) -> Self {
        Self {
            console: Console::new(None),
            summary: Summary::default(),
            order: HashMap::new(),
            worst: 0,
            many,
        }
    }
}

/// `text` with control characters other than TAB shown as `?`: a host's messages cannot
/// rewrite another host's line or the summary.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
        .collect()
}

/// The one line (without its newline) that says what happened on a host, and its ending for
/// the summary.
pub fn line(target: &Target, done: &Done) -> (To, String, Ending) {
    match done {
        Done::Ok(report, rtt) => {
            let how = match report.started {
                Started::Systemd => "as rexec-agent.service".to_owned(),
                Started::Background {
                    pid,
                    no_systemd: true,
                } => format!("in the background (no systemd on this host), pid {pid}"),
                Started::Background { pid, .. } => format!("in the background, pid {pid}"),
            };
            let port = report
                .port
                .map_or_else(String::new, |p| format!(", port {p}"));
            let text = format!(
                "{target}: deployed {}, started {how}{port}, keys {}; ping ok {:.2} ms",
                report.version,
                report.keys,
                rtt.as_secs_f64() * 1000.0
            );
            (To::Out, text, Ending::Exited(0))
        }
        Done::Refused(why) => (
            To::Err,
            format!("{target}: {why}"),
            Ending::Exited(i32::from(exit::FAILURE)),
        ),
        Done::Unreachable(failure) => (
            To::Err,
            format!("{target}: {failure}"),
            Ending::Failed(failure.clone()),
        ),
    }
}

impl Renderer<Done> for Deploys {
    // A deploy's output is its one line; the sink is never written to.
    type Sink = Captured;

    fn start(&mut self, target: &Target, _stop: &Stop) -> Captured {
        let index = self.order.len();
        self.order.insert(target.spelling.clone(), index);
        Captured::default()
    }

    fn finish(&mut self, target: Target, done: Done, _sink: Captured) {
        let (to, text, ending) = line(&target, &done);
        self.worst = self.worst.max(ending.exit_code());
        let index = self.order.get(&target.spelling).copied().unwrap_or(0);
        self.summary.record(index, &target.spelling, &ending);
        let _ = self
            .console
            .write(to, format!("{}\n", clean(&text)).as_bytes());
    }

    fn lost(&mut self, why: String) {
        let _ = self
            .console
            .write(To::Err, format!("ctl: {}\n", clean(&why)).as_bytes());
        self.worst = exit::UNREACHABLE;
    }

    fn end(&mut self, skipped: Vec<Target>, why: Unstarted) -> u8 {
        let none_skipped = skipped.is_empty();
        self.summary
            .skipped(skipped.into_iter().map(|t| t.spelling).collect(), why);
        if self.many {
            let line = format!("{}\n", clean(&self.summary.line()));
            let _ = self.console.write(To::Err, line.as_bytes());
        }
        if none_skipped {
            self.worst
        } else {
            exit::UNREACHABLE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Failure;

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(clean("a\x1b[2Kb\tc\r"), "a?[2Kb\tc?");
        let target = Target::parse("web1", 50007).unwrap();
        let (to, text, ending) = line(
            &target,
            &Done::Unreachable(Failure::Connect("ssh failed: refused".into())),
        );
        assert_eq!((to, text.as_str()), (To::Err, "web1: ssh failed: refused"));
        assert_eq!(ending.exit_code(), 255);
    }
}
