//! The messages carried inside sealed frames: the client's [`Request`], the [`StreamMsg`]s
//! that feed it (stdin, end of stdin, cancel), and the agent's [`ServerMsg`]s (output, exit
//! status, errors, pong).
//!
//! Each message is one frame; the frame's kind byte says which message it is, and the kind
//! ranges tell directions apart (0x1_ client to agent, 0x2_ agent to client). Bodies are read
//! and written with [`crate::codec`]; trailing bytes are an error.

use crate::codec::{put_bytes, put_i32, put_u16, put_u32, put_u64, put_u8, Reader};
use crate::error::ProtocolError;
use crate::files::wire::{FileEnd, FileError, FileHeader, PullRequest, PushRequest, TransferDone};

/// Frame kinds of session messages.
pub mod kind {
    /// Client: run a command.
    pub const EXEC: u8 = 0x10;
    /// Client: bytes for the command's stdin.
    pub const STDIN: u8 = 0x11;
    /// Client: the command's stdin is at its end.
    pub const STDIN_EOF: u8 = 0x12;
    /// Client: stop the command; carries the signal the user sent ctl.
    pub const CANCEL: u8 = 0x13;
    /// Client: answer with the agent's version (for `ctl ping`).
    pub const PING: u8 = 0x14;
    /// Client: run a command (or a login shell) on a pseudo-terminal.
    pub const PTY: u8 = 0x15;
    /// Client: the terminal's window size changed.
    pub const WINDOW_SIZE: u8 = 0x16;
    /// Client: write the tree that follows (`ctl push`).
    pub const PUSH: u8 = 0x18;
    /// Client: send these paths (`ctl pull`).
    pub const PULL: u8 = 0x19;
    /// Client: the start of an entry of a pushed tree.
    pub const PUSH_HEADER: u8 = 0x1a;
    /// Client: content of the current pushed file.
    pub const PUSH_DATA: u8 = 0x1b;
    /// Client: the end of the current pushed file, with its digest.
    pub const PUSH_END: u8 = 0x1c;
    /// Client: no more entries.
    pub const PUSH_DONE: u8 = 0x1d;
    /// Agent: bytes the command wrote to stdout.
    pub const STDOUT: u8 = 0x20;
    /// Agent: bytes the command wrote to stderr.
    pub const STDERR: u8 = 0x21;
    /// Agent: the command ended (final frame).
    pub const EXIT: u8 = 0x22;
    /// Agent: the request could not be carried out (final frame).
    pub const ERROR: u8 = 0x23;
    /// Agent: answer to a ping, with the agent's version (final frame).
    pub const PONG: u8 = 0x24;
    /// Agent: the start of an entry of a pulled tree.
    pub const PULL_HEADER: u8 = 0x28;
    /// Agent: content of the current pulled file.
    pub const PULL_DATA: u8 = 0x29;
    /// Agent: the end of the current pulled file, with its digest.
    pub const PULL_END: u8 = 0x2a;
    /// Agent: one entry could not be read or written; the transfer goes on.
    pub const FILE_ERROR: u8 = 0x2b;
    /// Agent: the transfer is over, with its totals (final frame).
    pub const TRANSFER_DONE: u8 = 0x2c;
    /// Either side, any time after the request: "still here", with the sender's alive timeout
    /// (see [`crate::liveness`]). The transport consumes it; no exchange ever sees one.
    pub const HEARTBEAT: u8 = 0x30;
}

/// A terminal's size in character cells, as the client sent it (0: unknown); the agent
/// applies it [`WindowSize::clamped`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowSize {
    /// Lines.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

impl WindowSize {
    /// Lines used when the client does not know its terminal's (sent as 0).
    pub const DEFAULT_ROWS: u16 = 24;
    /// Columns used when the client does not know its terminal's (sent as 0).
    pub const DEFAULT_COLS: u16 = 80;
    /// Most lines: larger sizes are clamped to it, so that no program on the terminal is
    /// asked to allocate a screen of billions of cells.
    pub const MAX_ROWS: u16 = 1024;
    /// Most columns, likewise.
    pub const MAX_COLS: u16 = 2048;

