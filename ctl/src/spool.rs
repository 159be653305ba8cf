//! Where `--group` keeps output until the end of the run: a small buffer in memory per running
//! target, and beyond it one unnamed temporary file shared by the run, so that ctl's memory
//! follows `-P` rather than the number of targets or how much they send.
//!
//! The file is made with `O_TMPFILE` (or created and unlinked at once where the file system
//! cannot), mode 0600, in `$TMPDIR` or `/tmp`: it has no name from the start, so nothing is
//! left behind however ctl ends. Each target's streams are runs of bytes in it (extents),
//! with a SHA-256 of each stream so that identical outputs fold into one block without
//! keeping them in memory to compare.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::output::{Output, MAX_CAPTURE};

/// Bytes a running target's stream holds in memory before they go to the file.
pub const IN_MEMORY: usize = 64 * 1024;

/// The run's temporary file, appended to by every target.
#[derive(Debug)]
pub struct Spool {
    file: File,
    len: u64,
    dir: PathBuf,
}

/// A [`Spool`] shared by the targets' sinks.
pub type Shared = Arc<Mutex<Spool>>;

impl Spool {
    /// An empty, unnamed file in `$TMPDIR` (or `/tmp`); the error names the directory.
    pub fn new() -> Result<Self, String> {
        Self::new_in(std::env::temp_dir())
    }

    /// An empty, unnamed file in `dir`.
    pub fn new_in(dir: PathBuf) -> Result<Self, String> {
        match tempfile::tempfile_in(&dir) {
            Ok(file) => Ok(Self { file, len: 0, dir }),
            Err(e) => Err(format!(
                "cannot create a temporary file in {} to hold --group output: {e} (set TMPDIR \
                 to a writable directory)",
                dir.display()
            )),
        }
    }

    /// Appends `data`; returns where it starts.
    fn append(&mut self, data: &[u8]) -> io::Result<u64> {
        let at = self.len;
        self.file.write_all_at(data, at)?;
        self.len += data.len() as u64;
        Ok(at)
    }

    /// Fills `buf` from offset `at`.
    fn read_at(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, at)
    }
}

/// The directory `spool`'s file is in, for messages.
pub fn dir(spool: &Shared) -> PathBuf {
    lock(spool).dir.clone()
}

/// Locks the spool; a panic elsewhere while it was held leaves nothing half-updated that
/// matters (the length is only advanced after a complete write).
fn lock(spool: &Shared) -> std::sync::MutexGuard<'_, Spool> {
    spool.lock().unwrap_or_else(|e| e.into_inner())
}

/// One stream of one target: what is in the file, in order, then what is still in memory.
#[derive(Debug, Default)]
pub struct Stream {
    extents: Vec<(u64, usize)>,
    tail: Vec<u8>,
    len: usize,
    last: Option<u8>,
    digest: Sha256,
    /// Whether more came than [`MAX_CAPTURE`].
    pub cut: bool,
    /// The first failed write to the file; what came after it is kept in memory.
    pub error: Option<io::Error>,
}

impl Stream {
    fn keep(&mut self, spool: &Shared, data: &[u8]) {
        let room = MAX_CAPTURE.saturating_sub(self.len);
        self.cut |= data.len() > room;
        let data = &data[..data.len().min(room)];
        if data.is_empty() {
            return;
        }
        self.digest.update(data);
        self.len += data.len();
        self.last = data.last().copied();
        self.tail.extend_from_slice(data);
        if self.tail.len() >= IN_MEMORY {
            self.flush(spool);
        }
    }

    /// Moves the in-memory part to the file, unless writing there already failed once (then
    /// it stays in memory: nothing is lost, and the failure is reported at the end).
    fn flush(&mut self, spool: &Shared) {
        if self.tail.is_empty() || self.error.is_some() {
            return;
        }
        match lock(spool).append(&self.tail) {
            Ok(at) => {
                match self.extents.last_mut() {
                    Some((start, len)) if *start + *len as u64 == at => *len += self.tail.len(),
                    _ => self.extents.push((at, self.tail.len())),
                }
                self.tail = Vec::new();
            }
            Err(e) => self.error = Some(e),
        }
    }

    /// Whether nothing was kept.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The last byte kept, if any.
    pub fn last(&self) -> Option<u8> {
        self.last
    }

    /// What identifies the content: its length and SHA-256.
    pub fn key(&self) -> (usize, [u8; 32]) {
        (self.len, self.digest.clone().finalize().into())
    }

    /// Moves what is still in memory to the file (for output kept to the end of the run).
    pub fn settle(&mut self, spool: &Shared) {
        self.flush(spool);
        self.tail.shrink_to_fit();
    }

