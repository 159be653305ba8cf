//! What the user sees of a run: one [`Renderer`](crate::engine::Renderer) per way of showing
//! results, over a shared [`Console`] that keeps lines whole and the progress bar out of the
//! way.
//!
//! - [`single::Single`]: one target, its output passed through byte for byte.
//! - [`fleet::Fleet`]: many targets, as prefixed lines, `--group` blocks or `--json` records,
//!   with a summary line and a progress bar.
//! - [`ping::Pings`]: one line per answering (or failing) target.
//! - [`transfer::Transfers`]: one result line (or `--json` record) per target of a push or
//!   pull, its entries that failed as they happen, and the summary.
//! - [`deploy::Deploys`]: one line per host `ctl deploy` installed the agent on (or did not).

pub mod deploy;
pub mod fleet;
pub mod json;
mod lines;
pub mod ping;
pub mod progress;
pub mod single;
mod summary;
pub mod transfer;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::outcome::{Ending, Outcome};
use crate::output::{Output, Passthrough, Sink};
use crate::target::Target;
use progress::Progress;

/// Which of ctl's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    /// ctl's stdout.
    Out,
    /// ctl's stderr.
    Err,
}

/// ctl's stdout and stderr, shared by all targets: one lock, so each write of whole lines
/// lands in one piece, and the progress bar is taken off the screen around it.
pub struct Console {
    io: Mutex<Passthrough>,
    kinds: [Sink; 2],
    progress: Option<Arc<Progress>>,
    stdout_is_tty: bool,
}

impl Console {
    /// A console, with a progress bar when one is given.
    pub fn new(progress: Option<Arc<Progress>>) -> Self {
        let io = Passthrough::new();
        Self {
            kinds: io.kinds(),
            io: Mutex::new(io),
            progress,
            stdout_is_tty: is_tty(1),
        }
    }

    /// The progress bar, if there is one.
    pub fn progress(&self) -> Option<&Progress> {
        self.progress.as_deref()
    }

    /// Writes `bytes` (whole lines) in one piece.
    pub fn write(&self, to: To, bytes: &[u8]) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let fd = if to == To::Out { 1 } else { 2 };
        let stall = self.kinds[usize::from(to == To::Err)].may_stall(fd, bytes.len());
        // The lock is shared by both streams: a holder may be stalled on the other one, so a
        // lock that is taken is waited for off the runtime too.
        let held = match self.io.try_lock() {
            Ok(io) => Some(io),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        crate::output::off_runtime(stall || held.is_none(), || {
            // A panic while holding the lock leaves nothing half-updated that matters here.
            let mut io = held.unwrap_or_else(|| self.io.lock().unwrap_or_else(|e| e.into_inner()));
            let mut write = || match to {
                To::Out => io.stdout(bytes),
                To::Err => io.stderr(bytes),
            };
            match &self.progress {
                // The bar is on stderr; stdout only shares the screen when it is a terminal.
                Some(bar) if to == To::Err || self.stdout_is_tty => bar.suspend(write),
                _ => write(),
            }
        })
    }

    /// Removes the progress bar for good.
    pub fn clear_progress(&self) {
        if let Some(bar) = &self.progress {
            bar.clear();
        }
    }
}

/// Appends `bytes` to `out` with every control character but TAB and newline written as a
/// visible escape (`\r`, `\x1b`, C1 controls as `\u009b`), so text from a target or an
/// agent cannot move the cursor, erase a line or forge another target's output. Other bytes,
/// valid UTF-8 or not, are kept.
pub fn visible_into(bytes: &[u8], out: &mut Vec<u8>) {
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\t' | b'\n' => out.push(b),
            b'\r' => out.extend_from_slice(b"\\r"),
            0x00..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            // U+0080..U+009F in UTF-8: C1 controls, which some terminals obey (CSI is U+009B).
            0xc2 if matches!(bytes.get(i + 1), Some(0x80..=0x9f)) => {
                out.extend_from_slice(format!("\\u{:04x}", bytes[i + 1]).as_bytes());
                i += 1;
            }
            _ => out.push(b),
        }
        i += 1;
    }
}

/// [`visible_into`] over output that comes in pieces: the same bytes as escaping the whole at
/// once, though a piece may end between the two bytes of a C1 control.
#[derive(Debug, Default)]
pub struct Escaper {
    /// A `0xc2` that ended the last piece: whether it starts a C1 control depends on the next.
    held: bool,
}

