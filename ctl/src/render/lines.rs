//! Prefixed-line output: each line a target writes becomes `TARGET: line`, written whole, so
//! lines from different targets never mix. Control characters other than TAB are written as
//! visible escapes, so one target cannot overwrite or forge another's lines. What ctl holds
//! per target is bounded: the partial last line, and at most [`FLUSH`] bytes of lines.

use std::io;
use std::sync::Arc;

use crate::engine::Stop;
use crate::output::Output;
use crate::render::{visible_into, Console, To};
use crate::target::Target;

/// Longest line written whole; a longer one is written in pieces of this size, each prefixed,
/// so a remote `cat /dev/zero` cannot make ctl hold an unbounded line.
pub const MAX_LINE: usize = 64 * 1024;
/// Lines are written out once this many bytes of them are ready, so a frame of a million
/// newlines never becomes a million prefixes in memory at once.
pub const FLUSH: usize = 64 * 1024;

/// One stream's partial last line.
#[derive(Debug, Default)]
struct LineBuf {
    partial: Vec<u8>,
}

impl LineBuf {
    /// Takes `data`, appending each line it completes to `batch` as `prefix line\n` (control
    /// characters escaped), until `batch` holds `limit` bytes or more; returns how much of
    /// `data` it took. A line longer than [`MAX_LINE`] is cut into pieces of that size.
    fn push(&mut self, prefix: &[u8], data: &[u8], batch: &mut Vec<u8>, limit: usize) -> usize {
        let whole = data.len();
        let mut data = data;
        while !data.is_empty() && batch.len() < limit {
            let room = MAX_LINE - self.partial.len();
            // One byte past the room, so a newline right at the limit still ends the line.
            let window = &data[..data.len().min(room + 1)];
            match window.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    batch.extend_from_slice(prefix);
                    visible_into(&self.partial, batch);
                    self.partial.clear();
                    visible_into(&window[..end], batch);
                    batch.push(b'\n');
                    data = &data[end + 1..];
                }
                None if window.len() > room => {
                    batch.extend_from_slice(prefix);
                    visible_into(&self.partial, batch);
                    self.partial.clear();
                    visible_into(&window[..room], batch);
                    batch.push(b'\n');
                    data = &data[room..];
                }
                None => {
                    self.partial.extend_from_slice(window);
                    data = &data[window.len()..];
                }
            }
        }
        whole - data.len()
    }

    /// Appends the last line, if it had no newline, with one.
    fn finish(&mut self, prefix: &[u8], batch: &mut Vec<u8>) {
        if !self.partial.is_empty() {
            batch.extend_from_slice(prefix);
            visible_into(&self.partial, batch);
            self.partial.clear();
            batch.push(b'\n');
        }
    }
}

/// Writes a target's output as `TARGET: line`, whole lines at a time.
pub struct Prefixed {
    prefix: Vec<u8>,
    out: LineBuf,
    err: LineBuf,
    console: Arc<Console>,
    stop: Stop,
}

impl Prefixed {
    /// Lines of `target`, each starting with `TARGET: ` when `prefixed` (else bare, `-N`).
    pub fn new(target: &Target, prefixed: bool, console: Arc<Console>, stop: Stop) -> Self {
        let prefix = match prefixed {
            true => format!("{target}: ").into_bytes(),
            false => Vec::new(),
        };
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
                self.stop.request(libc::SIGPIPE);
            }
        }
        written
    }

    /// Writes the unterminated last lines, each with a newline.
    pub fn finish(&mut self) {
        let mut batch = Vec::new();
        self.out.finish(&self.prefix, &mut batch);
        let _ = self.emit(To::Out, &batch);
        batch.clear();
        self.err.finish(&self.prefix, &mut batch);
        let _ = self.emit(To::Err, &batch);
    }
}

impl Prefixed {
    /// Writes the lines `data` completes on `to`, [`FLUSH`] bytes of them at a time.
    fn lines(&mut self, to: To, mut data: &[u8]) -> io::Result<()> {
        let mut batch = Vec::new();
        loop {
            let buf = match to {
                To::Out => &mut self.out,
                To::Err => &mut self.err,
            };
            let used = buf.push(&self.prefix, data, &mut batch, FLUSH);
            data = &data[used..];
            self.emit(to, &batch)?;
            batch.clear();
            if data.is_empty() {
                return Ok(());
            }
        }
    }
}

impl Output for Prefixed {
    fn stdout(&mut self, data: &[u8]) -> io::Result<()> {
        self.lines(To::Out, data)
    }

    fn stderr(&mut self, data: &[u8]) -> io::Result<()> {
        self.lines(To::Err, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(chunks: &[&[u8]]) -> Vec<u8> {
        let mut buf = LineBuf::default();
        let mut batch = Vec::new();
        for chunk in chunks {
            assert_eq!(buf.push(b"T: ", chunk, &mut batch, usize::MAX), chunk.len());
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
        buf.push(b"T: ", b"half", &mut batch, usize::MAX);
        assert!(batch.is_empty());
        buf.push(b"T: ", b" more\nnext", &mut batch, usize::MAX);
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

    #[test]
    fn control_characters_are_escaped_but_tabs_and_bytes_kept() {
        assert_eq!(feed(&[b"a\rb\x1b[Kc\n"]), b"T: a\\rb\\x1b[Kc\n");
        assert_eq!(feed(&[b"tab\there\x7f\x00\n"]), b"T: tab\there\\x7f\\x00\n");
        assert_eq!(
            feed(&[b"\xc2\x9b2J \xff \xc3\xa9"]),
            b"T: \\u009b2J \xff \xc3\xa9\n"
        );
        // An escape cut across two chunks is still escaped.
        assert_eq!(feed(&[b"x\x1b", b"[2J\n"]), b"T: x\\x1b[2J\n");
    }

    #[test]
    fn a_frame_of_newlines_is_written_in_bounded_pieces() {
        let newlines = vec![b'\n'; 1 << 20];
        let mut buf = LineBuf::default();
        let mut rest = &newlines[..];
        let (mut pieces, mut lines) = (0, 0);
        while !rest.is_empty() {
            let mut batch = Vec::new();
            let used = buf.push(b"127.0.0.1:50007: ", rest, &mut batch, FLUSH);
            assert!(used > 0);
            assert!(
                batch.len() < FLUSH + MAX_LINE,
                "{} bytes at once",
                batch.len()
            );
            lines += batch.iter().filter(|&&b| b == b'\n').count();
            pieces += 1;
            rest = &rest[used..];
        }
        assert_eq!(lines, 1 << 20);
        assert!(pieces > 100, "{pieces}");
    }
}
