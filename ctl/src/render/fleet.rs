//! Many targets: prefixed lines as they arrive, `--group` blocks at the end, or `--json`
//! records as each target finishes; then the summary line on stderr. The progress bar, when
//! stderr is a terminal, is taken off the screen around every write.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::{Renderer, Stop};
use crate::exit;
use crate::outcome::Outcome;
use crate::output::{Captured, Output, MAX_CAPTURE};
use crate::render::lines::Prefixed;
use crate::render::progress::Progress;
use crate::render::summary::Summary;
use crate::render::{diagnosis, json, Console, To};
use crate::target::Target;

/// How results are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Each line as `TARGET: line`, as it arrives.
    Lines,
    /// Each distinct output once, at the end, headed by the targets that produced it.
    Group,
    /// One JSON object per target as it finishes.
    Json,
}

/// Output shared by several targets in `--group` mode, keyed by (stdout, stderr), with the
/// members' positions in the order given and their spellings.
type Groups = HashMap<(Vec<u8>, Vec<u8>), Vec<(usize, String)>>;

/// The many-target renderer.
pub struct Fleet {
    style: Style,
    /// Whether to end with a summary line (not for a lone `--json` target).
    many: bool,
    timeout: Option<Duration>,
    console: Arc<Console>,
    summary: Summary,
    groups: Groups,
    started: usize,
    worst: u8,
}

/// Where one target's output goes: straight to the console as lines, or memory.
pub enum Sink {
    /// Prefixed lines, written as they complete.
    Lines(usize, Prefixed),
    /// Kept for a `--group` block or a `--json` record.
    Captured(usize, Captured),
}

impl Output for Sink {
    fn stdout(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Self::Lines(_, s) => s.stdout(data),
            Self::Captured(_, s) => s.stdout(data),
        }
    }

    fn stderr(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Self::Lines(_, s) => s.stderr(data),
            Self::Captured(_, s) => s.stderr(data),
        }
    }
}

impl Fleet {
    /// A renderer for `total` targets. `many` adds the summary line and, unless in `--json`
    /// mode, the progress bar; `timeout` is the `--timeout` given, for messages.
    pub fn new(style: Style, many: bool, total: usize, timeout: Option<Duration>) -> Self {
        let progress = (many && style != Style::Json)
            .then(|| Progress::on_stderr(total))
            .flatten();
        Self {
            style,
            many,
            timeout,
            console: Arc::new(Console::new(progress)),
            summary: Summary::default(),
            groups: Groups::new(),
            started: 0,
            worst: 0,
        }
    }

    fn write_groups(&mut self) {
        let mut blocks: Vec<_> = std::mem::take(&mut self.groups).into_iter().collect();
        for (_, members) in &mut blocks {
            members.sort_unstable();
        }
        blocks.sort_by_key(|(_, members)| members[0].0);
        for ((stdout, stderr), members) in blocks {
            let names = members
                .iter()
                .map(|(_, name)| name.as_str())
                .collect::<Vec<_>>()
                .join(",");
            for (to, bytes, tag) in [(To::Out, stdout, ""), (To::Err, stderr, " (stderr)")] {
                if bytes.is_empty() {
                    continue;
                }
                let mut block =
                    format!("----------------\n{names}{tag}\n----------------\n").into_bytes();
                block.extend_from_slice(&bytes);
                if !bytes.ends_with(b"\n") {
                    block.push(b'\n');
                }
                let _ = self.console.write(to, &block);
            }
        }
    }
}

impl Renderer<Outcome> for Fleet {
    type Sink = Sink;

    fn start(&mut self, target: &Target, stop: &Stop) -> Sink {
        let index = self.started;
        self.started += 1;
        if let Some(bar) = self.console.progress() {
            bar.started(&target.spelling);
        }
        match self.style {
            Style::Lines => Sink::Lines(
                index,
                Prefixed::new(target, self.console.clone(), stop.clone()),
            ),
            Style::Group | Style::Json => Sink::Captured(index, Captured::default()),
        }
    }

    fn finish(&mut self, target: Target, outcome: Outcome, sink: Sink) {
        let code = outcome.exit_code();
        if let Some(bar) = self.console.progress() {
            bar.finished(&target.spelling, code != 0);
        }
        self.worst = self.worst.max(code);
        let index = match &sink {
            Sink::Lines(i, _) | Sink::Captured(i, _) => *i,
        };
        self.summary
            .record(index, &target.spelling, &outcome.ending);
        let captured = match sink {
            Sink::Lines(_, mut lines) => {
                lines.finish();
                None
            }
            Sink::Captured(_, c) => Some(c),
        };
        if self.style != Style::Json {
            if let Some(text) = diagnosis(&target, &outcome, self.timeout) {
                let _ = self.console.write(To::Err, text.as_bytes());
            }
        }
        match (self.style, captured) {
            (Style::Json, Some(c)) => {
                let stdout = json::Stream {
                    bytes: &c.stdout,
                    truncated: c.stdout_cut,
                };
                let stderr = json::Stream {
                    bytes: &c.stderr,
                    truncated: c.stderr_cut,
                };
                let record = json::line(&target.spelling, &outcome, stdout, stderr);
                let _ = self.console.write(To::Out, &record);
            }
            (Style::Group, Some(c)) => {
                if c.stdout_cut || c.stderr_cut {
                    let note = format!(
                        "ctl: {target}: output past {} MiB per stream was dropped\n",
                        MAX_CAPTURE >> 20
                    );
                    let _ = self.console.write(To::Err, note.as_bytes());
                }
                if !c.stdout.is_empty() || !c.stderr.is_empty() {
                    self.groups
                        .entry((c.stdout, c.stderr))
                        .or_default()
                        .push((index, target.spelling));
                }
            }
            _ => {}
        }
    }

    fn lost(&mut self, why: String) {
        let _ = self
            .console
            .write(To::Err, format!("ctl: {why}\n").as_bytes());
        self.worst = exit::UNREACHABLE;
    }

    fn end(&mut self, skipped: Vec<Target>) -> u8 {
        self.console.clear_progress();
        if self.style == Style::Group {
            self.write_groups();
        }
        self.summary.skipped(skipped.len());
        if self.many {
            let line = format!("{}\n", self.summary.line());
            let _ = self.console.write(To::Err, line.as_bytes());
        }
        self.worst
    }
}
