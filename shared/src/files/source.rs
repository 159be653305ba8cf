//! Walks and reads local trees for sending, on a thread of its own.
//!
//! Each path is sent as one top-level entry named after its last component; a symlink given
//! as a path is followed (as `scp` does), but below it nothing is: links are sent as links,
//! files are opened with `O_NOFOLLOW`, so a walk never leaves the tree. Every file is read once,
//! in chunks of [`super::CHUNK`], and hashed as it is read; its digest follows its data. The
//! channel is bounded, so a slow receiver holds the reader back and memory stays a few chunks
//! whatever the file's size. As in [`super::sink`], the thread is where a user's credentials
//! attach.

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::path::display;
use super::wire::{EntryKind, FileEnd, FileHeader, TransferDone};
use super::{ContentHasher, Enter, CHUNK};

/// Events queued ahead of the receiver: a few chunks.
const QUEUED: usize = 4;
/// Chunks sent lately, kept to be read into again once every receiver has let go of them.
/// Enough for those queued here and at every target of a push ([`Walker::buffer`]).
const RECENT: usize = 16;

/// What the reader produces, in order: for each entry a header, and for a file its data and
/// end; failed entries in between; the totals last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The start of an entry.
    Header(FileHeader),
    /// Content of the current file (shared, so one read can go to many targets).
    Data(Arc<Vec<u8>>),
    /// The end of the current file.
    End(FileEnd),
    /// An entry that could not be read; it is not sent (or, after its header, abandoned).
    Failed {
        /// The local path.
        path: Vec<u8>,
        /// Why, naming the path.
        message: String,
    },
    /// The totals; nothing follows.
    Done(TransferDone),
}

/// Starts reading `paths` (local paths; directories and their trees with `recursive`) on a
/// thread of its own, after running `enter` there.
pub async fn spawn(
    paths: Vec<Vec<u8>>,
    recursive: bool,
    enter: Option<Enter>,
) -> Result<mpsc::Receiver<Event>, String> {
    let (tx, rx) = mpsc::channel(QUEUED);
    let (ready_tx, ready) = oneshot::channel();
    let mut walker = Walker {
        tx,
        recursive,
        done: TransferDone::default(),
        recent: VecDeque::new(),
    };
    std::thread::Builder::new()
        .name("rexec-source".into())
        .spawn(move || {
            let entered = enter.map_or(Ok(()), |enter| enter());
            let failed = entered.is_err();
            let _ = ready_tx.send(entered);
            if failed {
                return;
            }
            for path in &paths {
                if walker.top(path).is_err() {
                    return;
                }
            }
            let _ = walker.tx.blocking_send(Event::Done(walker.done));
        })
        .map_err(|e| format!("cannot start a reader thread: {e}"))?;
    ready
        .await
        .map_err(|_| "the reader thread ended before it started".to_owned())??;
    Ok(rx)
}

/// The receiver went away; stop reading.
struct Gone;

struct Walker {
    tx: mpsc::Sender<Event>,
    recursive: bool,
    done: TransferDone,
    /// The last chunks sent, oldest first.
    recent: VecDeque<Arc<Vec<u8>>>,
}

impl Walker {
    /// A buffer of `len` bytes to read the next chunk into: a chunk sent earlier that nobody
    /// holds any more, else a new one. Reusing them spares the allocator's work, the kernel's
    /// faulting in of fresh pages and their zeroing, for every chunk.
    fn buffer(&mut self, len: usize) -> Vec<u8> {
        let free = self.recent.iter().position(|c| Arc::strong_count(c) == 1);
        let mut buf = free
            .and_then(|i| self.recent.remove(i))
            .and_then(|c| Arc::try_unwrap(c).ok())
            .unwrap_or_default();
        // Zeroes only what the buffer did not hold already: nothing, for a whole chunk again.
        buf.resize(len, 0);
        buf
    }

    /// Sends a chunk, keeping a reference to read into it again later.
    fn send_chunk(&mut self, chunk: Vec<u8>) -> Result<(), Gone> {
        let chunk = Arc::new(chunk);
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(chunk.clone());
        self.send(Event::Data(chunk))
    }

    fn send(&self, event: Event) -> Result<(), Gone> {
        self.tx.blocking_send(event).map_err(|_| Gone)
    }

    fn fail(&mut self, path: &Path, message: String) -> Result<(), Gone> {
        self.done.failed += 1;
        self.send(Event::Failed {
            path: path.as_os_str().as_bytes().to_vec(),
            message,
        })
    }

