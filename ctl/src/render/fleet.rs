//! Many targets: prefixed lines as they arrive, `--group` blocks at the end, or `--json`
//! records as each target finishes; then the summary line on stderr. The progress bar, when
//! stderr is a terminal, is taken off the screen around every write.

use std::collections::hash_map::{Entry, HashMap};
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::engine::{Renderer, Stop, Unstarted};
use crate::exit;
use crate::nodeset;
use crate::outcome::{Ending, Outcome};
use crate::output::{Captured, Output, Tee, MAX_CAPTURE};
use crate::render::lines::Prefixed;
use crate::render::progress::Progress;
use crate::render::summary::Summary;
use crate::render::{diagnosis, json, Console, Escaper, To};
use crate::spool::{self, Spool, Spooled};
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

/// One `--group` block: the output its members share (in the spool) and who they are, by
/// their positions in the order given and their spellings.
struct Block {
    stdout: spool::Stream,
    stderr: spool::Stream,
    members: Vec<(usize, String)>,
}

/// What makes two targets' output the same: the length and SHA-256 of each stream.
type Content = (usize, [u8; 32]);

/// Output shared by several targets in `--group` mode, keyed by (stdout, stderr, how they
/// ended).
type Groups = HashMap<(Content, Content, String), Block>;

/// How a run is shown, beyond its [`Style`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Lines, groups or JSON.
    pub style: Style,
    /// Whether to end with a summary line (not for a lone `--json` target) and show a
    /// progress bar (not with `--json`).
    pub many: bool,
    /// Whether lines start with `TARGET: ` (not with `-N`).
    pub prefix: bool,
    /// How many targets there are, for the progress bar.
    pub total: usize,
    /// The `--timeout` given, for messages.
    pub timeout: Option<Duration>,
    /// `--output-dir`.
    pub output_dir: Option<PathBuf>,
    /// `--failed-to`.
    pub failed_to: Option<PathBuf>,
}

/// The many-target renderer.
pub struct Fleet {
    options: Options,
    console: Arc<Console>,
    summary: Summary,
    groups: Groups,
    /// Where `--group` output waits for the end of the run.
    spool: Option<spool::Shared>,
    /// Hosts-file lines of the targets that did not succeed, for `--failed-to`.
    failed_lines: Vec<String>,
    started: usize,
    worst: u8,
}

/// Where one target's output goes: straight to the console as lines, memory, or the spool.
pub enum Inner {
    /// Prefixed lines, written as they complete.
    Lines(Prefixed),
    /// Kept for a `--json` record.
    Captured(Captured),
    /// Kept for a `--group` block (boxed: its hash states make it the largest by far).
    Spooled(Box<Spooled>),
}

impl Output for Inner {
    fn stdout(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Self::Lines(s) => s.stdout(data),
            Self::Captured(s) => s.stdout(data),
            Self::Spooled(s) => s.stdout(data),
        }
    }

    fn stderr(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Self::Lines(s) => s.stderr(data),
            Self::Captured(s) => s.stderr(data),
            Self::Spooled(s) => s.stderr(data),
        }
    }
}

/// One target's sink: its position in the order given, and its output.
pub struct Sink(usize, Tee<Inner>);

impl Output for Sink {
    fn stdout(&mut self, data: &[u8]) -> io::Result<()> {
        self.1.stdout(data)
    }

    fn stderr(&mut self, data: &[u8]) -> io::Result<()> {
        self.1.stderr(data)
    }
}

/// How a `--group` block's members ended, for its heading.
fn ending_label(ending: &Ending) -> String {
    match ending {
        Ending::Exited(code) => format!("exit {code}"),
        Ending::Killed(sig) => format!("signal {sig}"),
        Ending::TimedOut(_) | Ending::Unanswered => "timed out".into(),
        Ending::AgentShutdown { by, .. } => super::shutdown_label(*by),
        Ending::Failed(f) => format!("{} error", f.kind()),
    }
}

