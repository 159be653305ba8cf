//! The rexec wire protocol, shared by `agent` and `ctl`.
//!
//! Layers, bottom up: [`frame`] (length-prefixed framing), [`handshake`] (mutual HMAC proof
//! and X25519 key agreement), [`session`] (per-direction AEAD), [`message`] (what the frames
//! carry: one [`message::Request`], then stream messages), and [`transport`], the only module
//! that does I/O. [`codec`] reads and writes message bodies; [`keyfile`] reads key files (client master keys, agents' derived keys); [`name`] is the
//! canonical agent name;
//! [`files`] carries `ctl push`/`ctl pull` trees; [`liveness`] is the heartbeat that notices a
//! peer that stopped answering.
//! docs/protocol.md describes every byte.

pub mod cli;
pub mod codec;
pub mod error;
pub mod files;
pub mod frame;
pub mod handshake;
pub mod keyfile;
pub mod liveness;
pub mod message;
pub mod name;
pub mod policy;
pub mod session;
pub mod transport;

pub use error::ProtocolError;

/// The default TCP port of the agent.
pub const DEFAULT_PORT: u16 = 50007;
