//! Runs one command for an authenticated client: `/bin/sh -c --` in its own process group,
//! output streamed back with backpressure, stdin forwarded, and its process tree killed when it
//! must be (through [`crate::process`]).

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rexec_shared::frame::HEADER_LEN;
use rexec_shared::message::{kind, ExecRequest, ExitStatus, ServerMsg, StreamMsg};
use rexec_shared::transport::{SealedReader, SealedWriter};
use rexec_shared::ProtocolError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{Drain, ExecLimits};
use crate::credentials::Credentials;
use crate::process::{self, Child, Tree};
use crate::request::linger::Linger;
use crate::spawn::{self, Stdio};

// Sizes and times are defined, with their reasons, in crate::config.
pub const CHUNK: usize = ExecLimits::DEFAULT.chunk;
const LIVENESS_PROBE: Duration = ExecLimits::DEFAULT.liveness_probe;

/// Why the agent decided to end a command's process tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillReason {
    /// The request's timeout ran out.
    Timeout,
    /// The client asked, forwarding this signal.
    Cancel(i32),
    /// The client went away or broke the protocol.
    ClientGone,
    /// The client sent nothing, not even a heartbeat, for this long (its alive timeout).
    ClientSilent(Duration),
    /// The agent is shutting down.
    Shutdown,
}

/// How one exec ended, for the audit log.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The command's status, if it was started and reaped.
    pub status: Option<ExitStatus>,
    /// An error that kept the command from running, or ended the exchange early.
    pub error: Option<String>,
    /// Why the agent killed the process tree, if it did.
    pub killed: Option<KillReason>,
    /// Stdout and stderr bytes sent to the client.
    pub bytes_out: u64,
    /// Time from the start of the command until its status was reported.
    pub duration: Duration,
    /// The wait for the client to close, once the exit status was sent.
    pub linger: Option<Linger>,
}

/// Settings and signals an exec needs from the server.
pub struct ExecContext {
    /// Time between SIGTERM and SIGKILL when a process tree is killed.
    pub kill_grace: Duration,
    /// Bounds on forwarding output after the command exited.
    pub drain: Drain,
    /// Becomes true when the agent shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Tells whether the client's socket is closed even while it is not being read.
    pub peer_closed: Box<dyn Fn() -> bool + Send + Sync>,
    /// The user to run as (the key's `user=`); the agent's own when `None`.
    pub user: Option<Credentials>,
}

/// What the client's reader tells the watchdog.
pub enum ClientEvent {
    /// The client asked to stop the command with this signal.
    Cancel(i32),
    /// The client is gone or broke the protocol. Carries the command's stdin pipe so that it
    /// stays open until the tree is dead: a cut stream must never reach the command as a
    /// clean end of input it could act on.
    Gone {
        /// What happened, for the log.
        reason: String,
        /// The command's stdin, held open until the group is dead.
        stdin: Option<pipe::Sender>,
        /// How it left.
        how: Departure,
    },
}

/// How a client left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// It closed the connection, the connection failed, or it broke the protocol.
    Closed,
    /// A frame failed to open: no SIGTERM handler gets to run then.
    Tampered,
    /// It sent nothing for this long while the agent waited (see `rexec_shared::liveness`).
    Silent(Duration),
}

impl Departure {
    /// How a read of the client's stream that ended with `error` means the client left, with
    /// the text for the log.
    pub fn from_error(error: &ProtocolError) -> (String, Self) {
        match error {
            ProtocolError::Integrity => (format!("{error}"), Self::Tampered),
            ProtocolError::PeerSilent(after) => (
                format!(
                    "client silent for {}s (no frame, no heartbeat): frozen, or the network to it is gone",
                    after.as_secs_f64()
                ),
                Self::Silent(*after),
            ),
            _ => (format!("client connection failed: {error}"), Self::Closed),
        }
    }
}

