//! Bodies of the file-transfer messages (docs/protocol.md, "Files"), encoded and decoded
//! without I/O. Frame kinds are in [`crate::message::kind`].

use crate::codec::{put_bytes, Reader};
use crate::error::ProtocolError;

/// Length of a content digest (BLAKE3, see [`super::ContentHasher`]).
pub const DIGEST_LEN: usize = 32;

/// `ctl push`: the client sends a tree to be written under `dest`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushRequest {
    /// Where the entries go: into this directory if it exists (or `into_dir`), else this is the
    /// new path of the one top-level entry.
    pub dest: Vec<u8>,
    /// `dest` must be an existing directory (the client sends several sources).
    pub into_dir: bool,
    /// Set modification times from the headers (`-p`).
    pub keep_times: bool,
}

/// `ctl pull`: the agent sends these paths (trees with `recursive`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullRequest {
    /// Paths on the agent, as the user wrote them.
    pub paths: Vec<Vec<u8>>,
    /// Send directories and their contents; without it a directory is an error.
    pub recursive: bool,
}

/// What a header announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file: `size` bytes of data follow, then an end.
    File,
    /// A directory; its entries follow with paths under it.
    Dir,
    /// A symbolic link, written as a link with the header's target, never followed.
    Symlink,
}

/// One entry of a tree: the header that starts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeader {
    /// What the entry is.
    pub kind: EntryKind,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Modification time: seconds since the epoch.
    pub mtime_secs: i64,
    /// Modification time: nanoseconds, below 1e9.
    pub mtime_nanos: u32,
    /// Bytes of data that follow (files only; 0 otherwise).
    pub size: u64,
    /// Path relative to the transfer root, `/`-separated (checked by [`super::path`]).
    pub path: Vec<u8>,
    /// The link's target (symlinks only; empty otherwise).
    pub link: Vec<u8>,
}

/// The end of one file's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileEnd {
    /// All `size` bytes were sent; their BLAKE3 digest.
    Complete([u8; DIGEST_LEN]),
    /// The sender could not read the rest: the receiver discards the file.
    Abandoned,
}

/// Agent: one entry could not be read (pull) or written (push); the transfer goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The entry's path (as requested for pull, as received for push).
    pub path: Vec<u8>,
    /// What went wrong.
    pub message: String,
}

/// Agent, final: what the agent wrote (push) or sent (pull).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferDone {
    /// Files (and links and directories) written or sent whole.
    pub files: u64,
    /// Bytes of file content among them.
    pub bytes: u64,
    /// Entries that failed (each reported with a [`FileError`]).
    pub failed: u64,
}

impl PushRequest {
    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(self.into_dir) | u8::from(self.keep_times) << 1);
        put_bytes(out, &self.dest);
    }

    /// Decodes a body.
    pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let flags = r.u8()?;
        if flags & !0b11 != 0 {
            return Err(ProtocolError::Malformed("push request flags"));
        }
        let dest = r.bytes()?.to_vec();
        if dest.is_empty() || dest.contains(&0) {
            return Err(ProtocolError::Malformed("push destination"));
        }
        r.expect_empty()?;
        Ok(Self {
            dest,
            into_dir: flags & 1 != 0,
            keep_times: flags & 2 != 0,
        })
    }
}

impl PullRequest {
    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(self.recursive));
        out.extend_from_slice(&(self.paths.len() as u32).to_be_bytes());
        for path in &self.paths {
            put_bytes(out, path);
        }
    }

    /// Decodes a body.
    pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let flags = r.u8()?;
        if flags & !1 != 0 {
            return Err(ProtocolError::Malformed("pull request flags"));
        }
        let count = r.u32()? as usize;
        // Each path takes at least its 4 length bytes: refuse a count the body cannot hold
        // before reserving anything for it.
        if count == 0 || count > r.remaining() / 4 {
            return Err(ProtocolError::Malformed("pull request path count"));
        }
        let mut paths = Vec::with_capacity(count);
        for _ in 0..count {
            let path = r.bytes()?;
            if path.is_empty() || path.contains(&0) {
                return Err(ProtocolError::Malformed("pull request path"));
            }
            paths.push(path.to_vec());
        }
        r.expect_empty()?;
        Ok(Self {
            paths,
            recursive: flags & 1 != 0,
        })
    }
}

