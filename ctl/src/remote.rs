//! Talking to one agent: connect and authenticate within a deadline, then run a command or a
//! ping. Output goes to an [`Output`], so every renderer shares this code.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rexec_shared::keyfile::KeyEntry;
use rexec_shared::message::{ExecRequest, ExitStatus, Request, ServerMsg, StreamMsg};
use rexec_shared::name::AgentName;
use rexec_shared::transport::{client_handshake, SealedReader, SealedWriter};
use rexec_shared::ProtocolError;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::outcome::{Ending, Failure, InputLost, Outcome};
use crate::output::Output;
use crate::stdin::StdinChunks;
use crate::target::Target;

/// How long ctl waits past `--timeout` for the agent's own timeout report before giving up.
const LOCAL_TIMEOUT_SLACK: Duration = Duration::from_secs(5);
/// Pause before the first retry of an unreachable target; later ones wait longer.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// `--alive-timeout` in milliseconds, 0 for none: one value for the whole run, like the log
/// level, so that every way of connecting applies it without carrying it along.
static ALIVE_TIMEOUT_MS: AtomicU64 = AtomicU64::new(0);

/// Sets the alive timeout every connection made from now on gets (`None`: never give up).
pub fn set_alive_timeout(timeout: Option<Duration>) {
    let ms = timeout.map_or(0, |t| {
        u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1)
    });
    ALIVE_TIMEOUT_MS.store(ms, Ordering::Relaxed);
}

fn alive_timeout() -> Option<Duration> {
    match ALIVE_TIMEOUT_MS.load(Ordering::Relaxed) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    }
}

/// An authenticated connection.
pub struct Connection {
    reader: SealedReader<OwnedReadHalf>,
    writer: SealedWriter<OwnedWriteHalf>,
}

impl Connection {
    /// The sealed halves, for exchanges other than exec and ping.
    pub fn into_parts(self) -> (SealedReader<OwnedReadHalf>, SealedWriter<OwnedWriteHalf>) {
        (self.reader, self.writer)
    }
}

/// Resolves `target`, connects and authenticates, all within `timeout`.
pub async fn connect(
    target: &Target,
    key: &KeyEntry,
    timeout: Duration,
) -> Result<Connection, Failure> {
    // Checked when the targets were read; the name is bound into the handshake, never guessed.
    let name = target.expected_name().map_err(Failure::Auth)?;
    let started = Instant::now();
    let deadline = started + timeout;
    tracing::debug!(%target, "connecting");
    let stream = tokio::time::timeout_at(deadline.into(), tcp_connect(target))
        .await
        .map_err(|_| Failure::Connect(format!("timed out connecting after {}", secs(timeout))))??;
    tracing::debug!(%target, peer = ?stream.peer_addr().ok(), elapsed = ?started.elapsed(), "connected; handshake");
    // The agent speaks first, so its first bytes are there to look at before the handshake
    // reads them: another server's banner gets a plain answer instead of a frame error.
    let mut first = [0u8; 64];
    if let Ok(Ok(n)) = tokio::time::timeout_at(deadline.into(), stream.peek(&mut first)).await {
        if let Some(banner) = foreign_banner(&first[..n]) {
            return Err(Failure::Auth(format!(
                "not a rexec agent (it sent {banner})"
            )));
        }
    }
    let (read, write) = stream.into_split();
    let handshake = client_handshake(read, write, &key.id, &key.secret, &name);
    match tokio::time::timeout_at(deadline.into(), handshake).await {
        Err(_) => Err(Failure::Auth(format!(
            "timed out authenticating after {}",
            secs(timeout)
        ))),
        Ok(Err(e)) => {
            tracing::debug!(%target, error = %e, elapsed = ?started.elapsed(), "handshake failed");
            Err(handshake_failure(e, &key.id, &name))
        }
        Ok(Ok((mut reader, writer))) => {
            tracing::debug!(%target, key_id = %key.id, elapsed = ?started.elapsed(), "authenticated");
            reader.set_alive_timeout(alive_timeout());
            Ok(Connection { reader, writer })
        }
    }
}

/// The first line of `bytes` when they open like another protocol's greeting (an SSH, SMTP,
/// FTP, POP3 or IMAP server, or an HTTP reply), shown as printable text.
fn foreign_banner(bytes: &[u8]) -> Option<String> {
    const BANNERS: [&[u8]; 6] = [b"SSH-", b"HTTP/", b"220 ", b"220-", b"+OK", b"* OK"];
    if !BANNERS.iter().any(|b| bytes.starts_with(b)) {
        return None;
    }
    let line = bytes
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or(bytes);
    let text: String = line
        .iter()
        .map(|&b| match b {
            0x20..=0x7e => char::from(b),
            _ => '?',
        })
        .collect();
    Some(text)
}

