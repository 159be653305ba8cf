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

/// Bytes of file content per data message: large enough that sealing and syscalls are a small
/// part of the cost, small enough that a few in flight per target keep memory low.
pub const CHUNK: usize = 256 * 1024;
