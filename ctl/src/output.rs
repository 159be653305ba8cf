//! Where a command's output goes: the [`Output`] trait, and the two plain sinks (ctl's own
//! stdout and stderr byte for byte, or memory). The renderers build on these.

use std::fs::File;
use std::future::Future;
use std::io::{self, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Where a command's output goes.
pub trait Output {
    /// Bytes the command wrote to stdout.
    fn stdout(&mut self, data: &[u8]) -> io::Result<()>;
    /// Bytes the command wrote to stderr.
    fn stderr(&mut self, data: &[u8]) -> io::Result<()>;
    /// Waits until the bytes taken so far are written, for a sink that may take bytes before
    /// it can pass them on ([`Passthrough`] on a [`Console`]). The caller awaits this before
    /// it takes more output, which holds the agent back; the runtime's other tasks (the
    /// heartbeats) go on meanwhile. The error is that of a failed stdout write.
    fn settle(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        async { Ok(()) }
    }
}

/// ctl's stdout and stderr for one target's output passed through, when neither can hold up
/// a thread: each is a file, `/dev/null`, or a pipe opened again, non-blocking, as a new
/// open file of the same pipe (through `/proc/self/fd`, so that the caller's descriptor
/// keeps its flags). A full pipe (a paused `| less`) then holds the output back while ctl's
/// one thread goes on sending heartbeats.
pub struct Console {
    kinds: [Sink; 2],
    pipes: [Option<HeldPipe>; 2],
}

impl Console {
    /// Looks at descriptors 1 and 2 and opens again each that is a pipe, registered with the
    /// runtime entered; `None` where a write to either could still hold up the thread: a
    /// terminal, a socket, or a pipe that could not be opened again or registered.
    pub fn open() -> Option<Self> {
        let kinds = [Sink::of(1), Sink::of(2)];
        if kinds.contains(&Sink::MayStall) {
            return None;
        }
        let mut pipes = [None, None];
        for (i, (kind, pipe)) in kinds.iter().zip(&mut pipes).enumerate() {
            if *kind == Sink::Pipe {
                let fd = i as i32 + 1;
                *pipe = Some(reopen_nonblocking(fd).and_then(HeldPipe::new)?);
            }
        }
        Some(Self { kinds, pipes })
    }
}

/// A new, non-blocking open file of the pipe that `fd` writes to; `None` where that cannot be
/// had (no /proc) or the descriptor is not what it was.
fn reopen_nonblocking(fd: i32) -> Option<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    // Opened for writing, a descriptor that only reads (`1<&0`) would become a writer.
    // SAFETY: F_GETFL only reads the descriptor's flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 || flags & libc::O_ACCMODE == libc::O_RDONLY {
        return None;
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(format!("/proc/self/fd/{fd}"))
        .ok()?;
    // SAFETY: a zeroed stat filled by fstat; a closed descriptor only makes it fail.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let same = unsafe { libc::fstat(fd, &mut st) } == 0
        && file
            .metadata()
            .is_ok_and(|m| m.dev() == st.st_dev && m.ino() == st.st_ino);
    same.then_some(file)
}

/// A non-blocking pipe and the bytes taken for it that did not fit yet.
struct HeldPipe {
    fd: AsyncFd<File>,
    held: Vec<u8>,
    /// How much of `held` is written.
    sent: usize,
}

impl HeldPipe {
    /// `file`, non-blocking, registered with the runtime entered; `None` outside one.
    fn new(file: File) -> Option<Self> {
        // Registering panics outside a runtime.
        tokio::runtime::Handle::try_current().ok()?;
        // SAFETY: the File owns its descriptor, which stays open and the same until the
        // AsyncFd (which owns the File) is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(file, Interest::WRITABLE) }.ok()?;
        Some(Self {
            fd,
            held: Vec::new(),
            sent: 0,
        })
    }

    /// Whether bytes are held.
    fn holds(&self) -> bool {
        self.sent < self.held.len()
    }