async fn tcp_connect(target: &Target) -> Result<TcpStream, Failure> {
    let addrs: Vec<_> = tokio::net::lookup_host(target.socket_spec())
        .await
        .map_err(|e| Failure::Connect(format!("cannot resolve {}: {e}", target.host)))?
        .collect();
    let mut last = None;
    for addr in &addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => last = Some((addr, e)),
        }
    }
    Err(Failure::Connect(match last {
        Some((addr, e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            format!("connection refused by {addr} (is the agent running and listening there?)")
        }
        Some((addr, e)) => format!("cannot connect to {addr}: {e}"),
        None => format!("{} resolved to no address", target.host),
    }))
}

fn handshake_failure(e: ProtocolError, key_id: &str, name: &AgentName) -> Failure {
    match e {
        ProtocolError::AuthFailed => Failure::Auth(format!(
            "authentication failed: the agent there holds no key for agent name {name:?} under \
             key id {key_id:?}; nothing was sent. Either another agent answered, or this one \
             is not enrolled for that name: run `ctl enroll {name}` and add the line to its key \
             file (then send it SIGHUP)",
            name = name.as_str()
        )),
        ProtocolError::BadServerProof => Failure::Auth(format!(
            "authentication failed: the agent could not prove it holds the key for agent name \
             {:?}; it is not the intended agent; nothing was sent",
            name.as_str()
        )),
        ProtocolError::VersionMismatch(v) => Failure::Auth(format!(
            "handshake refused: the agent speaks protocol version {v}; this ctl speaks version \
             {}: upgrade the agent (or use a ctl of its version); nothing was sent",
            rexec_shared::handshake::VERSION
        )),
        ProtocolError::Refused(text) => {
            Failure::Auth(format!("agent refused the connection: {text}"))
        }
        ProtocolError::Truncated => Failure::Auth(
            "connection closed during the handshake (the agent may be at its limit of \
             unauthenticated connections, or this port is not an agent)"
                .into(),
        ),
        ProtocolError::Io(e) => {
            Failure::Auth(format!("connection failed during the handshake: {e}"))
        }
        other => Failure::Auth(format!("handshake failed: {other}")),
    }
}

/// The failure a broken stream after authentication is reported as.
pub fn stream_failure(e: ProtocolError) -> Failure {
    match e {
        ProtocolError::Integrity => Failure::Stream(
            "integrity check failed: the stream from the agent was altered, reordered or replayed"
                .into(),
        ),
        ProtocolError::Truncated => {
            Failure::Stream("stream truncated: connection closed in the middle of a frame".into())
        }
        ProtocolError::Io(e) => Failure::Stream(format!("connection lost: {e}")),
        ProtocolError::PeerSilent(after) => Failure::Stream(format!(
            "no sign of life from the agent for {}s (no output, no heartbeat): it is frozen \
             or the network to it is gone; what became of the command is unknown \
             (--alive-timeout sets the wait)",
            after.as_secs_f64()
        )),
        // The agent never sends such frames after authenticating: the length was altered.
        e @ (ProtocolError::FrameTooLarge { .. } | ProtocolError::EmptyFrame) => {
            Failure::Stream(format!(
                "integrity check failed: the stream from the agent was altered or corrupted ({e})"
            ))
        }
        other => Failure::Stream(format!("protocol error from the agent: {other}")),
    }
}

fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// How patient to be with a target that cannot be reached: the connect timeout, the
/// number of retries (`--retry`), and the stop that ends the retrying.
pub type Patience = (Duration, u32, watch::Receiver<Option<i32>>);

/// Connects to `target`, trying `retries` more times while it cannot be reached (a refused
/// or timed-out connection: nothing can have run there), unless `cancel` fires.
pub async fn connect_retrying(
    target: &Target,
    key: &KeyEntry,
    timeout: Duration,
    retries: u32,
    cancel: &mut watch::Receiver<Option<i32>>,
) -> Result<Connection, Failure> {
    let mut attempt = 0;
    loop {
        match connect(target, key, timeout).await {
            Err(Failure::Connect(why)) if attempt < retries && cancel.borrow().is_none() => {
                attempt += 1;
                tracing::debug!(%target, %why, attempt, "retrying");
                // A short, growing pause: a restarting agent gets a moment to come back.
                let pause = RETRY_PAUSE * attempt.min(10);
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = cancel.wait_for(Option::is_some) => return Err(Failure::Connect(why)),
                }
            }
            other => return other,
        }
    }
}

