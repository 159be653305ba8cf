//! Where a command's output goes: the [`Output`] trait, and the two plain sinks (ctl's own
//! stdout and stderr byte for byte, or memory). The renderers build on these.

use std::fs::File;
use std::io::{self, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

/// Where a command's output goes.
pub trait Output {
    /// Bytes the command wrote to stdout.
    fn stdout(&mut self, data: &[u8]) -> io::Result<()>;
    /// Bytes the command wrote to stderr.
    fn stderr(&mut self, data: &[u8]) -> io::Result<()>;
}

/// Writes straight to file descriptors 1 and 2, unbuffered, so output appears as it comes.
pub struct Passthrough {
    stdout: ManuallyDrop<File>,
    stderr: ManuallyDrop<File>,
}

impl Passthrough {
    /// Wraps this process's stdout and stderr.
    pub fn new() -> Self {
        // SAFETY: fds 1 and 2 are open for the life of the process, and ManuallyDrop keeps
        // these handles from closing them.
        unsafe {
            Self {
                stdout: ManuallyDrop::new(File::from_raw_fd(1)),
                stderr: ManuallyDrop::new(File::from_raw_fd(2)),
            }
        }
    }
}

impl Output for Passthrough {
    fn stdout(&mut self, data: &[u8]) -> io::Result<()> {
        write_all(&mut self.stdout, data)
    }

    fn stderr(&mut self, data: &[u8]) -> io::Result<()> {
        write_all(&mut self.stderr, data)
    }
}

/// `write_all` that also waits out a non-blocking descriptor inherited from the caller.
fn write_all(file: &mut File, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match file.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(std::time::Duration::from_millis(1))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes a target's output to `DIR/<target>.out` and `.err` (raw bytes, as they come) as
/// well as to another sink (`--output-dir`).
pub struct Tee<S> {
    files: Option<(File, File)>,
    /// The first failed write to a file, reported when the target is done.
    error: Option<io::Error>,
    inner: S,
}

impl<S> Tee<S> {
    /// Passes output on to `inner` only.
    pub fn plain(inner: S) -> Self {
        Self {
            files: None,
            error: None,
            inner,
        }
    }

    /// Also writes to `dir/<spelling>.out` and `.err`, created (or emptied) now.
    pub fn to_dir(dir: &std::path::Path, spelling: &str, inner: S) -> io::Result<Self> {
        let open = |ext: &str| {
            let path = dir.join(format!("{spelling}.{ext}"));
            File::create(&path).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display()))
            })
        };
        Ok(Self {
            files: Some((open("out")?, open("err")?)),
            error: None,
            inner,
        })
    }

    /// Gives back the sink output was passed on to, and the first failed file write.
    pub fn into_parts(self) -> (S, Option<io::Error>) {
        (self.inner, self.error)
    }

    fn copy(&mut self, err: bool, data: &[u8]) {
        if let Some((out, errf)) = &mut self.files {
            let file = if err { errf } else { out };
            if let Err(e) = file.write_all(data) {
                // Stop copying after the first failure; the run itself goes on.
                self.error.get_or_insert(e);
                self.files = None;
            }
        }
    }
}

impl<S: Output> Output for Tee<S> {
    fn stdout(&mut self, data: &[u8]) -> io::Result<()> {
        self.copy(false, data);
        self.inner.stdout(data)
    }

    fn stderr(&mut self, data: &[u8]) -> io::Result<()> {
        self.copy(true, data);
        self.inner.stderr(data)
    }
}

/// Most bytes [`Captured`] keeps per stream; the rest is dropped (and flagged) so a remote
/// `cat /dev/zero` cannot exhaust ctl's memory.
pub const MAX_CAPTURE: usize = 16 * 1024 * 1024;

/// Keeps output in memory, up to [`MAX_CAPTURE`] bytes per stream, for `--json` and `--group`.
#[derive(Debug, Default, Clone)]
pub struct Captured {
    /// What was written to stdout, up to the limit.
    pub stdout: Vec<u8>,
    /// What was written to stderr, up to the limit.
    pub stderr: Vec<u8>,
    /// Whether stdout went past the limit.
    pub stdout_cut: bool,
    /// Whether stderr went past the limit.
    pub stderr_cut: bool,
}

fn keep(buf: &mut Vec<u8>, cut: &mut bool, data: &[u8]) {
    let room = MAX_CAPTURE.saturating_sub(buf.len());
    *cut |= data.len() > room;
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

impl Output for Captured {
    fn stdout(&mut self, data: &[u8]) -> io::Result<()> {
        keep(&mut self.stdout, &mut self.stdout_cut, data);
        Ok(())
    }

    fn stderr(&mut self, data: &[u8]) -> io::Result<()> {
        keep(&mut self.stderr, &mut self.stderr_cut, data);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_is_bounded() {
        let mut c = Captured::default();
        c.stdout(&vec![0u8; MAX_CAPTURE - 1]).unwrap();
        assert!(!c.stdout_cut);
        c.stdout(b"ab").unwrap();
        assert!(c.stdout_cut && !c.stderr_cut);
        assert_eq!(c.stdout.len(), MAX_CAPTURE);
    }
}
