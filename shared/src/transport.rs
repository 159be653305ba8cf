//! The I/O edge: reads whole frames from a byte stream, and drives the handshake and the
//! sealed session over any `AsyncRead`/`AsyncWrite` pair (a TCP socket, or an in-memory duplex
//! in tests).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::error::ProtocolError;
use crate::frame::{self, HEADER_LEN, MAX_FRAME_LEN, MAX_HANDSHAKE_FRAME_LEN};
use crate::handshake::{
    refusal, ClientHandshake, Principal, ServerEstablished, ServerHandshake, Session, AUTH_FAILED,
    VERSION,
};
use crate::keyfile::{AgentKeys, Secret};
use crate::message::{Request, ServerMsg, StreamMsg};
use crate::name::AgentName;
use crate::session::{Opener, Sealer};

/// Smallest and largest read into the frame buffer. Reads are sized by what the current frame
/// still needs, never by more than this, so memory grows only as bytes actually arrive.
const MIN_READ: usize = 4 * 1024;
const MAX_READ: usize = 256 * 1024;

/// One frame, borrowed mutably from the reader's buffer so it can be opened in place.
pub struct RawFrame<'a> {
    /// The 5 header bytes (length and kind).
    pub header: [u8; HEADER_LEN],
    /// The payload.
    pub payload: &'a mut [u8],
}

impl RawFrame<'_> {
    /// The kind byte.
    pub fn kind(&self) -> u8 {
        self.header[4]
    }

    /// The frame as a read-only [`frame::Frame`].
    pub fn as_frame(&self) -> frame::Frame<'_> {
        frame::Frame {
            kind: self.kind(),
            payload: self.payload,
        }
    }
}

/// Reads whole frames from a byte stream, whatever way the bytes are split across reads.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader over `inner` with an empty buffer.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// The next whole frame: `Ok(None)` on a clean end of stream between frames,
    /// [`ProtocolError::Truncated`] if the stream ends inside one. A length above `max_len` is
    /// refused as soon as its 4 bytes arrive.
    pub async fn next(&mut self, max_len: usize) -> Result<Option<RawFrame<'_>>, ProtocolError> {
        loop {
            let pending = &self.buf[self.pos..];
            if let Some((_, used)) = frame::parse(pending, max_len)? {
                let start = self.pos;
                self.pos += used;
                let whole = &mut self.buf[start..start + used];
                let (header, payload) = whole.split_at_mut(HEADER_LEN);
                let mut h = [0u8; HEADER_LEN];
                h.copy_from_slice(header);
                return Ok(Some(RawFrame { header: h, payload }));
            }
            let wanted = match pending.get(..4) {
                Some(len) => {
                    4 + u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize
                        - pending.len()
                }
                None => 4 - pending.len(),
            };
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            self.buf.reserve(wanted.clamp(MIN_READ, MAX_READ));
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ProtocolError::Truncated)
                };
            }
        }
    }
}

/// Receives and opens sealed frames.
pub struct SealedReader<R> {
    frames: FrameReader<R>,
    opener: Opener,
}

impl<R: AsyncRead + Unpin> SealedReader<R> {
    /// Wraps a frame reader whose handshake has completed.
    pub fn new(frames: FrameReader<R>, opener: Opener) -> Self {
        Self { frames, opener }
    }

    /// The next opened frame as (kind, plaintext); `Ok(None)` on end of stream between frames.
    pub async fn next(&mut self) -> Result<Option<(u8, &mut [u8])>, ProtocolError> {
        let Some(frame) = self.frames.next(MAX_FRAME_LEN).await? else {
            return Ok(None);
        };
        let kind = frame.kind();
        let plain_len = self.opener.open(frame.header, frame.payload)?.len();
        Ok(Some((kind, &mut frame.payload[..plain_len])))
    }

    /// The next message from the agent; `Ok(None)` on end of stream.
    pub async fn next_server_msg(&mut self) -> Result<Option<ServerMsg<'_>>, ProtocolError> {
        match self.next().await? {
            Some((kind, body)) => ServerMsg::decode(kind, body).map(Some),
            None => Ok(None),
        }
    }

    /// The next message from the client once its request is in; `Ok(None)` on end of stream.
    /// A second request is refused as an unexpected frame.
    pub async fn next_stream_msg(&mut self) -> Result<Option<StreamMsg<'_>>, ProtocolError> {
        match self.next().await? {
            Some((kind, body)) => StreamMsg::decode(kind, body).map(Some),
            None => Ok(None),
        }
    }

    /// Test hook: see [`Opener::set_counter_for_test`].
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn set_counter_for_test(&mut self, counter: u64) {
        self.opener.set_counter_for_test(counter);
    }
}

