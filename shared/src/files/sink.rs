//! Writes a received tree under a root directory, on a thread of its own.
//!
//! Each file goes to a new temporary file in its destination directory; it is renamed over the
//! final name only once all its bytes are written, fsynced, counted against the header's size
//! and matched against the sender's digest (BLAKE3). A transfer that fails, is cut, or carries other
//! bytes than the sender read therefore leaves the old file (or none), never a partial one.
//!
//! Below the root nothing is followed: every directory on the way to an entry is opened with
//! `O_NOFOLLOW` relative to its parent, so a symlink in the tree (one received earlier, or one
//! already there) can never carry a write out of the root. Paths are checked with
//! [`super::path::components`] first.
//!
//! The work runs on a dedicated thread, one per transfer, so that blocking file I/O stays off
//! the async runtime, SIGXFSZ can be blocked for it alone (a file size limit then fails a
//! write with EFBIG instead of killing the process), and credentials can be attached to it:
//! Linux file-system ids (`setfsuid`, `setfsgid`, and a raw `setgroups`) are per thread, and
//! they end with the thread.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::path::{self, display};
use super::wire::{EntryKind, FileEnd, FileHeader, TransferDone};
use super::ContentHasher;
use crate::transport::Owned;

/// Operations queued for the writer thread per transfer; with data messages of at most a
/// frame, this bounds what a transfer holds in memory.
const OPS_QUEUED: usize = 4;
/// Events the writer thread may queue before it waits for them to be taken.
const EVENTS_QUEUED: usize = 64;
/// Buffers kept for reuse ([`Spares`]): enough for the ones queued and in hand at both ends.
const SPARES_KEPT: usize = OPS_QUEUED + 2;

/// Which symlinks a sink writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Links {
    /// Every link, whatever it points to (the sender is trusted: `ctl push`).
    Any,
    /// Only links that resolve inside the root ([`path::link_stays_inside`]); others are
    /// refused as failed entries (`ctl pull`, where the agent is the sender).
    Inside,
}

/// Where and how a tree is written.
#[derive(Debug, Clone)]
pub struct Options {
    /// Existing directory the entries' paths are relative to.
    pub root: PathBuf,
    /// The one top-level entry takes this name instead of its own (`push FILE NEWNAME`); a
    /// second top-level entry is then refused.
    pub rename_top: Option<Vec<u8>>,
    /// Set modification times from the headers.
    pub keep_times: bool,
    /// Which symlinks to write.
    pub links: Links,
}

/// What the receiving side hands the writer.
#[derive(Debug)]
pub enum Op {
    /// The start of an entry.
    Header(FileHeader),
    /// File content for the current file, in the buffer it was received in (given back
    /// through [`Handle::spares`] once written).
    Data(Owned),
    /// The end of the current file.
    End(FileEnd),
    /// No more entries: finish the directories and report.
    Finish,
}

/// What the writer reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// One entry was not written; the old file, if any, is untouched.
    Failed {
        /// The entry's path as received.
        path: Vec<u8>,
        /// Why, naming the file.
        message: String,
    },
    /// After [`Op::Finish`]: the totals. Nothing follows.
    Done(TransferDone),
}

/// The two ends of a writer thread.
pub struct Handle {
    /// Send operations here; dropping it without [`Op::Finish`] discards the file in progress.
    pub ops: mpsc::Sender<Op>,
    /// Failed entries as they happen, then [`Event::Done`].
    pub events: mpsc::Receiver<Event>,
    /// The buffers of written data, for the receiving side to read the next frames into.
    pub spares: Arc<Spares>,
}

/// Buffers the writer is done with. Data travels from the socket to the file in the buffer it
/// was read into; reusing those buffers spares an allocation, and the kernel's zeroing of fresh
/// pages, per chunk. A few (as many as can be in use at once) are kept.
#[derive(Debug, Default)]
pub struct Spares(Mutex<Vec<Vec<u8>>>);

impl Spares {
    /// A buffer to read into: a used one if there is one, else a new empty one.
    pub fn take(&self) -> Vec<u8> {
        self.lock().pop().unwrap_or_default()
    }