/// Runs `req` and streams its output to the client; returns when the exchange is over.
pub async fn run<R, W>(
    req: ExecRequest,
    reader: SealedReader<R>,
    mut writer: SealedWriter<W>,
    ctx: ExecContext,
) -> Outcome
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut outcome = Outcome::default();
    let (mut child, tree) = match spawn(&req, ctx.user.as_ref()).await {
        Ok(spawned) => spawned,
        Err(text) => {
            let _ = writer.send_server(&ServerMsg::Error(text.clone())).await;
            let _ = writer.shutdown().await;
            outcome.error = Some(text);
            return outcome;
        }
    };
    let (events_tx, events_rx) = mpsc::channel(4);
    let (gone_tx, mut gone) = watch::channel(false);
    let input = Arc::new(Input {
        pipe: tokio::sync::Mutex::new(child.stdin.take()),
        written: AtomicU64::new(0),
        closing: watch::channel(false).0,
    });
    let reader_task = tokio::spawn(forward_client(
        reader,
        input.clone(),
        events_tx.clone(),
        gone_tx,
        ctx.peer_closed,
    ));
    let (exited_tx, exited_rx) = oneshot::channel();
    let deadline = req.timeout_ms.map(|ms| started + Duration::from_millis(ms));
    let watchdog = tokio::spawn(watchdog(
        tree,
        deadline,
        events_rx,
        ctx.shutdown,
        exited_rx,
        ctx.kill_grace,
    ));

    let mut pump = Pump {
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        out_buf: Vec::with_capacity(HEADER_LEN + CHUNK + 16),
        err_buf: Vec::with_capacity(HEADER_LEN + CHUNK + 16),
        sending: true,
        bytes_out: 0,
        drain: ctx.drain,
        gone: gone.clone(),
    };
    let status = pump
        .run(&mut child, &mut writer, exited_tx, &events_tx)
        .await;
    outcome.bytes_out = pump.bytes_out;
    // The command's stdin ends with the command: a pipe still open here is one the client
    // had not ended yet.
    let stdin_cut = input.cut().await;
    // The pump has told the watchdog that the command exited, so it has decided by now.
    let kill = watchdog.await.ok().flatten();
    let mut exit_sent = false;
    outcome.killed = kill.as_ref().map(|k| k.reason);
    match status {
        Ok(status) => {
            let mut status = exit_status(status, kill.as_ref());
            status.stdin_cut = stdin_cut;
            outcome.status = Some(status);
            if pump.sending {
                match send_exit(&mut writer, &mut gone, status).await {
                    Ok(()) => exit_sent = true,
                    Err(e) => outcome.error = Some(e),
                }
            }
        }
        Err(e) => outcome.error = Some(format!("could not wait for the command: {e}")),
    }
    outcome.duration = started.elapsed();
    if exit_sent {
        outcome.linger = Some(Linger::on(reader_task));
    } else {
        reader_task.abort();
    }
    if !pump.sending && outcome.error.is_none() {
        outcome.error = Some("client went away before the command ended".into());
    }
    if let Some(kill) = kill {
        let _ = kill.done.await;
    }
    outcome
}

/// Moves output from the command's pipes to the client until the command has exited and its
/// pipes are drained.
struct Pump {
    stdout: Option<pipe::Receiver>,
    stderr: Option<pipe::Receiver>,
    out_buf: Vec<u8>,
    err_buf: Vec<u8>,
    /// False once the client is gone: output is then read and dropped.
    sending: bool,
    bytes_out: u64,
    drain: Drain,
    /// Becomes true when the client's reader finds it gone or silent.
    gone: watch::Receiver<bool>,
}

enum PumpEvent {
    Exited(io::Result<std::process::ExitStatus>),
    Stdout(io::Result<usize>),
    Stderr(io::Result<usize>),
    Quiet,
    Heartbeat,
}