/// The agent's reader before the request: it yields the request once, and only then the
/// [`SealedReader`] for the stream messages that follow. A request is read exactly once per
/// connection because this reader is consumed doing it.
pub struct RequestReader<R> {
    inner: SealedReader<R>,
}

impl<R: AsyncRead + Unpin> RequestReader<R> {
    /// The client's request and the reader for what follows it; `Ok(None)` if the client closed
    /// the connection without sending one.
    pub async fn read_request(self) -> Result<Option<(Request, SealedReader<R>)>, ProtocolError> {
        let mut inner = self.inner;
        let request = match inner.next().await? {
            Some((kind, body)) => Request::decode(kind, body)?,
            None => return Ok(None),
        };
        Ok(Some((request, inner)))
    }
}

/// Seals and sends frames, one write per frame.
pub struct SealedWriter<W> {
    inner: W,
    sealer: Sealer,
    buf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> SealedWriter<W> {
    /// Wraps a stream whose handshake has completed.
    pub fn new(inner: W, sealer: Sealer) -> Self {
        Self {
            inner,
            sealer,
            buf: Vec::new(),
        }
    }

    /// Seals and sends one message.
    pub async fn send(&mut self, kind: u8, body: &[u8]) -> Result<(), ProtocolError> {
        self.buf.clear();
        self.sealer.seal(kind, body, &mut self.buf)?;
        self.inner.write_all(&self.buf).await?;
        Ok(())
    }

    /// Encodes, seals and sends the client's request.
    pub async fn send_request(&mut self, request: &Request) -> Result<(), ProtocolError> {
        let mut body = Vec::new();
        request.encode(&mut body);
        self.send(request.kind(), &body).await
    }

    /// Encodes, seals and sends a message that follows the request.
    pub async fn send_stream(&mut self, msg: &StreamMsg<'_>) -> Result<(), ProtocolError> {
        let mut body = Vec::new();
        msg.encode(&mut body);
        self.send(msg.kind(), &body).await
    }

    /// Encodes, seals and sends a message to the client.
    pub async fn send_server(&mut self, msg: &ServerMsg<'_>) -> Result<(), ProtocolError> {
        let mut body = Vec::new();
        msg.encode(&mut body);
        self.send(msg.kind(), &body).await
    }

    /// Seals `buf` in place and sends it: `buf` holds [`HEADER_LEN`] placeholder bytes followed
    /// by the plaintext. The agent reads pipe output straight into such a buffer, so output
    /// reaches the socket with no copy of its own.
    pub async fn send_in_place(
        &mut self,
        kind: u8,
        buf: &mut Vec<u8>,
    ) -> Result<(), ProtocolError> {
        self.sealer.seal_in_place(kind, buf, 0)?;
        self.inner.write_all(buf).await?;
        Ok(())
    }

    /// Flushes and shuts down the write side, so the peer sees a clean end of stream.
    pub async fn shutdown(&mut self) -> Result<(), ProtocolError> {
        self.inner.shutdown().await?;
        Ok(())
    }

    /// Test hook: see [`Sealer::set_counter_for_test`].
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn set_counter_for_test(&mut self, counter: u64) {
        self.sealer.set_counter_for_test(counter);
    }
}

/// An authenticated connection on the agent's side.
pub struct ServerConnection<R, W> {
    /// Who the client proved to be.
    pub principal: Principal,
    /// Reads the client's request, then what follows it.
    pub reader: RequestReader<R>,
    /// Sends to the client.
    pub writer: SealedWriter<W>,
}

/// Why the agent's side of a handshake ended without an authenticated client.
#[derive(Debug, thiserror::Error)]
pub enum ServerHandshakeError {
    /// The client closed the connection before sending its hello.
    #[error("client closed the connection during the handshake")]
    Closed,
    /// Sending to the client failed.
    #[error("sending {what} failed: {cause}")]
    Send {
        /// What was being sent.
        what: &'static str,
        /// The cause.
        cause: std::io::Error,
    },
    /// The client's hello did not arrive as a frame (too long, cut, socket error).
    #[error("bad handshake input: {0}")]
    Input(ProtocolError),
    /// The client's hello was refused (wrong proof, unknown key id or agent name, version,
    /// ...); the refusal was sent. `asked` is what the client asked for and what this agent
    /// knows of it: for the log only, never for the client.
    #[error("{error}{}", describe_asked(.asked))]
    Refused {
        /// Why.
        error: ProtocolError,
        /// The key id and agent name the client named, if its hello got that far.
        asked: Option<Asked>,
    },
}

/// What a refused client asked for, for the agent's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// The key id it named.
    pub key_id: String,
    /// The agent name it expected.
    pub agent_name: AgentName,
    /// Whether the key file holds that key id (under any name).
    pub known_id: bool,
    /// Whether it holds that key id for that name.
    pub known_pair: bool,
}