    fn put(&self, buf: Vec<u8>) {
        let mut kept = self.lock();
        if kept.len() < SPARES_KEPT {
            kept.push(buf);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        // A list of buffers is consistent whatever a panicking holder did.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The writer thread ended (it failed to start, or was dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

impl Handle {
    /// Queues `op`, collecting into `seen` the events the writer reports meanwhile: a writer
    /// waiting to report must never wait on a caller that is waiting on it.
    pub async fn send(&mut self, op: Op, seen: &mut Vec<Event>) -> Result<(), Closed> {
        loop {
            tokio::select! {
                permit = self.ops.reserve() => {
                    permit.map_err(|_| Closed)?.send(op);
                    return Ok(());
                }
                Some(event) = self.events.recv() => seen.push(event),
            }
        }
    }
}

/// Starts the writer thread, which runs `prepare` (where the agent takes on a user's rights
/// and works out the destination) and opens the options' root before it takes operations.
pub async fn spawn<P>(prepare: P) -> Result<Handle, String>
where
    P: FnOnce() -> Result<Options, String> + Send + 'static,
{
    let (ops_tx, ops) = mpsc::channel(OPS_QUEUED);
    let (events_tx, events) = mpsc::channel(EVENTS_QUEUED);
    let (ready_tx, ready) = oneshot::channel();
    let spares = Arc::new(Spares::default());
    let given_back = spares.clone();
    std::thread::Builder::new()
        .name("rexec-sink".into())
        .spawn(move || {
            let started = prepare().and_then(|options| {
                let root = open_root(&options.root)?;
                Ok(Writer {
                    options,
                    root,
                    top: None,
                    dirs: Vec::new(),
                    current: Current::Idle,
                    done: TransferDone::default(),
                    events: events_tx,
                    spares: given_back,
                })
            });
            match started {
                Ok(writer) => {
                    let _ = ready_tx.send(Ok(()));
                    writer.run(ops);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| format!("cannot start a writer thread: {e}"))?;
    ready
        .await
        .map_err(|_| "the writer thread ended before it started".to_owned())??;
    Ok(Handle {
        ops: ops_tx,
        events,
        spares,
    })
}

fn open_root(root: &Path) -> Result<OwnedFd, String> {
    let name = cstring(root.as_os_str().as_bytes())
        .ok_or_else(|| format!("{}: path holds a NUL byte", root.display()))?;
    // SAFETY: a valid C string; the returned descriptor is owned below.
    let fd = unsafe {
        libc::open(
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::ENOENT) => format!("directory {} does not exist", root.display()),
            Some(libc::ENOTDIR) => format!("{} is not a directory", root.display()),
            _ => format!("cannot open directory {}: {e}", root.display()),
        });
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A directory entry seen during the transfer, finished (mode, time) at the end so that a
/// read-only directory can still be filled first.
struct DirToFinish {
    path: Vec<Vec<u8>>,
    mode: Option<u32>,
    mtime: (i64, u32),
}

enum Current {
    Idle,
    File(Box<Incoming>),
    /// The current file failed; its remaining data is dropped until its end.
    Skipping,
}

struct Writer {
    options: Options,
    root: OwnedFd,
    top: Option<Vec<u8>>,
    dirs: Vec<DirToFinish>,
    current: Current,
    done: TransferDone,
    events: mpsc::Sender<Event>,
    spares: Arc<Spares>,
}

impl Writer {
    fn run(mut self, mut ops: mpsc::Receiver<Op>) {
        block_sigxfsz();
        while let Some(op) = ops.blocking_recv() {
            match op {
                Op::Header(header) => {
                    if let Current::File(file) = std::mem::replace(&mut self.current, Current::Idle)
                    {
                        let path = file.path.clone();
                        drop(file);
                        self.fail(
                            path,
                            "the sender started another entry before its end".into(),
                        );
                    }
                    self.header(header);
                }
                Op::Data(data) => {
                    self.data(&data);
                    self.spares.put(data.into_buffer());
                }
                Op::End(end) => self.end(end),
                Op::Finish => {
                    if let Current::File(file) = std::mem::replace(&mut self.current, Current::Idle)
                    {
                        let path = file.path.clone();
                        drop(file);
                        self.fail(path, "the transfer ended in the middle of it".into());
                    }
                    self.finish_dirs();
                    let _ = self.events.blocking_send(Event::Done(self.done));
                    return;
                }
            }
        }
        // The connection went away: the file in progress is dropped, its temporary removed.
    }

    fn fail(&mut self, path: Vec<u8>, message: String) {
        self.done.failed += 1;
        let _ = self.events.blocking_send(Event::Failed { path, message });
    }

    /// The received path with the top renamed if asked: checked components, or why not.
    fn local_path(&mut self, received: &[u8]) -> Result<Vec<Vec<u8>>, String> {
        let parts = path::components(received)
            .map_err(|e| format!("refused: {e} (nothing was written)"))?;
        let mut parts: Vec<Vec<u8>> = parts.into_iter().map(<[u8]>::to_vec).collect();
        match &self.top {
            Some(top) if *top != parts[0] => {
                if self.options.rename_top.is_some() {
                    return Err(format!(
                        "refused: a second top-level entry, but the destination is not a directory \
                         (its first entry was {})",
                        display(top)
                    ));
                }
            }
            Some(_) => {}
            None => self.top = Some(parts[0].clone()),
        }
        if let Some(name) = &self.options.rename_top {
            parts[0] = name.clone();
        }
        Ok(parts)
    }

    fn header(&mut self, header: FileHeader) {
        let shown = display(&header.path);
        let parts = match self.local_path(&header.path) {
            Ok(parts) => parts,
            Err(message) => {
                self.skip_if_file(header.kind);
                return self.fail(header.path, format!("{shown}: {message}"));
            }
        };
        let parent = match self.open_parent(&parts) {
            Ok(fd) => fd,
            Err(message) => {
                self.skip_if_file(header.kind);
                return self.fail(header.path, format!("{shown}: {message}"));
            }
        };
        let name = parts.last().cloned().unwrap_or_default();
        let result = match header.kind {
            EntryKind::Dir => self.make_dir(&parent, &name, parts, &header),
            EntryKind::Symlink => self.make_link(&parent, &name, &header),
            EntryKind::File => match Incoming::create(parent, &name, &header, &self.options) {
                Ok(file) => {
                    self.current = Current::File(Box::new(file));
                    Ok(())
                }
                Err(e) => {
                    self.current = Current::Skipping;
                    Err(e)
                }
            },
        };
        if let Err(message) = result {
            self.fail(header.path, format!("{shown}: {message}"));
        }
    }

    fn skip_if_file(&mut self, kind: EntryKind) {
        if kind == EntryKind::File {
            self.current = Current::Skipping;
        }
    }

    /// Opens the directory an entry goes in, following no symlink below the root.
    fn open_parent(&self, parts: &[Vec<u8>]) -> Result<OwnedFd, String> {
        let mut dir = dup(&self.root)?;
        for (i, part) in parts[..parts.len() - 1].iter().enumerate() {
            dir = open_dir_at(&dir, part).map_err(|e| {
                let shown = display(&parts[..=i].join(&b'/'));
                match e.raw_os_error() {
                    Some(libc::ENOENT) => format!("directory {shown} does not exist"),
                    Some(libc::ELOOP | libc::ENOTDIR) => {
                        format!("{shown} is a symlink or not a directory; not followed")
                    }
                    _ => format!("cannot open directory {shown}: {e}"),
                }
            })?;
        }
        Ok(dir)
    }

    fn make_dir(
        &mut self,
        parent: &OwnedFd,
        name: &[u8],
        parts: Vec<Vec<u8>>,
        header: &FileHeader,
    ) -> Result<(), String> {
        let c = cstring(name).ok_or("name holds a NUL byte")?;
        // Owner-only until the end, so the contents can be written even into a read-only one.
        // SAFETY: valid descriptor and C string.
        let rc = unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), 0o700) };
        let created = if rc == 0 {
            true
        } else {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("cannot create the directory: {e}"));
            }
            match stat_at(parent, &c) {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => false,
                Ok(_) => {
                    return Err("exists and is not a directory (a symlink is not followed)".into())
                }
                Err(e) => return Err(format!("cannot inspect the existing entry: {e}")),
            }
        };
        self.dirs.push(DirToFinish {
            path: parts,
            mode: created.then_some(header.mode),
            mtime: (header.mtime_secs, header.mtime_nanos),
        });
        Ok(())
    }

    fn make_link(
        &mut self,
        parent: &OwnedFd,
        name: &[u8],
        header: &FileHeader,
    ) -> Result<(), String> {
        if self.options.links == Links::Inside
            && !path::link_stays_inside(&header.path, &header.link)
        {
            return Err(format!(
                "symlink to {} refused: it leads outside the destination directory",
                display(&header.link)
            ));
        }
        let target = cstring(&header.link).ok_or("link target holds a NUL byte")?;
        let (tmp, _) = temp_name();
        // SAFETY: valid descriptor and C strings.
        if unsafe { libc::symlinkat(target.as_ptr(), parent.as_raw_fd(), tmp.as_ptr()) } != 0 {
            return Err(format!(
                "cannot create the symlink: {}",
                io::Error::last_os_error()
            ));
        }
        if self.options.keep_times {
            set_times(
                parent.as_raw_fd(),
                Some(&tmp),
                (header.mtime_secs, header.mtime_nanos),
            );
        }
        if let Err(e) = replaceable(parent, name) {
            unlink_at(parent, &tmp);
            return Err(e);
        }
        if let Err(e) = rename_at(parent, &tmp, name) {
            unlink_at(parent, &tmp);
            return Err(format!("cannot put the symlink in place: {e}"));
        }
        self.done.files += 1;
        Ok(())
    }

    fn data(&mut self, data: &[u8]) {
        let Current::File(file) = &mut self.current else {
            if matches!(self.current, Current::Idle) {
                self.fail(Vec::new(), "file data outside a file; dropped".into());
            }
            return;
        };
        if let Err(message) = file.write(data) {
            let path = file.path.clone();
            self.current = Current::Skipping;
            self.fail(path, message);
        }
    }

    fn end(&mut self, end: FileEnd) {
        match std::mem::replace(&mut self.current, Current::Idle) {
            Current::File(file) => {
                let path = file.path.clone();
                let size = file.size;
                match end {
                    // The sender reports its own read error; the file is simply not written.
                    FileEnd::Abandoned => drop(file),
                    FileEnd::Complete(digest) => match file.commit(&digest, &self.options) {
                        Ok(()) => {
                            self.done.files += 1;
                            self.done.bytes += size;
                        }
                        Err(message) => self.fail(path, message),
                    },
                }
            }
            Current::Skipping | Current::Idle => {}
        }
    }

    /// Gives created directories their modes, and all of them their times with `keep_times`;
    /// deepest first, so setting a directory's time is not undone by writing inside it.
    fn finish_dirs(&mut self) {
        let dirs = std::mem::take(&mut self.dirs);
        for dir in dirs.iter().rev() {
            if dir.mode.is_none() && !self.options.keep_times {
                continue;
            }
            let Ok(parent) = self.open_parent(&dir.path) else {
                continue;
            };
            let Some(name) = dir.path.last().and_then(|n| cstring(n)) else {
                continue;
            };
            let Ok(fd) = open_dir_at(&parent, name.as_bytes()) else {
                continue;
            };
            if self.options.keep_times {
                set_times(fd.as_raw_fd(), None, dir.mtime);
            }
            if let Some(mode) = dir.mode {
                // SAFETY: valid descriptor.
                if unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) } != 0 {
                    let e = io::Error::last_os_error();
                    let path = dir.path.join(&b'/');
                    let shown = display(&path);
                    self.fail(
                        path,
                        format!("{shown}: cannot set the directory's mode: {e}"),
                    );
                }
            }
        }
    }
}

