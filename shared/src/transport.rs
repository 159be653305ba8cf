//! The I/O edge: reads whole frames from a byte stream, and drives the handshake and the
//! sealed session over any `AsyncRead`/`AsyncWrite` pair (a TCP socket, or an in-memory duplex
//! in tests).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::error::ProtocolError;
use crate::frame::{self, HEADER_LEN, MAX_FRAME_LEN, MAX_HANDSHAKE_FRAME_LEN};
use crate::handshake::{
    refusal, ClientHandshake, Principal, ServerEstablished, ServerHandshake, Session, AUTH_FAILED,
    VERSION,
};
use crate::keyfile::{AgentKeys, Secret};
use crate::liveness::{self, Heartbeat, PeerTimeout};
use crate::message::{kind, Request, ServerMsg, StreamMsg};
use crate::name::AgentName;
use crate::session::{Opener, Sealer};

/// Smallest and largest read into the frame buffer. Reads are sized by what the current frame
/// still needs, never by more than this, so memory grows only as bytes actually arrive.
const MIN_READ: usize = 4 * 1024;
const MAX_READ: usize = 256 * 1024;
/// How much is read at once while the next frame's header is awaited.
const HEADER_READ: usize = 64 * 1024;

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
    /// When bytes last arrived: a big frame coming slowly is a live peer too.
    last_bytes: Option<Instant>,
    /// When the first bytes of the frame now arriving came.
    frame_started: Option<Instant>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader over `inner` with an empty buffer.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            pos: 0,
            last_bytes: None,
            frame_started: None,
        }
    }

    /// The next whole frame: `Ok(None)` on a clean end of stream between frames,
    /// [`ProtocolError::Truncated`] if the stream ends inside one. A length above `max_len` is
    /// refused as soon as its 4 bytes arrive.
    pub async fn next(&mut self, max_len: usize) -> Result<Option<RawFrame<'_>>, ProtocolError> {
        let span = self.next_span(max_len).await?;
        Ok(span.map(|span| self.frame(span)))
    }

    /// Reads until a whole frame is buffered and says where it is. Cancel-safe: bytes read
    /// stay in the buffer for the next call.
    async fn next_span(&mut self, max_len: usize) -> Result<Option<Span>, ProtocolError> {
        loop {
            let pending = &self.buf[self.pos..];
            if let Some((_, used)) = frame::parse(pending, max_len)? {
                let start = self.pos;
                self.pos += used;
                // Bytes already here belong to the next frame, which started arriving now.
                self.frame_started = (self.pos < self.buf.len()).then(Instant::now);
                return Ok(Some(Span { start, used }));
            }
            let starting = pending.is_empty();
            let wanted = match pending.get(..4) {
                Some(len) => {
                    4 + u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize
                        - pending.len()
                }
                None => 4 - pending.len(),
            };
            let awaiting_header = pending.len() < 4;
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            // No more than the frame still needs (at least a small read's worth): bytes of the
            // next frame read along with a big one's tail would be moved to the front of the
            // buffer afterwards, a copy as large as the data itself.
            // While a header is awaited, a larger read batches the small frames of a busy
            // stream, which cost little to move; not before the peer may send big frames (a
            // handshake's buffer stays small).
            let limit = if awaiting_header && max_len > HEADER_READ {
                HEADER_READ
            } else {
                wanted.clamp(MIN_READ, MAX_READ)
            };
            self.buf.reserve(limit);
            let n = (&mut self.inner)
                .take(limit as u64)
                .read_buf(&mut self.buf)
                .await?;
            if n > 0 {
                let now = Instant::now();
                self.last_bytes = Some(now);
                if starting {
                    self.frame_started = Some(now);
                }
            }
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ProtocolError::Truncated)
                };
            }
        }
    }

    /// Hands over the buffer holding the frame at `span` (the last [`Self::next_span`]
    /// returned it; its body, opened in place, is the `body_len` bytes after the header) and
    /// goes on in `spare`, which gets the bytes read after that frame. Those are at most a
    /// read's worth, as reads stop where the frame ends, so this costs no copy of the body.
    fn take(&mut self, span: Span, body_len: usize, mut spare: Vec<u8>) -> Owned {
        let end = span.start + span.used;
        spare.clear();
        spare.extend_from_slice(&self.buf[end..]);
        let buf = std::mem::replace(&mut self.buf, spare);
        self.pos = 0;
        let start = span.start + HEADER_LEN;
        Owned {
            buf,
            start,
            end: start + body_len.min(span.used.saturating_sub(HEADER_LEN)),
        }
    }

    /// The frame at `span`, which the last [`Self::next_span`] returned.
    fn frame(&mut self, span: Span) -> RawFrame<'_> {
        let whole = &mut self.buf[span.start..span.start + span.used];
        let (header, payload) = whole.split_at_mut(HEADER_LEN);
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(header);
        RawFrame { header: h, payload }
    }
}

