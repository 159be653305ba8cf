//! A client that speaks the wire protocol by hand, on blocking std sockets and the pure codec of
//! `rexec_shared`, so tests can send exactly the bytes they mean: garbage, cut frames, replays,
//! forged hellos, or a correct exchange whose every byte is recorded.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use rexec_shared::frame::{self, HEADER_LEN, MAX_FRAME_LEN, MAX_HANDSHAKE_FRAME_LEN};
use rexec_shared::handshake::{ClientHandshake, Session};
use rexec_shared::keyfile::{KeyEntry, KeyRing};
use rexec_shared::message::{
    ExecRequest, ExitStatus, PtyRequest, Request, ServerMsg, StreamMsg, WindowSize,
};
use rexec_shared::session::{Opener, Sealer};
use rexec_shared::ProtocolError;

/// Bound on every blocking read and write, so a test never hangs on a silent peer.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The first key of a key file (the one ctl would use).
pub fn first_key(path: &Path) -> KeyEntry {
    let ring = KeyRing::load(path).unwrap_or_else(|e| panic!("load {}: {e}", path.display()));
    ring.first().expect("key file holds a key").clone()
}

/// An `ExecRequest` for `command` with no stdin.
pub fn request(command: &str) -> ExecRequest {
    ExecRequest {
        command: command.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// The client messages the raw tests send, requests and stream messages alike: a raw client
/// may send them in any order, which the library's types rule out.
#[derive(Debug, Clone)]
pub enum ClientMsg {
    /// A request to run a command.
    Exec(ExecRequest),
    /// Cancel with a signal.
    Cancel {
        /// Signal number.
        signal: u8,
    },
    /// A request to run a command on a terminal (encoded as given, even with a bad `term`).
    Pty(PtyRequest),
    /// Keys for the command (stdin).
    Stdin(Vec<u8>),
    /// A new window size (sent as given, before or after any request).
    WindowSize(u16, u16),
}

impl ClientMsg {
    /// The frame kind.
    pub fn kind(&self) -> u8 {
        match self {
            Self::Exec(req) => Request::Exec(req.clone()).kind(),
            Self::Cancel { signal } => StreamMsg::Cancel { signal: *signal }.kind(),
            Self::Pty(req) => Request::Pty(req.clone()).kind(),
            Self::Stdin(data) => StreamMsg::Stdin(data).kind(),
            Self::WindowSize(..) => StreamMsg::WindowSize(WindowSize::default()).kind(),
        }
    }

    /// Appends the body to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Exec(req) => req.encode(out),
            Self::Cancel { signal } => StreamMsg::Cancel { signal: *signal }.encode(out),
            Self::Pty(req) => req.encode(out),
            Self::Stdin(data) => out.extend_from_slice(data),
            Self::WindowSize(rows, cols) => {
                out.extend_from_slice(&rows.to_be_bytes());
                out.extend_from_slice(&cols.to_be_bytes());
            }
        }
    }
}

/// The body of `msg`, encoded.
pub fn encode_client(msg: &ClientMsg) -> Vec<u8> {
    let mut body = Vec::new();
    msg.encode(&mut body);
    body
}

/// A frame as read: (kind, payload, the frame's raw bytes).
pub type RawFrame = (u8, Vec<u8>, Vec<u8>);