    /// The size as the agent applies it: 0 (unknown) becomes the default, anything above the
    /// maximum becomes the maximum. (Decoding keeps what was sent, so that a message
    /// re-encodes to the same bytes.)
    pub fn clamped(self) -> Self {
        let fit = |n: u16, default: u16, max: u16| if n == 0 { default } else { n.min(max) };
        Self {
            rows: fit(self.rows, Self::DEFAULT_ROWS, Self::MAX_ROWS),
            cols: fit(self.cols, Self::DEFAULT_COLS, Self::MAX_COLS),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_u16(out, self.rows);
        put_u16(out, self.cols);
    }

    fn read(r: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        Ok(Self {
            rows: r.u16()?,
            cols: r.u16()?,
        })
    }
}

/// What the client asks the agent to run on a pseudo-terminal (`ctl exec -t`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PtyRequest {
    /// The shell command line, run as `sh -c COMMAND`; `None`: the user's login shell.
    pub command: Option<Vec<u8>>,
    /// `TERM` for the terminal: 1 to [`PtyRequest::MAX_TERM_LEN`] printable ASCII characters,
    /// no space.
    pub term: Vec<u8>,
    /// The terminal's initial size.
    pub size: WindowSize,
    /// Variables to set in the command's environment, on top of the agent's.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// Working directory; the agent's own when `None`.
    pub cwd: Option<Vec<u8>>,
    /// Milliseconds the command may run before it is killed.
    pub timeout_ms: Option<u64>,
}

impl PtyRequest {
    /// Longest `TERM` accepted (terminfo names are a few dozen characters at most).
    pub const MAX_TERM_LEN: usize = 128;

    /// Whether `term` may be a `TERM`: a control character there could drive the terminal of
    /// whoever reads the agent's log or the environment, and a space or an empty name is
    /// never a terminal type.
    pub fn valid_term(term: &[u8]) -> bool {
        (1..=Self::MAX_TERM_LEN).contains(&term.len()) && term.iter().all(|b| b.is_ascii_graphic())
    }

    /// Appends the request body to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.size.encode(out);
        put_u64(out, self.timeout_ms.unwrap_or(0));
        put_bytes(out, &self.term);
        put_bytes(out, self.command.as_deref().unwrap_or_default());
        put_bytes(out, self.cwd.as_deref().unwrap_or_default());
        put_env(out, &self.env);
    }

    /// Reads a request body.
    pub fn read(r: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        let size = WindowSize::read(r)?;
        let timeout_ms = r.u64()?;
        let term = r.bytes()?;
        if !Self::valid_term(term) {
            return Err(ProtocolError::Malformed(
                "pty request TERM (must be 1-128 printable ASCII characters, no space or control character)",
            ));
        }
        let command = r.bytes()?;
        let cwd = r.bytes()?;
        let env = read_env(r, "pty request environment")?;
        Ok(Self {
            command: (!command.is_empty()).then(|| command.to_vec()),
            term: term.to_vec(),
            size,
            env,
            cwd: (!cwd.is_empty()).then(|| cwd.to_vec()),
            timeout_ms: (timeout_ms != 0).then_some(timeout_ms),
        })
    }
}

/// Environment variables as sent: (name, value) pairs of raw bytes.
type Env = Vec<(Vec<u8>, Vec<u8>)>;

fn put_env(out: &mut Vec<u8>, env: &[(Vec<u8>, Vec<u8>)]) {
    put_u32(out, env.len() as u32);
    for (key, value) in env {
        put_bytes(out, key);
        put_bytes(out, value);
    }
}

/// An environment: a count, then that many key and value strings; `what` names it in errors.
fn read_env(r: &mut Reader<'_>, what: &'static str) -> Result<Env, ProtocolError> {
    let count = r.u32()?;
    // Each entry takes at least 8 bytes, so a count the body cannot hold is refused before
    // anything is reserved for it.
    if count as usize > r.remaining() / 8 {
        return Err(ProtocolError::Malformed(what));
    }
    let mut env = Vec::with_capacity(count as usize);
    for _ in 0..count {
        env.push((r.bytes()?.to_vec(), r.bytes()?.to_vec()));
    }
    Ok(env)
}

/// What the client asks the agent to run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// The shell command line, run as `sh -c COMMAND`.
    pub command: Vec<u8>,
    /// Variables to set in the command's environment, on top of the agent's.
    pub env: Vec<(Vec<u8>, Vec<u8>)>,
    /// Working directory; the agent's own when `None`.
    pub cwd: Option<Vec<u8>>,
    /// Milliseconds the command may run before its process group is killed.
    pub timeout_ms: Option<u64>,
    /// Whether STDIN frames follow; without them the command's stdin is empty.
    pub stdin: bool,
    /// The local script the command runs (`ctl exec --script`), for the agent's audit record.
    pub script: Option<ScriptInfo>,
}

/// Which script a command runs: its file name on the client and the SHA-256 of its content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptInfo {
    /// The script's file name as the user gave it.
    pub name: Vec<u8>,
    /// SHA-256 of the script's bytes.
    pub digest: [u8; 32],
}