impl FileHeader {
    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(match self.kind {
            EntryKind::File => 1,
            EntryKind::Dir => 2,
            EntryKind::Symlink => 3,
        });
        out.extend_from_slice(&self.mode.to_be_bytes());
        out.extend_from_slice(&self.mtime_secs.to_be_bytes());
        out.extend_from_slice(&self.mtime_nanos.to_be_bytes());
        out.extend_from_slice(&self.size.to_be_bytes());
        put_bytes(out, &self.path);
        put_bytes(out, &self.link);
    }

    /// Decodes a body. The path's shape is checked separately, by the receiver, with
    /// [`super::path::components`].
    pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let kind = match r.u8()? {
            1 => EntryKind::File,
            2 => EntryKind::Dir,
            3 => EntryKind::Symlink,
            _ => return Err(ProtocolError::Malformed("file header kind")),
        };
        let mode = r.u32()?;
        if mode & !0o7777 != 0 {
            return Err(ProtocolError::Malformed("file header mode"));
        }
        let mtime_secs = i64::from_be_bytes(r.array()?);
        let mtime_nanos = r.u32()?;
        if mtime_nanos >= 1_000_000_000 {
            return Err(ProtocolError::Malformed("file header time"));
        }
        let size = u64::from_be_bytes(r.array()?);
        let path = r.bytes()?.to_vec();
        let link = r.bytes()?.to_vec();
        r.expect_empty()?;
        let consistent = match kind {
            EntryKind::File => link.is_empty(),
            EntryKind::Dir => size == 0 && link.is_empty(),
            EntryKind::Symlink => size == 0 && !link.is_empty() && !link.contains(&0),
        };
        if !consistent {
            return Err(ProtocolError::Malformed(
                "file header (size or link target does not fit its kind)",
            ));
        }
        Ok(Self {
            kind,
            mode,
            mtime_secs,
            mtime_nanos,
            size,
            path,
            link,
        })
    }
}

impl FileEnd {
    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Complete(digest) => {
                out.push(0);
                out.extend_from_slice(digest);
            }
            Self::Abandoned => {
                out.push(1);
                out.extend_from_slice(&[0; DIGEST_LEN]);
            }
        }
    }

    /// Decodes a body.
    pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let flags = r.u8()?;
        let digest = r.array::<DIGEST_LEN>()?;
        r.expect_empty()?;
        match flags {
            0 => Ok(Self::Complete(digest)),
            1 => Ok(Self::Abandoned),
            _ => Err(ProtocolError::Malformed("file end flags")),
        }
    }
}

impl FileError {
    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_bytes(out, &self.path);
        put_bytes(out, self.message.as_bytes());
    }

    /// Decodes a body; a message that is not UTF-8 is taken lossily.
    pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let path = r.bytes()?.to_vec();
        let message = String::from_utf8_lossy(r.bytes()?).into_owned();
        r.expect_empty()?;
        Ok(Self { path, message })
    }
}

impl TransferDone {
    /// Appends the body.
    pub fn encode(&self, out: &mut Vec<u8>) {
        for n in [self.files, self.bytes, self.failed] {
            out.extend_from_slice(&n.to_be_bytes());
        }
    }