impl Fleet {
    /// A renderer as `options` say; for `--group`, with its temporary file made now, so
    /// that a `TMPDIR` that cannot hold it fails the run before anything runs.
    pub fn new(options: Options) -> Result<Self, String> {
        let spool = match options.style {
            Style::Group => Some(Arc::new(Mutex::new(Spool::new()?))),
            Style::Lines | Style::Json => None,
        };
        let progress = (options.many && options.style != Style::Json)
            .then(|| Progress::on_stderr(options.total))
            .flatten();
        Ok(Self {
            options,
            console: Arc::new(Console::new(progress)),
            summary: Summary::default(),
            groups: Groups::new(),
            spool,
            failed_lines: Vec::new(),
            started: 0,
            worst: 0,
        })
    }

    /// A new sink for one target's output, as the style says.
    fn inner(&self, target: &Target, stop: &Stop) -> Inner {
        // Only --group has a spool.
        match (self.options.style, &self.spool) {
            (Style::Lines, _) => Inner::Lines(Prefixed::new(
                target,
                self.options.prefix,
                self.console.clone(),
                stop.clone(),
            )),
            (_, Some(spool)) => Inner::Spooled(Box::new(Spooled::new(spool.clone()))),
            (_, None) => Inner::Captured(Captured::default()),
        }
    }

    fn note(&self, text: &str) {
        let _ = self.console.write(To::Err, text.as_bytes());
    }

    /// Writes `--failed-to`: one target per line, with its agent name if it had one.
    fn write_failed(&mut self, skipped: &[Target]) {
        let Some(path) = &self.options.failed_to else {
            return;
        };
        let mut lines = std::mem::take(&mut self.failed_lines);
        lines.extend(skipped.iter().map(hosts_line));
        let mut text = lines.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        if let Err(e) = std::fs::write(path, text) {
            self.note(&format!(
                "ctl: cannot write --failed-to {}: {e}\n",
                path.display()
            ));
            self.worst = self.worst.max(exit::FAILURE);
        }
    }

    fn write_groups(&mut self) {
        let Some(spool) = self.spool.clone() else {
            return;
        };
        let mut blocks: Vec<_> = std::mem::take(&mut self.groups).into_iter().collect();
        for (_, block) in &mut blocks {
            block.members.sort_unstable();
        }
        blocks.sort_by_key(|(_, block)| block.members[0].0);
        for ((_, _, ending), block) in blocks {
            let members = &block.members;
            let names = nodeset::fold(&members.iter().map(|(_, n)| n).collect::<Vec<_>>());
            let (stdout_empty, stderr_empty) = (block.stdout.is_empty(), block.stderr.is_empty());
            for (to, stream, tag) in [
                (To::Out, &block.stdout, ""),
                (To::Err, &block.stderr, "stderr, "),
            ] {
                // Targets that failed without a word still get a block saying how they ended.
                let only = to == To::Out && stdout_empty && stderr_empty && ending != "exit 0";
                if stream.is_empty() && !only {
                    continue;
                }
                let mut text =
                    format!("----------------\n{names} ({tag}{ending})\n----------------\n")
                        .into_bytes();
                // The output as its lines show it in line mode: control characters escaped.
                // Read back and written in pieces; nothing else writes at this point, so the
                // bytes are the same as one write of the whole block.
                let mut escaper = Escaper::default();
                let read = stream.read(&spool, |piece| {
                    escaper.push(piece, &mut text);
                    if text.len() >= spool::IN_MEMORY {
                        let _ = self.console.write(to, &text);
                        text.clear();
                    }
                    Ok(())
                });
                escaper.finish(&mut text);
                if let Err(e) = read {
                    let _ = self.console.write(to, &text);
                    self.note(&format!(
                        "ctl: {names}: cannot read back --group output from the temporary file \
                         in {}: {e}\n",
                        spool::dir(&spool).display()
                    ));
                    self.worst = self.worst.max(exit::FAILURE);
                    continue;
                }
                if stream.last().is_some_and(|b| b != b'\n') {
                    text.push(b'\n');
                }
                let _ = self.console.write(to, &text);
            }
        }
    }