impl Pump {
    async fn run<W: AsyncWrite + Unpin>(
        &mut self,
        child: &mut Child,
        writer: &mut SealedWriter<W>,
        exited_tx: oneshot::Sender<()>,
        events: &mpsc::Sender<ClientEvent>,
    ) -> io::Result<std::process::ExitStatus> {
        let mut exited_tx = Some(exited_tx);
        let mut status = None;
        let mut exited_at: Option<Instant> = None;
        let mut drained = 0u64;
        loop {
            if status.is_some() && self.stdout.is_none() && self.stderr.is_none() {
                break;
            }
            let quiet = exited_at.map(|at| {
                let left = self.drain.time.saturating_sub(at.elapsed());
                left.min(self.drain.idle)
            });
            prepare(&mut self.out_buf);
            prepare(&mut self.err_buf);
            let event = tokio::select! {
                s = child.wait(), if status.is_none() => PumpEvent::Exited(s),
                n = read_some(&mut self.stdout, &mut self.out_buf) => PumpEvent::Stdout(n),
                n = read_some(&mut self.stderr, &mut self.err_buf) => PumpEvent::Stderr(n),
                () = tokio::time::sleep(quiet.unwrap_or_default()), if quiet.is_some() => PumpEvent::Quiet,
                // A quiet command still shows the client that the agent is there.
                () = writer.heartbeat_due(), if self.sending => PumpEvent::Heartbeat,
            };
            if let (Some(_), PumpEvent::Stdout(Ok(n)) | PumpEvent::Stderr(Ok(n))) =
                (exited_at, &event)
            {
                drained += *n as u64;
            }
            match event {
                PumpEvent::Exited(s) => {
                    status = Some(s?);
                    exited_at = Some(Instant::now());
                    if let Some(tx) = exited_tx.take() {
                        let _ = tx.send(());
                    }
                }
                PumpEvent::Stdout(n) => {
                    if self.forward(n, kind::STDOUT, writer, events).await {
                        self.stdout = None;
                    }
                }
                PumpEvent::Stderr(n) => {
                    if self.forward(n, kind::STDERR, writer, events).await {
                        self.stderr = None;
                    }
                }
                // The quiet timer and a pipe's readiness can fall due in one turn of the
                // runtime, and the select may take the timer: what a pipe holds already is read
                // now, without waiting, before the output is called finished.
                PumpEvent::Quiet => match self.read_held(writer, events).await {
                    0 => break,
                    n => drained += n,
                },
                PumpEvent::Heartbeat => {
                    if let Err(e) = until_gone(&mut self.gone, writer.send_heartbeat()).await {
                        self.stop_sending(format!("sending a heartbeat failed: {e}"), events);
                    }
                }
            }
            if let Some(at) = exited_at {
                if at.elapsed() >= self.drain.time || drained >= self.drain.max_bytes {
                    break;
                }
            }
        }
        // Exited is always set before the loop can break.
        status.ok_or_else(|| io::Error::other("command status lost"))
    }

    /// Reads and sends what the pipes hold right now, without waiting; how many bytes.
    async fn read_held<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut SealedWriter<W>,
        events: &mpsc::Sender<ClientEvent>,
    ) -> u64 {
        let mut got = 0;
        for kind in [kind::STDOUT, kind::STDERR] {
            let (pipe, buf) = if kind == kind::STDOUT {
                (&self.stdout, &mut self.out_buf)
            } else {
                (&self.stderr, &mut self.err_buf)
            };
            let Some(pipe) = pipe else { continue };
            prepare(buf);
            let read = read_now(pipe, buf);
            if matches!(&read, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
                continue;
            }
            if let Ok(n) = read {
                got += n as u64;
            }
            if self.forward(read, kind, writer, events).await {
                if kind == kind::STDOUT {
                    self.stdout = None;
                } else {
                    self.stderr = None;
                }
            }
        }
        got
    }

    /// Sends what a read produced; returns true when that pipe is finished.
    async fn forward<W: AsyncWrite + Unpin>(
        &mut self,
        read: io::Result<usize>,
        kind: u8,
        writer: &mut SealedWriter<W>,
        events: &mpsc::Sender<ClientEvent>,
    ) -> bool {
        let n = match read {
            Ok(0) | Err(_) => return true,
            Ok(n) => n,
        };
        if self.sending {
            let buf = if kind == kind::STDOUT {
                &mut self.out_buf
            } else {
                &mut self.err_buf
            };
            match until_gone(&mut self.gone, writer.send_in_place(kind, buf)).await {
                Ok(()) => self.bytes_out += n as u64,
                Err(e) => self.stop_sending(format!("sending output failed: {e}"), events),
            }
        }
        false
    }

    /// The client can no longer be sent to: output is dropped from now on, and the watchdog
    /// ends the command.
    fn stop_sending(&mut self, reason: String, events: &mpsc::Sender<ClientEvent>) {
        self.sending = false;
        let _ = events.try_send(ClientEvent::Gone {
            reason,
            stdin: None,
            how: Departure::Closed,
        });
    }
}