    /// Decodes a body.
    pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let files = u64::from_be_bytes(r.array()?);
        let bytes = u64::from_be_bytes(r.array()?);
        let failed = u64::from_be_bytes(r.array()?);
        r.expect_empty()?;
        Ok(Self {
            files,
            bytes,
            failed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: EntryKind, size: u64, link: &[u8]) -> FileHeader {
        FileHeader {
            kind,
            mode: 0o4755,
            mtime_secs: -5,
            mtime_nanos: 999_999_999,
            size,
            path: b"dir/na\nme\xff".to_vec(),
            link: link.to_vec(),
        }
    }

    #[test]
    fn bodies_round_trip() {
        let push = PushRequest {
            dest: b"/srv/x".to_vec(),
            into_dir: true,
            keep_times: true,
        };
        let mut out = Vec::new();
        push.encode(&mut out);
        assert_eq!(PushRequest::decode(&out).unwrap(), push);

        let pull = PullRequest {
            paths: vec![b"/var/log".to_vec(), b"rel\xff".to_vec()],
            recursive: true,
        };
        out.clear();
        pull.encode(&mut out);
        assert_eq!(PullRequest::decode(&out).unwrap(), pull);

        for h in [
            header(EntryKind::File, 1 << 40, b""),
            header(EntryKind::Dir, 0, b""),
            header(EntryKind::Symlink, 0, b"/etc/passwd"),
        ] {
            out.clear();
            h.encode(&mut out);
            assert_eq!(FileHeader::decode(&out).unwrap(), h);
        }
        for end in [FileEnd::Complete([7; 32]), FileEnd::Abandoned] {
            out.clear();
            end.encode(&mut out);
            assert_eq!(out.len(), 33);
            assert_eq!(FileEnd::decode(&out).unwrap(), end);
        }
        let err = FileError {
            path: b"a\nb".to_vec(),
            message: "permission denied".into(),
        };
        out.clear();
        err.encode(&mut out);
        assert_eq!(FileError::decode(&out).unwrap(), err);
        let done = TransferDone {
            files: 3,
            bytes: 1 << 33,
            failed: 1,
        };
        out.clear();
        done.encode(&mut out);
        assert_eq!(TransferDone::decode(&out).unwrap(), done);
    }

    #[test]
    fn header_bytes_are_as_documented() {
        // docs/protocol.md, "FileHeader body": a 5-byte file, mode 0644, mtime 1.5 s.
        let h = FileHeader {
            kind: EntryKind::File,
            mode: 0o644,
            mtime_secs: 1,
            mtime_nanos: 500_000_000,
            size: 5,
            path: b"a/b".to_vec(),
            link: Vec::new(),
        };
        let mut out = Vec::new();
        h.encode(&mut out);
        let hex: String = out.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "01000001a400000000000000011dcd6500000000000000000500000003612f6200000000"
        );
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let mut out = Vec::new();
        header(EntryKind::File, 3, b"").encode(&mut out);
        for cut in 0..out.len() {
            assert!(FileHeader::decode(&out[..cut]).is_err(), "cut at {cut}");
        }
        let mut trailing = out.clone();
        trailing.push(0);
        assert!(FileHeader::decode(&trailing).is_err());
        let mut bad_kind = out.clone();
        bad_kind[0] = 4;
        assert!(FileHeader::decode(&bad_kind).is_err());
        let mut bad_mode = out.clone();
        bad_mode[1] = 1;
        assert!(FileHeader::decode(&bad_mode).is_err());
        let mut bad_nanos = out.clone();
        bad_nanos[13..17].copy_from_slice(&1_000_000_000u32.to_be_bytes());
        assert!(FileHeader::decode(&bad_nanos).is_err());

        out.clear();
        header(EntryKind::Dir, 1, b"").encode(&mut out);
        assert!(FileHeader::decode(&out).is_err(), "a directory with a size");
        out.clear();
        header(EntryKind::Symlink, 0, b"").encode(&mut out);
        assert!(FileHeader::decode(&out).is_err(), "a link without a target");
        out.clear();
        header(EntryKind::File, 0, b"x").encode(&mut out);
        assert!(
            FileHeader::decode(&out).is_err(),
            "a file with a link target"
        );

        // A path count the body cannot hold, none at all, and a lying path length.
        let mut lying = vec![1u8];
        lying.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(PullRequest::decode(&lying).is_err());
        assert!(PullRequest::decode(&[0, 0, 0, 0, 0]).is_err());
        assert!(PullRequest::decode(&[0, 0, 0, 0, 1, 0xff, 0, 0, 0]).is_err());
        assert!(PullRequest::decode(&[2, 0, 0, 0, 1, 0, 0, 0, 1, b'x']).is_err());
        assert!(PushRequest::decode(&[0, 0, 0, 0, 0]).is_err(), "empty dest");
        assert!(PushRequest::decode(&[4, 0, 0, 0, 1, b'x']).is_err());
        assert!(
            PushRequest::decode(&[0, 0, 0, 0, 1, 0]).is_err(),
            "NUL in dest"
        );
        assert!(FileEnd::decode(&[2; 33]).is_err());
        assert!(FileEnd::decode(&[0; 32]).is_err());
        assert!(TransferDone::decode(&[0; 23]).is_err());
    }
}