    /// Calls `each` with the content in order, in pieces of at most [`IN_MEMORY`] bytes.
    pub fn read(
        &self,
        spool: &Shared,
        mut each: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut buf = vec![0; IN_MEMORY];
        for &(start, len) in &self.extents {
            let mut done = 0;
            while done < len {
                let n = (len - done).min(buf.len());
                lock(spool).read_at(&mut buf[..n], start + done as u64)?;
                each(&buf[..n])?;
                done += n;
            }
        }
        if self.tail.is_empty() {
            Ok(())
        } else {
            each(&self.tail)
        }
    }
}

/// A running target's output for `--group`: both streams, on their way to the spool.
#[derive(Debug)]
pub struct Spooled {
    spool: Shared,
    /// Its stdout.
    pub stdout: Stream,
    /// Its stderr.
    pub stderr: Stream,
}

impl Spooled {
    /// Empty streams that spill to `spool`.
    pub fn new(spool: Shared) -> Self {
        Self {
            spool,
            stdout: Stream::default(),
            stderr: Stream::default(),
        }
    }

    /// The spool and both streams, once the target is done.
    pub fn into_parts(self) -> (Shared, Stream, Stream) {
        (self.spool, self.stdout, self.stderr)
    }
}

impl Output for Spooled {
    fn stdout(&mut self, data: &[u8]) -> io::Result<()> {
        self.stdout.keep(&self.spool, data);
        Ok(())
    }

    fn stderr(&mut self, data: &[u8]) -> io::Result<()> {
        self.stderr.keep(&self.spool, data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        Arc::new(Mutex::new(Spool::new().unwrap()))
    }

    fn content(stream: &Stream, spool: &Shared) -> Vec<u8> {
        let mut all = Vec::new();
        stream
            .read(spool, |piece| {
                assert!(piece.len() <= IN_MEMORY);
                all.extend_from_slice(piece);
                Ok(())
            })
            .unwrap();
        all
    }

    #[test]
    fn interleaved_targets_read_back_exactly_and_memory_stays_small() {
        let spool = shared();
        let mut a = Spooled::new(spool.clone());
        let mut b = Spooled::new(spool.clone());
        let (mut want_a, mut want_b) = (Vec::new(), Vec::new());
        for i in 0..300u32 {
            let piece_a: Vec<u8> = (0..(i * 37 % 5000)).map(|j| (i + j) as u8).collect();
            let piece_b = format!("line {i}\n").into_bytes();
            a.stdout(&piece_a).unwrap();
            b.stdout(&piece_b).unwrap();
            b.stderr(b"e").unwrap();
            want_a.extend_from_slice(&piece_a);
            want_b.extend_from_slice(&piece_b);
            assert!(a.stdout.tail.len() < IN_MEMORY && b.stdout.tail.len() < IN_MEMORY);
        }
        let (_, mut out_a, _) = a.into_parts();
        let (_, mut out_b, mut err_b) = b.into_parts();
        assert!(!out_a.extents.is_empty(), "spilled to the file");
        for s in [&mut out_a, &mut out_b, &mut err_b] {
            s.settle(&spool);
            assert!(s.tail.is_empty() && s.error.is_none());
        }
        assert_eq!(content(&out_a, &spool), want_a);
        assert_eq!(content(&out_b, &spool), want_b);
        assert_eq!(content(&err_b, &spool), vec![b'e'; 300]);
        assert_eq!(out_b.last(), Some(b'\n'));
        // The key is the content's: the same bytes in other pieces give the same key.
        let mut again = Spooled::new(spool.clone());
        again.stdout(&want_b).unwrap();
        assert_eq!(again.stdout.key(), out_b.key());
        assert_ne!(out_a.key(), out_b.key());
    }

    #[test]
    fn capture_is_bounded_and_flagged() {
        let spool = shared();
        let mut s = Spooled::new(spool.clone());
        s.stdout(&vec![7; MAX_CAPTURE - 1]).unwrap();
        assert!(!s.stdout.cut);
        s.stdout(b"ab").unwrap();
        assert!(s.stdout.cut && !s.stderr.cut);
        assert_eq!(s.stdout.key().0, MAX_CAPTURE);
        assert_eq!(content(&s.stdout, &spool).len(), MAX_CAPTURE);
    }

    #[test]
    fn a_file_that_cannot_be_made_names_its_directory() {
        let err = Spool::new_in("/nonexistent/rexec-spool".into()).unwrap_err();
        assert!(err.contains("/nonexistent/rexec-spool"), "{err}");
    }

    #[test]
    fn the_file_has_no_name() {
        let spool = Spool::new().unwrap();
        let link = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&spool.file)
        ))
        .unwrap();
        let link = link.to_string_lossy();
        // O_TMPFILE files show as "/tmp/#123 (deleted)"; unlinked ones as "... (deleted)".
        assert!(link.ends_with("(deleted)"), "{link}");
    }
}