/// How a command ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, when the command exited by itself.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
    /// Whether the agent killed it because its timeout ran out.
    pub timed_out: bool,
    /// The signal the agent ended it with because the agent was shutting down (SIGTERM, or
    /// SIGKILL when it had to escalate), whatever the command then did: one that traps the
    /// signal and exits 0 still ended because of it.
    pub shutdown_signal: Option<i32>,
    /// Set when the exchange ended with the command's stdin still open (the client had not
    /// sent its end of input, and the command had not closed it): how many bytes of input the
    /// agent had written to it. Input the client sent beyond that was dropped, and a process
    /// still reading that stdin (a background child) saw an early end of input.
    pub stdin_cut: Option<u64>,
}

/// The first sealed message from the client: what it asks of the agent. One per connection;
/// each variant is served by its own module in the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Run a command.
    Exec(ExecRequest),
    /// Ask for the agent's version.
    Ping,
    /// Write the tree that follows (`ctl push`).
    Push(PushRequest),
    /// Send these paths (`ctl pull`).
    Pull(PullRequest),
    /// Run a command on a pseudo-terminal (`ctl exec -t`).
    Pty(PtyRequest),
}

/// A message from the client after its request: what a running request is fed. Request kinds
/// are not among them, so a second request on a connection cannot even be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamMsg<'a> {
    /// Stdin bytes.
    Stdin(&'a [u8]),
    /// End of stdin.
    StdinEof,
    /// Stop the command; the signal ctl received.
    Cancel {
        /// Signal number.
        signal: u8,
    },
    /// Start of a pushed entry.
    FileHeader(FileHeader),
    /// Content of the current pushed file.
    FileData(&'a [u8]),
    /// End of the current pushed file.
    FileEnd(FileEnd),
    /// No more pushed entries.
    PushDone,
    /// The client's window size changed (a `Pty` session).
    WindowSize(WindowSize),
}

/// A message from the agent to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg<'a> {
    /// Stdout bytes.
    Stdout(&'a [u8]),
    /// Stderr bytes.
    Stderr(&'a [u8]),
    /// The command ended.
    Exit(ExitStatus),
    /// The request failed (bad directory, cannot spawn, ...).
    Error(String),
    /// The agent's version.
    Pong {
        /// Version text, e.g. `agent 0.1.0`.
        version: String,
    },
    /// Start of a pulled entry.
    FileHeader(FileHeader),
    /// Content of the current pulled file.
    FileData(&'a [u8]),
    /// End of the current pulled file.
    FileEnd(FileEnd),
    /// An entry that could not be read or written.
    FileError(FileError),
    /// The transfer is over.
    TransferDone(TransferDone),
}

impl ExecRequest {
    /// Appends the request body to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u8(
            out,
            u8::from(self.stdin) | u8::from(self.script.is_some()) << 1,
        );
        put_u64(out, self.timeout_ms.unwrap_or(0));
        put_bytes(out, &self.command);
        put_bytes(out, self.cwd.as_deref().unwrap_or_default());
        put_env(out, &self.env);
        if let Some(script) = &self.script {
            put_bytes(out, &script.name);
            out.extend_from_slice(&script.digest);
        }
    }

    /// Reads a request body.
    pub fn read(r: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        let flags = r.u8()?;
        if flags & !0b11 != 0 {
            return Err(ProtocolError::Malformed("exec request flags"));
        }
        let timeout_ms = r.u64()?;
        let command = r.bytes()?.to_vec();
        let cwd = r.bytes()?;
        let env = read_env(r, "exec request environment")?;
        let script = if flags & 2 != 0 {
            Some(ScriptInfo {
                name: r.bytes()?.to_vec(),
                digest: r.array()?,
            })
        } else {
            None
        };
        Ok(Self {
            script,
            command,
            env,
            cwd: (!cwd.is_empty()).then(|| cwd.to_vec()),
            timeout_ms: (timeout_ms != 0).then_some(timeout_ms),
            stdin: flags & 1 != 0,
        })
    }
}

impl ExitStatus {
    /// Appends the status body to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let flags = u8::from(self.code.is_some())
            | u8::from(self.signal.is_some()) << 1
            | u8::from(self.timed_out) << 2
            | u8::from(self.shutdown_signal.is_some()) << 3
            | u8::from(self.stdin_cut.is_some()) << 4;
        put_u8(out, flags);
        put_i32(out, self.code.unwrap_or(0));
        put_i32(out, self.signal.unwrap_or(0));
        if let Some(signal) = self.shutdown_signal {
            put_i32(out, signal);
        }
        if let Some(written) = self.stdin_cut {
            put_u64(out, written);
        }
    }

    /// Reads a status body.
    pub fn read(r: &mut Reader<'_>) -> Result<Self, ProtocolError> {
        let flags = r.u8()?;
        if flags & !0b1_1111 != 0 {
            return Err(ProtocolError::Malformed("exit status flags"));
        }
        let code = r.i32()?;
        let signal = r.i32()?;
        let shutdown_signal = if flags & 8 != 0 { Some(r.i32()?) } else { None };
        let stdin_cut = if flags & 16 != 0 {
            Some(r.u64()?)
        } else {
            None
        };
        // A process ends either with a code or by a signal, never both or neither.
        if (flags & 1 != 0) == (flags & 2 != 0) {
            return Err(ProtocolError::Malformed(
                "exit status (needs a code or a signal)",
            ));
        }
        // Exit codes are 0-255 on Unix. Anything else from a peer is refused rather than cut to
        // its low byte, which would turn a 256 into a success.
        if flags & 1 != 0 && !(0..=255).contains(&code) {
            return Err(ProtocolError::Malformed(
                "exit status (code out of range 0-255)",
            ));
        }
        if flags & 2 != 0 && !(1..=64).contains(&signal) {
            return Err(ProtocolError::Malformed(
                "exit status (signal out of range)",
            ));
        }
        if shutdown_signal.is_some_and(|s| !(1..=64).contains(&s)) {
            return Err(ProtocolError::Malformed(
                "exit status (shutdown signal out of range)",
            ));
        }
        // The agent ends a command for one reason: its timeout or its own shutdown.
        if flags & 4 != 0 && shutdown_signal.is_some() {
            return Err(ProtocolError::Malformed(
                "exit status (both timed out and ended by the agent's shutdown)",
            ));
        }
        Ok(Self {
            code: (flags & 1 != 0).then_some(code),
            signal: (flags & 2 != 0).then_some(signal),
            timed_out: flags & 4 != 0,
            shutdown_signal,
            stdin_cut,
        })
    }
}

