//! Serves a `Pty` request (`ctl exec -t`): runs the command, or the user's login shell, on a
//! new pseudo-terminal, streams what the terminal shows, types what the client sends, and
//! follows the client's window size. Timeouts, cancels, a departed client and shutdown end the
//! command as they do for exec (the same watchdog).

use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rexec_shared::frame::HEADER_LEN;
use rexec_shared::message::{kind, PtyRequest, ServerMsg, StreamMsg};
use rexec_shared::transport::{SealedReader, SealedWriter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};

use crate::credentials::Credentials;
use crate::process::{Child, Tree};
use crate::request::exec::{self, ClientEvent, Departure, ExecContext, Outcome, StdinWrite};
use crate::tty::{self, Master, Pty, Size};

/// The login shell a session without a command runs: the key's user's, else the agent's.
fn shell_of(user: Option<&Credentials>) -> std::path::PathBuf {
    match user {
        Some(user) => user.shell.clone(),
        None => tty::login_shell(rustix::process::geteuid().as_raw()),
    }
}

/// What the audit record names as the command of a session without one.
pub fn audited_command(req: &PtyRequest, user: Option<&Credentials>) -> Vec<u8> {
    match &req.command {
        Some(command) => command.clone(),
        None => format!("(login shell {})", shell_of(user).display()).into_bytes(),
    }
}

/// Runs `req` on a new terminal; returns when the exchange is over.
pub async fn run<R, W>(
    req: PtyRequest,
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
    let (mut child, tree, master) = match start(&req, ctx.user.as_ref()).await {
        Ok(started) => started,
        Err(text) => {
            let _ = writer.send_server(&ServerMsg::Error(text.clone())).await;
            let _ = writer.shutdown().await;
            outcome.error = Some(text);
            return outcome;
        }
    };
    let master = Arc::new(master);
    let (events_tx, events_rx) = mpsc::channel(4);
    let (gone_tx, mut gone) = watch::channel(false);
    let reader_task = tokio::spawn(forward_client(
        reader,
        master.clone(),
        events_tx.clone(),
        gone_tx,
        ctx.peer_closed,
    ));
    let (exited_tx, exited_rx) = oneshot::channel();
    let deadline = req.timeout_ms.map(|ms| started + Duration::from_millis(ms));
    let watchdog = tokio::spawn(exec::watchdog(
        tree,
        deadline,
        events_rx,
        ctx.shutdown,
        exited_rx,
        ctx.kill_grace,
    ));

    let mut exited_tx = Some(exited_tx);
    let mut status = None;
    let mut open = true;
    let mut sending = true;
    let drain = ctx.drain;
    let mut drain_left = drain.time;
    // Bytes shown after the command exited, bounded as exec's are.
    let mut drained = 0u64;
    let mut buf = Vec::with_capacity(HEADER_LEN + exec::CHUNK + 16);
    // Like exec's pump: after the command exits, what the terminal still shows is delivered
    // until it goes quiet, within a bounded time, however much background processes write.
    loop {
        if status.is_some() && !open {
            break;
        }
        let quiet = status.is_some().then(|| drain_left.min(drain.idle));
        exec::prepare(&mut buf);
        let waiting_since = Instant::now();
        let read = tokio::select! {
            s = child.wait(), if status.is_none() => {
                status = Some(s);
                if let Some(tx) = exited_tx.take() {
                    let _ = tx.send(());
                }
                None
            }
            n = master.read_buf(&mut buf), if open => Some(n),
            // As in exec's pump: the quiet timer and the terminal's readiness can fall due in
            // one turn of the runtime, so what it holds already is read now, not left behind.
            () = tokio::time::sleep(quiet.unwrap_or_default()), if quiet.is_some() => {
                match master.read_now(&mut buf) {
                    Ok(n) if n > 0 => Some(Ok(n)),
                    _ => break,
                }
            }
            // An idle terminal still shows the client that the agent is there.
            () = writer.heartbeat_due(), if sending => {
                if let Err(e) = exec::until_gone(&mut gone, writer.send_heartbeat()).await {
                    sending = false;
                    let _ = events_tx.try_send(ClientEvent::Gone {
                        reason: format!("sending a heartbeat failed: {e}"),
                        stdin: None,
                        how: Departure::Closed,
                    });
                }
                None
            }
        };
        if let (true, Some(Ok(n))) = (status.is_some(), &read) {
            drained += *n as u64;
        }
        match read {
            None => {}
            Some(Ok(0) | Err(_)) => open = false,
            Some(Ok(n)) if sending => {
                match exec::until_gone(&mut gone, writer.send_in_place(kind::STDOUT, &mut buf))
                    .await
                {
                    Ok(()) => outcome.bytes_out += n as u64,
                    Err(e) => {
                        sending = false;
                        let _ = events_tx.try_send(ClientEvent::Gone {
                            reason: format!("sending output failed: {e}"),
                            stdin: None,
                            how: Departure::Closed,
                        });
                    }
                }
            }
            Some(Ok(_)) => {}
        }
        if status.is_some() {
            drain_left = drain_left.saturating_sub(waiting_since.elapsed());
            if drain_left.is_zero() || drained >= drain.max_bytes {
                break;
            }
        }
    }
    // The loop told the watchdog that the command exited, so it has decided by now.
    let kill = watchdog.await.ok().flatten();
    let mut exit_sent = false;
    outcome.killed = kill.as_ref().map(|k| k.reason);
    match status {
        Some(Ok(status)) => {
            let status = exec::exit_status(status, kill.as_ref());
            outcome.status = Some(status);
            if sending {
                match exec::send_exit(&mut writer, &mut gone, status).await {
                    Ok(()) => exit_sent = true,
                    Err(e) => outcome.error = Some(e),
                }
            }
        }
        Some(Err(e)) => outcome.error = Some(format!("could not wait for the command: {e}")),
        None => outcome.error = Some("command status lost".into()),
    }
    outcome.duration = started.elapsed();
    if exit_sent {
        outcome.linger = Some(crate::request::linger::Linger::on(reader_task));
    } else {
        reader_task.abort();
    }
    if !sending && outcome.error.is_none() {
        outcome.error = Some("client went away before the command ended".into());
    }
    if let Some(kill) = kill {
        let _ = kill.done.await;
    }
    outcome
}