/// Where a whole frame lies in a [`FrameReader`]'s buffer.
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    used: usize,
}

/// A frame opened in a [`FrameReader`]'s buffer: its kind, where it lies, its body's length.
#[derive(Clone, Copy)]
struct Opened {
    kind: u8,
    span: Span,
    len: usize,
}

/// What [`SealedReader::next_taking`] read: file data with its buffer, or another frame.
enum Taken {
    Data(Owned),
    Frame(Opened),
}

/// An opened frame's body that owns the buffer it was read and opened in: file data goes to
/// the thread that writes it without being copied. [`Self::into_buffer`] gives the buffer back
/// for reuse (see [`SealedReader::next_stream_msg_owning_data`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Owned {
    /// The whole buffer, the body and whatever came before it, for reading more frames into.
    pub fn into_buffer(self) -> Vec<u8> {
        self.buf
    }
}

impl From<Vec<u8>> for Owned {
    fn from(body: Vec<u8>) -> Self {
        let end = body.len();
        Self {
            buf: body,
            start: 0,
            end,
        }
    }
}

impl std::ops::Deref for Owned {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

/// A message read by [`SealedReader::next_stream_msg_owning_data`] or
/// [`SealedReader::next_server_msg_owning_data`]: file data as an owned body, other messages
/// borrowed as usual.
#[derive(Debug)]
pub enum Incoming<M> {
    /// The body of a file data message.
    Data(Owned),
    /// Any other message.
    Msg(M),
}

/// What the two halves of one session share for liveness: this side's alive timeout and what
/// the peer's heartbeats said of its own.
#[derive(Debug, Default)]
struct Pulse {
    /// This side's alive timeout in milliseconds; 0: none.
    own_ms: AtomicU64,
    /// The peer's: [`PEER_UNKNOWN`] until its first heartbeat, 0 if it never gives up.
    peer_ms: AtomicU64,
}

const PEER_UNKNOWN: u64 = u64::MAX;

impl Pulse {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            own_ms: AtomicU64::new(0),
            peer_ms: AtomicU64::new(PEER_UNKNOWN),
        })
    }

    fn own(&self) -> Option<Duration> {
        match self.own_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    fn set_own(&self, timeout: Option<Duration>) {
        let ms = timeout.map_or(0, |t| {
            u64::try_from(t.as_millis()).unwrap_or(u64::MAX - 1).max(1)
        });
        self.own_ms.store(ms, Ordering::Relaxed);
    }

    fn peer(&self) -> PeerTimeout {
        match self.peer_ms.load(Ordering::Relaxed) {
            PEER_UNKNOWN => PeerTimeout::Unknown,
            0 => PeerTimeout::Never,
            ms => PeerTimeout::After(Duration::from_millis(ms)),
        }
    }

    fn heard(&self, beat: Heartbeat) {
        self.peer_ms
            .store(u64::from(beat.timeout_ms), Ordering::Relaxed);
    }
}

