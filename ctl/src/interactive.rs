//! `ctl exec -t`: one interactive session on a pseudo-terminal on the agent. ctl's terminal is
//! in raw mode while it lasts (see [`crate::terminal`]), keys go to the remote terminal as
//! typed, what it shows comes back on stdout, and ctl's window size follows along.

use std::io::{self, Read};

use rexec_shared::keyfile::KeyEntry;
use rexec_shared::message::{PtyRequest, Request, ServerMsg, StreamMsg, WindowSize};
use rexec_shared::transport::SealedWriter;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::outcome::{Ending, Failure, Outcome};
use crate::output::Output;
use crate::remote;
use crate::target::Target;
use crate::terminal::{self, Action, Escape, RawMode};

/// What ctl sends during a session, in order.
enum Outgoing {
    Keys(Vec<u8>),
    Size(WindowSize),
    Cancel(u8),
}

/// The window size to send: ctl's terminal's, or 0 x 0 (the agent's default) without one.
fn local_size() -> WindowSize {
    let (rows, cols) = terminal::size().unwrap_or((0, 0));
    WindowSize { rows, cols }
}

/// `TERM` to send: ctl's own, or `dumb` when it has none the agent would accept.
pub fn local_term() -> Vec<u8> {
    std::env::var_os("TERM")
        .map(std::os::unix::ffi::OsStringExt::into_vec)
        .filter(|t| PtyRequest::valid_term(t))
        .unwrap_or_else(|| b"dumb".to_vec())
}

/// Runs `req` on `target` as an interactive session, showing the terminal on `out`;
/// forwards a signal from `cancel` as a remote cancel. `~.` typed at the start of a line ends
/// it as a failure that says so.
pub async fn run<O: Output>(
    target: &Target,
    key: &KeyEntry,
    mut req: PtyRequest,
    connect_timeout: std::time::Duration,
    cancel: watch::Receiver<Option<i32>>,
    out: &mut O,
) -> Outcome {
    let started = std::time::Instant::now();
    let outcome = |result: Result<_, Failure>| Outcome {
        ending: match result {
            Ok(status) => Ending::from_status(status),
            Err(failure) => Ending::Failed(failure),
        },
        duration: started.elapsed(),
        // Keys typed ahead of a session's end are not input a command was promised.
        input_lost: None,
    };
    let conn = match remote::connect(target, key, connect_timeout).await {
        Ok(conn) => conn,
        Err(failure) => return outcome(Err(failure)),
    };
    // Raw only once connected, so that connection errors print on a normal terminal; the
    // guard puts the modes back however this function ends.
    let raw = match RawMode::enter() {
        Ok(raw) => raw,
        Err(e) => {
            eprintln!("ctl: warning: cannot put the terminal in raw mode: {e}");
            None
        }
    };
    req.size = local_size();
    let (mut reader, mut writer) = conn.into_parts();
    if let Err(e) = writer.send_request(&Request::Pty(req)).await {
        return outcome(Err(Failure::Stream(format!(
            "sending the session request failed: {e}"
        ))));
    }
    let (out_tx, out_rx) = mpsc::channel(16);
    let sender = tokio::spawn(send_outgoing(writer, out_rx));
    let mut keys = Some(read_keys());
    let mut escape = raw.as_ref().map(|_| Escape::default());
    let mut winch = signal(SignalKind::window_change()).ok();
    let mut cancel = cancel;
    let mut cancelled = false;
    // A place in the queue for the next keys, taken as soon as there is one.
    let mut room = None;

    let result = loop {
        tokio::select! {
            msg = reader.next_server_msg() => match msg {
                Ok(Some(ServerMsg::Stdout(data))) => {
                    // A terminal that cannot be written to has no one to show the session.
                    let written = match out.stdout(data) {
                        Ok(()) => out.settle().await,
                        Err(e) => Err(e),
                    };
                    if written.is_err() && !cancelled {
                        cancelled = true;
                        let _ = out_tx.send(Outgoing::Cancel(libc::SIGHUP as u8)).await;
                    }
                }
                Ok(Some(ServerMsg::Stderr(data))) => {
                    if out.stderr(data).is_ok() {
                        let _ = out.settle().await;
                    }
                }
                Ok(Some(ServerMsg::Exit(status))) => break Ok(status),
                Ok(Some(ServerMsg::Error(text))) => {
                    break Err(Failure::Agent(format!("agent could not run the command: {text}")))
                }
                Ok(Some(other)) => {
                    break Err(Failure::Stream(format!(
                        "protocol error: agent sent frame kind 0x{:02x} during a session",
                        other.kind()
                    )))
                }
                Ok(None) => break Err(Failure::Stream(
                    "stream truncated: connection closed before the command's exit status arrived".into(),
                )),
                Err(e) => break Err(remote::stream_failure(e)),
            },
            // Keys are read only once there is room to queue them: a loop stalled on a full
            // queue (an agent that reads no input) would stop watching the agent, and miss it
            // falling silent. The room is waited for here, so keys flow again at once.
            permit = out_tx.clone().reserve_owned(), if room.is_none() => room = permit.ok(),
            typed = recv_keys(&mut keys), if room.is_some() => match typed {
                Some(Ok(typed)) => {
                    let mut send = Vec::with_capacity(typed.len());
                    let action = match &mut escape {
                        Some(escape) => escape.feed(&typed, &mut send),
                        None => {
                            send = typed;
                            Action::Forward
                        }
                    };
                    if let (false, Some(permit)) = (send.is_empty(), room.take()) {
                        permit.send(Outgoing::Keys(send));
                    }
                    if action == Action::Disconnect {
                        break Err(Failure::Stream(
                            "session dropped with ~. (the remote command is killed as the connection closes)".into(),
                        ));
                    }
                }
                Some(Err(e)) => {
                    // Never an end of input: the remote command is cancelled and ctl fails.
                    // Say so on a terminal in its normal modes.
                    terminal::restore();
                    let _ = out_tx.send(Outgoing::Cancel(libc::SIGHUP as u8)).await;
                    break Err(Failure::Stream(format!("reading stdin failed: {e}")));
                }
                // End of input (stdin not a terminal): nothing more to type.
                None => keys = None,
            },
            Some(()) = recv_winch(&mut winch), if out_tx.capacity() > 0 => {
                let _ = out_tx.try_send(Outgoing::Size(local_size()));
            },
            Ok(()) = cancel.changed(), if !cancelled => {
                let signal = *cancel.borrow();
                if let Some(sig) = signal {
                    cancelled = true;
                    let _ = out_tx.send(Outgoing::Cancel(u8::try_from(sig).unwrap_or(libc::SIGTERM as u8))).await;
                }
            },
        }
    };
    sender.abort();
    drop(raw);
    outcome(result)
}

