//! Prefixed-line output: each line a target writes becomes `TARGET: line`, written whole, so
//! lines from different targets never mix.

use std::io;
use std::sync::Arc;

use crate::engine::Stop;
use crate::output::Output;
use crate::render::{Console, To};
use crate::target::Target;

/// Longest line written whole; a longer one is written in pieces of this size, each prefixed,
/// so a remote `cat /dev/zero` cannot make ctl hold an unbounded line.
pub const MAX_LINE: usize = 64 * 1024;

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

#[cfg(test)]
mod tests {
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
}
