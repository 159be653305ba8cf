//! The messages carried inside sealed frames: exec requests, stdin, output and exit status.
//!
//! Each message is one frame; the frame's kind byte says which message it is, and the kind
//! ranges tell directions apart (0x1_ client to agent, 0x2_ agent to client). Bodies are fixed
//! big-endian fields and `u32`-length-prefixed byte strings; trailing bytes are an error.

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
}

/// A message from the client to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg<'a> {
    /// Run a command.
    Exec(ExecRequest),
    /// Stdin bytes.
    Stdin(&'a [u8]),
    /// End of stdin.
    StdinEof,
    /// Stop the command; the signal ctl received.
    Cancel {
        /// Signal number.
        signal: u8,
    },
    /// Ask for the agent's version.
    Ping,
    /// Write the tree that follows.
    Push(PushRequest),
    /// Send these paths.
    Pull(PullRequest),
    /// Start of a pushed entry.
    FileHeader(FileHeader),
    /// Content of the current pushed file.
    FileData(&'a [u8]),
    /// End of the current pushed file.
    FileEnd(FileEnd),
    /// No more pushed entries.
    PushDone,
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

impl ClientMsg<'_> {
    /// The frame kind of this message.
    pub fn kind(&self) -> u8 {
        match self {
            Self::Exec(_) => kind::EXEC,
            Self::Stdin(_) => kind::STDIN,
            Self::StdinEof => kind::STDIN_EOF,
            Self::Cancel { .. } => kind::CANCEL,
            Self::Ping => kind::PING,
            Self::Push(_) => kind::PUSH,
            Self::Pull(_) => kind::PULL,
            Self::FileHeader(_) => kind::PUSH_HEADER,
            Self::FileData(_) => kind::PUSH_DATA,
            Self::FileEnd(_) => kind::PUSH_END,
            Self::PushDone => kind::PUSH_DONE,
        }
    }

    /// Appends the message body to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Exec(req) => {
                let mut flags = 0u8;
                if req.stdin {
                    flags |= 1;
                }
                out.push(flags);
                out.extend_from_slice(&req.timeout_ms.unwrap_or(0).to_be_bytes());
                put_bytes(out, &req.command);
                put_bytes(out, req.cwd.as_deref().unwrap_or_default());
                out.extend_from_slice(&(req.env.len() as u32).to_be_bytes());
                for (key, value) in &req.env {
                    put_bytes(out, key);
                    put_bytes(out, value);
                }
            }
            Self::Stdin(data) | Self::FileData(data) => out.extend_from_slice(data),
            Self::StdinEof | Self::Ping | Self::PushDone => {}
            Self::Cancel { signal } => out.push(*signal),
            Self::Push(req) => req.encode(out),
            Self::Pull(req) => req.encode(out),
            Self::FileHeader(header) => header.encode(out),
            Self::FileEnd(end) => end.encode(out),
        }
    }
}