/// Receives and opens sealed frames. Heartbeats are consumed here: they only tell that the
/// peer is there, and what its alive timeout is. With an alive timeout set, a wait for the next
/// frame that lasts that long ends in [`ProtocolError::PeerSilent`].
pub struct SealedReader<R> {
    frames: FrameReader<R>,
    opener: Opener,
    pulse: Arc<Pulse>,
    /// When the wait for the next frame began. It survives a cancelled [`Self::next`] (a
    /// `select!` that chose another branch), so restarting the read does not restart the clock;
    /// a returned frame ends the wait, so time spent elsewhere between frames never counts.
    waiting_since: Option<Instant>,
}

impl<R: AsyncRead + Unpin> SealedReader<R> {
    /// Wraps a frame reader whose handshake has completed; no alive timeout.
    pub fn new(frames: FrameReader<R>, opener: Opener) -> Self {
        Self::with_pulse(frames, opener, Pulse::new())
    }

    fn with_pulse(frames: FrameReader<R>, opener: Opener, pulse: Arc<Pulse>) -> Self {
        Self {
            frames,
            opener,
            pulse,
            waiting_since: None,
        }
    }

    /// Gives up on a peer that sends no frame for `timeout` while this side waits for one
    /// (`None`: never). The writer of the same session announces it in its heartbeats.
    pub fn set_alive_timeout(&mut self, timeout: Option<Duration>) {
        self.pulse.set_own(timeout);
    }

    /// The next opened frame other than a heartbeat, as (kind, plaintext); `Ok(None)` on end
    /// of stream between frames.
    pub async fn next(&mut self) -> Result<Option<(u8, &mut [u8])>, ProtocolError> {
        let Some(opened) = self.next_opened().await? else {
            return Ok(None);
        };
        let frame = self.frames.frame(opened.span);
        Ok(Some((opened.kind, &mut frame.payload[..opened.len])))
    }

    /// Reads and opens the next frame other than a heartbeat, in the frame buffer. Cancel-safe,
    /// as [`FrameReader::next_span`] is: nothing is taken from the buffer until it returns.
    async fn next_opened(&mut self) -> Result<Option<Opened>, ProtocolError> {
        let mut since = *self.waiting_since.get_or_insert_with(Instant::now);
        loop {
            let span = match self.pulse.own() {
                None => self.frames.next_span(MAX_FRAME_LEN).await,
                Some(timeout) => loop {
                    // A deadline past what the clock can hold is no deadline.
                    let Some(deadline) = since.checked_add(timeout) else {
                        break self.frames.next_span(MAX_FRAME_LEN).await;
                    };
                    // The read is polled before the deadline, so frames already buffered are
                    // taken even when the deadline has passed.
                    let read = self.frames.next_span(MAX_FRAME_LEN);
                    if let Ok(span) = tokio::time::timeout_at(deadline, read).await {
                        break span;
                    }
                    // Part of a frame arrived meanwhile: the peer is there, its frame is big
                    // or its link slow. The wait starts again from those bytes, but one frame
                    // gets at most twice the timeout: bytes are not authenticated until the
                    // frame is whole, and a trickle must not keep a dead session alive.
                    let young = self
                        .frames
                        .frame_started
                        .is_some_and(|at| at.elapsed() < timeout.saturating_mul(2));
                    match self.frames.last_bytes {
                        Some(at) if at > since && young => {
                            since = at;
                            self.waiting_since = Some(since);
                        }
                        _ => {
                            self.waiting_since = None;
                            return Err(ProtocolError::PeerSilent(timeout));
                        }
                    }
                },
            };
            let span = match span {
                Ok(Some(span)) => span,
                other => {
                    self.waiting_since = None;
                    return other.map(|_| None);
                }
            };
            let frame = self.frames.frame(span);
            let frame_kind = frame.kind();
            let plain_len = self.opener.open(frame.header, frame.payload)?.len();
            if frame_kind == kind::HEARTBEAT {
                let beat = Heartbeat::decode(&frame.payload[..plain_len])?;
                self.pulse.heard(beat);
                since = Instant::now();
                self.waiting_since = Some(since);
                continue;
            }
            self.waiting_since = None;
            return Ok(Some(Opened {
                kind: frame_kind,
                span,
                len: plain_len,
            }));
        }
    }