    fn top(&mut self, given: &[u8]) -> Result<(), Gone> {
        let path = Path::new(OsStr::from_bytes(given));
        let shown = display(given);
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) => return self.fail(path, format!("cannot read {shown}: {}", describe(&e))),
        };
        let Some(name) = top_name(path) else {
            return self.fail(path, format!("{shown}: cannot tell the name to give it"));
        };
        if meta.is_dir() && !self.recursive {
            return self.fail(path, format!("{shown} is a directory (use -r to copy it)"));
        }
        // The top is opened following links (it was named); everything below is not.
        let mut stack = vec![(path.to_owned(), name, Some(meta))];
        while let Some((fs_path, rel, meta)) = stack.pop() {
            let top = meta.is_some();
            let meta = match meta.map_or_else(|| std::fs::symlink_metadata(&fs_path), Ok) {
                Ok(meta) => meta,
                Err(e) => {
                    let shown = display(fs_path.as_os_str().as_bytes());
                    self.fail(&fs_path, format!("cannot read {shown}: {}", describe(&e)))?;
                    continue;
                }
            };
            self.entry(&fs_path, rel, &meta, top, &mut stack)?;
        }
        Ok(())
    }

    fn entry(
        &mut self,
        fs_path: &Path,
        rel: Vec<u8>,
        meta: &Metadata,
        top: bool,
        stack: &mut Vec<(PathBuf, Vec<u8>, Option<Metadata>)>,
    ) -> Result<(), Gone> {
        let shown = display(fs_path.as_os_str().as_bytes());
        let kind = meta.file_type();
        if kind.is_dir() {
            let mut names = match read_names(fs_path) {
                Ok(names) => names,
                Err(e) => {
                    return self.fail(
                        fs_path,
                        format!("cannot read directory {shown}: {}", describe(&e)),
                    )
                }
            };
            self.send(Event::Header(header(
                EntryKind::Dir,
                meta,
                0,
                rel.clone(),
                Vec::new(),
            )))?;
            // Sorted, and pushed in reverse so that they come off the stack in order.
            names.sort();
            for name in names.into_iter().rev() {
                let mut child = rel.clone();
                child.push(b'/');
                child.extend_from_slice(&name);
                stack.push((fs_path.join(OsStr::from_bytes(&name)), child, None));
            }
            Ok(())
        } else if kind.is_symlink() {
            match std::fs::read_link(fs_path) {
                Ok(target) => {
                    let target = target.into_os_string().into_vec();
                    self.done.files += 1;
                    self.send(Event::Header(header(
                        EntryKind::Symlink,
                        meta,
                        0,
                        rel,
                        target,
                    )))
                }
                Err(e) => self.fail(
                    fs_path,
                    format!("cannot read link {shown}: {}", describe(&e)),
                ),
            }
        } else if kind.is_file() {
            self.file(fs_path, rel, top)
        } else {
            self.fail(
                fs_path,
                format!("{shown} is not a regular file, directory or symlink; skipped"),
            )
        }
    }

    fn file(&mut self, fs_path: &Path, rel: Vec<u8>, top: bool) -> Result<(), Gone> {
        let shown = display(fs_path.as_os_str().as_bytes());
        let flags = if top { 0 } else { libc::O_NOFOLLOW };
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(fs_path)
            .and_then(|f| Ok((f.metadata()?, f)));
        let (meta, mut file) = match opened {
            Ok(x) => x,
            Err(e) => return self.fail(fs_path, format!("cannot read {shown}: {}", describe(&e))),
        };
        let size = meta.len();
        self.send(Event::Header(header(
            EntryKind::File,
            &meta,
            size,
            rel,
            Vec::new(),
        )))?;
        let mut hasher = ContentHasher::new();
        let mut left = size;
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            let mut buf = self.buffer(want);
            match read_full(&mut file, &mut buf) {
                Ok(n) if n == want => {}
                Ok(n) => {
                    let message = format!(
                        "{shown} shrank while it was read ({} of {size} bytes); not copied",
                        size - left + n as u64
                    );
                    self.send(Event::End(FileEnd::Abandoned))?;
                    return self.fail(fs_path, message);
                }
                Err(e) => {
                    self.send(Event::End(FileEnd::Abandoned))?;
                    return self.fail(fs_path, format!("cannot read {shown}: {}", describe(&e)));
                }
            }
            hasher.update(&buf);
            left -= want as u64;
            self.send_chunk(buf)?;
        }
        self.done.files += 1;
        self.done.bytes += size;
        self.send(Event::End(FileEnd::Complete(hasher.finish())))
    }
}

/// The name a top-level path is sent under: its last component, or for `.`, `..` and the like
/// the last component of what it resolves to.
fn top_name(path: &Path) -> Option<Vec<u8>> {
    let name = match path.file_name() {
        Some(name) if !path.as_os_str().as_bytes().ends_with(b"/..") => name.to_owned(),
        _ => std::fs::canonicalize(path).ok()?.file_name()?.to_owned(),
    };
    Some(name.into_vec())
}

fn header(kind: EntryKind, meta: &Metadata, size: u64, path: Vec<u8>, link: Vec<u8>) -> FileHeader {
    FileHeader {
        kind,
        mode: meta.mode() & 0o7777,
        mtime_secs: meta.mtime(),
        mtime_nanos: meta.mtime_nsec().clamp(0, 999_999_999) as u32,
        size,
        path,
        link,
    }
}