impl Escaper {
    /// Appends `piece`, escaped, to `out`.
    pub fn push(&mut self, mut piece: &[u8], out: &mut Vec<u8>) {
        if piece.is_empty() {
            return;
        }
        if std::mem::take(&mut self.held) {
            match piece[0] {
                0x80..=0x9f => {
                    visible_into(&[0xc2, piece[0]], out);
                    piece = &piece[1..];
                }
                _ => out.push(0xc2),
            }
        }
        if let Some((&0xc2, rest)) = piece.split_last() {
            self.held = true;
            piece = rest;
        }
        visible_into(piece, out);
    }

    /// Appends what is still held, at the end of the output.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.held) {
            out.push(0xc2);
        }
    }
}

/// `text` with control characters escaped as [`visible_into`] does, for ctl's own messages.
pub fn visible(text: &str) -> String {
    let mut out = Vec::with_capacity(text.len());
    visible_into(text.as_bytes(), &mut out);
    // Escaping only replaces ASCII bytes and whole two-byte characters with ASCII text.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Whether file descriptor `fd` is a terminal.
pub fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// The lines a target's failure, timeout or lost input is reported with, if it needs any.
pub fn diagnosis(target: &Target, outcome: &Outcome, timeout: Option<Duration>) -> Option<String> {
    let ending = ending_diagnosis(target, outcome, timeout);
    let Some(lost) = outcome.input_lost else {
        return ending;
    };
    let more = if lost.ended {
        ""
    } else {
        " (and ctl had not reached the end of its stdin)"
    };
    let line = format!(
        "ctl: {target}: the command's stdin closed when it ended: {} bytes of input were not \
         delivered{more}; a process still reading it got an early end of input\n",
        lost.bytes
    );
    Some(ending.unwrap_or_default() + &line)
}

fn ending_diagnosis(
    target: &Target,
    outcome: &Outcome,
    timeout: Option<Duration>,
) -> Option<String> {
    let secs = timeout.map_or(0.0, |t| t.as_secs_f64());
    match &outcome.ending {
        Ending::Failed(failure) => Some(format!("ctl: {target}: {}\n", visible(&failure.to_string()))),
        // The agent said so: it killed the command's process tree.
        Ending::TimedOut(_) => match timeout {
            // The connection's time includes connecting, so it is never shorter than the
            // command's: shorter than --timeout means the agent applied a shorter limit.
            Some(t) if outcome.duration >= t => Some(format!(
                "ctl: {target}: command timed out after {}s; its process tree was killed\n",
                t.as_secs_f64()
            )),
            _ => Some(format!(
                "ctl: {target}: command timed out at the agent's limit for this key (max-timeout); its process tree was killed\n"
            )),
        },
        // ctl only knows that the agent went silent: it cannot say what happened there.
        Ending::Unanswered => Some(format!(
            "ctl: {target}: command timed out after {secs}s and the agent did not confirm \
             the kill; gave up waiting (whether the command still runs there is unknown)\n"
        )),
        // It may have caught the signal and exited 0: the agent says why it really ended.
        Ending::AgentShutdown { by, .. } => Some(format!(
            "ctl: {target}: the agent was shutting down and ended the command with {}\n",
            signal_name(*by)
        )),
        Ending::Exited(_) | Ending::Killed(_) => None,
    }
}

/// How a command the agent's shutdown ended is labelled in a `--group` heading and the
/// summary: `SIGTERM at agent shutdown`.
pub fn shutdown_label(by: i32) -> String {
    format!("{} at agent shutdown", signal_name(by))
}

/// `SIGTERM`, `SIGKILL` (the signals an agent ends commands with) and a few others by name;
/// any other as `signal N`.
pub fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGKILL => "SIGKILL",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGQUIT => "SIGQUIT",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}

/// A failed copy to `--output-dir`, as a line for stderr.
pub fn copy_failure(target: &Target, error: Option<io::Error>) -> Option<String> {
    error.map(|e| format!("ctl: {target}: --output-dir copy incomplete: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_in_pieces_gives_the_same_bytes_as_at_once() {
        let text: &[u8] = b"a\r\xc2\x9b2J\xc2\xa9\x1b[K\xc2\xc2\x85\tend\n\xc2";
        let mut whole = Vec::new();
        visible_into(text, &mut whole);
        for cut in 0..=text.len() {
            for cut2 in cut..=text.len() {
                let mut escaper = Escaper::default();
                let mut pieces = Vec::new();
                for piece in [&text[..cut], &text[cut..cut2], &text[cut2..]] {
                    escaper.push(piece, &mut pieces);
                }
                escaper.finish(&mut pieces);
                assert_eq!(pieces, whole, "cut at {cut} and {cut2}");
            }
        }
        // One byte at a time, too.
        let mut escaper = Escaper::default();
        let mut bytes = Vec::new();
        for b in text {
            escaper.push(std::slice::from_ref(b), &mut bytes);
        }
        escaper.finish(&mut bytes);
        assert_eq!(bytes, whole);
    }
}