/// One TCP connection with a frame buffer.
pub struct RawConn {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    /// Connects to `addr` with bounded reads and writes.
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        Self::from_stream(stream)
    }

    /// Wraps an already connected socket.
    pub fn from_stream(stream: TcpStream) -> Self {
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .expect("set read timeout");
        stream
            .set_write_timeout(Some(IO_TIMEOUT))
            .expect("set write timeout");
        let _ = stream.set_nodelay(true);
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    /// Sends raw bytes; an error means the agent has closed the connection.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next whole frame; `Ok(None)` on a clean end of stream between frames.
    pub fn read_frame(&mut self, max_len: usize) -> Result<Option<RawFrame>, ProtocolError> {
        loop {
            if let Some((frame, used)) = frame::parse(&self.buf, max_len)? {
                let out = (
                    frame.kind,
                    frame.payload.to_vec(),
                    self.buf[..used].to_vec(),
                );
                self.buf.drain(..used);
                return Ok(Some(out));
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = match self.stream.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => 0,
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ProtocolError::Truncated)
                };
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads and discards until the agent closes the connection; returns the bytes it sent and
    /// whether it closed within `timeout` (false: still open when the time ran out).
    pub fn drain_until_closed(&mut self, timeout: Duration) -> (Vec<u8>, bool) {
        let end = Instant::now() + timeout;
        let mut got = std::mem::take(&mut self.buf);
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (got, false);
            }
            self.stream
                .set_read_timeout(Some(left.min(Duration::from_millis(200))))
                .expect("set read timeout");
            let mut chunk = [0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return (got, true),
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return (got, true),
            }
        }
    }

    /// Reads the agent's hello: (raw bytes of the frame).
    pub fn read_server_hello(&mut self) -> Vec<u8> {
        match self.read_frame(MAX_HANDSHAKE_FRAME_LEN) {
            Ok(Some((kind, _, raw))) => {
                assert_eq!(
                    kind,
                    rexec_shared::handshake::kind::SERVER_HELLO,
                    "first frame is not a server hello"
                );
                raw
            }
            other => panic!("no server hello: {other:?}"),
        }
    }
}

/// What the agent answered to a client hello.
#[derive(Debug)]
pub enum HelloAnswer {
    /// A proof frame (raw bytes).
    Proof(Vec<u8>),
    /// A refusal with its text.
    Refused(String),
    /// The connection closed (or was reset) without an answer.
    Closed,
}

impl RawConn {
    /// Reads the answer to a client hello.
    pub fn read_hello_answer(&mut self) -> HelloAnswer {
        match self.read_frame(MAX_HANDSHAKE_FRAME_LEN) {
            Ok(Some((rexec_shared::handshake::kind::REFUSED, text, _))) => {
                HelloAnswer::Refused(String::from_utf8_lossy(&text).into_owned())
            }
            Ok(Some((rexec_shared::handshake::kind::SERVER_PROOF, _, raw))) => {
                HelloAnswer::Proof(raw)
            }
            Ok(Some((kind, _, _))) => {
                panic!("unexpected frame kind 0x{kind:02x} in answer to a hello")
            }
            Ok(None) | Err(_) => HelloAnswer::Closed,
        }
    }
}

/// An authenticated connection, with the bytes it sent kept for replay tests.
pub struct Authed {
    /// The connection.
    pub conn: RawConn,
    /// Seals what this client sends.
    pub sealer: Sealer,
    /// Opens what the agent sends.
    pub opener: Opener,
    /// Every byte this client has sent, in order.
    pub sent: Vec<u8>,
}

/// Connects to `addr` and authenticates with `key`.
pub fn authenticate(addr: SocketAddr, key: &KeyEntry) -> Result<Authed, ProtocolError> {
    let mut conn = RawConn::connect(addr);
    let hello = conn.read_server_hello();
    let (hello_frame, _) =
        frame::parse(&hello, MAX_HANDSHAKE_FRAME_LEN)?.ok_or(ProtocolError::Truncated)?;
    let (client_hello, await_proof) =
        ClientHandshake::new(&key.id, &key.secret, &crate::util::agent_name())
            .receive_server_hello(hello_frame)?;
    conn.send(&client_hello)?;
    let proof = match conn.read_hello_answer() {
        HelloAnswer::Proof(raw) => raw,
        HelloAnswer::Refused(text) => return Err(ProtocolError::Refused(text)),
        HelloAnswer::Closed => return Err(ProtocolError::Truncated),
    };
    let (proof_frame, _) =
        frame::parse(&proof, MAX_HANDSHAKE_FRAME_LEN)?.ok_or(ProtocolError::Truncated)?;
    let Session { sealer, opener } = await_proof.receive_server_proof(proof_frame)?;
    Ok(Authed {
        conn,
        sealer,
        opener,
        sent: client_hello,
    })
}