/// Opens the terminal and starts the command on it, or says why not (text for the client).
async fn start(
    req: &PtyRequest,
    user: Option<&Credentials>,
) -> Result<(Child, Tree, Master), String> {
    let mut cmd = match &req.command {
        Some(command) => {
            if command.contains(&0) {
                return Err("command contains a NUL byte".into());
            }
            // By absolute path, as for exec: the client's PATH does not choose the shell.
            let mut cmd = crate::spawn::Command::new("/bin/sh");
            cmd.arg0("sh")
                .arg("-c")
                .arg(std::ffi::OsStr::from_bytes(command));
            cmd
        }
        None => tty::login_command(&shell_of(user)),
    };
    // Validated when the request was decoded: printable ASCII.
    cmd.env("TERM", std::ffi::OsStr::from_bytes(&req.term));
    let size = req.size.clamped();
    let size = Size {
        rows: size.rows,
        cols: size.cols,
    };
    let pty = Pty::open(size).map_err(|e| format!("cannot open a pseudo-terminal: {e}"))?;
    if let Some(user) = user {
        // The user's own terminal, as login(1) and sshd leave it: programs that open it by
        // name (or check its owner) work as they would in an ssh session.
        pty.give_to(user.uid, user.gid)
            .map_err(|e| format!("cannot give the pseudo-terminal to user {}: {e}", user.name))?;
    }
    pty.attach(&mut cmd)
        .map_err(|e| format!("cannot set up the pseudo-terminal: {e}"))?;
    let (child, tree) = exec::start(cmd, &req.env, req.cwd.as_deref(), user).await?;
    let master = pty
        .into_master()
        .map_err(|e| format!("cannot use the pseudo-terminal: {e}"))?;
    Ok((child, tree, master))
}

/// Reads the client's messages during the session: keys go to the terminal, sizes to its
/// window, a cancel or the client's departure to the watchdog.
async fn forward_client<R: AsyncRead + Unpin>(
    mut reader: SealedReader<R>,
    master: Arc<Master>,
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
            StreamMsg::Stdin(keys) => {
                match exec::write_watching(master.write_all(keys), &*peer_closed).await {
                    StdinWrite::Done => {}
                    // The terminal is gone with its programs; the session is ending anyway.
                    StdinWrite::Closed => {}
                    StdinWrite::PeerGone => {
                        break ("client closed the connection".to_owned(), Departure::Closed)
                    }
                }
            }
            // A terminal has no end of input: Ctrl-D is a key, sent as Stdin.
            StreamMsg::StdinEof => {}
            StreamMsg::WindowSize(size) => {
                let size = size.clamped();
                let size = Size {
                    rows: size.rows,
                    cols: size.cols,
                };
                if let Err(e) = master.resize(size) {
                    tracing::debug!("resizing the terminal failed: {e}");
                }
            }
            StreamMsg::Cancel { signal } => {
                let _ = events.send(ClientEvent::Cancel(i32::from(signal))).await;
            }
            other => {
                break (
                    format!(
                        "protocol error: client sent frame kind 0x{:02x} during a session",
                        other.kind()
                    ),
                    Departure::Closed,
                );
            }
        }
    };
    let _ = gone.send(true);
    let _ = events
        .send(ClientEvent::Gone {
            reason,
            stdin: None,
            how,
        })
        .await;
}