fn read_names(dir: &Path) -> io::Result<Vec<Vec<u8>>> {
    std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name().into_vec()))
        .collect()
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn describe(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ENOENT) => "no such file or directory".into(),
        Some(libc::EACCES) => "permission denied".into(),
        Some(libc::ELOOP) => "it became a symlink while it was read; not followed".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn collect(paths: &[&Path], recursive: bool) -> Vec<Event> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let paths = paths
            .iter()
            .map(|p| p.as_os_str().as_bytes().to_vec())
            .collect();
        rt.block_on(async move {
            let mut rx = spawn(paths, recursive, None).await.unwrap();
            let mut seen = Vec::new();
            while let Some(e) = rx.recv().await {
                seen.push(e);
            }
            seen
        })
    }

    fn headers(events: &[Event]) -> Vec<(EntryKind, String)> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Header(h) => Some((h.kind, String::from_utf8_lossy(&h.path).into_owned())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_tree_is_sent_in_order_with_links_as_links() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("top");
        std::fs::create_dir_all(top.join("sub")).unwrap();
        let big = vec![9u8; CHUNK * 2 + 1];
        std::fs::write(top.join("sub/big"), &big).unwrap();
        std::fs::write(top.join("a"), b"hello").unwrap();
        std::os::unix::fs::symlink("/etc", top.join("link")).unwrap();
        let events = collect(&[&top], true);
        assert_eq!(
            headers(&events),
            [
                (EntryKind::Dir, "top".into()),
                (EntryKind::File, "top/a".into()),
                (EntryKind::Symlink, "top/link".into()),
                (EntryKind::Dir, "top/sub".into()),
                (EntryKind::File, "top/sub/big".into()),
            ]
        );
        let data: Vec<usize> = events
            .iter()
            .filter_map(|e| match e {
                Event::Data(d) => Some(d.len()),
                _ => None,
            })
            .collect();
        assert_eq!(data, [5, CHUNK, CHUNK, 1]);
        let digest = ContentHasher::digest(&big);
        assert!(events.contains(&Event::End(FileEnd::Complete(digest))));
        assert!(events
            .iter()
            .any(|e| matches!(e, Event::Header(h) if h.link == b"/etc")));
        assert_eq!(
            events.last(),
            Some(&Event::Done(TransferDone {
                files: 3,
                bytes: 5 + big.len() as u64,
                failed: 0
            }))
        );
    }

    #[test]
    fn chunks_read_into_reused_buffers_carry_the_files_bytes() {
        // The receiver lets go of each chunk at once, so the reader reuses their buffers; a
        // second file shorter than a chunk must not carry a reused buffer's old tail.
        let dir = tempfile::tempdir().unwrap();
        let mut n = 1u32;
        let content: Vec<u8> = (0..CHUNK * 5 + 777)
            .map(|_| {
                n = n.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (n >> 16) as u8
            })
            .collect();
        std::fs::write(dir.path().join("a"), &content).unwrap();
        std::fs::write(dir.path().join("b"), b"short").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let paths = ["a", "b"]
            .iter()
            .map(|name| dir.path().join(name).as_os_str().as_bytes().to_vec())
            .collect();
        let (files, reused) = rt.block_on(async move {
            let mut rx = spawn(paths, false, None).await.unwrap();
            let mut files: Vec<Vec<u8>> = Vec::new();
            let mut buffers = std::collections::HashSet::new();
            let mut chunks = 0;
            while let Some(e) = rx.recv().await {
                match e {
                    Event::Header(_) => files.push(Vec::new()),
                    Event::Data(d) => {
                        files.last_mut().unwrap().extend_from_slice(&d);
                        buffers.insert(d.as_ptr() as usize);
                        chunks += 1;
                    }
                    _ => {}
                }
            }
            (files, buffers.len() < chunks)
        });
        assert!(files[0] == content, "other bytes than the file's");
        assert_eq!(files[1], b"short");
        assert!(reused, "no buffer was read into twice");
    }

    #[test]
    fn missing_unreadable_and_directories_without_r_are_failures() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"x").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
        let events = collect(&[&dir.path().join("missing"), dir.path(), &file], false);
        let messages: Vec<&String> = events
            .iter()
            .filter_map(|e| match e {
                Event::Failed { message, .. } => Some(message),
                _ => None,
            })
            .collect();
        assert_eq!(messages.len(), 2, "{events:?}");
        assert!(
            messages[0].contains("missing: no such file or directory"),
            "{}",
            messages[0]
        );
        assert!(
            messages[1].contains("is a directory (use -r"),
            "{}",
            messages[1]
        );
        assert_eq!(headers(&events), [(EntryKind::File, "f".into())]);
        // Root reads anything; the permission case only holds for other users.
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            let events = collect(&[&secret], false);
            assert!(
                matches!(&events[0], Event::Failed { message, .. } if message.contains("permission denied"))
            );
        }
    }

    #[test]
    fn dot_is_sent_under_its_real_name() {
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("named");
        std::fs::create_dir(&named).unwrap();
        let events = collect(&[&named.join(".")], true);
        assert_eq!(headers(&events), [(EntryKind::Dir, "named".into())]);
    }
}
