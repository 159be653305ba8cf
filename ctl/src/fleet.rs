//! Running one command on many targets: up to `-P` at once, each output line written as
//! `TARGET: line` as it arrives (or `--group`ed blocks, or `--json` records), then a summary
//! line on stderr, with a progress bar while it runs when stderr is a terminal.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rexec_shared::keyfile::KeyEntry;
use rexec_shared::message::ExecRequest;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::json;
use crate::output::{Captured, Passthrough, MAX_CAPTURE};
use crate::remote::{self, Failure, Outcome, Output, StdinChunks};
use crate::target::Target;

/// Longest line written whole; a longer one is written in pieces of this size, each prefixed,
/// so a remote `cat /dev/zero` cannot make ctl hold an unbounded line.
pub const MAX_LINE: usize = 64 * 1024;
/// How often the progress bar is redrawn.
const PROGRESS_TICK: Duration = Duration::from_millis(200);
/// How many targets the summary names per kind of failure before it says how many more.
const SUMMARY_NAMES: usize = 20;
/// Chunk size for sending a script to a target.
const SCRIPT_CHUNK: usize = 256 * 1024;
/// Status for a target whose task failed inside ctl, as for an unreachable one.
const EXIT_UNREACHABLE: u8 = 255;
/// Writes "go to column 0 and clear the line" on a terminal.
const ERASE_LINE: &[u8] = b"\r\x1b[K";

/// How results are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each line as `TARGET: line`, as it arrives.
    Lines,
    /// Each distinct output once, at the end, headed by the targets that produced it.
    Group,
    /// One JSON object per target as it finishes.
    Json,
}

/// What the commands read on stdin.
pub enum Input {
    /// Nothing: an empty stdin.
    Empty,
    /// The same bytes for every target (`--script`).
    Script(Arc<[u8]>),
    /// ctl's own stdin; only meaningful for a single target.
    Forward(StdinChunks),
}

/// A run: what to do, where, and how to show it.
pub struct Plan {
    /// Targets in the order given, duplicates already removed.
    pub targets: Vec<Target>,
    /// The key to authenticate with.
    pub key: KeyEntry,
    /// The command, as sent to every target.
    pub request: ExecRequest,
    /// The commands' stdin.
    pub input: Input,
    /// Bound on connecting and authenticating, per target.
    pub connect_timeout: Duration,
    /// Most targets running at once.
    pub parallel: usize,
    /// How results are shown.
    pub mode: Mode,
    /// Many-target mode: summary line, progress bar, and diagnostics prefixed by target.
    pub many: bool,
    /// The `--timeout` given, for messages.
    pub timeout: Option<Duration>,
}

/// Which of ctl's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum To {
    Out,
    Err,
}

/// ctl's stdout and stderr, shared by all targets: one lock, so each write of whole lines
/// lands in one piece, and the progress bar is erased before anything else is written.
struct Console {
    inner: Mutex<ConsoleInner>,
}

struct ConsoleInner {
    io: Passthrough,
    bar: Option<Bar>,
}

/// Progress bar state; present only when stderr is a terminal.
struct Bar {
    total: usize,
    done: usize,
    failed: usize,
    started: Instant,
    shown: bool,
    stdout_is_tty: bool,
}

