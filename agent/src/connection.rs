//! One client connection: authenticate it within the deadline, then serve its one request.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rexec_shared::frame::MAX_HANDSHAKE_FRAME_LEN;
use rexec_shared::handshake::{refusal, ServerEstablished, ServerHandshake, AUTH_FAILED};
use rexec_shared::message::{ClientMsg, ServerMsg};
use rexec_shared::transport::{FrameReader, SealedReader, SealedWriter};
use rexec_shared::ProtocolError;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};

use crate::audit;
use crate::exec::{self, ExecContext};
use crate::request;
use crate::server::{PendingGuard, Shared};

/// Serves one accepted connection until its exchange is over.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    pending: PendingGuard,
    evicted: oneshot::Receiver<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_keepalive(true);
    let fd = stream.as_raw_fd();
    let (read, write) = stream.into_split();
    let deadline = Instant::now() + shared.config.handshake_timeout;

    // Everything before the request is bounded by the handshake timeout; an evicted or
    // shut-down connection is dropped on the spot.
    let authenticated = tokio::select! {
        r = tokio::time::timeout_at(deadline.into(), authenticate(read, write, &shared, peer)) => match r {
            Ok(r) => r,
            Err(_) => Err(format!("handshake not completed within {:?}", shared.config.handshake_timeout)),
        },
        _ = evicted => Err("dropped to make room: too many unauthenticated connections".into()),
        _ = shutdown.wait_for(|stop| *stop) => Err("agent shutting down".into()),
    };
    drop(pending);
    let (key_id, mut reader, mut writer) = match authenticated {
        Ok(x) => x,
        Err(reason) => {
            log_unauthenticated_close(peer, &reason);
            return;
        }
    };

    let request = tokio::select! {
        r = tokio::time::timeout_at(deadline.into(), reader.next_client_msg()) => match r {
            Ok(Ok(Some(msg))) => Ok(to_owned_request(msg)),
            Ok(Ok(None)) => Err("client closed the connection before sending a request".to_owned()),
            Ok(Err(e)) => {
                // The agent-to-client direction is still intact: say why nothing ran.
                if let Some(text) = request_rejection(&e) {
                    let _ = writer.send_server(&ServerMsg::Error(text)).await;
                    let _ = writer.shutdown().await;
                }
                Err(format!("reading the request failed: {e}"))
            }
            Err(_) => Err("no request within the handshake timeout".to_owned()),
        },
        // Yields (), not the watch guard, which must not live across the await above.
        () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => Err("agent shutting down".into()),
    };
    let request = match request {
        Ok(Some(r)) => r,
        Ok(None) => {
            tracing::warn!(%peer, key_id, "client's first message was not a request; closing");
            return;
        }
        Err(reason) => {
            tracing::warn!(%peer, key_id, "{reason}");
            return;
        }
    };
    match request {
        Request::Ping => {
            let version = format!("agent {}", env!("CARGO_PKG_VERSION"));
            let _ = writer.send_server(&ServerMsg::Pong { version }).await;
            let _ = writer.shutdown().await;
            tracing::debug!(%peer, key_id, "answered ping");
        }
        Request::Exec(req) => {
            let command = req.command.clone();
            let ctx = ExecContext {
                kill_grace: shared.config.kill_grace,
                shutdown,
                peer_closed: Box::new(move || peer_closed(fd)),
            };
            let outcome = exec::run(req, reader, writer, ctx).await;
            audit::command(peer, &key_id, &command, &outcome);
        }
        Request::Push(req) => {
            let dest = req.dest.clone();
            let outcome = request::push::run(req, reader, writer, shutdown).await;
            audit::transfer(peer, &key_id, "push", &[dest], &outcome);
        }
        Request::Pull(req) => {
            let paths = req.paths.clone();
            let outcome = request::pull::run(req, reader, writer, shutdown).await;
            audit::transfer(peer, &key_id, "pull", &paths, &outcome);
        }
    }
}

/// What to tell a client whose request did not arrive intact; `None` when there is no one to
/// tell (the client closed or the socket failed).
fn request_rejection(e: &ProtocolError) -> Option<String> {
    match e {
        ProtocolError::Integrity => Some(
            "integrity check failed on the agent: the request was altered, reordered or replayed in transit; nothing was run"
                .into(),
        ),
        ProtocolError::FrameTooLarge { .. } | ProtocolError::EmptyFrame => Some(format!(
            "integrity check failed on the agent: the request's framing was altered in transit ({e}); nothing was run"
        )),
        ProtocolError::Malformed(_) | ProtocolError::UnexpectedFrame(_) => {
            Some(format!("the request was malformed ({e}); nothing was run"))
        }
        _ => None,
    }
}