/// A file being received: a temporary file beside its final name, removed unless committed.
struct Incoming {
    dir: OwnedFd,
    tmp: CString,
    name: Vec<u8>,
    file: Option<File>,
    hasher: ContentHasher,
    size: u64,
    written: u64,
    mode: u32,
    mtime: (i64, u32),
    /// As received, for messages.
    path: Vec<u8>,
}

impl Incoming {
    fn create(dir: OwnedFd, name: &[u8], header: &FileHeader, _: &Options) -> Result<Self, String> {
        let mut last = None;
        // A clash with another temporary is all but impossible; retry a few times anyway.
        for _ in 0..4 {
            let (tmp, _) = temp_name();
            // SAFETY: valid descriptor and C string; the new descriptor is owned below.
            let fd = unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    tmp.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o600 as libc::c_uint,
                )
            };
            if fd >= 0 {
                return Ok(Self {
                    dir,
                    tmp,
                    name: name.to_vec(),
                    // SAFETY: fd is a new descriptor nothing else owns.
                    file: Some(unsafe { File::from_raw_fd(fd) }),
                    hasher: ContentHasher::new(),
                    size: header.size,
                    written: 0,
                    mode: header.mode,
                    mtime: (header.mtime_secs, header.mtime_nanos),
                    path: header.path.clone(),
                });
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(format!("cannot create a file in its directory: {e}"));
            }
            last = Some(e);
        }
        Err(format!(
            "cannot create a temporary file in its directory: {}",
            last.map_or_else(String::new, |e| e.to_string())
        ))
    }

    fn write(&mut self, data: &[u8]) -> Result<(), String> {
        let shown = display(&self.path);
        if self.written + data.len() as u64 > self.size {
            return Err(format!(
                "{shown}: the sender sent more than the {} bytes it announced; the old file is kept",
                self.size
            ));
        }
        let file = self.file.as_mut().ok_or("file already closed")?;
        file.write_all(data).map_err(|e| {
            format!(
                "{shown}: cannot write: {}; the old file is kept",
                describe(&e)
            )
        })?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    fn commit(mut self, digest: &[u8; 32], options: &Options) -> Result<(), String> {
        let shown = display(&self.path);
        if self.written != self.size {
            return Err(format!(
                "{shown}: received {} of {} bytes; the old file is kept",
                self.written, self.size
            ));
        }
        let ours = self.hasher.finish();
        if ours != *digest {
            return Err(format!(
                "{shown}: content check failed (its BLAKE3 digest differs from the sender's); the old file is kept"
            ));
        }
        let file = self.file.take().ok_or("file already closed")?;
        let fd = file.as_raw_fd();
        // SAFETY: valid descriptor.
        if unsafe { libc::fchmod(fd, self.mode as libc::mode_t) } != 0 {
            return Err(format!(
                "{shown}: cannot set its mode: {}",
                io::Error::last_os_error()
            ));
        }
        if options.keep_times {
            set_times(fd, None, self.mtime);
        }
        file.sync_all().map_err(|e| {
            format!(
                "{shown}: cannot write: {}; the old file is kept",
                describe(&e)
            )
        })?;
        drop(file);
        replaceable(&self.dir, &self.name).map_err(|e| format!("{shown}: {e}"))?;
        rename_at(&self.dir, &self.tmp, &self.name).map_err(|e| {
            format!("{shown}: cannot put the file in place: {e}; the old file is kept")
        })?;
        // The rename is durable once the directory is.
        // SAFETY: valid descriptor.
        unsafe { libc::fsync(self.dir.as_raw_fd()) };
        self.name.clear();
        Ok(())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        // Not committed (commit empties the name): remove the temporary file.
        if !self.name.is_empty() {
            unlink_at(&self.dir, &self.tmp);
        }
    }
}