/// Runs `send` to the client unless the client's reader finds it gone (or silent) first. A
/// frozen client's kernel keeps its window shut, so without this a send to it would never
/// return, and neither would the exchange or its audit record.
pub async fn until_gone<T>(
    gone: &mut watch::Receiver<bool>,
    send: impl std::future::Future<Output = Result<T, ProtocolError>>,
) -> Result<T, String> {
    tokio::select! {
        sent = send => sent.map_err(|e| e.to_string()),
        // A closed channel means the reader ended, which it does only when the client left.
        _ = gone.wait_for(|gone| *gone) => Err("the client is gone".to_owned()),
    }
}

/// Sends the final Exit report and ends the agent's side of the stream, cut short if the client
/// is gone (see [`until_gone`]); on failure, the text for the audit record.
pub async fn send_exit<W: AsyncWrite + Unpin>(
    writer: &mut SealedWriter<W>,
    gone: &mut watch::Receiver<bool>,
    status: ExitStatus,
) -> Result<(), String> {
    until_gone(gone, async {
        writer.send_server(&ServerMsg::Exit(status)).await?;
        writer.shutdown().await
    })
    .await
    .map_err(|e| format!("could not send the exit status: {e}"))
}

/// Resets a frame buffer to header room plus space for one chunk.
pub fn prepare(buf: &mut Vec<u8>) {
    buf.clear();
    buf.resize(HEADER_LEN, 0);
    buf.reserve(CHUNK);
}

/// Reads what `pipe` holds right now into `buf`'s spare room, without waiting and whatever the
/// runtime has seen of its readiness: `Ok(0)` at its end, a `WouldBlock` error when it is empty.
fn read_now(pipe: &pipe::Receiver, buf: &mut Vec<u8>) -> io::Result<usize> {
    match rustix::io::read(pipe, rustix::buffer::spare_capacity(buf)) {
        Ok(n) => Ok(n),
        // Nothing there right now, as far as this look can tell.
        Err(e) if e == rustix::io::Errno::INTR => Err(io::ErrorKind::WouldBlock.into()),
        Err(e) => Err(e.into()),
    }
}

/// Reads once from an open pipe into `buf`'s spare room; never resolves for a closed one.
async fn read_some<P: AsyncRead + Unpin>(
    pipe: &mut Option<P>,
    buf: &mut Vec<u8>,
) -> io::Result<usize> {
    match pipe {
        Some(pipe) => pipe.read_buf(buf).await,
        None => std::future::pending().await,
    }
}

async fn spawn(req: &ExecRequest, user: Option<&Credentials>) -> Result<(Child, Tree), String> {
    let command = std::ffi::OsStr::from_bytes(&req.command);
    if req.command.contains(&0) {
        return Err("command contains a NUL byte".into());
    }
    // By absolute path, so that the client's PATH cannot choose the shell; `--` so that a
    // command starting with `-` or `+` is not taken for shell options.
    let mut cmd = spawn::Command::new("/bin/sh");
    cmd.arg0("sh").arg("-c").arg("--").arg(command);
    cmd.stdin(if req.stdin { Stdio::Piped } else { Stdio::Null })
        .stdout(Stdio::Piped)
        .stderr(Stdio::Piped);
    start(cmd, &req.env, req.cwd.as_deref(), user).await
}

