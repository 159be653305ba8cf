//! Typed protocol errors, so callers can tell a wrong key from a tampered stream.

use std::io;

/// Why a connection could not be established or had to end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The socket failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The peer claimed a frame longer than the protocol allows at this point.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    FrameTooLarge {
        /// The length the peer claimed.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A frame with length zero (no kind byte).
    #[error("empty frame")]
    EmptyFrame,
    /// The connection closed in the middle of a frame or before the final frame.
    #[error("stream truncated: connection closed before the end of the exchange")]
    Truncated,
    /// The peer does not speak this protocol at all.
    #[error("peer does not speak this protocol (bad magic)")]
    BadMagic,
    /// The peer speaks another version of this protocol.
    #[error("peer speaks protocol version {0}, this side speaks {v}", v = crate::handshake::VERSION)]
    VersionMismatch(u8),
    /// A frame of a kind that is not allowed at this point.
    #[error("unexpected frame kind 0x{0:02x}")]
    UnexpectedFrame(u8),
    /// A handshake or message body of the wrong shape.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The peer's ephemeral key is of low order (the shared secret would be all zeros).
    #[error("peer sent a weak (low-order) ephemeral key")]
    WeakKey,
    /// The client's proof did not verify, or its key id is unknown (deliberately not told apart).
    #[error("authentication failed")]
    AuthFailed,
    /// The agent refused the handshake with this text.
    #[error("agent refused the connection: {0}")]
    Refused(String),
    /// The agent's proof did not verify: it does not hold the key.
    #[error("agent failed to prove it holds the key (wrong key, or not the agent you meant)")]
    BadServerProof,
    /// A sealed frame failed to open: it was altered, reordered, replayed or forged.
    #[error("integrity check failed: the stream was altered, reordered or replayed")]
    Integrity,
    /// No frame (not even a heartbeat) arrived for the whole alive timeout while this side was
    /// waiting for one: the peer is frozen, or the network to it is gone.
    #[error("no sign of life from the peer for {}s (its heartbeats stopped)", .0.as_secs_f64())]
    PeerSilent(std::time::Duration),
    /// The per-direction frame counter would wrap; the connection must end.
    #[error("frame counter exhausted; connection must be re-established")]
    CounterExhausted,
}
