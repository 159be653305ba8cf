//! One client connection: authenticate it within the deadline, read its one request, and hand
//! that to [`request::dispatch`].

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use rexec_shared::handshake::ServerHandshake;
use rexec_shared::message::ServerMsg;
use rexec_shared::transport::{server_handshake, ServerConnection};
use rexec_shared::ProtocolError;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::admission::{log_unauthenticated_close, Ticket};
use crate::config::Config;
use crate::keystore::KeyStore;
use crate::request::{self, RequestContext};

/// An accepted connection and what serving it needs.
pub struct Connection {
    /// The socket.
    pub stream: TcpStream,
    /// Who connected.
    pub peer: SocketAddr,
    /// Limits and timeouts.
    pub config: Arc<Config>,
    /// The keys in force.
    pub keys: Arc<KeyStore>,
    /// The connection's place among the unauthenticated ones.
    pub ticket: Ticket,
    /// Becomes true when the agent shuts down.
    pub shutdown: watch::Receiver<bool>,
}

/// Serves one accepted connection until its exchange is over.
pub async fn serve(conn: Connection) {
    let Connection {
        stream,
        peer,
        config,
        keys,
        ticket,
        mut shutdown,
    } = conn;
    let Ticket { pending, evicted } = ticket;
    let _ = stream.set_nodelay(true);
    let _ = socket2::SockRef::from(&stream).set_keepalive(true);
    let fd = stream.as_raw_fd();
    let (read, write) = stream.into_split();
    let deadline = Instant::now() + config.handshake_timeout;

    // Everything before the request is bounded by the handshake timeout; an evicted or
    // shut-down connection is dropped on the spot.
    let ring = keys.current();
    let handshake = server_handshake(ServerHandshake::new(), read, write, &ring);
    let authenticated = tokio::select! {
        r = tokio::time::timeout_at(deadline.into(), handshake) => match r {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("handshake not completed within {:?}", config.handshake_timeout)),
        },
        _ = evicted => Err("dropped to make room: too many unauthenticated connections".into()),
        _ = shutdown.wait_for(|stop| *stop) => Err("agent shutting down".into()),
    };
    drop(pending);
    let ServerConnection {
        principal,
        mut reader,
        mut writer,
        ..
    } = match authenticated {
        Ok(conn) => conn,
        Err(reason) => {
            log_unauthenticated_close(peer, &reason);
            return;
        }
    };
    reader.set_alive_timeout(config.alive_timeout);
    let key_id = principal.key_id.as_str();
    let agent_name = principal.agent_name.as_str();
    tracing::debug!(%peer, key_id, agent_name, "authenticated");

    let request = tokio::select! {
        r = tokio::time::timeout_at(deadline.into(), reader.read_request()) => match r {
            Ok(Ok(Some(request))) => Ok(request),
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
    let (request, reader) = match request {
        Ok(r) => r,
        Err(reason) => {
            tracing::warn!(%peer, key_id, "{reason}");
            return;
        }
    };
    // The policy from the same reading of the key file as the secret that was proved.
    let policy = ring
        .get(key_id, &principal.agent_name)
        .map(|entry| entry.policy.clone())
        .unwrap_or_default();
    let ctx = RequestContext {
        peer,
        principal: &principal,
        policy: &policy,
        kill_grace: config.kill_grace,
        drain: config.drain,
        shutdown,
        peer_closed: Box::new(move || peer_closed(fd)),
    };
    request::dispatch(request, reader, writer, ctx).await;
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