/// Starts `cmd` (its stdio and, for a terminal, its session already set up) with a request's
/// environment and working directory, as `user` when given; refuses a variable name that
/// cannot be one and a directory that is not there, with the text to send the client.
pub async fn start(
    mut cmd: spawn::Command,
    env: &[(Vec<u8>, Vec<u8>)],
    cwd: Option<&[u8]>,
    user: Option<&Credentials>,
) -> Result<(Child, Tree), String> {
    let program = std::path::Path::new(cmd.program())
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    if let Some(user) = user {
        for (key, value) in user.env() {
            cmd.env(key, value);
        }
    }
    for (key, value) in env {
        if key.is_empty() || key.contains(&b'=') || key.contains(&0) || value.contains(&0) {
            return Err(format!(
                "invalid environment variable name {:?}: must be non-empty, without '=' or NUL",
                String::from_utf8_lossy(key)
            ));
        }
        cmd.env(
            std::ffi::OsStr::from_bytes(key),
            std::ffi::OsStr::from_bytes(value),
        );
    }
    let cwd = cwd.map(|cwd| std::path::Path::new(std::ffi::OsStr::from_bytes(cwd)));
    // Under user= the directory is only looked at by the child, after the drop: the agent's
    // rights must not tell the client about a directory its user cannot see.
    if let (Some(dir), None) = (cwd, user) {
        match std::fs::metadata(dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(format!(
                    "cannot change to {}: not a directory",
                    dir.display()
                ))
            }
            Err(e) => return Err(format!("cannot change to {}: {e}", dir.display())),
        }
        cmd.current_dir(dir);
    }
    match user {
        None => process::spawn(cmd, None)
            .await
            .map_err(|e| format!("cannot start {program}: {e}")),
        // The directory is entered after the drop, with the user's rights, not the agent's.
        Some(user) => {
            let switch = user.switch(cwd)?;
            let place = cwd.map_or_else(
                || format!("{} (its home)", user.home.display()),
                |d| d.display().to_string(),
            );
            process::spawn(cmd, Some(switch)).await.map_err(|e| {
                format!(
                    "cannot start {program} as user {} in {place}: {e}",
                    user.name
                )
            })
        }
    }
}

/// Reads the client's messages while the command runs: stdin goes to the command, a cancel or
/// the client's departure goes to the watchdog.
/// The command's stdin and how far the client's input got into it. The pipe is `None` once
/// the client's StdinEof closed it or the command closed its end.
struct Input {
    pipe: tokio::sync::Mutex<Option<pipe::Sender>>,
    written: AtomicU64,
    /// Set when the command has ended: a write stalled on its stdin gives up.
    closing: watch::Sender<bool>,
}

impl Input {
    /// Closes the command's stdin once the command has ended. If it was still open and a
    /// process still had it to read (a background child), says how many bytes it got: the
    /// input that follows is lost to it, and it sees an end of input.
    async fn cut(&self) -> Option<u64> {
        self.closing.send_replace(true);
        let pipe = self.pipe.lock().await.take()?;
        let mut poll = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&pipe),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one pollfd for a descriptor we own, no waiting.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        // POLLERR on a pipe's write end: nobody has the read end, so nothing was lost to anyone.
        let reader_left = ready == 1 && poll.revents & libc::POLLERR != 0;
        (!reader_left).then(|| self.written.load(Ordering::Acquire))
    }
}