impl Console {
    fn new(progress_total: Option<usize>) -> Self {
        let bar = progress_total.filter(|_| is_tty(2)).map(|total| Bar {
            total,
            done: 0,
            failed: 0,
            started: Instant::now(),
            shown: false,
            stdout_is_tty: is_tty(1),
        });
        Self {
            inner: Mutex::new(ConsoleInner {
                io: Passthrough::new(),
                bar,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ConsoleInner> {
        // A panic while holding the lock leaves nothing half-updated that matters here.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes `bytes` (whole lines) in one piece, erasing the progress bar first if it is in
    /// the way.
    fn write(&self, to: To, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut guard = self.lock();
        let inner = &mut *guard;
        if let Some(bar) = &mut inner.bar {
            if bar.shown && (to == To::Err || bar.stdout_is_tty) {
                let _ = inner.io.stderr(ERASE_LINE);
                bar.shown = false;
            }
        }
        match to {
            To::Out => inner.io.stdout(bytes),
            To::Err => inner.io.stderr(bytes),
        }
    }

    /// Counts a finished target and redraws the bar.
    fn finished(&self, failed: bool) {
        let mut guard = self.lock();
        if let Some(bar) = &mut guard.bar {
            bar.done += 1;
            bar.failed += usize::from(failed);
        }
        Self::draw(&mut guard);
    }

    /// Redraws the bar (the elapsed time moves on).
    fn tick(&self) {
        Self::draw(&mut self.lock());
    }

    /// Removes the bar for good.
    fn clear(&self) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        if let Some(bar) = inner.bar.take() {
            if bar.shown {
                let _ = inner.io.stderr(ERASE_LINE);
            }
        }
    }

    fn draw(inner: &mut ConsoleInner) {
        if let Some(bar) = &mut inner.bar {
            let line = render_bar(bar.done, bar.total, bar.failed, bar.started.elapsed());
            let _ = inner.io.stderr(format!("\r{line}\x1b[K").as_bytes());
            bar.shown = true;
        }
    }
}

fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// The progress line: a 20-cell bar, done/total, failures so far and elapsed time.
fn render_bar(done: usize, total: usize, failed: usize, elapsed: Duration) -> String {
    const CELLS: usize = 20;
    let filled = (done * CELLS)
        .checked_div(total)
        .unwrap_or(CELLS)
        .min(CELLS);
    format!(
        "[{}{}] {done}/{total} done, {failed} failed, {:.1}s",
        "#".repeat(filled),
        "-".repeat(CELLS - filled),
        elapsed.as_secs_f64()
    )
}

/// One stream's partial last line.
#[derive(Debug, Default)]
struct LineBuf {
    partial: Vec<u8>,
}

impl LineBuf {
    /// Takes `data`, appending each line it completes to `batch` as `prefix line\n`. A line
    /// longer than [`MAX_LINE`] is cut into pieces of that size.
    fn push(&mut self, prefix: &[u8], mut data: &[u8], batch: &mut Vec<u8>) {
        while !data.is_empty() {
            let room = MAX_LINE - self.partial.len();
            // One byte past the room, so a newline right at the limit still ends the line.
            let window = &data[..data.len().min(room + 1)];
            match window.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    batch.extend_from_slice(prefix);
                    batch.append(&mut self.partial);
                    batch.extend_from_slice(&window[..=end]);
                    data = &data[end + 1..];
                }
                None if window.len() > room => {
                    batch.extend_from_slice(prefix);
                    batch.append(&mut self.partial);
                    batch.extend_from_slice(&window[..room]);
                    batch.push(b'\n');
                    data = &data[room..];
                }
                None => {
                    self.partial.extend_from_slice(window);
                    data = &data[window.len()..];
                }
            }
        }
    }

    /// Appends the last line, if it had no newline, with one.
    fn finish(&mut self, prefix: &[u8], batch: &mut Vec<u8>) {
        if !self.partial.is_empty() {
            batch.extend_from_slice(prefix);
            batch.append(&mut self.partial);
            batch.push(b'\n');
        }
    }
}

/// Writes a target's output as `TARGET: line`, whole lines at a time.
struct Prefixed {
    prefix: Vec<u8>,
    out: LineBuf,
    err: LineBuf,
    console: Arc<Console>,
    stop: Arc<watch::Sender<Option<i32>>>,
}

impl Prefixed {
    fn new(target: &Target, console: Arc<Console>, stop: Arc<watch::Sender<Option<i32>>>) -> Self {
        let prefix = format!("{target}: ").into_bytes();
        Self {
            prefix,
            out: LineBuf::default(),
            err: LineBuf::default(),
            console,
            stop,
        }
    }

    fn emit(&self, to: To, batch: &[u8]) -> io::Result<()> {
        let written = self.console.write(to, batch);
        if let Err(e) = &written {
            if to == To::Out && e.kind() == io::ErrorKind::BrokenPipe {
                // Like `cmd | head`: nobody reads any more, so stop every target with SIGPIPE.
                request_stop(&self.stop, libc::SIGPIPE);
            }
        }
        written
    }

    /// Writes the unterminated last lines, each with a newline.
    fn finish(&mut self) {
        let mut batch = Vec::new();
        self.out.finish(&self.prefix, &mut batch);
        let _ = self.emit(To::Out, &batch);
        batch.clear();
        self.err.finish(&self.prefix, &mut batch);
        let _ = self.emit(To::Err, &batch);
    }
}

impl Output for Prefixed {
    fn stdout(&mut self, data: &[u8]) -> io::Result<()> {
        let mut batch = Vec::new();
        self.out.push(&self.prefix, data, &mut batch);
        self.emit(To::Out, &batch)
    }

    fn stderr(&mut self, data: &[u8]) -> io::Result<()> {
        let mut batch = Vec::new();
        self.err.push(&self.prefix, data, &mut batch);
        self.emit(To::Err, &batch)
    }
}

/// Asks every target to stop with `signal`, unless a stop was already asked for.
fn request_stop(stop: &watch::Sender<Option<i32>>, signal: i32) {
    stop.send_if_modified(|current| {
        let first = current.is_none();
        if first {
            *current = Some(signal);
        }
        first
    });
}

/// What every target's task shares.
struct Shared {
    key: KeyEntry,
    request: ExecRequest,
    script: Option<Arc<[u8]>>,
    connect_timeout: Duration,
    mode: Mode,
    limit: Semaphore,
    console: Arc<Console>,
    stop: Arc<watch::Sender<Option<i32>>>,
}

/// How one target's run ended.
enum Done {
    /// It ran (or tried to connect); its outcome and, unless in line mode, its output.
    Ran(Outcome, Option<Captured>),
    /// A stop came before its turn, so it was never contacted.
    Skipped,
}

/// The class a target falls in for the summary line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    Ok,
    /// Reached but not successful: sorted by exit status, then by label.
    Failed(u8, String),
    Unreachable,
    Skipped,
}

fn classify(outcome: &Outcome) -> Class {
    let code = outcome.exit_code();
    match &outcome.failure {
        Some(Failure::Connect(_) | Failure::Auth(_)) => return Class::Unreachable,
        Some(Failure::Stream(_) | Failure::Agent(_)) => return Class::Failed(code, "error".into()),
        None => {}
    }
    let status = outcome.status.unwrap_or_default();
    if outcome.local_timeout || status.timed_out {
        return Class::Failed(code, "timed out".into());
    }
    match (status.code, status.signal) {
        (Some(0), _) => Class::Ok,
        (Some(n), _) => Class::Failed(code, format!("exit {n}")),
        (None, Some(sig)) => Class::Failed(code, format!("signal {sig}")),
        (None, None) => Class::Failed(code, "error".into()),
    }
}

/// The line a target's failure or timeout is reported with, if it needs one.
fn diagnosis(target: &Target, outcome: &Outcome, timeout: Option<Duration>) -> Option<String> {
    if let Some(failure) = &outcome.failure {
        return Some(format!("ctl: {target}: {failure}\n"));
    }
    if outcome.local_timeout || outcome.status.is_some_and(|s| s.timed_out) {
        let secs = timeout.map_or(0.0, |t| t.as_secs_f64());
        return Some(format!(
            "ctl: {target}: command timed out after {secs}s; its process group was killed\n"
        ));
    }
    None
}

/// The summary line, e.g.
/// `ctl: 10 targets: 7 ok, 2 failed (exit 1: web3; exit 2: web7), 1 unreachable (web9)`.
fn summary(targets: &[Target], classes: &[Class]) -> String {
    let names = |wanted: &dyn Fn(&Class) -> bool| -> Vec<&str> {
        targets
            .iter()
            .zip(classes)
            .filter(|(_, c)| wanted(c))
            .map(|(t, _)| t.spelling.as_str())
            .collect()
    };
    let list = |names: &[&str]| {
        let shown = names
            .iter()
            .take(SUMMARY_NAMES)
            .copied()
            .collect::<Vec<_>>()
            .join(", ");
        match names.len().saturating_sub(SUMMARY_NAMES) {
            0 => shown,
            more => format!("{shown} and {more} more"),
        }
    };
    let ok = classes.iter().filter(|c| **c == Class::Ok).count();
    let mut failed_kinds: Vec<&Class> = classes
        .iter()
        .filter(|c| matches!(c, Class::Failed(..)))
        .collect();
    let failed = failed_kinds.len();
    failed_kinds.sort();
    failed_kinds.dedup();
    let plural = if targets.len() == 1 { "" } else { "s" };
    let mut line = format!(
        "ctl: {} target{plural}: {ok} ok, {failed} failed",
        targets.len()
    );
    if failed > 0 {
        let parts: Vec<String> = failed_kinds
            .iter()
            .filter_map(|kind| match kind {
                Class::Failed(_, label) => {
                    Some(format!("{label}: {}", list(&names(&|c| c == *kind))))
                }
                _ => None,
            })
            .collect();
        line += &format!(" ({})", parts.join("; "));
    }
    let unreachable = names(&|c| *c == Class::Unreachable);
    line += &format!(", {} unreachable", unreachable.len());
    if !unreachable.is_empty() {
        line += &format!(" ({})", list(&unreachable));
    }
    let skipped = names(&|c| *c == Class::Skipped);
    if !skipped.is_empty() {
        line += &format!(", {} not started (stopped first)", skipped.len());
    }
    line
}

/// A stdin that delivers `script` and then ends.
fn script_input(script: Arc<[u8]>) -> StdinChunks {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        for chunk in script.chunks(SCRIPT_CHUNK) {
            if tx.send(chunk.to_vec()).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Runs one target when its turn comes.
async fn run_target(
    target: Target,
    shared: Arc<Shared>,
    stdin: Option<StdinChunks>,
    cancel: watch::Receiver<Option<i32>>,
) -> Done {
    let Ok(_permit) = shared.limit.acquire().await else {
        return Done::Skipped;
    };
    if cancel.borrow().is_some() {
        return Done::Skipped;
    }
    let stdin = stdin.or_else(|| shared.script.clone().map(script_input));
    let (key, request, timeout) = (&shared.key, shared.request.clone(), shared.connect_timeout);
    if shared.mode == Mode::Lines {
        let mut sink = Prefixed::new(&target, shared.console.clone(), shared.stop.clone());
        let outcome = remote::exec(&target, key, request, timeout, stdin, cancel, &mut sink).await;
        sink.finish();
        Done::Ran(outcome, None)
    } else {
        let mut capture = Captured::default();
        let outcome =
            remote::exec(&target, key, request, timeout, stdin, cancel, &mut capture).await;
        Done::Ran(outcome, Some(capture))
    }
}

/// Output shared by several targets in `--group` mode, keyed by (stdout, stderr).
type Groups = HashMap<(Vec<u8>, Vec<u8>), Vec<usize>>;

/// Runs `plan` to the end, stopping every target when `cancel` fires; returns the highest
/// of the targets' statuses.
pub async fn run(plan: Plan, mut cancel: watch::Receiver<Option<i32>>) -> u8 {
    let Plan {
        targets,
        key,
        request,
        input,
        connect_timeout,
        parallel,
        mode,
        many,
        timeout,
    } = plan;
    let show_progress = many && mode != Mode::Json;
    let console = Arc::new(Console::new(show_progress.then_some(targets.len())));

    // Our own stop signal: the user's SIGINT/SIGTERM, or a closed stdout.
    let stop = Arc::new(watch::Sender::new(None::<i32>));
    let forward = {
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Ok(sig) = cancel.wait_for(Option::is_some).await.map(|sig| *sig) {
                request_stop(&stop, sig.unwrap_or(libc::SIGTERM));
            }
        })
    };
    let ticker = console.lock().bar.is_some().then(|| {
        let console = console.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(PROGRESS_TICK);
            loop {
                every.tick().await;
                console.tick();
            }
        })
    });

    let (script, mut forwarded) = match input {
        Input::Empty => (None, None),
        Input::Script(bytes) => (Some(bytes), None),
        Input::Forward(rx) => (None, Some(rx)),
    };
    let shared = Arc::new(Shared {
        key,
        request,
        script,
        connect_timeout,
        mode,
        limit: Semaphore::new(parallel.max(1)),
        console: console.clone(),
        stop: stop.clone(),
    });
    let mut tasks = JoinSet::new();
    for (index, target) in targets.iter().cloned().enumerate() {
        let task = run_target(target, shared.clone(), forwarded.take(), stop.subscribe());
        tasks.spawn(async move { (index, task.await) });
    }

    let mut classes = vec![Class::Skipped; targets.len()];
    let mut groups = Groups::new();
    let mut worst = 0u8;
    while let Some(joined) = tasks.join_next().await {
        let (index, done) = match joined {
            Ok(result) => result,
            Err(e) => {
                let _ = console.write(
                    To::Err,
                    format!("ctl: internal error in a target's task: {e}\n").as_bytes(),
                );
                worst = EXIT_UNREACHABLE;
                continue;
            }
        };
        let target = &targets[index];
        let Done::Ran(outcome, capture) = done else {
            continue;
        };
        let code = outcome.exit_code();
        worst = worst.max(code);
        classes[index] = classify(&outcome);
        if mode != Mode::Json {
            if let Some(text) = diagnosis(target, &outcome, timeout) {
                let _ = console.write(To::Err, text.as_bytes());
            }
        }
        match (mode, capture) {
            (Mode::Json, Some(c)) => {
                let stdout = json::Stream {
                    bytes: &c.stdout,
                    truncated: c.stdout_cut,
                };
                let stderr = json::Stream {
                    bytes: &c.stderr,
                    truncated: c.stderr_cut,
                };
                let _ = console.write(
                    To::Out,
                    &json::line(&target.spelling, &outcome, stdout, stderr),
                );
            }
            (Mode::Group, Some(c)) => {
                if c.stdout_cut || c.stderr_cut {
                    let note = format!(
                        "ctl: {target}: output past {} MiB per stream was dropped\n",
                        MAX_CAPTURE >> 20
                    );
                    let _ = console.write(To::Err, note.as_bytes());
                }
                if !c.stdout.is_empty() || !c.stderr.is_empty() {
                    groups.entry((c.stdout, c.stderr)).or_default().push(index);
                }
            }
            _ => {}
        }
        console.finished(code != 0);
    }
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    forward.abort();
    console.clear();

    if mode == Mode::Group {
        write_groups(&console, &targets, groups);
    }
    if many {
        let _ = console.write(
            To::Err,
            format!("{}\n", summary(&targets, &classes)).as_bytes(),
        );
    }
    worst
}