/// What a raw exec produced.
#[derive(Debug, Default)]
pub struct RawResult {
    /// Stdout bytes.
    pub stdout: Vec<u8>,
    /// Stderr bytes.
    pub stderr: Vec<u8>,
    /// The final status, if one arrived.
    pub status: Option<ExitStatus>,
    /// An error message, if the agent sent one.
    pub error: Option<String>,
}

impl Authed {
    /// The bytes of `msg` sealed as the next frame (advances the counter; not sent).
    pub fn seal(&mut self, msg: &ClientMsg) -> Vec<u8> {
        let mut out = Vec::new();
        self.sealer
            .seal(msg.kind(), &encode_client(msg), &mut out)
            .expect("seal");
        out
    }

    /// Seals and sends `msg`.
    pub fn send(&mut self, msg: &ClientMsg) -> std::io::Result<()> {
        let bytes = self.seal(msg);
        self.send_raw(&bytes)
    }

    /// Sends raw bytes and records them.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.sent.extend_from_slice(bytes);
        self.conn.send(bytes)
    }

    /// The next message from the agent, opened and decoded into an owned form.
    /// Heartbeats are opened (they count in the frame sequence) and skipped, as a client's
    /// transport does.
    pub fn recv(&mut self) -> Result<Option<OwnedServerMsg>, ProtocolError> {
        let (kind, mut payload) = loop {
            let Some((kind, mut payload, raw)) = self.conn.read_frame(MAX_FRAME_LEN)? else {
                return Ok(None);
            };
            let header: [u8; HEADER_LEN] = raw[..HEADER_LEN].try_into().expect("header");
            let plain_len = self.opener.open(header, &mut payload)?.len();
            if kind != rexec_shared::message::kind::HEARTBEAT {
                payload.truncate(plain_len);
                break (kind, payload);
            }
        };
        let plain = &mut payload[..];
        Ok(Some(match ServerMsg::decode(kind, plain)? {
            ServerMsg::Stdout(d) => OwnedServerMsg::Stdout(d.to_vec()),
            ServerMsg::Stderr(d) => OwnedServerMsg::Stderr(d.to_vec()),
            ServerMsg::Exit(s) => OwnedServerMsg::Exit(s),
            ServerMsg::Error(t) => OwnedServerMsg::Error(t),
            ServerMsg::Pong { version } => OwnedServerMsg::Pong(version),
            other => OwnedServerMsg::Other(other.kind()),
        }))
    }

    /// Reads messages until a final one or the end of the stream.
    pub fn collect(&mut self) -> Result<RawResult, ProtocolError> {
        let mut result = RawResult::default();
        loop {
            match self.recv()? {
                Some(OwnedServerMsg::Stdout(d)) => result.stdout.extend(d),
                Some(OwnedServerMsg::Stderr(d)) => result.stderr.extend(d),
                Some(OwnedServerMsg::Exit(s)) => {
                    result.status = Some(s);
                    return Ok(result);
                }
                Some(OwnedServerMsg::Error(t)) => {
                    result.error = Some(t);
                    return Ok(result);
                }
                Some(OwnedServerMsg::Pong(_)) => return Err(ProtocolError::UnexpectedFrame(0x24)),
                Some(OwnedServerMsg::Other(kind)) => {
                    return Err(ProtocolError::UnexpectedFrame(kind))
                }
                None => return Err(ProtocolError::Truncated),
            }
        }
    }
}

/// A server message with owned data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnedServerMsg {
    /// Stdout bytes.
    Stdout(Vec<u8>),
    /// Stderr bytes.
    Stderr(Vec<u8>),
    /// Final status.
    Exit(ExitStatus),
    /// Final error.
    Error(String),
    /// Ping answer.
    Pong(String),
    /// A file-transfer message, of this kind (these tests never ask for one).
    Other(u8),
}

/// A TCP connection to `addr` from the local address `from` (another loopback address, so one
/// test can look like several sources).
pub fn connect_from(from: std::net::IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(from, 0).into())?;
    socket.connect_timeout(&addr.into(), IO_TIMEOUT)?;
    Ok(socket.into())
}