    /// The next opened frame, with its body taken out with its buffer when it is of
    /// `data_kind` (file data, whose body is the data itself: there is nothing to decode);
    /// the reader goes on in `spare()`'s buffer.
    async fn next_taking(
        &mut self,
        data_kind: u8,
        spare: impl FnOnce() -> Vec<u8>,
    ) -> Result<Option<Taken>, ProtocolError> {
        let Some(opened) = self.next_opened().await? else {
            return Ok(None);
        };
        if opened.kind == data_kind {
            let data = self.frames.take(opened.span, opened.len, spare());
            return Ok(Some(Taken::Data(data)));
        }
        Ok(Some(Taken::Frame(opened)))
    }

    /// As [`Self::next_stream_msg`], but a file data message comes with its buffer
    /// ([`Incoming::Data`]); the reader goes on in `spare()`'s buffer, so the receiver can hand
    /// buffers it is done with back. Other messages are decoded (checked) as always.
    pub async fn next_stream_msg_owning_data(
        &mut self,
        spare: impl FnOnce() -> Vec<u8>,
    ) -> Result<Option<Incoming<StreamMsg<'_>>>, ProtocolError> {
        match self.next_taking(kind::PUSH_DATA, spare).await? {
            None => Ok(None),
            Some(Taken::Data(data)) => Ok(Some(Incoming::Data(data))),
            Some(Taken::Frame(o)) => {
                let frame = self.frames.frame(o.span);
                StreamMsg::decode(o.kind, &frame.payload[..o.len]).map(|m| Some(Incoming::Msg(m)))
            }
        }
    }

    /// As [`Self::next_server_msg`], with file data as in
    /// [`Self::next_stream_msg_owning_data`].
    pub async fn next_server_msg_owning_data(
        &mut self,
        spare: impl FnOnce() -> Vec<u8>,
    ) -> Result<Option<Incoming<ServerMsg<'_>>>, ProtocolError> {
        match self.next_taking(kind::PULL_DATA, spare).await? {
            None => Ok(None),
            Some(Taken::Data(data)) => Ok(Some(Incoming::Data(data))),
            Some(Taken::Frame(o)) => {
                let frame = self.frames.frame(o.span);
                ServerMsg::decode(o.kind, &frame.payload[..o.len]).map(|m| Some(Incoming::Msg(m)))
            }
        }
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
    /// See [`SealedReader::set_alive_timeout`]; it applies to the wait for the request too
    /// (within the deadline the caller sets for that), and to everything after it.
    pub fn set_alive_timeout(&mut self, timeout: Option<Duration>) {
        self.inner.set_alive_timeout(timeout);
    }

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

/// See [`copy_skew`].
const COPY_SKEW: usize = 64;

/// How far to move a copy's destination (`dst`, copied to from `src`) so that it does not lie
/// just above its source modulo 4096: the CPU then takes each load for one that may depend on
/// a store just made to the same offset in a page (4K aliasing), and a copy runs several times
/// slower. Sealing copies every body after a 5-byte header; when both buffers start at the same
/// offset in their pages (as large allocations do), every copy was that slow: a push of a file
/// spent more time in this copy than in its encryption.
fn copy_skew(dst: usize, src: usize) -> usize {
    let distance = dst.wrapping_sub(src) % 4096;
    if distance == 0 || distance >= COPY_SKEW {
        0
    } else {
        COPY_SKEW - distance
    }
}

/// Seals and sends frames, one write per frame. It keeps the time of the last frame sent, so
/// that the exchange can send a heartbeat when [`Self::heartbeat_due`] says so.
pub struct SealedWriter<W> {
    inner: W,
    sealer: Sealer,
    buf: Vec<u8>,
    pulse: Arc<Pulse>,
    last_sent: Instant,
    announced: bool,
}

impl<W: AsyncWrite + Unpin> SealedWriter<W> {
    /// Wraps a stream whose handshake has completed.
    pub fn new(inner: W, sealer: Sealer) -> Self {
        Self::with_pulse(inner, sealer, Pulse::new())
    }

