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
    kinds: [Sink; 2],
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
                kinds: [Sink::of(1), Sink::of(2)],
            }
        }
    }

    /// What stdout and stderr are, as found when this was made.
    pub fn kinds(&self) -> [Sink; 2] {
        self.kinds
    }

    /// Whether writing `len` bytes to stdout (`fd` 1) or stderr (2) may stall.
    pub fn may_stall(&self, fd: i32, len: usize) -> bool {
        self.kinds[usize::from(fd == 2)].may_stall(fd, len)
    }
}

impl Output for Passthrough {
    fn stdout(&mut self, data: &[u8]) -> io::Result<()> {
        let stall = self.may_stall(1, data.len());
        off_runtime(stall, || write_all(&mut self.stdout, data))
    }

    fn stderr(&mut self, data: &[u8]) -> io::Result<()> {
        let stall = self.may_stall(2, data.len());
        off_runtime(stall, || write_all(&mut self.stderr, data))
    }
}

/// What ctl's stdout or stderr is, as far as a write to it can stall.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// A file, a disk or `/dev/null`: a write finishes.
    Finishes,
    /// A pipe: a write stalls when it does not fit in what the pipe has free (a paused
    /// `| less`).
    Pipe,
    /// A terminal (flow control, a slow screen), a socket, or unknown.
    MayStall,
}

impl Sink {
    /// What `fd` is.
    pub fn of(fd: i32) -> Self {
        // SAFETY: a zeroed stat filled by fstat; a closed descriptor only makes it fail.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Self::MayStall;
        }
        match st.st_mode & libc::S_IFMT {
            libc::S_IFREG | libc::S_IFBLK => Self::Finishes,
            // SAFETY: isatty only looks at the descriptor.
            libc::S_IFCHR if unsafe { libc::isatty(fd) } == 0 => Self::Finishes,
            libc::S_IFIFO => Self::Pipe,
            _ => Self::MayStall,
        }
    }

    /// Whether writing `len` bytes to `fd`, of this kind, may stall.
    pub fn may_stall(self, fd: i32, len: usize) -> bool {
        match self {
            Self::Finishes => false,
            Self::MayStall => true,
            Self::Pipe => {
                let mut queued: libc::c_int = 0;
                // SAFETY: F_GETPIPE_SZ takes no argument; FIONREAD writes one int.
                let size = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
                let read = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) };
                if size < 0 || read != 0 {
                    return true;
                }
                let free = usize::try_from(size - queued.max(0)).unwrap_or(0);
                // A pipe fills by pages: a reader stopped mid-page leaves less room than the
                // byte count says, by up to two pages.
                len + 2 * 4096 > free
            }
        }
    }
}

/// Runs a write that may stall (`stall`) without stalling the async runtime: on a worker of
/// the multi-thread runtime it runs under `block_in_place`, so the other tasks, and the timers
/// that send heartbeats, go on while ctl waits for a paused `| less`. Writes that cannot stall
/// skip the hand-over, which costs some microseconds.
pub fn off_runtime<T>(stall: bool, write: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let threaded =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if stall && threaded {
        tokio::task::block_in_place(write)
    } else {
        write()
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
