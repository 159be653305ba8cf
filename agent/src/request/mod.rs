//! The agent's capabilities: one module per kind of [`Request`], and [`dispatch`], the one
//! place an authenticated connection's request is routed, after the key's policy
//! ([`crate::policy::authorize`]) has let it through.

pub mod exec;
pub mod linger;
mod ping;
pub mod pty;
pub mod pull;
pub mod push;

use std::net::SocketAddr;
use std::time::Duration;

use rexec_shared::handshake::Principal;
use rexec_shared::message::{Request, ServerMsg};
use rexec_shared::policy::Policy;
use rexec_shared::transport::{SealedReader, SealedWriter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::audit;
use crate::credentials::Credentials;
use crate::policy::{self, Caller, Refusal};

/// What serving a request needs from its connection and from the agent.
pub struct RequestContext<'a> {
    /// Who connected.
    pub peer: SocketAddr,
    /// Who the client proved to be.
    pub principal: &'a Principal,
    /// What that key may do.
    pub policy: &'a Policy,
    /// Time between SIGTERM and SIGKILL when a command's process tree is killed.
    pub kill_grace: Duration,
    /// Bounds on forwarding a command's output after it exited.
    pub drain: crate::config::Drain,
    /// Becomes true when the agent shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Tells whether the client's socket is closed even while it is not being read.
    pub peer_closed: Box<dyn Fn() -> bool + Send + Sync>,
}

/// Serves `request`; `reader` yields what the client sends after it.
pub async fn dispatch<R, W>(
    request: Request,
    reader: SealedReader<R>,
    mut writer: SealedWriter<W>,
    ctx: RequestContext<'_>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let RequestContext {
        peer,
        principal,
        policy,
        kill_grace,
        drain,
        shutdown,
        peer_closed,
    } = ctx;
    // Outlives the exchange: the wait after its final frame ends when the agent stops.
    let mut stopping = shutdown.clone();
    let caller = Caller {
        key_id: &principal.key_id,
        peer: peer.ip(),
    };
    let (request, user) = match permit(caller, policy, request).await {
        Ok(permitted) => permitted,
        Err((refusal, asked)) => {
            audit::refused(peer, principal, &asked, &refusal);
            let _ = writer
                .send_server(&ServerMsg::Error(refusal.message()))
                .await;
            let _ = writer.shutdown().await;
            return;
        }
    };
    match request {
        Request::Ping => ping::serve(writer, peer, principal).await,
        Request::Exec(req) => {
            let command = req.command.clone();
            let script = req.script.clone();
            // Before anything is spawned: a command that kills the agent is on record too.
            audit::started(peer, &principal.key_id, &command);
            let ctx = exec::ExecContext {
                kill_grace,
                drain,
                shutdown,
                peer_closed,
                user,
            };
            let mut outcome = exec::run(req, reader, writer, ctx).await;
            audit::command(peer, principal, &command, script.as_ref(), &outcome);
            linger(outcome.linger.take(), &mut stopping).await;
        }
        Request::Push(req) => {
            let dest = req.dest.clone();
            let mut outcome = push::run(req, reader, writer, shutdown, user).await;
            audit::transfer(peer, principal, "push", &[dest], &outcome);
            linger(outcome.linger.take(), &mut stopping).await;
        }
        Request::Pull(req) => {
            let paths = req.paths.clone();
            let mut outcome = pull::run(req, reader, writer, shutdown, user).await;
            audit::transfer(peer, principal, "pull", &paths, &outcome);
            linger(outcome.linger.take(), &mut stopping).await;
        }
        Request::Pty(req) => {
            let command = pty::audited_command(&req, user.as_ref());
            let ctx = exec::ExecContext {
                kill_grace,
                drain,
                shutdown,
                peer_closed,
                user,
            };
            let mut outcome = pty::run(req, reader, writer, ctx).await;
            audit::command(peer, principal, &command, None, &outcome);
            linger(outcome.linger.take(), &mut stopping).await;
        }
    }
}

/// After the audit record: waits for the client to close (see [`mod@linger`]).
async fn linger(wait: Option<linger::Linger>, stopping: &mut watch::Receiver<bool>) {
    if let Some(wait) = wait {
        wait.wait(stopping).await;
    }
}

/// Puts `request` through the key's policy and resolves the user it is to run as; a refusal
/// comes back with a description of what was asked, for the audit record.
async fn permit(
    caller: Caller<'_>,
    policy: &Policy,
    request: Request,
) -> Result<(Request, Option<Credentials>), (Refusal, String)> {
    let asked = describe(&request);
    let grant = policy::authorize(caller, policy, request).map_err(|r| (r, asked.clone()))?;
    let Some(name) = grant.user else {
        return Ok((grant.request, None));
    };
    // The user database may be a network service: look it up off the runtime's threads.
    let lookup = tokio::task::spawn_blocking(move || Credentials::lookup(&name)).await;
    match lookup {
        Ok(Ok(user)) => Ok((grant.request, Some(user))),
        Ok(Err(why)) => Err((Refusal::user(why), asked)),
        Err(e) => Err((Refusal::user(format!("user lookup failed: {e}")), asked)),
    }
}

/// What a request asks for, in one line for the audit record.
fn describe(request: &Request) -> String {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match request {
        Request::Ping => "ping".into(),
        Request::Exec(req) => text(&req.command),
        Request::Push(req) => format!("push to {}", text(&req.dest)),
        Request::Pull(req) => {
            let paths: Vec<String> = req.paths.iter().map(|p| text(p)).collect();
            format!("pull {}", paths.join(" "))
        }
        Request::Pty(req) => match &req.command {
            Some(command) => format!("terminal: {}", text(command)),
            None => "terminal: login shell".into(),
        },
    }
}