type Keys = mpsc::Receiver<io::Result<Vec<u8>>>;

/// Reads ctl's stdin on a thread of its own (a blocking read must not stall the runtime);
/// the channel closes at end of input, and carries a read error as one.
fn read_keys() -> Keys {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut stdin = io::stdin().lock();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(Ok(buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    break;
                }
            }
        }
    });
    rx
}

/// The next keys; never resolves once input is over (the session goes on without it).
async fn recv_keys(keys: &mut Option<Keys>) -> Option<io::Result<Vec<u8>>> {
    match keys {
        Some(keys) => keys.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_winch(winch: &mut Option<tokio::signal::unix::Signal>) -> Option<()> {
    match winch {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// Sends keys, window sizes and cancels in order, on a task of its own: a send stalled by a
/// remote program that reads no input must not stop ctl from showing what it writes.
async fn send_outgoing(mut writer: SealedWriter<OwnedWriteHalf>, mut rx: mpsc::Receiver<Outgoing>) {
    loop {
        let out = tokio::select! {
            out = rx.recv() => match out {
                Some(out) => out,
                None => return,
            },
            // A session nobody types in still shows the agent that ctl is there.
            () = writer.heartbeat_due() => {
                if writer.send_heartbeat().await.is_err() {
                    return;
                }
                continue;
            }
        };
        let msg = match &out {
            Outgoing::Keys(keys) => StreamMsg::Stdin(keys),
            Outgoing::Size(size) => StreamMsg::WindowSize(*size),
            Outgoing::Cancel(signal) => StreamMsg::Cancel { signal: *signal },
        };
        if writer.send_stream(&msg).await.is_err() {
            return;
        }
    }
}
