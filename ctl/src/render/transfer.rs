//! `ctl push` and `ctl pull`: per target, each entry that was not copied as it happens
//! (`ctl: TARGET: message` on stderr), then one line saying what was copied (stdout) or why
//! not (stderr), or a `--json` record; with many targets a progress bar and the summary.

use std::io;
use std::sync::Arc;

use crate::engine::{Renderer, Stop, Unstarted};
use crate::exit;
use crate::output::Output;
use crate::render::progress::Progress;
use crate::render::summary::Summary;
use crate::render::{Console, To};
use crate::target::Target;
use crate::transfer::Transfer;

/// The transfer renderer.
pub struct Transfers {
    json: bool,
    many: bool,
    console: Arc<Console>,
    summary: Summary,
    started: usize,
    worst: u8,
}

/// Where a target's messages about single entries go: written at once, prefixed (or, with
/// `--json`, left to its record).
pub struct Notes {
    index: usize,
    prefix: String,
    console: Arc<Console>,
    quiet: bool,
}

impl Output for Notes {
    fn stdout(&mut self, _data: &[u8]) -> io::Result<()> {
        Ok(())
    }

    fn stderr(&mut self, data: &[u8]) -> io::Result<()> {
        if self.quiet {
            return Ok(());
        }
        let mut text = Vec::new();
        for line in data.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            text.extend_from_slice(self.prefix.as_bytes());
            text.extend_from_slice(line);
            text.push(b'\n');
        }
        self.console.write(To::Err, &text)
    }
}

impl Transfers {
    /// A renderer for `total` targets; `many` adds the progress bar and the summary.
    pub fn new(json: bool, many: bool, total: usize) -> Self {
        let progress = (many && !json)
            .then(|| Progress::on_stderr(total))
            .flatten();
        Self {
            json,
            many,
            console: Arc::new(Console::new(progress)),
            summary: Summary::default(),
            started: 0,
            worst: 0,
        }
    }
}

impl Renderer<Transfer> for Transfers {
    type Sink = Notes;

    fn start(&mut self, target: &Target, _stop: &Stop) -> Notes {
        let index = self.started;
        self.started += 1;
        if let Some(bar) = self.console.progress() {
            bar.started(&target.spelling);
        }
        Notes {
            index,
            prefix: format!("ctl: {target}: "),
            console: self.console.clone(),
            quiet: self.json,
        }
    }

    fn finish(&mut self, target: Target, done: Transfer, sink: Notes) {
        let code = done.exit_code();
        if let Some(bar) = self.console.progress() {
            bar.finished(&target.spelling, code != 0);
        }
        self.worst = self.worst.max(code);
        let label = match (&done.failure, done.timed_out) {
            (Some(_), _) => "error",
            (None, true) => "timed out",
            (None, false) => "files not copied",
        };
        self.summary.record_status(
            sink.index,
            &target.spelling,
            code,
            done.unreachable(),
            label,
        );
        let _ = if self.json {
            self.console.write(To::Out, done.json(&target).as_bytes())
        } else if code == 0 {
            self.console
                .write(To::Out, format!("{}\n", done.line(&target)).as_bytes())
        } else {
            self.console
                .write(To::Err, format!("ctl: {}\n", done.line(&target)).as_bytes())
        };
    }

    fn lost(&mut self, why: String) {
        let _ = self
            .console
            .write(To::Err, format!("ctl: {why}\n").as_bytes());
        self.worst = exit::UNREACHABLE;
    }

    fn end(&mut self, skipped: Vec<Target>, why: Unstarted) -> u8 {
        self.console.clear_progress();
        let none_started = skipped.is_empty();
        self.summary
            .skipped(skipped.into_iter().map(|t| t.spelling).collect(), why);
        if self.many {
            let line = format!("{}\n", self.summary.line());
            let _ = self.console.write(To::Err, line.as_bytes());
        }
        if none_started {
            self.worst
        } else {
            self.worst.max(exit::FAILURE)
        }
    }
}