fn describe_asked(asked: &Option<Asked>) -> String {
    let Some(a) = asked else {
        return String::new();
    };
    let what = match (a.known_pair, a.known_id) {
        (true, _) => "",
        (false, true) => " (key id known, but not enrolled for this agent name)",
        (false, false) => " (unknown key id)",
    };
    format!(
        " for key id {:?} and agent name {:?}{what}",
        a.key_id,
        a.agent_name.as_str()
    )
}

/// What the agent tells a client whose hello it refuses. A wrong proof and an unknown key id
/// get the same text.
fn refusal_text(error: &ProtocolError) -> String {
    match error {
        ProtocolError::AuthFailed => AUTH_FAILED.to_owned(),
        ProtocolError::VersionMismatch(v) => {
            format!("unsupported protocol version {v}; this agent speaks version {VERSION}")
        }
        other => format!("handshake refused: {other}"),
    }
}

/// Runs the agent's side of the handshake from `handshake` (whose hello is sent first) against
/// the keys in `keys`. On success the proof is sent and the connection is ready for the
/// client's request; on a refused hello the refusal is sent before returning the error.
///
/// The caller bounds the time this may take.
pub async fn server_handshake<R, W>(
    handshake: ServerHandshake,
    read: R,
    mut write: W,
    keys: &AgentKeys,
) -> Result<ServerConnection<R, W>, ServerHandshakeError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    write
        .write_all(handshake.hello())
        .await
        .map_err(|cause| ServerHandshakeError::Send {
            what: "hello",
            cause,
        })?;
    let mut frames = FrameReader::new(read);
    let hello = match frames.next(MAX_HANDSHAKE_FRAME_LEN).await {
        Ok(Some(frame)) => frame,
        Ok(None) => return Err(ServerHandshakeError::Closed),
        Err(e) => return Err(ServerHandshakeError::Input(e)),
    };
    let mut asked = None;
    let result = handshake.receive_client_hello(hello.as_frame(), |id, name| {
        asked = Some((id.to_owned(), name.clone()));
        keys.get(id, name).map(|key| &key.secret)
    });
    match result {
        Ok(ServerEstablished {
            principal,
            reply,
            session,
        }) => {
            write
                .write_all(&reply)
                .await
                .map_err(|cause| ServerHandshakeError::Send {
                    what: "proof",
                    cause,
                })?;
            Ok(ServerConnection {
                principal,
                reader: RequestReader {
                    inner: SealedReader::new(frames, session.opener),
                },
                writer: SealedWriter::new(write, session.sealer),
            })
        }
        Err(error) => {
            // The client learns nothing more than the refusal; a failed send changes nothing.
            let _ = write.write_all(&refusal(&refusal_text(&error))).await;
            // Looked up only now, after the refusal went out, so it costs the client nothing
            // it could time.
            let asked = asked.map(|(key_id, agent_name)| Asked {
                known_id: keys.has_id(&key_id),
                known_pair: keys.get(&key_id, &agent_name).is_some(),
                key_id,
                agent_name,
            });
            Err(ServerHandshakeError::Refused { error, asked })
        }
    }
}

/// Runs the client side of the handshake with the master key `master` under `key_id`, for the
/// agent named `agent_name`; returns the sealed halves once the agent has proved it holds the
/// key enrolled for that name.
pub async fn client_handshake<R, W>(
    read: R,
    mut write: W,
    key_id: &str,
    master: &Secret,
    agent_name: &AgentName,
) -> Result<(SealedReader<R>, SealedWriter<W>), ProtocolError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut frames = FrameReader::new(read);
    let hello = frames
        .next(MAX_HANDSHAKE_FRAME_LEN)
        .await?
        .ok_or(ProtocolError::Truncated)?;
    let (reply, await_proof) =
        ClientHandshake::new(key_id, master, agent_name).receive_server_hello(hello.as_frame())?;
    write.write_all(&reply).await?;
    let proof = frames
        .next(MAX_HANDSHAKE_FRAME_LEN)
        .await?
        .ok_or(ProtocolError::Truncated)?;
    let Session { sealer, opener } = await_proof.receive_server_proof(proof.as_frame())?;
    Ok((
        SealedReader::new(frames, opener),
        SealedWriter::new(write, sealer),
    ))
}