impl Request {
    /// The frame kind of this request.
    pub fn kind(&self) -> u8 {
        match self {
            Self::Exec(_) => kind::EXEC,
            Self::Ping => kind::PING,
            Self::Push(_) => kind::PUSH,
            Self::Pull(_) => kind::PULL,
            Self::Pty(_) => kind::PTY,
        }
    }

    /// Appends the request body to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Exec(req) => req.encode(out),
            Self::Ping => {}
            Self::Push(req) => req.encode(out),
            Self::Pull(req) => req.encode(out),
            Self::Pty(req) => req.encode(out),
        }
    }

    /// Decodes a request body of frame kind `kind`; any other kind is refused.
    pub fn decode(kind: u8, body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let request = match kind {
            kind::EXEC => Self::Exec(ExecRequest::read(&mut r)?),
            kind::PING => Self::Ping,
            kind::PUSH => Self::Push(PushRequest::decode(r.rest())?),
            kind::PULL => Self::Pull(PullRequest::decode(r.rest())?),
            kind::PTY => Self::Pty(PtyRequest::read(&mut r)?),
            other => return Err(ProtocolError::UnexpectedFrame(other)),
        };
        r.expect_empty()?;
        Ok(request)
    }
}

impl StreamMsg<'_> {
    /// The frame kind of this message.
    pub fn kind(&self) -> u8 {
        match self {
            Self::Stdin(_) => kind::STDIN,
            Self::StdinEof => kind::STDIN_EOF,
            Self::Cancel { .. } => kind::CANCEL,
            Self::FileHeader(_) => kind::PUSH_HEADER,
            Self::FileData(_) => kind::PUSH_DATA,
            Self::FileEnd(_) => kind::PUSH_END,
            Self::PushDone => kind::PUSH_DONE,
            Self::WindowSize(_) => kind::WINDOW_SIZE,
        }
    }

    /// Appends the message body to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Stdin(data) | Self::FileData(data) => out.extend_from_slice(data),
            Self::StdinEof | Self::PushDone => {}
            Self::Cancel { signal } => put_u8(out, *signal),
            Self::FileHeader(header) => header.encode(out),
            Self::FileEnd(end) => end.encode(out),
            Self::WindowSize(size) => size.encode(out),
        }
    }
}

impl<'a> StreamMsg<'a> {
    /// Decodes a message body of frame kind `kind`; request kinds are refused like any other
    /// kind that does not belong here.
    pub fn decode(kind: u8, body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let msg = match kind {
            kind::STDIN => Self::Stdin(r.rest()),
            kind::STDIN_EOF => Self::StdinEof,
            kind::CANCEL => Self::Cancel { signal: r.u8()? },
            kind::PUSH_HEADER => Self::FileHeader(FileHeader::decode(r.rest())?),
            kind::PUSH_DATA => Self::FileData(r.rest()),
            kind::PUSH_END => Self::FileEnd(FileEnd::decode(r.rest())?),
            kind::PUSH_DONE => Self::PushDone,
            kind::WINDOW_SIZE => Self::WindowSize(WindowSize::read(&mut r)?),
            other => return Err(ProtocolError::UnexpectedFrame(other)),
        };
        r.expect_empty()?;
        Ok(msg)
    }
}