/// Says ENOSPC and EFBIG in words a user acts on.
fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOSPC) => "no space left on the device".into(),
        Some(libc::EFBIG) => "file too large (over the file size limit)".into(),
        Some(libc::EDQUOT) => "disk quota exceeded".into(),
        _ => e.to_string(),
    }
}

/// Blocks SIGXFSZ on this thread: a write past RLIMIT_FSIZE then fails with EFBIG. The signal
/// is directed at this thread and is discarded when it ends.
pub(crate) fn block_sigxfsz() {
    // SAFETY: a zeroed sigset initialised by sigemptyset; only this thread's mask changes.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGXFSZ);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

fn temp_name() -> (CString, u64) {
    let n: u64 = rand::random();
    let name = format!(".rexec-{n:016x}.tmp");
    // A formatted name has no NUL.
    (CString::new(name).unwrap_or_default(), n)
}

fn cstring(bytes: &[u8]) -> Option<CString> {
    CString::new(bytes).ok()
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, String> {
    fd.try_clone()
        .map_err(|e| format!("cannot duplicate a descriptor: {e}"))
}

fn open_dir_at(dir: &OwnedFd, name: &[u8]) -> io::Result<OwnedFd> {
    let c = cstring(name).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid descriptor and C string; the new descriptor is owned below.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn stat_at(dir: &OwnedFd, name: &CString) -> io::Result<libc::stat> {
    // SAFETY: a zeroed stat filled by fstatat; valid descriptor and C string.
    unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(st)
    }
}

/// Refuses to replace a device, FIFO or socket (`/dev/null` above all) with a file: the
/// rename would put the file where the device was.
fn replaceable(dir: &OwnedFd, name: &[u8]) -> Result<(), String> {
    let c = cstring(name).ok_or("name holds a NUL byte")?;
    match stat_at(dir, &c) {
        Ok(st) => match st.st_mode & libc::S_IFMT {
            libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO | libc::S_IFSOCK => Err(
                "exists and is a device, FIFO or socket; a file is never put in its place".into(),
            ),
            _ => Ok(()),
        },
        Err(_) => Ok(()),
    }
}

fn rename_at(dir: &OwnedFd, from: &CString, to: &[u8]) -> io::Result<()> {
    let to = cstring(to).ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid descriptor and C strings.
    let rc =
        unsafe { libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn unlink_at(dir: &OwnedFd, name: &CString) {
    // SAFETY: valid descriptor and C string; a failure leaves nothing to clean up.
    unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) };
}

/// Sets the modification time (access time left alone) of `fd`, or of `name` in directory
/// `fd` without following it. Best effort: a time that cannot be set is not worth a failure.
fn set_times(fd: RawFd, name: Option<&CString>, (secs, nanos): (i64, u32)) {
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: nanos as libc::c_long,
        },
    ];
    // SAFETY: valid descriptor, C string and two timespecs.
    unsafe {
        match name {
            Some(name) => {
                libc::utimensat(fd, name.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
            }
            None => libc::futimens(fd, times.as_ptr()),
        };
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    fn file_header(path: &[u8], content: &[u8], mode: u32) -> FileHeader {
        FileHeader {
            kind: EntryKind::File,
            mode,
            mtime_secs: 1_000_000_000,
            mtime_nanos: 5,
            size: content.len() as u64,
            path: path.to_vec(),
            link: Vec::new(),
        }
    }

    fn digest(content: &[u8]) -> [u8; 32] {
        ContentHasher::digest(content)
    }

    fn entry(kind: EntryKind, path: &[u8], link: &[u8]) -> FileHeader {
        FileHeader {
            kind,
            mode: 0o755,
            mtime_secs: 0,
            mtime_nanos: 0,
            size: 0,
            path: path.to_vec(),
            link: link.to_vec(),
        }
    }

    /// Runs `ops` through a sink at `root`; returns the events. `finish` sends Finish last.
    fn run(options: Options, ops: Vec<Op>, finish: bool) -> Vec<Event> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async move {
            let Handle {
                ops: tx,
                mut events,
                spares,
            } = spawn(move || Ok(options)).await.unwrap();
            let data_ops = ops.iter().filter(|op| matches!(op, Op::Data(_))).count();
            for op in ops {
                tx.send(op).await.unwrap();
            }
            if finish {
                tx.send(Op::Finish).await.unwrap();
            }
            drop(tx);
            let mut seen = Vec::new();
            while let Some(e) = events.recv().await {
                seen.push(e);
            }
            // The thread has ended: every data buffer, written or skipped, came back.
            assert_eq!(spares.lock().len(), data_ops.min(SPARES_KEPT));
            seen
        })
    }

    fn options(root: &Path) -> Options {
        Options {
            root: root.to_owned(),
            rename_top: None,
            keep_times: false,
            links: Links::Inside,
        }
    }

    fn send_file(path: &[u8], content: &[u8], mode: u32) -> Vec<Op> {
        let mut ops = vec![Op::Header(file_header(path, content, mode))];
        for chunk in content.chunks(3) {
            ops.push(Op::Data(chunk.to_vec().into()));
        }
        ops.push(Op::End(FileEnd::Complete(digest(content))));
        ops
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_file_is_written_with_its_mode_and_replaces_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"old").unwrap();
        let events = run(
            options(dir.path()),
            send_file(b"f", b"new content", 0o640),
            true,
        );
        assert_eq!(
            events,
            [Event::Done(TransferDone {
                files: 1,
                bytes: 11,
                failed: 0
            })]
        );
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"new content");
        let meta = std::fs::metadata(dir.path().join("f")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_ne!(meta.mtime(), 1_000_000_000, "times only with keep_times");
        assert_eq!(names(dir.path()), ["f"], "no temporary left");
    }

    #[test]
    fn keep_times_sets_files_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let mut ops = vec![Op::Header(FileHeader {
            mtime_secs: 1_200_000_000,
            ..entry(EntryKind::Dir, b"d", b"")
        })];
        ops.extend(send_file(b"d/f", b"x", 0o600));
        let opts = Options {
            keep_times: true,
            ..options(dir.path())
        };
        run(opts, ops, true);
        assert_eq!(
            std::fs::metadata(dir.path().join("d/f")).unwrap().mtime(),
            1_000_000_000
        );
        assert_eq!(
            std::fs::metadata(dir.path().join("d")).unwrap().mtime(),
            1_200_000_000
        );
    }

    #[test]
    fn a_tampered_short_or_cut_file_leaves_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"old").unwrap();
        // Other bytes than the digest covers.
        let mut ops = vec![
            Op::Header(file_header(b"f", b"abc", 0o644)),
            Op::Data(b"abd".to_vec().into()),
            Op::End(FileEnd::Complete(digest(b"abc"))),
        ];
        // Fewer bytes than announced.
        ops.push(Op::Header(file_header(b"f", b"abc", 0o644)));
        ops.push(Op::Data(b"ab".to_vec().into()));
        ops.push(Op::End(FileEnd::Complete(digest(b"ab"))));
        // More bytes than announced.
        ops.push(Op::Header(file_header(b"f", b"abc", 0o644)));
        ops.push(Op::Data(b"abcd".to_vec().into()));
        ops.push(Op::End(FileEnd::Complete(digest(b"abcd"))));
        // Abandoned by the sender: not reported by the sink, not written.
        ops.push(Op::Header(file_header(b"f", b"abc", 0o644)));
        ops.push(Op::Data(b"a".to_vec().into()));
        ops.push(Op::End(FileEnd::Abandoned));
        let events = run(options(dir.path()), ops, true);
        let failed: Vec<&String> = events
            .iter()
            .filter_map(|e| match e {
                Event::Failed { message, .. } => Some(message),
                _ => None,
            })
            .collect();
        assert_eq!(failed.len(), 3, "{events:?}");
        assert!(failed[0].contains("content check failed"), "{}", failed[0]);
        assert!(failed[1].contains("received 2 of 3 bytes"), "{}", failed[1]);
        assert!(failed[2].contains("more than the 3 bytes"), "{}", failed[2]);
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["f"]);

        // Cut: the channel closes in the middle of the data.
        let ops = vec![
            Op::Header(file_header(b"f", b"abcdef", 0o644)),
            Op::Data(b"abc".to_vec().into()),
        ];
        assert_eq!(run(options(dir.path()), ops, false), []);
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), b"old");
        assert_eq!(names(dir.path()), ["f"]);
    }

    #[test]
    fn nothing_is_written_outside_the_root() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        // A symlink already in the root that points out of it.
        std::os::unix::fs::symlink(outside.path(), root.join("out")).unwrap();
        let mut ops = Vec::new();
        for path in [
            &b"../escape"[..],
            b"/abs",
            b"a/../../escape",
            b"out/through-old-link",
        ] {
            ops.extend(send_file(path, b"x", 0o644));
        }
        // Links that lead out are refused; one received link must not carry a later file out.
        ops.push(Op::Header(entry(EntryKind::Symlink, b"abs-link", b"/etc")));
        ops.push(Op::Header(entry(EntryKind::Symlink, b"up-link", b"../..")));
        ops.push(Op::Header(entry(EntryKind::Dir, b"d", b"")));
        ops.push(Op::Header(entry(EntryKind::Symlink, b"d/ok-link", b"../d")));
        ops.extend(send_file(b"d/ok-link/through-new-link", b"x", 0o644));
        let events = run(options(&root), ops, true);
        let failed = events
            .iter()
            .filter(|e| matches!(e, Event::Failed { .. }))
            .count();
        assert_eq!(failed, 7, "{events:#?}");
        assert_eq!(names(outside.path()), Vec::<String>::new());
        assert_eq!(names(dir.path()), ["root"]);
        assert_eq!(names(&root), ["d", "out"]);
        assert_eq!(names(&root.join("d")), ["ok-link"]);
        assert!(std::fs::symlink_metadata(root.join("d/ok-link"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn rename_top_gives_the_one_entry_its_new_name() {
        let dir = tempfile::tempdir().unwrap();
        let opts = Options {
            rename_top: Some(b"renamed".to_vec()),
            ..options(dir.path())
        };
        let mut ops = vec![Op::Header(entry(EntryKind::Dir, b"src", b""))];
        ops.extend(send_file(b"src/a", b"1", 0o644));
        ops.extend(send_file(b"other", b"2", 0o644));
        let events = run(opts, ops, true);
        assert!(
            matches!(&events[0], Event::Failed { message, .. } if message.contains("second top-level"))
        );
        assert_eq!(names(dir.path()), ["renamed"]);
        assert_eq!(std::fs::read(dir.path().join("renamed/a")).unwrap(), b"1");
        let mode = std::fs::metadata(dir.path().join("renamed"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755);
    }

    #[test]
    fn a_device_or_fifo_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut ops = send_file(b"fifo", b"x", 0o644);
        ops.push(Op::Header(entry(EntryKind::Symlink, b"fifo", b"target")));
        let events = run(options(dir.path()), ops, true);
        let failed = events
            .iter()
            .filter(|e| matches!(e, Event::Failed { message, .. } if message.contains("device, FIFO or socket")))
            .count();
        assert_eq!(failed, 2, "{events:?}");
        let meta = std::fs::symlink_metadata(&fifo).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()));
        assert_eq!(names(dir.path()), ["fifo"]);
    }

    #[test]
    fn a_missing_or_unwritable_destination_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let missing = options(&dir.path().join("nope"));
        let Err(e) = rt.block_on(spawn(move || Ok(missing))) else {
            panic!("a missing root is refused")
        };
        assert!(e.contains("does not exist"), "{e}");
        // What the prepare step refuses never starts a transfer.
        let Err(e) = rt.block_on(spawn(|| Err("no rights".to_owned()))) else {
            panic!("a failed prepare step is refused")
        };
        assert_eq!(e, "no rights");
        let events = run(
            options(dir.path()),
            send_file(b"no/such/f", b"x", 0o644),
            true,
        );
        assert!(
            matches!(&events[0], Event::Failed { message, .. } if message.contains("directory no does not exist")),
            "{events:?}"
        );
    }
}