/// Runs `req` on `target`: connects (see [`connect_retrying`]), streams output to `out`,
/// forwards `stdin` (when `req.stdin`), and forwards a signal from `cancel` as a remote
/// cancel.
#[allow(clippy::too_many_arguments)] // each is one independent part of the request
pub async fn exec<O: Output>(
    target: &Target,
    key: &KeyEntry,
    req: ExecRequest,
    connect_timeout: Duration,
    retries: u32,
    stdin: Option<StdinChunks>,
    mut cancel: watch::Receiver<Option<i32>>,
    out: &mut O,
) -> Outcome {
    let started = Instant::now();
    let mut input_lost = None;
    let result = async {
        let conn = connect_retrying(target, key, connect_timeout, retries, &mut cancel).await?;
        // --timeout counts from the start of the command, not of the connection.
        let local_deadline = req
            .timeout_ms
            .map(|ms| Instant::now() + Duration::from_millis(ms) + LOCAL_TIMEOUT_SLACK);
        let result = run_exec(
            conn,
            req,
            stdin,
            cancel,
            local_deadline,
            out,
            &mut input_lost,
        )
        .await;
        tracing::debug!(%target, elapsed = ?started.elapsed(), "exchange ended");
        result
    }
    .await;
    let ending = match result {
        Ok(Some(status)) => Ending::from_status(status),
        Ok(None) => Ending::Unanswered,
        Err(failure) => Ending::Failed(failure),
    };
    Outcome {
        ending,
        duration: started.elapsed(),
        input_lost,
    }
}

/// The exchange after authentication; `Ok(None)` if ctl's own deadline ran out first. Sets
/// `input_lost` when the agent reports that the command's stdin was cut with less written
/// to it than ctl had for it.
async fn run_exec<O: Output>(
    conn: Connection,
    req: ExecRequest,
    stdin: Option<StdinChunks>,
    mut cancel: watch::Receiver<Option<i32>>,
    local_deadline: Option<Instant>,
    out: &mut O,
    input_lost: &mut Option<InputLost>,
) -> Result<Option<ExitStatus>, Failure> {
    let Connection {
        mut reader,
        mut writer,
    } = conn;
    let wants_stdin = req.stdin;
    writer
        .send_request(&Request::Exec(req))
        .await
        .map_err(|e| Failure::Stream(format!("sending the command failed: {e}")))?;

    // Cancels come from the user's signal, or from a closed stdout (as SIGPIPE would).
    let (cancel_tx, cancel_rx) = mpsc::channel::<i32>(2);
    let forward_signal = {
        let cancel_tx = cancel_tx.clone();
        async move {
            let sig = cancel
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|sig| *sig);
            if let Some(sig) = sig {
                let _ = cancel_tx.send(sig).await;
            }
        }
    };
    let stdin_error = Arc::new(Mutex::new(None));
    let taken = Arc::new(Taken::default());
    let sender = tokio::spawn(send_input(
        writer,
        stdin.filter(|_| wants_stdin),
        cancel_rx,
        stdin_error.clone(),
        taken.clone(),
    ));
    let signal_task = tokio::spawn(forward_signal);

    let mut stdout_open = true;
    let result = loop {
        let next = tokio::select! {
            msg = reader.next_server_msg() => msg,
            () = sleep_until(local_deadline) => break Ok(None),
        };
        match next {
            Ok(Some(ServerMsg::Stdout(data))) => {
                if stdout_open {
                    let written = match out.stdout(data) {
                        Ok(()) => out.settle().await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = written {
                        // Like a local pipeline: a closed stdout ends the command with SIGPIPE.
                        stdout_open = false;
                        if e.kind() == io::ErrorKind::BrokenPipe {
                            let _ = cancel_tx.try_send(libc::SIGPIPE);
                        } else {
                            let _ = cancel_tx.try_send(libc::SIGTERM);
                        }
                    }
                }
            }
            Ok(Some(ServerMsg::Stderr(data))) => {
                if out.stderr(data).is_ok() {
                    let _ = out.settle().await;
                }
            }
            Ok(Some(ServerMsg::Exit(status))) => break Ok(Some(status)),
            Ok(Some(ServerMsg::Error(text))) => {
                break Err(Failure::Agent(format!(
                    "agent could not run the command: {text}"
                )))
            }
            Ok(Some(_)) => {
                break Err(Failure::Stream(
                    "protocol error: agent answered an exec with another kind of message".into(),
                ))
            }
            Ok(None) => {
                break Err(Failure::Stream(
                    "stream truncated: connection closed before the command's exit status arrived"
                        .into(),
                ))
            }
            Err(e) => break Err(stream_failure(e)),
        }
    };
    sender.abort();
    signal_task.abort();
    if let Ok(Some(ExitStatus {
        stdin_cut: Some(written),
        ..
    })) = &result
    {
        let had = taken.bytes.load(Ordering::Acquire);
        if had > *written {
            *input_lost = Some(InputLost {
                bytes: had - written,
                ended: taken.ended.load(Ordering::Acquire),
            });
        }
    }
    // A stdin that failed is reported over whatever the command did: it never saw the end
    // of its input, and was cancelled.
    let failed = stdin_error.lock().unwrap_or_else(|e| e.into_inner()).take();
    match failed {
        Some(e) => Err(Failure::Stream(format!(
            "reading stdin failed: {e}; the remote command was cancelled (a failed read is \
             not the end of the input)"
        ))),
        None => result,
    }
}