/// Writes each distinct output once, in the order of its first target, headed by the list of
/// targets that produced it; stderr goes to stderr under the same heading.
fn write_groups(console: &Console, targets: &[Target], groups: Groups) {
    let mut blocks: Vec<_> = groups.into_iter().collect();
    for (_, members) in &mut blocks {
        members.sort_unstable();
    }
    blocks.sort_by_key(|(_, members)| members[0]);
    for ((stdout, stderr), members) in blocks {
        let names = members
            .iter()
            .map(|&i| targets[i].spelling.as_str())
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
            let _ = console.write(to, &block);
        }
    }
}

#[cfg(test)]
mod tests {
    use rexec_shared::message::ExitStatus;

    use super::*;

    fn feed(chunks: &[&[u8]]) -> Vec<u8> {
        let mut buf = LineBuf::default();
        let mut batch = Vec::new();
        for chunk in chunks {
            buf.push(b"T: ", chunk, &mut batch);
        }
        buf.finish(b"T: ", &mut batch);
        batch
    }

    #[test]
    fn lines_are_whole_however_chunked() {
        assert_eq!(feed(&[b"a", b"b\nc"]), b"T: ab\nT: c\n");
        assert_eq!(feed(&[b"one\ntwo\n", b"\n"]), b"T: one\nT: two\nT: \n");
        assert_eq!(feed(&[b"x\n"]), b"T: x\n");
        assert_eq!(feed(&[]), b"");
        assert_eq!(feed(&[b"\xff\xfe\n"]), b"T: \xff\xfe\n");
    }