    fn with_pulse(inner: W, sealer: Sealer, pulse: Arc<Pulse>) -> Self {
        Self {
            inner,
            sealer,
            buf: Vec::new(),
            pulse,
            last_sent: Instant::now(),
            announced: false,
        }
    }

    /// Seals and sends one message.
    pub async fn send(&mut self, kind: u8, body: &[u8]) -> Result<(), ProtocolError> {
        self.buf.clear();
        // Room for the skew, so that the buffer does not move once it is chosen.
        self.buf
            .reserve(COPY_SKEW + HEADER_LEN + body.len() + crate::session::TAG_LEN);
        let skew = copy_skew(
            self.buf.as_ptr() as usize + HEADER_LEN,
            body.as_ptr() as usize,
        );
        self.buf.resize(skew, 0);
        self.sealer.seal(kind, body, &mut self.buf)?;
        self.inner.write_all(&self.buf[skew..]).await?;
        self.last_sent = Instant::now();
        Ok(())
    }

    /// Resolves when this side has been silent long enough that it owes the peer a heartbeat;
    /// never if the peer needs none. Cancel-safe:
    /// exchanges poll it in their `select!` next to their own work.
    pub async fn heartbeat_due(&self) {
        let silent = self.last_sent.elapsed();
        match liveness::next_due(self.announced, silent, self.pulse.peer()) {
            Some(wait) => tokio::time::sleep(wait).await,
            None => std::future::pending().await,
        }
    }