/// What [`send_input`] took of the command's input: bytes (sent or being sent), and whether
/// it reached the end.
#[derive(Debug, Default)]
struct Taken {
    bytes: AtomicU64,
    ended: AtomicBool,
}

/// Sends stdin chunks and cancels; a cancel goes ahead of any stdin still waiting.
async fn send_input(
    mut writer: SealedWriter<OwnedWriteHalf>,
    mut stdin: Option<StdinChunks>,
    mut cancel: mpsc::Receiver<i32>,
    stdin_error: Arc<Mutex<Option<io::Error>>>,
    taken: Arc<Taken>,
) {
    loop {
        tokio::select! {
            biased;
            sig = cancel.recv() => match sig {
                Some(sig) => {
                    let signal = u8::try_from(sig).unwrap_or(libc::SIGTERM as u8);
                    if writer.send_stream(&StreamMsg::Cancel { signal }).await.is_err() {
                        return;
                    }
                }
                None => std::future::pending::<()>().await,
            },
            // Without input to send, the agent still learns that ctl is there.
            () = writer.heartbeat_due() => if writer.send_heartbeat().await.is_err() {
                return;
            },
            chunk = recv_opt(&mut stdin) => {
                let sent = match &chunk {
                    Some(Ok(data)) => {
                        taken.bytes.fetch_add(data.len() as u64, Ordering::AcqRel);
                        writer.send_stream(&StreamMsg::Stdin(data)).await
                    }
                    Some(Err(e)) => {
                        stdin = None;
                        *stdin_error.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(io::Error::new(e.kind(), e.to_string()));
                        let signal = libc::SIGTERM as u8;
                        writer.send_stream(&StreamMsg::Cancel { signal }).await
                    }
                    None => {
                        stdin = None;
                        taken.ended.store(true, Ordering::Release);
                        writer.send_stream(&StreamMsg::StdinEof).await
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
        }
    }
}

/// Sends heartbeats as they fall due, for an exchange in which ctl has nothing else to send;
/// ends when sending fails. The connection's write side stays open while this runs.
pub async fn keep_alive(mut writer: SealedWriter<OwnedWriteHalf>) {
    loop {
        writer.heartbeat_due().await;
        if writer.send_heartbeat().await.is_err() {
            return;
        }
    }
}

async fn recv_opt(rx: &mut Option<StdinChunks>) -> Option<io::Result<Vec<u8>>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// A successful ping: round trip of the ping itself, and the agent's version.
pub struct Pong {
    /// Time from sending the ping to its answer, after authentication.
    pub rtt: Duration,
    /// The agent's version text.
    pub version: String,
}

/// Connects, authenticates and asks the agent for its version.
pub async fn ping(
    target: &Target,
    key: &KeyEntry,
    timeout: Duration,
    retries: u32,
    mut cancel: watch::Receiver<Option<i32>>,
) -> Result<Pong, Failure> {
    let Connection {
        mut reader,
        mut writer,
    } = connect_retrying(target, key, timeout, retries, &mut cancel).await?;
    let sent = Instant::now();
    writer
        .send_request(&Request::Ping)
        .await
        .map_err(stream_failure)?;
    let answer = tokio::time::timeout(timeout, reader.next_server_msg())
        .await
        .map_err(|_| Failure::Stream(format!("no answer to the ping within {}", secs(timeout))))?;
    match answer {
        Ok(Some(ServerMsg::Pong { version })) => Ok(Pong {
            rtt: sent.elapsed(),
            version,
        }),
        Ok(Some(_)) => Err(Failure::Stream(
            "protocol error: agent did not answer the ping with a pong".into(),
        )),
        Ok(None) => Err(Failure::Stream(
            "stream truncated: connection closed before the pong".into(),
        )),
        Err(e) => Err(stream_failure(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_banners_are_named() {
        assert_eq!(
            foreign_banner(b"SSH-2.0-OpenSSH_9.2\r\n").as_deref(),
            Some("SSH-2.0-OpenSSH_9.2")
        );
        assert_eq!(
            foreign_banner(b"220 mail ESMTP\x1b[K\r\n").as_deref(),
            Some("220 mail ESMTP?[K")
        );
        assert_eq!(foreign_banner(b"\x00\x00\x00\x45\x01rexec"), None);
        assert_eq!(foreign_banner(b""), None);
    }
}
