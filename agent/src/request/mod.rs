//! The agent's capabilities: one module per kind of [`Request`], and [`dispatch`], the one
//! place an authenticated connection's request is routed (and where per-key policy will be
//! checked).

pub mod exec;
mod ping;
pub mod pull;
pub mod push;

use std::net::SocketAddr;
use std::time::Duration;

use rexec_shared::handshake::Principal;
use rexec_shared::message::Request;
use rexec_shared::transport::{SealedReader, SealedWriter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::audit;

/// What serving a request needs from its connection and from the agent.
pub struct RequestContext<'a> {
    /// Who connected.
    pub peer: SocketAddr,
    /// Who the client proved to be.
    pub principal: &'a Principal,
    /// Time between SIGTERM and SIGKILL when a command is killed.
    pub kill_grace: Duration,
    /// Becomes true when the agent shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Tells whether the client's socket is closed even while it is not being read.
    pub peer_closed: Box<dyn Fn() -> bool + Send + Sync>,
}

/// Serves `request`; `reader` yields what the client sends after it.
pub async fn dispatch<R, W>(
    request: Request,
    reader: SealedReader<R>,
    writer: SealedWriter<W>,
    ctx: RequestContext<'_>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let RequestContext {
        peer,
        principal,
        kill_grace,
        shutdown,
        peer_closed,
    } = ctx;
    match request {
        Request::Ping => ping::serve(writer, peer, principal).await,
        Request::Exec(req) => {
            let command = req.command.clone();
            let script = req.script.clone();
            let ctx = exec::ExecContext {
                kill_grace,
                shutdown,
                peer_closed,
            };
            let outcome = exec::run(req, reader, writer, ctx).await;
            audit::command(peer, &principal.key_id, &command, script.as_ref(), &outcome);
        }
        Request::Push(req) => {
            let dest = req.dest.clone();
            let outcome = push::run(req, reader, writer, shutdown).await;
            audit::transfer(peer, &principal.key_id, "push", &[dest], &outcome);
        }
        Request::Pull(req) => {
            let paths = req.paths.clone();
            let outcome = pull::run(req, reader, writer, shutdown).await;
            audit::transfer(peer, &principal.key_id, "pull", &paths, &outcome);
        }
    }
}