async fn forward_client<R: AsyncRead + Unpin>(
    mut reader: SealedReader<R>,
    input: Arc<Input>,
    events: mpsc::Sender<ClientEvent>,
    gone: watch::Sender<bool>,
    peer_closed: Box<dyn Fn() -> bool + Send + Sync>,
) {
    let (reason, how) = loop {
        let msg = match reader.next_stream_msg().await {
            Ok(Some(msg)) => msg,
            Ok(None) => break ("client closed the connection".to_owned(), Departure::Closed),
            Err(e) => break Departure::from_error(&e),
        };
        match msg {
            StreamMsg::Stdin(data) => {
                let mut closing = input.closing.subscribe();
                let mut stdin = input.pipe.lock().await;
                let Some(pipe) = stdin.as_mut() else { continue };
                // Counted as it goes, so that an exchange ending mid-write says how far it got.
                let write = async {
                    let mut rest = data;
                    while !rest.is_empty() {
                        let n = pipe.write(rest).await?;
                        if n == 0 {
                            return Err(io::ErrorKind::WriteZero.into());
                        }
                        input.written.fetch_add(n as u64, Ordering::AcqRel);
                        rest = &rest[n..];
                    }
                    Ok(())
                };
                let written = tokio::select! {
                    w = write_watching(write, &*peer_closed) => w,
                    // The command has ended: the rest of this input has nowhere to go (the
                    // Exit says how much got there).
                    _ = closing.wait_for(|c| *c) => continue,
                };
                match written {
                    StdinWrite::Done => {}
                    // The command closed its stdin; further input has nowhere to go.
                    StdinWrite::Closed => *stdin = None,
                    StdinWrite::PeerGone => {
                        break ("client closed the connection".to_owned(), Departure::Closed)
                    }
                }
            }
            StreamMsg::StdinEof => *input.pipe.lock().await = None,
            StreamMsg::Cancel { signal } => {
                let _ = events.send(ClientEvent::Cancel(i32::from(signal))).await;
            }
            // Without a terminal there is no window to size.
            StreamMsg::WindowSize(_) => {}
            other => {
                break (
                    format!(
                        "protocol error: client sent frame kind 0x{:02x} during a command",
                        other.kind()
                    ),
                    Departure::Closed,
                );
            }
        }
    };
    let _ = gone.send(true);
    let stdin = input.pipe.lock().await.take();
    let _ = events.send(ClientEvent::Gone { reason, stdin, how }).await;
}

/// How writing the client's input to the command went.
pub enum StdinWrite {
    /// All of it was written.
    Done,
    /// The command closed its input.
    Closed,
    /// The client went away while the write was stalled.
    PeerGone,
}

/// Writes stdin data to the command. A command that does not read its stdin stalls this write,
/// and meanwhile nothing is read from the socket, so check now and then that the client is there.
pub async fn write_watching(
    write: impl std::future::Future<Output = io::Result<()>>,
    peer_closed: &(dyn Fn() -> bool + Send + Sync),
) -> StdinWrite {
    tokio::pin!(write);
    let mut probe = tokio::time::interval(LIVENESS_PROBE);
    probe.tick().await;
    loop {
        tokio::select! {
            r = &mut write => return if r.is_ok() { StdinWrite::Done } else { StdinWrite::Closed },
            _ = probe.tick() => if peer_closed() {
                return StdinWrite::PeerGone;
            },
        }
    }
}

/// A kill the watchdog decided on and started.
pub struct Kill {
    /// Why.
    pub reason: KillReason,
    /// The signal sent first (SIGKILL follows after the grace if the tree is still there).
    pub signal: i32,
    /// Ends once the tree got SIGKILL or was gone before.
    pub done: JoinHandle<()>,
}

/// Kills the process tree when the timeout runs out, the client cancels or leaves, or the
/// agent shuts down, and says why; does nothing if the command exits by itself first, so
/// background children it started on purpose keep running.
pub async fn watchdog(
    tree: Tree,
    deadline: Option<Instant>,
    mut events: mpsc::Receiver<ClientEvent>,
    mut shutdown: watch::Receiver<bool>,
    mut exited: oneshot::Receiver<()>,
    grace: Duration,
) -> Option<Kill> {
    let sleep_until = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    // Held until the tree is dead; see ClientEvent::Gone.
    let mut held_stdin = None;
    let (reason, signal) = tokio::select! {
        biased;
        _ = &mut exited => return None,
        () = sleep_until => (KillReason::Timeout, libc::SIGTERM),
        event = events.recv() => match event {
            Some(ClientEvent::Cancel(sig)) if (1..=64).contains(&sig) => (KillReason::Cancel(sig), sig),
            Some(ClientEvent::Cancel(_)) => (KillReason::Cancel(libc::SIGTERM), libc::SIGTERM),
            Some(ClientEvent::Gone { reason, stdin, how }) => {
                tracing::debug!(leader = tree.leader(), "{reason}");
                held_stdin = stdin;
                match how {
                    Departure::Closed => (KillReason::ClientGone, libc::SIGTERM),
                    // A tampered stream gets no chance to act on what it was fed: no SIGTERM
                    // handler.
                    Departure::Tampered => (KillReason::ClientGone, libc::SIGKILL),
                    Departure::Silent(after) => (KillReason::ClientSilent(after), libc::SIGTERM),
                }
            }
            None => (KillReason::ClientGone, libc::SIGTERM),
        },
        _ = shutdown.wait_for(|stop| *stop) => (KillReason::Shutdown, libc::SIGTERM),
    };
    let done = tokio::spawn(async move {
        tree.terminate(signal, grace).await;
        drop(held_stdin);
    });
    Some(Kill {
        reason,
        signal,
        done,
    })
}