impl ServerMsg<'_> {
    /// The frame kind of this message.
    pub fn kind(&self) -> u8 {
        match self {
            Self::Stdout(_) => kind::STDOUT,
            Self::Stderr(_) => kind::STDERR,
            Self::Exit(_) => kind::EXIT,
            Self::Error(_) => kind::ERROR,
            Self::Pong { .. } => kind::PONG,
            Self::FileHeader(_) => kind::PULL_HEADER,
            Self::FileData(_) => kind::PULL_DATA,
            Self::FileEnd(_) => kind::PULL_END,
            Self::FileError(_) => kind::FILE_ERROR,
            Self::TransferDone(_) => kind::TRANSFER_DONE,
        }
    }

    /// Whether this message ends the exchange.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Exit(_) | Self::Error(_) | Self::Pong { .. } | Self::TransferDone(_)
        )
    }

    /// Appends the message body to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Stdout(data) | Self::Stderr(data) | Self::FileData(data) => {
                out.extend_from_slice(data)
            }
            Self::Exit(status) => status.encode(out),
            Self::Error(text) => out.extend_from_slice(text.as_bytes()),
            Self::Pong { version } => out.extend_from_slice(version.as_bytes()),
            Self::FileHeader(header) => header.encode(out),
            Self::FileEnd(end) => end.encode(out),
            Self::FileError(error) => error.encode(out),
            Self::TransferDone(done) => done.encode(out),
        }
    }
}

