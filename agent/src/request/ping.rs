//! `ctl ping`: answer with the agent's version.

use std::net::SocketAddr;

use rexec_shared::handshake::Principal;
use rexec_shared::message::ServerMsg;
use rexec_shared::transport::SealedWriter;
use tokio::io::AsyncWrite;

/// Sends the version and closes the agent's side of the connection.
pub async fn serve<W: AsyncWrite + Unpin>(
    mut writer: SealedWriter<W>,
    peer: SocketAddr,
    principal: &Principal,
) {
    let version = format!("agent {}", env!("CARGO_PKG_VERSION"));
    let _ = writer.send_server(&ServerMsg::Pong { version }).await;
    let _ = writer.shutdown().await;
    tracing::debug!(
        %peer,
        key_id = principal.key_id,
        agent_name = principal.agent_name.as_str(),
        "answered ping"
    );
}