/// The Exit report for a command that ended with `status`, after the watchdog's `kill` if it
/// decided on one. A command the agent's shutdown ended is reported as such with the signal
/// that ended it: SIGKILL if it died of the escalation, else the first signal, which it may
/// have caught (and exited 0).
pub fn exit_status(status: std::process::ExitStatus, kill: Option<&Kill>) -> ExitStatus {
    let shutdown_signal = match kill {
        Some(k) if k.reason == KillReason::Shutdown => {
            Some(if status.signal() == Some(libc::SIGKILL) {
                libc::SIGKILL
            } else {
                k.signal
            })
        }
        _ => None,
    };
    ExitStatus {
        code: status.code(),
        signal: status.signal(),
        timed_out: kill.is_some_and(|k| k.reason == KillReason::Timeout),
        shutdown_signal,
        stdin_cut: None,
    }
}

#[cfg(test)]
mod tests {
    use rexec_shared::session::{DirectionKeys, Opener, Sealer};
    use rexec_shared::transport::FrameReader;

    use super::*;

    fn keys(byte: u8) -> DirectionKeys {
        DirectionKeys {
            key: [byte; 32],
            iv: [byte; 12],
        }
    }

    #[tokio::test]
    async fn a_send_counter_at_its_limit_ends_the_exchange_without_reusing_a_nonce() {
        // Two frames left before the agent's sending counter would wrap (moved there with the
        // test hook); the command writes without end.
        let (client_end, agent_end) = tokio::io::duplex(4 << 20);
        let (agent_read, agent_write) = tokio::io::split(agent_end);
        let (client_read, _client_write) = tokio::io::split(client_end);
        let reader = SealedReader::new(FrameReader::new(agent_read), Opener::new(&keys(1)));
        let mut writer = SealedWriter::new(agent_write, Sealer::new(&keys(2)));
        writer.set_counter_for_test(u64::MAX - 2);
        let mut client = SealedReader::new(FrameReader::new(client_read), Opener::new(&keys(2)));
        client.set_counter_for_test(u64::MAX - 2);
        let (_stop, shutdown) = watch::channel(false);
        let ctx = ExecContext {
            kill_grace: Duration::from_millis(500),
            drain: Drain::default(),
            shutdown,
            peer_closed: Box::new(|| false),
            user: None,
        };
        let req = ExecRequest {
            command: b"echo $$; while :; do echo more; done".to_vec(),
            ..Default::default()
        };
        let outcome = tokio::time::timeout(Duration::from_secs(60), run(req, reader, writer, ctx))
            .await
            .expect("the exchange ends");

        // The agent stopped sending instead of sealing a third frame, and ended the command.
        assert_eq!(outcome.killed, Some(KillReason::ClientGone), "{outcome:?}");
        let mut frames = Vec::new();
        while let Some(msg) = client
            .next_server_msg()
            .await
            .expect("every frame sent opens")
        {
            match msg {
                ServerMsg::Stdout(data) => frames.push(data.to_vec()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            frames.len(),
            2,
            "frames sent with the last two counters, then a clean end"
        );
        let first = String::from_utf8_lossy(&frames[0]).into_owned();
        let pgid: i32 = first
            .lines()
            .next()
            .and_then(|l| l.parse().ok())
            .expect("group id");
        // SAFETY: signal 0 only checks whether the group exists.
        let alive = unsafe { libc::killpg(pgid, 0) } == 0;
        assert!(!alive, "the command's group survived");
    }
}