impl<'a> ClientMsg<'a> {
    /// Decodes a message body of frame kind `kind`.
    pub fn decode(kind: u8, body: &'a [u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader(body);
        let msg = match kind {
            kind::EXEC => {
                let flags = r.u8()?;
                if flags & !1 != 0 {
                    return Err(ProtocolError::Malformed("exec request flags"));
                }
                let timeout_ms = r.u64()?;
                let command = r.bytes()?.to_vec();
                let cwd = r.bytes()?;
                let count = r.u32()?;
                // Each entry takes at least 8 bytes, so a count the body cannot hold is refused
                // before anything is reserved for it.
                if count as usize > r.0.len() / 8 {
                    return Err(ProtocolError::Malformed("exec request environment"));
                }
                let mut env = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    env.push((r.bytes()?.to_vec(), r.bytes()?.to_vec()));
                }
                Self::Exec(ExecRequest {
                    command,
                    env,
                    cwd: (!cwd.is_empty()).then(|| cwd.to_vec()),
                    timeout_ms: (timeout_ms != 0).then_some(timeout_ms),
                    stdin: flags & 1 != 0,
                })
            }
            kind::STDIN => return Ok(Self::Stdin(body)),
            kind::STDIN_EOF => Self::StdinEof,
            kind::CANCEL => Self::Cancel { signal: r.u8()? },
            kind::PING => Self::Ping,
            kind::PUSH => return Ok(Self::Push(PushRequest::decode(body)?)),
            kind::PULL => return Ok(Self::Pull(PullRequest::decode(body)?)),
            kind::PUSH_HEADER => return Ok(Self::FileHeader(FileHeader::decode(body)?)),
            kind::PUSH_DATA => return Ok(Self::FileData(body)),
            kind::PUSH_END => return Ok(Self::FileEnd(FileEnd::decode(body)?)),
            kind::PUSH_DONE => Self::PushDone,
            other => return Err(ProtocolError::UnexpectedFrame(other)),
        };
        r.finish()?;
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
            Self::Exit(status) => {
                let flags = u8::from(status.code.is_some())
                    | u8::from(status.signal.is_some()) << 1
                    | u8::from(status.timed_out) << 2;
                out.push(flags);
                out.extend_from_slice(&status.code.unwrap_or(0).to_be_bytes());
                out.extend_from_slice(&status.signal.unwrap_or(0).to_be_bytes());
            }
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
        let mut r = Reader(body);
        let msg = match kind {
            kind::STDOUT => return Ok(Self::Stdout(body)),
            kind::STDERR => return Ok(Self::Stderr(body)),
            kind::EXIT => {
                let flags = r.u8()?;
                if flags & !0b111 != 0 {
                    return Err(ProtocolError::Malformed("exit status flags"));
                }
                let code = r.i32()?;
                let signal = r.i32()?;
                // A process ends either with a code or by a signal, never both or neither.
                if (flags & 1 != 0) == (flags & 2 != 0) {
                    return Err(ProtocolError::Malformed(
                        "exit status (needs a code or a signal)",
                    ));
                }
                if flags & 2 != 0 && !(1..=64).contains(&signal) {
                    return Err(ProtocolError::Malformed(
                        "exit status (signal out of range)",
                    ));
                }
                Self::Exit(ExitStatus {
                    code: (flags & 1 != 0).then_some(code),
                    signal: (flags & 2 != 0).then_some(signal),
                    timed_out: flags & 4 != 0,
                })
            }
            kind::ERROR => Self::Error(String::from_utf8_lossy(body).into_owned()),
            kind::PONG => Self::Pong {
                version: String::from_utf8_lossy(body).into_owned(),
            },
            kind::PULL_HEADER => Self::FileHeader(FileHeader::decode(body)?),
            kind::PULL_DATA => Self::FileData(body),
            kind::PULL_END => Self::FileEnd(FileEnd::decode(body)?),
            kind::FILE_ERROR => Self::FileError(FileError::decode(body)?),
            kind::TRANSFER_DONE => Self::TransferDone(TransferDone::decode(body)?),
            other => return Err(ProtocolError::UnexpectedFrame(other)),
        };
        if matches!(msg, Self::Exit(_)) {
            r.finish()?;
        }
        Ok(msg)
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Frames are at most MAX_FRAME_LEN, so every field length fits in a u32.
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A cursor over a message body that refuses to read past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtocolError> {
        if self.0.len() < n {
            return Err(ProtocolError::Malformed("message body (too short)"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtocolError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn i32(&mut self) -> Result<i32, ProtocolError> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, ProtocolError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn finish(&self) -> Result<(), ProtocolError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::Malformed("message body (trailing bytes)"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_round_trip(msg: ClientMsg<'_>) {
        let mut body = Vec::new();
        msg.encode(&mut body);
        assert_eq!(ClientMsg::decode(msg.kind(), &body).unwrap(), msg);
    }

    fn server_round_trip(msg: ServerMsg<'_>) {
        let mut body = Vec::new();
        msg.encode(&mut body);
        assert_eq!(ServerMsg::decode(msg.kind(), &body).unwrap(), msg);
    }

    #[test]
    fn every_message_round_trips() {
        client_round_trip(ClientMsg::Exec(ExecRequest {
            command: b"ls -l \xff".to_vec(),
            env: vec![
                (b"A".to_vec(), b"1".to_vec()),
                (b"EMPTY".to_vec(), Vec::new()),
            ],
            cwd: Some(b"/tmp".to_vec()),
            timeout_ms: Some(1500),
            stdin: true,
        }));
        client_round_trip(ClientMsg::Exec(ExecRequest::default()));
        client_round_trip(ClientMsg::Stdin(b"input"));
        client_round_trip(ClientMsg::StdinEof);
        client_round_trip(ClientMsg::Cancel { signal: 2 });
        client_round_trip(ClientMsg::Ping);
        client_round_trip(ClientMsg::Push(PushRequest {
            dest: b"/srv".to_vec(),
            into_dir: true,
            keep_times: false,
        }));
        client_round_trip(ClientMsg::Pull(PullRequest {
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
        client_round_trip(ClientMsg::FileHeader(header.clone()));
        client_round_trip(ClientMsg::FileData(b"abc"));
        client_round_trip(ClientMsg::FileEnd(FileEnd::Complete([1; 32])));
        client_round_trip(ClientMsg::PushDone);
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
        }));
        server_round_trip(ServerMsg::Exit(ExitStatus {
            code: Some(0),
            signal: None,
            timed_out: true,
        }));
        server_round_trip(ServerMsg::Error("no such directory".into()));
        server_round_trip(ServerMsg::Pong {
            version: "agent 0.1.0".into(),
        });
    }

    #[test]
    fn directions_do_not_mix() {
        assert!(ClientMsg::decode(kind::STDOUT, b"").is_err());
        assert!(ServerMsg::decode(kind::EXEC, b"").is_err());
        assert!(ClientMsg::decode(0x7f, b"").is_err());
        assert!(ClientMsg::decode(kind::PULL_DATA, b"").is_err());
        assert!(ServerMsg::decode(kind::PUSH_DATA, b"").is_err());
        assert!(ClientMsg::decode(kind::PUSH_DONE, b"x").is_err());
    }

    #[test]
    fn short_trailing_and_lying_bodies_are_refused() {
        let mut body = Vec::new();
        ClientMsg::Exec(ExecRequest {
            command: b"true".to_vec(),
            ..Default::default()
        })
        .encode(&mut body);
        for cut in 0..body.len() {
            assert!(
                ClientMsg::decode(kind::EXEC, &body[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut trailing = body.clone();
        trailing.push(0);
        assert!(ClientMsg::decode(kind::EXEC, &trailing).is_err());

        // A command length far beyond the body, and an environment count it cannot hold.
        let mut lying = vec![0u8; 9];
        lying.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(ClientMsg::decode(kind::EXEC, &lying).is_err());
        let mut huge_env = vec![0u8; 9 + 8];
        huge_env.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(ClientMsg::decode(kind::EXEC, &huge_env).is_err());
        assert!(ClientMsg::decode(kind::EXEC, &[0x80, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(ClientMsg::decode(kind::STDIN_EOF, b"x").is_err());
        assert!(ServerMsg::decode(kind::EXIT, &[8, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        // Neither or both of code and signal, and signals outside 1..=64.
        assert!(ServerMsg::decode(kind::EXIT, &[0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(ServerMsg::decode(kind::EXIT, &[3, 0, 0, 0, 0, 0, 0, 0, 9]).is_err());
        assert!(ServerMsg::decode(kind::EXIT, &[2, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0x80]).is_err());
        assert!(ServerMsg::decode(kind::EXIT, &[2, 0, 0, 0, 0, 0, 0, 0, 65]).is_err());
    }
}