    #[test]
    fn partial_line_is_not_written_until_complete() {
        let mut buf = LineBuf::default();
        let mut batch = Vec::new();
        buf.push(b"T: ", b"half", &mut batch);
        assert!(batch.is_empty());
        buf.push(b"T: ", b" more\nnext", &mut batch);
        assert_eq!(batch, b"T: half more\n");
    }

    #[test]
    fn long_lines_are_cut_at_the_limit() {
        let long = vec![b'z'; MAX_LINE * 2 + 10];
        let out = feed(&[&long[..100], &long[100..], b"\n"]);
        let lines: Vec<&[u8]> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].len(), 3 + MAX_LINE);
        assert_eq!(lines[1].len(), 3 + MAX_LINE);
        assert_eq!(lines[2], b"T: zzzzzzzzzz");
        // A newline right at the limit ends the line; no empty line follows.
        let exact = [vec![b'y'; MAX_LINE], b"\n".to_vec()].concat();
        assert_eq!(feed(&[&exact]).len(), 3 + MAX_LINE + 1);
    }

    fn ran(code: Option<i32>, signal: Option<i32>, timed_out: bool) -> Outcome {
        Outcome {
            status: Some(ExitStatus {
                code,
                signal,
                timed_out,
            }),
            failure: None,
            local_timeout: false,
            duration: Duration::ZERO,
        }
    }

    #[test]
    fn summary_counts_and_names() {
        let targets: Vec<Target> = ["a", "b", "c", "d", "e", "f"]
            .iter()
            .map(|t| Target::parse(t, 1).unwrap())
            .collect();
        let unreachable = Outcome {
            failure: Some(Failure::Connect("no".into())),
            ..ran(None, None, false)
        };
        let classes: Vec<Class> = [
            ran(Some(0), None, false),
            ran(Some(2), None, false),
            ran(Some(1), None, false),
            unreachable,
            ran(Some(1), None, false),
            ran(None, Some(9), true),
        ]
        .iter()
        .map(classify)
        .collect();
        assert_eq!(
            summary(&targets, &classes),
            "ctl: 6 targets: 1 ok, 4 failed (exit 1: c, e; exit 2: b; timed out: f), 1 unreachable (d)"
        );
        assert_eq!(
            summary(&targets[..1], &classes[..1]),
            "ctl: 1 target: 1 ok, 0 failed, 0 unreachable"
        );
    }

    #[test]
    fn summary_shortens_long_lists() {
        let targets: Vec<Target> = (0..30)
            .map(|i| Target::parse(&format!("h{i}"), 1).unwrap())
            .collect();
        let classes = vec![Class::Unreachable; 30];
        let line = summary(&targets, &classes);
        assert!(line.ends_with("h19 and 10 more)"), "{line}");
    }

    #[test]
    fn progress_bar_renders() {
        assert_eq!(
            render_bar(5, 10, 1, Duration::from_millis(2500)),
            "[##########----------] 5/10 done, 1 failed, 2.5s"
        );
        assert_eq!(
            render_bar(0, 0, 0, Duration::ZERO),
            "[####################] 0/0 done, 0 failed, 0.0s"
        );
    }
}
