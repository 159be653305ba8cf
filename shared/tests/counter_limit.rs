//! A frame counter close to its limit, moved there with the test-only hooks: a full handshake
//! over an in-memory pipe, then frames until the counter runs out. The connection must end with
//! `CounterExhausted` on the side that would wrap, and no nonce may ever be used twice.

// Test code: a failed expectation is a failed test, so unwrap, expect and panic are the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use rexec_shared::handshake::ServerHandshake;
use rexec_shared::keyfile::{derive_agent_key, AgentKeys, Secret};
use rexec_shared::message::{Request, ServerMsg, StreamMsg};
use rexec_shared::name::AgentName;
use rexec_shared::transport::{
    client_handshake, server_handshake, SealedReader, SealedWriter, ServerConnection,
};
use rexec_shared::ProtocolError;
use tokio::io::DuplexStream;

type Reader = SealedReader<tokio::io::ReadHalf<DuplexStream>>;
type Writer = SealedWriter<tokio::io::WriteHalf<DuplexStream>>;

/// A client and an agent, both authenticated over an in-memory pipe, the client's request
/// (a ping) read by the agent: what follows are stream messages.
async fn connected() -> ((Reader, Writer), (Reader, Writer)) {
    let (client_side, agent_side) = tokio::io::duplex(64 * 1024);
    let secret = Secret::from_bytes([5; 32]);
    let name = AgentName::parse("agent1").unwrap();
    let line = format!(
        "ops {} agent1\n",
        derive_agent_key(&secret, "ops", &name).to_hex()
    );
    let keys = AgentKeys::parse(&line, Path::new("keys")).unwrap();
    let (agent_read, agent_write) = tokio::io::split(agent_side);
    let agent = tokio::spawn(async move {
        let ServerConnection {
            principal,
            reader,
            writer,
            ..
        } = server_handshake(ServerHandshake::new(), agent_read, agent_write, &keys)
            .await
            .unwrap();
        assert_eq!(principal.key_id, "ops");
        let (request, reader) = reader.read_request().await.unwrap().unwrap();
        assert_eq!(request, Request::Ping);
        (reader, writer)
    });
    let (client_read, client_write) = tokio::io::split(client_side);
    let (client_rx, mut client_tx) =
        client_handshake(client_read, client_write, "ops", &secret, &name)
            .await
            .unwrap();
    client_tx.send_request(&Request::Ping).await.unwrap();
    ((client_rx, client_tx), agent.await.unwrap())
}

#[tokio::test]
async fn a_sender_at_the_limit_refuses_to_seal_and_the_receiver_sees_a_clean_end() {
    let ((_, mut client_tx), (mut agent_rx, _)) = connected().await;
    // Two frames left before the counter would wrap: both sides move their counter together.
    client_tx.set_counter_for_test(u64::MAX - 2);
    agent_rx.set_counter_for_test(u64::MAX - 2);
    client_tx
        .send_stream(&StreamMsg::Stdin(b"one"))
        .await
        .unwrap();
    client_tx
        .send_stream(&StreamMsg::Stdin(b"two"))
        .await
        .unwrap();
    let refused = client_tx.send_stream(&StreamMsg::Stdin(b"three")).await;
    assert!(
        matches!(refused, Err(ProtocolError::CounterExhausted)),
        "{refused:?}"
    );
    // The refused frame was never written: the sender ends the connection instead.
    client_tx.shutdown().await.unwrap();
    assert_eq!(
        agent_rx.next_stream_msg().await.unwrap(),
        Some(StreamMsg::Stdin(b"one"))
    );
    assert_eq!(
        agent_rx.next_stream_msg().await.unwrap(),
        Some(StreamMsg::Stdin(b"two"))
    );
    assert_eq!(agent_rx.next_stream_msg().await.unwrap(), None);
}

#[tokio::test]
async fn a_receiver_at_the_limit_refuses_to_open_rather_than_reuse_a_nonce() {
    let ((mut client_rx, _), (_, mut agent_tx)) = connected().await;
    agent_tx.set_counter_for_test(u64::MAX - 1);
    client_rx.set_counter_for_test(u64::MAX - 1);
    agent_tx
        .send_server(&ServerMsg::Stdout(b"last"))
        .await
        .unwrap();
    assert_eq!(
        client_rx.next_server_msg().await.unwrap(),
        Some(ServerMsg::Stdout(b"last"))
    );
    // A peer that ignores the limit and sends one more frame (sealed with a wrapped counter)
    // is refused: the receiver's counter is spent.
    agent_tx.set_counter_for_test(0);
    agent_tx
        .send_server(&ServerMsg::Stdout(b"wrapped"))
        .await
        .unwrap();
    let result = client_rx.next_server_msg().await;
    assert!(
        matches!(result, Err(ProtocolError::CounterExhausted)),
        "{result:?}"
    );
}

#[tokio::test]
async fn counters_that_disagree_fail_the_integrity_check() {
    // A frame sealed under one counter never opens under another: a replayed or skipped frame
    // is caught even near the limit.
    let ((_, mut client_tx), (mut agent_rx, _)) = connected().await;
    client_tx.set_counter_for_test(u64::MAX - 3);
    agent_rx.set_counter_for_test(u64::MAX - 2);
    client_tx.send_stream(&StreamMsg::StdinEof).await.unwrap();
    let result = agent_rx.next_stream_msg().await;
    assert!(
        matches!(result, Err(ProtocolError::Integrity)),
        "{result:?}"
    );
}