    /// Awaits `work` (something that keeps this side from sending, like a slow disk) while
    /// sending the heartbeats that fall due meanwhile.
    pub async fn beating<F: std::future::Future>(
        &mut self,
        work: F,
    ) -> Result<F::Output, ProtocolError> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Ok(done),
                () = self.heartbeat_due() => self.send_heartbeat().await?,
            }
        }
    }

    /// Sends a heartbeat with this side's alive timeout.
    pub async fn send_heartbeat(&mut self) -> Result<(), ProtocolError> {
        let mut body = Vec::with_capacity(4);
        Heartbeat::new(self.pulse.own()).encode(&mut body);
        self.send(kind::HEARTBEAT, &body).await?;
        self.announced = true;
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
        self.last_sent = Instant::now();
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
            let pulse = Pulse::new();
            Ok(ServerConnection {
                principal,
                reader: RequestReader {
                    inner: SealedReader::with_pulse(frames, session.opener, pulse.clone()),
                },
                writer: SealedWriter::with_pulse(write, session.sealer, pulse),
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
    // Made before the agent's hello is in: the key derivation and the scalar multiplication
    // then overlap the agent's own work instead of following it.
    let handshake = ClientHandshake::new(key_id, master, agent_name);
    let mut frames = FrameReader::new(read);
    let hello = frames
        .next(MAX_HANDSHAKE_FRAME_LEN)
        .await?
        .ok_or(ProtocolError::Truncated)?;
    let (reply, await_proof) = handshake.receive_server_hello(hello.as_frame())?;
    write.write_all(&reply).await?;
    let proof = frames
        .next(MAX_HANDSHAKE_FRAME_LEN)
        .await?
        .ok_or(ProtocolError::Truncated)?;
    let Session { sealer, opener } = await_proof.receive_server_proof(proof.as_frame())?;
    let pulse = Pulse::new();
    Ok((
        SealedReader::with_pulse(frames, opener, pulse.clone()),
        SealedWriter::with_pulse(write, sealer, pulse),
    ))
}

#[cfg(test)]
mod tests {
    //! Liveness on an in-memory connection, on tokio's paused clock: the waits are virtual.

    use tokio::io::{DuplexStream, ReadHalf, WriteHalf};

    use super::*;
    use crate::session::DirectionKeys;

    /// One direction of a session: a sealed writer and the paired reader at the other end.
    fn one_way() -> (
        SealedWriter<WriteHalf<DuplexStream>>,
        SealedReader<ReadHalf<DuplexStream>>,
    ) {
        let keys = DirectionKeys {
            key: [7; 32],
            iv: [9; 12],
        };
        let (a, b) = tokio::io::duplex(1 << 16);
        let (_, write) = tokio::io::split(a);
        let (read, _) = tokio::io::split(b);
        (
            SealedWriter::new(write, Sealer::new(&keys)),
            SealedReader::new(FrameReader::new(read), Opener::new(&keys)),
        )
    }

    /// Sends heartbeats as an exchange would, and `last` after `after`.
    async fn beating_then(
        mut writer: SealedWriter<WriteHalf<DuplexStream>>,
        after: Duration,
        last: &'static [u8],
    ) -> SealedWriter<WriteHalf<DuplexStream>> {
        let end = tokio::time::sleep(after);
        tokio::pin!(end);
        loop {
            tokio::select! {
                () = &mut end => break,
                () = writer.heartbeat_due() => writer.send_heartbeat().await.unwrap(),
            }
        }
        writer.send(kind::STDOUT, last).await.unwrap();
        writer
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_peer_that_sends_heartbeats_is_never_given_up_on() {
        let (writer, mut reader) = one_way();
        reader.set_alive_timeout(Some(Duration::from_secs(2)));
        let sender = tokio::spawn(beating_then(writer, Duration::from_secs(600), b"done"));
        let started = Instant::now();
        let (k, body) = reader.next().await.unwrap().unwrap();
        assert_eq!((k, &*body), (kind::STDOUT, &b"done"[..]));
        assert!(started.elapsed() >= Duration::from_secs(600));
        drop(sender.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_sends_nothing_is_given_up_on_after_the_timeout() {
        let (_writer, mut reader) = one_way();
        reader.set_alive_timeout(Some(Duration::from_secs(3)));
        let started = Instant::now();
        let err = reader.next().await.unwrap_err();
        assert!(matches!(err, ProtocolError::PeerSilent(t) if t == Duration::from_secs(3)));
        assert_eq!(started.elapsed().as_secs(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_announces_the_timeout_and_sets_the_peers_pace() {
        let (mut writer, mut reader) = one_way();
        writer.pulse.set_own(Some(Duration::from_secs(8)));
        writer.send_heartbeat().await.unwrap();
        writer.send(kind::STDOUT, b"x").await.unwrap();
        reader.next().await.unwrap().unwrap();
        assert_eq!(
            reader.pulse.peer(),
            PeerTimeout::After(Duration::from_secs(8))
        );
        assert_eq!(
            liveness::interval(reader.pulse.peer()),
            Some(Duration::from_secs(2))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_cancelled_and_restarted_does_not_restart_the_clock() {
        let (_writer, mut reader) = one_way();
        reader.set_alive_timeout(Some(Duration::from_secs(5)));
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let err = loop {
            tokio::select! {
                r = reader.next() => break r.unwrap_err(),
                _ = tick.tick() => {}
            }
        };
        assert!(matches!(err, ProtocolError::PeerSilent(_)));
        assert_eq!(started.elapsed().as_secs(), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn time_spent_away_from_the_reader_is_not_silence() {
        // A reader busy elsewhere (its consumer blocked) for longer than its timeout: the
        // clock starts again when it comes back to wait, so a frame that comes within the
        // timeout of that is taken.
        let (mut writer, mut reader) = one_way();
        reader.set_alive_timeout(Some(Duration::from_secs(2)));
        writer.send(kind::STDOUT, b"first").await.unwrap();
        reader.next().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let sender = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            writer.send(kind::STDOUT, b"late").await.unwrap();
            writer
        });
        let (k, body) = reader.next().await.unwrap().unwrap();
        assert_eq!((k, &*body), (kind::STDOUT, &b"late"[..]));
        drop(sender.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_big_frame_arriving_slowly_is_not_silence() {
        // 256 KiB in 4.8 s against a 3 s timeout: each piece is life, within twice the timeout.
        let keys = DirectionKeys {
            key: [7; 32],
            iv: [9; 12],
        };
        let mut wire = Vec::new();
        Sealer::new(&keys)
            .seal(kind::STDOUT, &vec![5u8; 256 * 1024], &mut wire)
            .unwrap();
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let (read, _) = tokio::io::split(b);
        let mut reader = SealedReader::new(FrameReader::new(read), Opener::new(&keys));
        reader.set_alive_timeout(Some(Duration::from_secs(3)));
        let sender = tokio::spawn(async move {
            for piece in wire.chunks(8 * 1024) {
                tokio::time::sleep(Duration::from_millis(150)).await;
                a.write_all(piece).await.unwrap();
            }
            a
        });
        let (k, body) = reader.next().await.unwrap().unwrap();
        assert_eq!((k, body.len()), (kind::STDOUT, 256 * 1024));
        drop(sender.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_of_bytes_cannot_keep_a_session_alive_past_twice_the_timeout() {
        // One byte every 2 s of a frame claiming 1 MiB, against a 3 s timeout: an attacker
        // without keys gets the session at most 6 s, not the 24 days the frame would take.
        let (a, b) = tokio::io::duplex(1 << 20);
        let (read, _) = tokio::io::split(b);
        let mut reader = SealedReader::new(
            FrameReader::new(read),
            Opener::new(&DirectionKeys {
                key: [7; 32],
                iv: [9; 12],
            }),
        );
        reader.set_alive_timeout(Some(Duration::from_secs(3)));
        let trickle = tokio::spawn(async move {
            let mut a = a;
            a.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                if a.write_all(&[0]).await.is_err() {
                    return;
                }
            }
        });
        let started = Instant::now();
        let err = reader.next().await.unwrap_err();
        assert!(matches!(err, ProtocolError::PeerSilent(_)), "{err:?}");
        assert!(
            started.elapsed() <= Duration::from_secs(9),
            "{:?}",
            started.elapsed()
        );
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_beyond_the_clock_is_no_timeout() {
        let (_writer, mut reader) = one_way();
        reader.set_alive_timeout(Some(Duration::from_secs(u64::MAX / 4)));
        let wait = tokio::time::timeout(Duration::from_secs(3600), reader.next()).await;
        assert!(wait.is_err(), "the read gave up on its own");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_timeout_the_reader_waits_for_ever() {
        let (_writer, mut reader) = one_way();
        let wait = tokio::time::timeout(Duration::from_secs(3600), reader.next()).await;
        assert!(wait.is_err(), "the read gave up on its own");
    }

    /// Reads every stream message as a push receiver does, handing each data buffer back as
    /// a spare once "written"; returns the data and the other messages' kinds.
    async fn receive_owning(
        reader: &mut SealedReader<ReadHalf<DuplexStream>>,
    ) -> Result<(Vec<u8>, Vec<u8>), ProtocolError> {
        let mut data = Vec::new();
        let mut kinds = Vec::new();
        let mut spares: Vec<Vec<u8>> = Vec::new();
        while let Some(msg) = reader
            .next_stream_msg_owning_data(|| spares.pop().unwrap_or_default())
            .await?
        {
            match msg {
                Incoming::Data(body) => {
                    data.extend_from_slice(&body);
                    // Whatever the buffer held before the body must not leak into the next.
                    spares.push(body.into_buffer());
                }
                Incoming::Msg(msg) => kinds.push(msg.kind()),
            }
        }
        Ok((data, kinds))
    }

    #[tokio::test]
    async fn owned_data_bodies_are_exactly_the_bytes_sent_across_frame_boundaries() {
        let keys = DirectionKeys {
            key: [7; 32],
            iv: [9; 12],
        };
        let mut sealer = Sealer::new(&keys);
        let mut wire = Vec::new();
        let mut sent = Vec::new();
        let mut kinds = Vec::new();
        // Big and small data frames, others between them, and a heartbeat (consumed): the
        // bytes of one frame arrive with the next one's, and in pieces of odd sizes.
        let mut n = 0u32;
        for (i, len) in [256 * 1024, 1, 70_000, 0, 1024 * 1024, 3, 300_000]
            .into_iter()
            .enumerate()
        {
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    n = n.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (n >> 16) as u8
                })
                .collect();
            sealer.seal(kind::PUSH_DATA, &body, &mut wire).unwrap();
            sent.extend_from_slice(&body);
            if i % 2 == 0 {
                let end = StreamMsg::FileEnd(crate::files::wire::FileEnd::Abandoned);
                let mut b = Vec::new();
                end.encode(&mut b);
                sealer.seal(end.kind(), &b, &mut wire).unwrap();
                kinds.push(end.kind());
            } else {
                sealer.seal(kind::HEARTBEAT, &[0; 4], &mut wire).unwrap();
            }
        }
        sealer.seal(kind::PUSH_DONE, &[], &mut wire).unwrap();
        kinds.push(kind::PUSH_DONE);
        for piece in [1, 4093, 65_536, 1 << 20] {
            let (mut a, b) = tokio::io::duplex(1 << 16);
            let (read, _) = tokio::io::split(b);
            let mut reader = SealedReader::new(FrameReader::new(read), Opener::new(&keys));
            let bytes = wire.clone();
            let sender = tokio::spawn(async move {
                for part in bytes.chunks(piece) {
                    a.write_all(part).await.unwrap();
                }
            });
            let (data, got_kinds) = receive_owning(&mut reader).await.unwrap();
            sender.await.unwrap();
            assert!(data == sent, "pieces of {piece}: other bytes received");
            assert_eq!(got_kinds, kinds, "pieces of {piece}");
        }
    }

    #[tokio::test]
    async fn a_tampered_data_frame_is_never_handed_over() {
        let keys = DirectionKeys {
            key: [7; 32],
            iv: [9; 12],
        };
        let mut sealer = Sealer::new(&keys);
        let mut wire = Vec::new();
        sealer.seal(kind::PUSH_DATA, &[1; 1000], &mut wire).unwrap();
        let second = wire.len();
        sealer.seal(kind::PUSH_DATA, &[2; 1000], &mut wire).unwrap();
        wire[second + 600] ^= 1;
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let (read, _) = tokio::io::split(b);
        let mut reader = SealedReader::new(FrameReader::new(read), Opener::new(&keys));
        a.write_all(&wire).await.unwrap();
        drop(a);
        match reader.next_stream_msg_owning_data(Vec::new).await {
            Ok(Some(Incoming::Data(body))) => assert_eq!(&*body, &[1; 1000][..]),
            other => panic!("the first frame was not handed over: {other:?}"),
        }
        assert!(matches!(
            reader.next_stream_msg_owning_data(Vec::new).await,
            Err(ProtocolError::Integrity)
        ));
    }

    #[test]
    fn a_copy_never_lands_just_above_its_source_in_the_page() {
        for src in [0usize, 16, 4091, 1 << 20] {
            for dst in (src..src + 3 * 4096).step_by(3) {
                let skew = copy_skew(dst, src);
                assert!(skew < COPY_SKEW);
                let distance = (dst + skew - src) % 4096;
                assert!(distance == 0 || distance >= COPY_SKEW, "{dst} from {src}");
            }
        }
    }

    #[tokio::test]
    async fn frames_sealed_at_any_skew_open_as_sent() {
        let (mut writer, mut reader) = one_way();
        // Bodies at every offset of one buffer: each send chooses its own skew.
        let body: Vec<u8> = (0..200u8).collect();
        let sender = tokio::spawn(async move {
            for start in 0..100 {
                writer.send(kind::STDOUT, &body[start..]).await.unwrap();
            }
        });
        for start in 0..100u8 {
            let (k, got) = reader.next().await.unwrap().unwrap();
            assert_eq!(k, kind::STDOUT);
            assert_eq!(got.to_vec(), (start..200u8).collect::<Vec<u8>>());
        }
        sender.await.unwrap();
    }

    #[tokio::test]
    async fn a_malformed_heartbeat_is_a_protocol_error() {
        let (mut writer, mut reader) = one_way();
        writer.send(kind::HEARTBEAT, b"\x00\x01").await.unwrap();
        assert!(matches!(
            reader.next().await,
            Err(ProtocolError::Malformed(_))
        ));
    }
}