impl<'a> ServerMsg<'a> {
    /// Decodes a message body of frame kind `kind`.
    pub fn decode(kind: u8, body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let msg = match kind {
            kind::STDOUT => Self::Stdout(r.rest()),
            kind::STDERR => Self::Stderr(r.rest()),
            kind::EXIT => Self::Exit(ExitStatus::read(&mut r)?),
            kind::ERROR => Self::Error(String::from_utf8_lossy(r.rest()).into_owned()),
            kind::PONG => Self::Pong {
                version: String::from_utf8_lossy(r.rest()).into_owned(),
            },
            kind::PULL_HEADER => Self::FileHeader(FileHeader::decode(r.rest())?),
            kind::PULL_DATA => Self::FileData(r.rest()),
            kind::PULL_END => Self::FileEnd(FileEnd::decode(r.rest())?),
            kind::FILE_ERROR => Self::FileError(FileError::decode(r.rest())?),
            kind::TRANSFER_DONE => Self::TransferDone(TransferDone::decode(r.rest())?),
            other => return Err(ProtocolError::UnexpectedFrame(other)),
        };
        r.expect_empty()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_round_trip(request: Request) {
        let mut body = Vec::new();
        request.encode(&mut body);
        assert_eq!(Request::decode(request.kind(), &body).unwrap(), request);
    }

    fn stream_round_trip(msg: StreamMsg<'_>) {
        let mut body = Vec::new();
        msg.encode(&mut body);
        assert_eq!(StreamMsg::decode(msg.kind(), &body).unwrap(), msg);
    }

    fn server_round_trip(msg: ServerMsg<'_>) {
        let mut body = Vec::new();
        msg.encode(&mut body);
        assert_eq!(ServerMsg::decode(msg.kind(), &body).unwrap(), msg);
    }

    #[test]
    fn every_message_round_trips() {
        request_round_trip(Request::Exec(ExecRequest {
            command: b"ls -l \xff".to_vec(),
            env: vec![
                (b"A".to_vec(), b"1".to_vec()),
                (b"EMPTY".to_vec(), Vec::new()),
            ],
            cwd: Some(b"/tmp".to_vec()),
            timeout_ms: Some(1500),
            stdin: true,
            script: Some(ScriptInfo {
                name: b"deploy.sh".to_vec(),
                digest: [0xab; 32],
            }),
        }));
        request_round_trip(Request::Exec(ExecRequest::default()));
        request_round_trip(Request::Ping);
        request_round_trip(Request::Push(PushRequest {
            dest: b"/srv".to_vec(),
            into_dir: true,
            keep_times: false,
        }));
        request_round_trip(Request::Pull(PullRequest {
            paths: vec![b"/var/log".to_vec()],
            recursive: true,
        }));
        let header = FileHeader {
            kind: crate::files::wire::EntryKind::File,
            mode: 0o644,
            mtime_secs: 7,
            mtime_nanos: 8,
            size: 3,
            path: b"a/b".to_vec(),
            link: Vec::new(),
        };
        stream_round_trip(StreamMsg::FileHeader(header.clone()));
        stream_round_trip(StreamMsg::FileData(b"abc"));
        stream_round_trip(StreamMsg::FileEnd(FileEnd::Complete([1; 32])));
        stream_round_trip(StreamMsg::PushDone);
        server_round_trip(ServerMsg::FileHeader(header));
        server_round_trip(ServerMsg::FileData(b"abc"));
        server_round_trip(ServerMsg::FileEnd(FileEnd::Abandoned));
        server_round_trip(ServerMsg::FileError(FileError {
            path: b"x".to_vec(),
            message: "permission denied".into(),
        }));
        server_round_trip(ServerMsg::TransferDone(TransferDone {
            files: 1,
            bytes: 3,
            failed: 0,
        }));
        stream_round_trip(StreamMsg::Stdin(b"input"));
        stream_round_trip(StreamMsg::Stdin(b""));
        stream_round_trip(StreamMsg::StdinEof);
        stream_round_trip(StreamMsg::Cancel { signal: 2 });
        request_round_trip(Request::Pty(PtyRequest {
            command: Some(b"vi /etc/hosts".to_vec()),
            term: b"xterm-256color".to_vec(),
            size: WindowSize {
                rows: 50,
                cols: 132,
            },
            env: vec![(b"LANG".to_vec(), b"C.UTF-8".to_vec())],
            cwd: Some(b"/srv".to_vec()),
            timeout_ms: Some(60_000),
        }));
        request_round_trip(Request::Pty(PtyRequest {
            term: b"dumb".to_vec(),
            ..Default::default()
        }));
        stream_round_trip(StreamMsg::WindowSize(WindowSize {
            rows: 1,
            cols: 2048,
        }));
        server_round_trip(ServerMsg::Stdout(b"\x00\xffout"));
        server_round_trip(ServerMsg::Stderr(b""));
        server_round_trip(ServerMsg::Exit(ExitStatus {
            code: Some(3),
            ..Default::default()
        }));
        server_round_trip(ServerMsg::Exit(ExitStatus {
            code: None,
            signal: Some(9),
            timed_out: true,
            ..Default::default()
        }));
        server_round_trip(ServerMsg::Exit(ExitStatus {
            code: Some(0),
            signal: None,
            timed_out: true,
            ..Default::default()
        }));
        server_round_trip(ServerMsg::Error("no such directory".into()));
        server_round_trip(ServerMsg::Pong {
            version: "agent 0.1.0".into(),
        });
    }

    #[test]
    fn directions_and_phases_do_not_mix() {
        assert!(StreamMsg::decode(kind::STDOUT, b"").is_err());
        assert!(Request::decode(kind::STDOUT, b"").is_err());
        assert!(ServerMsg::decode(kind::EXEC, b"").is_err());
        assert!(StreamMsg::decode(0x7f, b"").is_err());
        // A request after the request: the stream decoder does not know request kinds.
        let mut exec = Vec::new();
        Request::Exec(ExecRequest::default()).encode(&mut exec);
        assert!(matches!(
            StreamMsg::decode(kind::EXEC, &exec),
            Err(ProtocolError::UnexpectedFrame(kind::EXEC))
        ));
        assert!(matches!(
            StreamMsg::decode(kind::PING, b""),
            Err(ProtocolError::UnexpectedFrame(kind::PING))
        ));
        // And stdin before any request is not a request.
        assert!(Request::decode(kind::STDIN, b"x").is_err());
        assert!(StreamMsg::decode(kind::PULL_DATA, b"").is_err());
        assert!(StreamMsg::decode(kind::PUSH, b"").is_err());
        assert!(ServerMsg::decode(kind::PUSH_DATA, b"").is_err());
        assert!(StreamMsg::decode(kind::PUSH_DONE, b"x").is_err());
    }

    #[test]
    fn short_trailing_and_lying_bodies_are_refused() {
        let mut body = Vec::new();
        Request::Exec(ExecRequest {
            command: b"true".to_vec(),
            ..Default::default()
        })
        .encode(&mut body);
        for cut in 0..body.len() {
            assert!(
                Request::decode(kind::EXEC, &body[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut trailing = body.clone();
        trailing.push(0);
        assert!(Request::decode(kind::EXEC, &trailing).is_err());

        // A command length far beyond the body, and an environment count it cannot hold.
        let mut lying = vec![0u8; 9];
        lying.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(Request::decode(kind::EXEC, &lying).is_err());
        let mut huge_env = vec![0u8; 9 + 8];
        huge_env.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(Request::decode(kind::EXEC, &huge_env).is_err());
        assert!(Request::decode(kind::EXEC, &[0x80, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(Request::decode(kind::PING, b"x").is_err());
        assert!(StreamMsg::decode(kind::STDIN_EOF, b"x").is_err());
        assert!(StreamMsg::decode(kind::CANCEL, &[2, 0]).is_err());
        assert!(ServerMsg::decode(kind::EXIT, &[0x11, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(ServerMsg::decode(kind::EXIT, &[0x81, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        // Neither or both of code and signal, and signals outside 1..=64.
        assert!(ServerMsg::decode(kind::EXIT, &[0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(ServerMsg::decode(kind::EXIT, &[3, 0, 0, 0, 0, 0, 0, 0, 9]).is_err());
        assert!(ServerMsg::decode(kind::EXIT, &[2, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x80]).is_err());
        assert!(ServerMsg::decode(kind::EXIT, &[2, 0, 0, 0, 0, 0, 0, 0, 65]).is_err());
        // Codes outside 0-255: 256 (which a low byte would read as 0) and -1.
        assert!(ServerMsg::decode(kind::EXIT, &[1, 0, 0, 1, 0, 0, 0, 0, 0]).is_err());
        assert!(ServerMsg::decode(kind::EXIT, &[1, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]).is_err());
        assert!(ServerMsg::decode(kind::EXIT, &[1, 0, 0, 0, 0xff, 0, 0, 0, 0]).is_ok());
        let mut exit = Vec::new();
        ExitStatus {
            code: Some(1),
            ..Default::default()
        }
        .encode(&mut exit);
        exit.push(0);
        assert!(ServerMsg::decode(kind::EXIT, &exit).is_err());
    }

    #[test]
    fn an_exit_ended_by_the_agents_shutdown_carries_its_signal() {
        // A command that trapped SIGTERM and exited 0, and one that SIGKILL ended.
        for status in [
            ExitStatus {
                code: Some(0),
                shutdown_signal: Some(15),
                ..Default::default()
            },
            ExitStatus {
                signal: Some(9),
                shutdown_signal: Some(9),
                ..Default::default()
            },
        ] {
            server_round_trip(ServerMsg::Exit(status));
        }
        let mut body = Vec::new();
        ExitStatus {
            code: Some(0),
            shutdown_signal: Some(15),
            ..Default::default()
        }
        .encode(&mut body);
        // Bit 3, then the signal after the other two fields, big-endian.
        assert_eq!(body, [0b1001, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15]);

        // Bit 3 without its field, with a cut or padded one, with a signal outside 1..=64, or
        // together with the timed-out bit: all refused.
        let exit = |flags: u8, extra: &[u8]| {
            let mut b = vec![flags, 0, 0, 0, 0, 0, 0, 0, 0];
            b.extend_from_slice(extra);
            ServerMsg::decode(kind::EXIT, &b).map(|m| format!("{m:?}"))
        };
        assert!(exit(0b1001, &[]).is_err());
        assert!(exit(0b1001, &[0, 0, 15]).is_err());
        assert!(exit(0b1001, &[0, 0, 0, 15, 0]).is_err());
        assert!(exit(0b1001, &[0, 0, 0, 0]).is_err());
        assert!(exit(0b1001, &[0, 0, 0, 65]).is_err());
        assert!(exit(0b1001, &[0xff, 0xff, 0xff, 0xf1]).is_err());
        assert!(exit(0b1101, &[0, 0, 0, 15]).is_err());
        assert!(exit(0b1001, &[0, 0, 0, 15]).is_ok());
        // Without bit 3 the field is not there: four more bytes are trailing garbage.
        assert!(exit(0b0001, &[0, 0, 0, 15]).is_err());
        // Bits above 4 stay unknown and refused.
        for bit in 5..8 {
            assert!(exit(1 << bit | 1, &[]).is_err(), "bit {bit}");
            assert!(
                exit(1 << bit | 0b1001, &[0, 0, 0, 15]).is_err(),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn an_exit_with_stdin_cut_carries_what_was_written() {
        for status in [
            ExitStatus {
                code: Some(0),
                stdin_cut: Some(65_536),
                ..Default::default()
            },
            ExitStatus {
                code: Some(0),
                stdin_cut: Some(0),
                shutdown_signal: Some(15),
                ..Default::default()
            },
        ] {
            server_round_trip(ServerMsg::Exit(status));
        }
        let mut body = Vec::new();
        ExitStatus {
            code: Some(0),
            stdin_cut: Some(0x0102),
            ..Default::default()
        }
        .encode(&mut body);
        // Bit 4, then the count after the other fields, a big-endian u64.
        assert_eq!(
            body,
            [0b1_0001, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2]
        );
        let exit = |flags: u8, extra: &[u8]| {
            let mut b = vec![flags, 0, 0, 0, 0, 0, 0, 0, 0];
            b.extend_from_slice(extra);
            ServerMsg::decode(kind::EXIT, &b).map(|m| format!("{m:?}"))
        };
        // Without its eight bytes, cut short, or padded: refused.
        assert!(exit(0b1_0001, &[]).is_err());
        assert!(exit(0b1_0001, &[0; 7]).is_err());
        assert!(exit(0b1_0001, &[0; 9]).is_err());
        assert!(exit(0b1_0001, &[0; 8]).is_ok());
        // With bit 3 too, the shutdown signal comes first.
        assert!(exit(0b1_1001, &[0, 0, 0, 15, 0, 0, 0, 0, 0, 0, 0, 1]).is_ok());
        assert!(exit(0b1_1001, &[0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 15]).is_err());
    }

    fn pty_body(rows: u16, cols: u16, term: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        Request::Pty(PtyRequest {
            term: term.to_vec(),
            size: WindowSize { rows, cols },
            ..Default::default()
        })
        .encode(&mut body);
        body
    }

    #[test]
    fn pty_body_matches_docs() {
        let mut body = Vec::new();
        Request::Pty(PtyRequest {
            command: Some(b"vi".to_vec()),
            term: b"xterm".to_vec(),
            size: WindowSize { rows: 24, cols: 80 },
            ..Default::default()
        })
        .encode(&mut body);
        let hex: String = body.iter().map(|b| format!("{b:02x}")).collect();
        // docs/protocol.md, "Pty body".
        let doc = "0018 0050 0000000000000000 00000005 787465726d 00000002 7669 00000000 00000000";
        assert_eq!(hex, doc.replace(' ', ""));
        assert_eq!(body.len(), 35);
    }

    #[test]
    fn window_sizes_of_zero_or_absurd_are_clamped() {
        let cases = [
            ((0, 0), (24, 80)),
            ((0, 100), (24, 100)),
            ((40, 0), (40, 80)),
            ((1, 1), (1, 1)),
            ((u16::MAX, u16::MAX), (1024, 2048)),
            ((1024, 2049), (1024, 2048)),
        ];
        for ((rows, cols), (want_rows, want_cols)) in cases {
            let sent = WindowSize { rows, cols };
            let want = WindowSize {
                rows: want_rows,
                cols: want_cols,
            };
            // Decoded as sent (so it re-encodes exactly), applied clamped.
            match Request::decode(kind::PTY, &pty_body(rows, cols, b"xterm")) {
                Ok(Request::Pty(req)) => assert_eq!(req.size, sent),
                other => panic!("{other:?}"),
            }
            let mut resize = rows.to_be_bytes().to_vec();
            resize.extend_from_slice(&cols.to_be_bytes());
            match StreamMsg::decode(kind::WINDOW_SIZE, &resize) {
                Ok(StreamMsg::WindowSize(size)) => assert_eq!(size, sent),
                other => panic!("{other:?}"),
            }
            assert_eq!(sent.clamped(), want);
        }
        // The body is exactly 4 bytes.
        assert!(StreamMsg::decode(kind::WINDOW_SIZE, &[0, 24, 0]).is_err());
        assert!(StreamMsg::decode(kind::WINDOW_SIZE, &[0, 24, 0, 80, 0]).is_err());
    }

    #[test]
    fn a_resize_before_the_terminal_exists_is_not_a_request() {
        // As the first message of a connection it cannot be decoded as a request; a pty
        // request in the middle of a session cannot be decoded as a stream message.
        assert!(matches!(
            Request::decode(kind::WINDOW_SIZE, &[0, 24, 0, 80]),
            Err(ProtocolError::UnexpectedFrame(kind::WINDOW_SIZE))
        ));
        assert!(matches!(
            StreamMsg::decode(kind::PTY, &pty_body(24, 80, b"xterm")),
            Err(ProtocolError::UnexpectedFrame(kind::PTY))
        ));
    }

    #[test]
    fn a_term_with_control_characters_is_refused() {
        for term in [
            &b""[..],
            b"xterm\x1b]0;owned\x07",
            b"xterm\n",
            b"vt100\0",
            b"x term",
            b"xterm\x7f",
            b"xterm\xff",
            &[b'x'; 129],
        ] {
            match Request::decode(kind::PTY, &pty_body(24, 80, term)) {
                Err(ProtocolError::Malformed(what)) => assert!(what.contains("TERM"), "{what}"),
                other => panic!("{term:?} gave {other:?}"),
            }
        }
        for term in [
            &b"xterm-256color"[..],
            b"screen.xterm-256color",
            b"vt100",
            &[b'x'; 128],
        ] {
            assert!(
                Request::decode(kind::PTY, &pty_body(24, 80, term)).is_ok(),
                "{term:?}"
            );
        }
    }

    #[test]
    fn pty_requests_cut_or_padded_are_refused() {
        let body = pty_body(24, 80, b"xterm");
        for cut in 0..body.len() {
            assert!(
                Request::decode(kind::PTY, &body[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut trailing = body.clone();
        trailing.push(0);
        assert!(Request::decode(kind::PTY, &trailing).is_err());
        // An environment count the body cannot hold.
        let mut huge_env = body[..body.len() - 4].to_vec();
        huge_env.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(Request::decode(kind::PTY, &huge_env).is_err());
    }
}
