//! File transfer (`ctl push`, `ctl pull`), shared by both ends because each end both sends and
//! receives trees.
//!
//! [`wire`] and [`path`] are pure: the message bodies and the check every received path goes
//! through. [`source`] walks and reads a local tree on its own thread; [`sink`] writes a
//! received tree, each file atomically, on its own thread. The threads are where the agent
//! takes on a key's `user=` rights (an [`Enter`] step, run before the thread touches the file
//! system) and where a file size limit's SIGXFSZ is blocked, so a full disk or a limit becomes
//! an error message instead of a killed process.

pub mod path;
pub mod sink;
pub mod source;
pub mod wire;

/// A step run first on a transfer's own thread, before it touches the file system; the agent
/// drops that one thread to a key's `user=` there. An error ends the transfer before it starts.
pub type Enter = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// The digest a file's content is checked against where it is received: BLAKE3, 32 bytes. The
/// sender hashes each file once and every receiving copy hashes it again, so this hash's speed
/// bounds a push to many targets: with SHA-256 (even with the CPU's SHA extensions) hashing was
/// a quarter of a push's CPU time on the benchmark machine; BLAKE3 is several times as fast.
#[derive(Default)]
pub struct ContentHasher(blake3::Hasher);

impl ContentHasher {
    /// A hasher with nothing hashed yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest of everything added.
    pub fn finish(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }

    /// The digest of `data` alone.
    pub fn digest(data: &[u8]) -> [u8; 32] {
        *blake3::hash(data).as_bytes()
    }
}

/// Bytes of file content per data message: large enough that sealing and syscalls are a small
/// part of the cost, small enough that a few in flight per target keep memory low.
pub const CHUNK: usize = 256 * 1024;