    /// Files a finished target's `--group` output under its block: a new block keeps it (in
    /// the spool), a target whose output and ending match an existing block's only adds its
    /// name.
    fn group(&mut self, target: &Target, index: usize, outcome: &Outcome, spooled: Spooled) {
        let (spool, mut stdout, mut stderr) = spooled.into_parts();
        if stdout.cut || stderr.cut {
            self.note(&format!(
                "ctl: {target}: output past {} MiB per stream was dropped\n",
                MAX_CAPTURE >> 20
            ));
        }
        let key = (stdout.key(), stderr.key(), ending_label(&outcome.ending));
        let member = (index, target.spelling.clone());
        if !self.groups.contains_key(&key) {
            stdout.settle(&spool);
            stderr.settle(&spool);
        }
        if let Some(e) = stdout.error.as_ref().or(stderr.error.as_ref()) {
            // Nothing is lost (what could not be written stays in memory), but the memory
            // bound no longer holds and the disk is likely full: say so, and fail the run.
            let text = format!(
                "ctl: {target}: cannot write --group output to the temporary file in {}: {e} \
                 (kept in memory instead)\n",
                spool::dir(&spool).display()
            );
            self.note(&text);
            self.worst = self.worst.max(exit::FAILURE);
        }
        match self.groups.entry(key) {
            Entry::Occupied(mut block) => block.get_mut().members.push(member),
            Entry::Vacant(vacant) => {
                vacant.insert(Block {
                    stdout,
                    stderr,
                    members: vec![member],
                });
            }
        }
    }
}

/// A target as a `--hosts-file` line: its spelling, and its agent name if it had one.
fn hosts_line(target: &Target) -> String {
    match &target.name {
        Some(name) => format!("{} {name}", target.spelling),
        None => target.spelling.clone(),
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
        let inner = self.inner(target, stop);
        let tee = match &self.options.output_dir {
            None => Tee::plain(inner),
            Some(dir) => match Tee::to_dir(dir, &target.spelling, inner) {
                Ok(tee) => tee,
                Err((e, inner)) => {
                    self.note(&format!("ctl: {target}: {e}\n"));
                    self.worst = self.worst.max(exit::FAILURE);
                    // The run goes on without the copy.
                    Tee::plain(inner)
                }
            },
        };
        Sink(index, tee)
    }

    fn finish(&mut self, target: Target, outcome: Outcome, sink: Sink) {
        let code = outcome.exit_code();
        if let Some(bar) = self.console.progress() {
            bar.finished(&target.spelling, code != 0);
        }
        self.worst = self.worst.max(code);
        let Sink(index, tee) = sink;
        let (inner, copy_error) = tee.into_parts();
        self.summary
            .record(index, &target.spelling, &outcome.ending);
        if self.options.failed_to.is_some() && !outcome.ending.succeeded() {
            self.failed_lines.push(hosts_line(&target));
        }
        let (captured, spooled) = match inner {
            Inner::Lines(mut lines) => {
                lines.finish();
                (None, None)
            }
            Inner::Captured(c) => (Some(c), None),
            Inner::Spooled(s) => (None, Some(s)),
        };
        if let Some(text) = super::copy_failure(&target, copy_error) {
            self.note(&text);
            self.worst = self.worst.max(exit::FAILURE);
        }
        if self.options.style != Style::Json {
            if let Some(text) = diagnosis(&target, &outcome, self.options.timeout) {
                self.note(&text);
            }
        }
        if let Some(spooled) = spooled {
            self.group(&target, index, &outcome, *spooled);
        }
        if let Some(c) = captured {
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
    }

    fn lost(&mut self, why: String) {
        self.note(&format!("ctl: {why}\n"));
        self.worst = exit::UNREACHABLE;
    }

    fn end(&mut self, skipped: Vec<Target>, why: Unstarted) -> u8 {
        self.console.clear_progress();
        if self.options.style == Style::Group {
            self.write_groups();
        }
        self.write_failed(&skipped);
        if !skipped.is_empty() {
            // Targets that never ran are not a success.
            self.worst = self.worst.max(exit::FAILURE);
        }
        self.summary
            .skipped(skipped.into_iter().map(|t| t.spelling).collect(), why);
        if self.options.many {
            let line = format!("{}\n", self.summary.line());
            self.note(&line);
        }
        self.worst
    }
}