    /// Writes what fits of `data` now and keeps the rest, after anything held before.
    fn put(&mut self, mut data: &[u8]) -> io::Result<()> {
        if self.holds() {
            self.held.extend_from_slice(data);
            return Ok(());
        }
        self.held.clear();
        self.sent = 0;
        while !data.is_empty() {
            match self.fd.get_ref().write(data) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => data = &data[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.held.extend_from_slice(data);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes what is held, as the pipe makes room.
    async fn flush(&mut self) -> io::Result<()> {
        let Self { fd, held, sent } = self;
        while *sent < held.len() {
            let mut ready = fd.writable().await?;
            match ready.try_io(|fd| fd.get_ref().write(&held[*sent..])) {
                Ok(Ok(0)) => {
                    held.clear();
                    *sent = 0;
                    return Err(io::ErrorKind::WriteZero.into());
                }
                Ok(Ok(n)) => *sent += n,
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => {
                    held.clear();
                    *sent = 0;
                    return Err(e);
                }
                // Readiness was stale: wait for the reader to make room.
                Err(_would_block) => {}
            }
        }
        held.clear();
        *sent = 0;
        Ok(())
    }
}

/// Writes straight to file descriptors 1 and 2, unbuffered, so output appears as it comes.
pub struct Passthrough {
    stdout: ManuallyDrop<File>,
    stderr: ManuallyDrop<File>,
    kinds: [Sink; 2],
    /// Stdout and stderr where each is a pipe of a [`Console`]; writes to these never block.
    pipes: [Option<HeldPipe>; 2],
}

impl Passthrough {
    /// Wraps this process's stdout and stderr.
    pub fn new() -> Self {
        Self::with([Sink::of(1), Sink::of(2)], [None, None])
    }

    /// Writes to the console's pipes without blocking (see [`Output::settle`]).
    pub fn on(console: Console) -> Self {
        Self::with(console.kinds, console.pipes)
    }

    fn with(kinds: [Sink; 2], pipes: [Option<HeldPipe>; 2]) -> Self {
        // SAFETY: fds 1 and 2 are open for the life of the process, and ManuallyDrop keeps
        // these handles from closing them.
        unsafe {
            Self {
                stdout: ManuallyDrop::new(File::from_raw_fd(1)),
                stderr: ManuallyDrop::new(File::from_raw_fd(2)),
                kinds,
                pipes,
            }
        }
    }

    /// Whether the pipe of the stream other than `i` holds bytes: a write to `i` now would
    /// come out ahead of them (callers settle after each write).
    fn other_holds(&self, i: usize) -> bool {
        self.pipes[1 - i].as_ref().is_some_and(HeldPipe::holds)
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
        debug_assert!(!self.other_holds(0), "stdout written before stderr settled");
        if let Some(pipe) = &mut self.pipes[0] {
            return pipe.put(data);
        }
        let stall = self.may_stall(1, data.len());
        off_runtime(stall, || write_all(&mut self.stdout, data))
    }

    fn stderr(&mut self, data: &[u8]) -> io::Result<()> {
        debug_assert!(!self.other_holds(1), "stderr written before stdout settled");
        if let Some(pipe) = &mut self.pipes[1] {
            return pipe.put(data);
        }
        let stall = self.may_stall(2, data.len());
        off_runtime(stall, || write_all(&mut self.stderr, data))
    }

    async fn settle(&mut self) -> io::Result<()> {
        let [out, err] = &mut self.pipes;
        let stdout = match out {
            Some(pipe) => pipe.flush().await,
            None => Ok(()),
        };
        if let Some(pipe) = err {
            // As a direct write to stderr, a failed one is not the command's concern.
            let _ = pipe.flush().await;
        }
        stdout
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

    /// Also writes to `dir/<spelling>.out` and `.err`, created (or emptied) now; gives
    /// `inner` back with the error when one cannot be made.
    pub fn to_dir(dir: &std::path::Path, spelling: &str, inner: S) -> Result<Self, (io::Error, S)> {
        let open = |ext: &str| {
            let path = dir.join(format!("{spelling}.{ext}"));
            File::create(&path).map_err(|e| {
                io::Error::new(e.kind(), format!("cannot create {}: {e}", path.display()))
            })
        };
        let files = match open("out").and_then(|out| Ok((out, open("err")?))) {
            Ok(files) => files,
            Err(e) => return Err((e, inner)),
        };
        Ok(Self {
            files: Some(files),
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

    fn settle(&mut self) -> impl Future<Output = io::Result<()>> + Send {
        self.inner.settle()
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

    /// A pipe: (read end, write end).
    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two new descriptors, each owned by one File from here on.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    #[test]
    fn a_full_pipe_holds_output_back_without_holding_up_the_thread() {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let (mut reader, writer) = pipe();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // A descriptor that only reads is not opened again as a writer.
            assert!(reopen_nonblocking(reader.as_raw_fd()).is_none());
            let again = reopen_nonblocking(writer.as_raw_fd()).expect("reopen the pipe");
            // (Else the put below would never return.)
            let flags = unsafe { libc::fcntl(again.as_raw_fd(), libc::F_GETFL) };
            assert_ne!(flags & libc::O_NONBLOCK, 0);
            let mut pipe = HeldPipe::new(again).expect("register the pipe");
            // The caller's descriptor keeps its flags.
            let flags = unsafe { libc::fcntl(writer.as_raw_fd(), libc::F_GETFL) };
            assert_eq!(flags & libc::O_NONBLOCK, 0);
            // Four times what the pipe holds: the write takes it all and returns at once.
            let data: Vec<u8> = (0..4 * 65536u32).map(|i| (i % 251) as u8).collect();
            pipe.put(&data).unwrap();
            assert!(pipe.holds(), "nothing was held back");
            pipe.put(b"end").unwrap();
            // Nobody reads yet: the thread goes on with other tasks while the bytes wait.
            let ticks = tokio::spawn(async {
                let mut n = 0;
                for _ in 0..5 {
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    n += 1;
                }
                n
            });
            let settled = tokio::time::timeout(std::time::Duration::from_millis(200), pipe.flush());
            assert!(settled.await.is_err(), "flush returned with nobody reading");
            assert_eq!(ticks.await.unwrap(), 5);
            let read = std::thread::spawn(move || {
                let mut got = Vec::new();
                reader.read_to_end(&mut got).map(|_| got)
            });
            pipe.flush().await.unwrap();
            drop(pipe);
            drop(writer);
            let mut want = data.clone();
            want.extend_from_slice(b"end");
            let got = read.join().unwrap().unwrap();
            assert!(
                got == want,
                "{} bytes arrived, {} were sent",
                got.len(),
                want.len()
            );
        });
    }

    #[test]
    fn a_pipe_without_a_reader_fails_the_write() {
        use std::os::fd::AsRawFd;
        let (reader, writer) = pipe();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut pipe = HeldPipe::new(reopen_nonblocking(writer.as_raw_fd()).unwrap()).unwrap();
            pipe.put(&vec![1; 3 * 65536]).unwrap();
            drop(reader);
            let e = pipe.flush().await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
            assert!(pipe.held.is_empty());
        });
    }
}