/// Lines per second about connections closed before authentication. Anyone who can reach the
/// port can cause them, so beyond this they are counted instead of written.
const UNAUTHENTICATED_LOG_PER_SEC: u32 = 20;

/// Logs why a connection ended before authentication, at most [`UNAUTHENTICATED_LOG_PER_SEC`]
/// lines a second; the others are counted and their number logged once the second is over.
pub fn log_unauthenticated_close(peer: SocketAddr, reason: &str) {
    struct Window {
        start: Instant,
        written: u32,
        suppressed: u64,
    }
    static WINDOW: Mutex<Option<Window>> = Mutex::new(None);
    let mut guard = WINDOW.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let window = guard.get_or_insert(Window {
        start: now,
        written: 0,
        suppressed: 0,
    });
    if now.duration_since(window.start) >= Duration::from_secs(1) {
        if window.suppressed > 0 {
            tracing::warn!(
                "{} more connections closed before authentication were not logged (over {UNAUTHENTICATED_LOG_PER_SEC}/s)",
                window.suppressed
            );
        }
        *window = Window {
            start: now,
            written: 0,
            suppressed: 0,
        };
    }
    if window.written < UNAUTHENTICATED_LOG_PER_SEC {
        window.written += 1;
        tracing::warn!(%peer, "connection closed before authentication: {reason}");
    } else {
        window.suppressed += 1;
    }
}

enum Request {
    Ping,
    Exec(rexec_shared::message::ExecRequest),
    Push(rexec_shared::files::wire::PushRequest),
    Pull(rexec_shared::files::wire::PullRequest),
}

fn to_owned_request(msg: ClientMsg<'_>) -> Option<Request> {
    match msg {
        ClientMsg::Exec(req) => Some(Request::Exec(req)),
        ClientMsg::Ping => Some(Request::Ping),
        ClientMsg::Push(req) => Some(Request::Push(req)),
        ClientMsg::Pull(req) => Some(Request::Pull(req)),
        _ => None,
    }
}

type Authenticated = (
    String,
    SealedReader<OwnedReadHalf>,
    SealedWriter<OwnedWriteHalf>,
);

async fn authenticate(
    read: OwnedReadHalf,
    mut write: OwnedWriteHalf,
    shared: &Shared,
    peer: SocketAddr,
) -> Result<Authenticated, String> {
    let handshake = ServerHandshake::new();
    write
        .write_all(handshake.hello())
        .await
        .map_err(|e| format!("sending hello failed: {e}"))?;
    let mut frames = FrameReader::new(read);
    let hello = match frames.next(MAX_HANDSHAKE_FRAME_LEN).await {
        Ok(Some(frame)) => frame,
        Ok(None) => return Err("client closed the connection during the handshake".into()),
        Err(e) => return Err(format!("bad handshake input: {e}")),
    };
    let keys = shared.keys.current();
    let mut asked = None;
    let result = handshake.receive_client_hello(hello.as_frame(), |id| {
        asked = Some(id.to_owned());
        keys.get(id)
    });
    match result {
        Ok(ServerEstablished {
            key_id,
            reply,
            session,
        }) => {
            write
                .write_all(&reply)
                .await
                .map_err(|e| format!("sending proof failed: {e}"))?;
            tracing::debug!(%peer, key_id, "authenticated");
            let reader = SealedReader::new(frames, session.opener);
            Ok((key_id, reader, SealedWriter::new(write, session.sealer)))
        }
        Err(e) => {
            let text = match &e {
                ProtocolError::AuthFailed => AUTH_FAILED.to_owned(),
                ProtocolError::VersionMismatch(v) => format!(
                    "unsupported protocol version {v}; this agent speaks version {}",
                    rexec_shared::handshake::VERSION
                ),
                other => format!("handshake refused: {other}"),
            };
            let _ = write.write_all(&refusal(&text)).await;
            let id = asked.map(|id| {
                let known = keys.get(&id).is_some();
                format!(
                    " for key id {id:?}{}",
                    if known { "" } else { " (unknown key id)" }
                )
            });
            Err(format!("{e}{}", id.unwrap_or_default()))
        }
    }
}

/// Whether the peer has closed or reset the connection, without reading from it.
fn peer_closed(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout; the fd stays open while the connection task runs.
    let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
    rc > 0 && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}
