//! Where a command's stdin comes from: ctl's own stdin (read on a thread of its own, since a
//! blocking read must not stall the runtime), ctl's stdin replayed to many targets
//! (`--stdin`), fixed bytes (`--script`), or nothing.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use tokio::sync::mpsc;

/// Chunk size for reading ctl's stdin and for sending fixed input.
const CHUNK: usize = 256 * 1024;

/// Stdin bytes for a command: chunks, then the end of the channel as end of input.
pub type StdinChunks = mpsc::Receiver<io::Result<Vec<u8>>>;

/// Reads ctl's stdin on its own thread and hands chunks over as they come; the channel closes
/// at end of input.
pub fn forward() -> StdinChunks {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Passed on, never turned into an end of input: the command is cancelled.
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    rx
}

/// Whether ctl's stdin is `/dev/null`: forwarding it would send nothing, so the command gets
/// an empty stdin without asking for one (which a key with `no-stdin` refuses).
pub fn is_dev_null() -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: fstat writes into a zeroed stat buffer of the right type; a closed descriptor
    // only makes it fail.
    let (rc, st) = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        (libc::fstat(0, &mut st), st)
    };
    rc == 0
        && st.st_mode & libc::S_IFMT == libc::S_IFCHR
        && std::fs::metadata("/dev/null").is_ok_and(|null| st.st_rdev == null.rdev())
}

/// A stdin that delivers `bytes` and then ends.
pub fn fixed(bytes: Arc<[u8]>) -> StdinChunks {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        for chunk in bytes.chunks(CHUNK) {
            if tx.send(Ok(chunk.to_vec())).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// ctl's stdin, readable from the start as often as there are targets, so that every target
/// gets the same bytes: the file itself when stdin is a regular file (read from where its
/// offset stood), else a copy spooled once to an unnamed temporary file.
pub struct Replayable {
    file: File,
    start: u64,
    len: u64,
}

impl Replayable {
    /// Takes ctl's stdin (blocking: a pipe is read to its end here).
    pub fn take() -> io::Result<Self> {
        // SAFETY: dup has no memory-safety preconditions; the new descriptor is owned below.
        let fd = unsafe { libc::dup(0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor nothing else owns.
        let mut stdin = unsafe { File::from_raw_fd(fd) };
        let meta = stdin.metadata()?;
        if meta.file_type().is_file() {
            // SAFETY: lseek on an owned descriptor.
            let start = unsafe { libc::lseek(stdin.as_raw_fd(), 0, libc::SEEK_CUR) };
            let start = u64::try_from(start).unwrap_or(0);
            return Ok(Self {
                len: meta.len().saturating_sub(start),
                file: stdin,
                start,
            });
        }
        let mut spool = temp_file()?;
        let len = io::copy(&mut stdin, &mut spool)?;
        Ok(Self {
            file: spool,
            start: 0,
            len,
        })
    }

    /// A stdin for one target: the bytes from the start, read on a thread of its own.
    pub fn chunks(self: &Arc<Self>) -> StdinChunks {
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        std::thread::spawn(move || {
            let mut offset = 0u64;
            while offset < this.len {
                let mut buf = vec![0u8; CHUNK.min((this.len - offset) as usize)];
                match this.file.read_at(&mut buf, this.start + offset) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        offset += n as u64;
                        if tx.blocking_send(Ok(buf)).is_err() {
                            return;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        // Reading back ctl's own file failed (an I/O error on local disk).
                        let _ = tx.blocking_send(Err(io::Error::new(
                            e.kind(),
                            format!("reading the spooled stdin: {e}"),
                        )));
                        break;
                    }
                }
            }
        });
        rx
    }
}

/// An unnamed file in the temporary directory, gone when closed.
fn temp_file() -> io::Result<File> {
    use std::os::unix::ffi::OsStrExt;
    let dir = std::env::temp_dir();
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a valid C string; the new descriptor is owned below.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_TMPFILE | libc::O_RDWR | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!(
                "cannot make a temporary file in {} to spool stdin: {e}",
                dir.display()
            ),
        ));
    }
    // SAFETY: fd is a new descriptor nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Whether ctl's stdin holds bytes nobody read: a pipe or socket with data waiting, or a
/// regular file not read to its end. (A terminal, /dev/null or an empty pipe do not.)
pub fn has_unread_data() -> bool {
    // SAFETY: a zeroed stat filled by fstat on descriptor 0.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(0, &mut st) } != 0 {
        return false;
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => {
            // SAFETY: lseek on descriptor 0 only reads its offset.
            let at = unsafe { libc::lseek(0, 0, libc::SEEK_CUR) };
            at >= 0 && st.st_size > at
        }
        libc::S_IFIFO | libc::S_IFSOCK => {
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int.
            unsafe { libc::ioctl(0, libc::FIONREAD, &mut n) == 0 && n > 0 }
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[tokio::test]
    async fn a_replayable_stdin_gives_every_reader_the_same_bytes() {
        let mut spool = temp_file().unwrap();
        let bytes: Vec<u8> = (0..CHUNK * 2 + 17).map(|i| i as u8).collect();
        spool.write_all(&bytes).unwrap();
        let replay = Arc::new(Replayable {
            file: spool,
            start: 0,
            len: bytes.len() as u64,
        });
        for _ in 0..2 {
            let mut rx = replay.chunks();
            let mut got = Vec::new();
            while let Some(chunk) = rx.recv().await {
                got.extend(chunk.unwrap());
            }
            assert_eq!(got, bytes);
        }
    }
}
