//! Fuzz harnesses: drive the real protocol code of `rexec-shared` with arbitrary input, the way
//! the agent and ctl drive it over a socket, but from memory so each run takes microseconds.
//!
//! The harnesses never check results beyond "no panic, no hang, no huge allocation": a
//! property that must hold for every input is asserted, anything else is the code's business.

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use rexec_shared::frame::{self, MAX_HANDSHAKE_FRAME_LEN};
use rexec_shared::handshake::{refusal, ClientHandshake, ServerHandshake};
use rexec_shared::keyfile::{derive_agent_key, AgentKeys, Secret};
use rexec_shared::name::AgentName;
use rexec_shared::message::{Request, ServerMsg, StreamMsg};
use rexec_shared::session::{DirectionKeys, Opener, Sealer};
use rexec_shared::transport::{
    server_handshake, FrameReader, SealedReader, ServerConnection, ServerHandshakeError,
};
use rexec_shared::ProtocolError;

/// The key id of the harnesses' client, and the name of their agent.
pub const KEY_ID: &str = "fuzz";
/// The agent name the harnesses' agent is enrolled for.
pub const AGENT_NAME: &str = "fuzz-agent";
/// The client's master key.
const SECRET: [u8; 32] = [0x42; 32];

fn agent_name() -> AgentName {
    match AgentName::parse(AGENT_NAME) {
        Ok(name) => name,
        Err(e) => panic!("the harness's agent name is valid: {e}"),
    }
}

/// Runs a future that never waits on anything but an in-memory reader, to completion.
///
/// Reading from a `&[u8]` is always ready, so a pending poll means the code under test waits
/// for input that can never come: that is a hang, and a bug.
fn run_now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("in-memory protocol code returned Pending"),
    }
}

/// How far an input got: what the seeds are checked against, so they keep reaching deep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reached {
    /// Not even one whole frame.
    NoFrame,
    /// A frame, refused by the handshake.
    Refused,
    /// Authenticated, and this many messages decoded after that.
    Session(usize),
}

/// The key file of the harnesses' agent: [`KEY_ID`] enrolled for [`AGENT_NAME`].
fn agent_keys() -> &'static AgentKeys {
    static KEYS: OnceLock<AgentKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let key = derive_agent_key(&Secret::from_bytes(SECRET), KEY_ID, &agent_name());
        let line = format!("{KEY_ID} {} {AGENT_NAME}\n", key.to_hex());
        match AgentKeys::parse(&line, Path::new("fuzz-keys")) {
            Ok(ring) => ring,
            Err(e) => panic!("the harness's key line is valid: {e}"),
        }
    })
}

/// The agent's side of the handshake on `input`, through the agent's own code
/// ([`server_handshake`], as `agent/src/connection.rs` calls it): one frame of at most
/// [`MAX_HANDSHAKE_FRAME_LEN`] bytes, checked as a ClientHello against the key ring, answered
/// with a proof or a refusal; after a proof, the request and the stream messages that follow.
pub fn agent_pre_auth(input: &[u8]) -> Reached {
    let handshake = ServerHandshake::from_randomness([1; 32], [2; 32]);
    let mut sent = Vec::new();
    run_now(async {
        let result = server_handshake(handshake, input, &mut sent, agent_keys()).await;
        match result {
            Ok(ServerConnection { reader, .. }) => {
                // Only reachable with the secret; the fuzzer cannot forge the HMAC.
                let Ok(Some((_, mut reader))) = reader.read_request().await else {
                    return Reached::Session(0);
                };
                let mut decoded = 1;
                while let Ok(Some(_)) = reader.next_stream_msg().await {
                    decoded += 1;
                }
                Reached::Session(decoded)
            }
            Err(ServerHandshakeError::Refused { error, asked }) => {
                // The hello and the refusal are all the agent sent: short, whatever came in.
                assert!(sent.len() < 4096, "refusal of {} bytes", sent.len());
                let _ = (error, asked);
                Reached::Refused
            }
            Err(ServerHandshakeError::Input(_) | ServerHandshakeError::Closed) => Reached::NoFrame,
            Err(ServerHandshakeError::Send { .. }) => panic!("writing to memory failed"),
        }
    })
}

/// ctl's side of the handshake on `input`: the agent's hello, then its proof or a refusal.
pub fn client_pre_auth(input: &[u8]) -> Reached {
    let client = ClientHandshake::from_randomness(
        KEY_ID,
        &Secret::from_bytes(SECRET),
        &agent_name(),
        [3; 32],
        [4; 32],
    );
    run_now(async {
        let mut frames = FrameReader::new(input);
        let Ok(Some(hello)) = frames.next(MAX_HANDSHAKE_FRAME_LEN).await else {
            return Reached::NoFrame;
        };
        let Ok((reply, await_proof)) = client.receive_server_hello(hello.as_frame()) else {
            return Reached::Refused;
        };
        assert!(frame::parse(&reply, MAX_HANDSHAKE_FRAME_LEN).is_ok_and(|f| f.is_some()));
        let Ok(Some(proof)) = frames.next(MAX_HANDSHAKE_FRAME_LEN).await else {
            return Reached::Refused;
        };
        let Ok(session) = await_proof.receive_server_proof(proof.as_frame()) else {
            return Reached::Refused;
        };
        let mut reader = SealedReader::new(frames, session.opener);
        let mut decoded = 0;
        while let Ok(Some(_)) = reader.next_server_msg().await {
            decoded += 1;
        }
        Reached::Session(decoded)
    })
}

/// Both pre-authentication paths: the first byte picks the side, the rest is what the peer sent.
pub fn pre_auth(data: &[u8]) -> Reached {
    let Some((&side, input)) = data.split_first() else {
        return Reached::NoFrame;
    };
    if side & 1 == 0 {
        agent_pre_auth(input)
    } else {
        client_pre_auth(input)
    }
}

/// Both directions of a session, keyed as a handshake would key them. The keys are fixed rather
/// than agreed per input: the handshake is the other target's business, and an X25519 agreement
/// per input would cost this one most of its speed.
struct Pair {
    client_sealer: Sealer,
    client_opener: Opener,
    agent_sealer: Sealer,
    agent_opener: Opener,
}

fn established_pair() -> Pair {
    let c2s = DirectionKeys {
        key: [0x11; 32],
        iv: [0x12; 12],
    };
    let s2c = DirectionKeys {
        key: [0x21; 32],
        iv: [0x22; 12],
    };
    Pair {
        client_sealer: Sealer::new(&c2s),
        client_opener: Opener::new(&s2c),
        agent_sealer: Sealer::new(&s2c),
        agent_opener: Opener::new(&c2s),
    }
}

/// The sealed session; returns how many messages were decoded. `data` is a list of operations, each
/// `op: u8 | len: u8 | bytes[len]`: op bit 0 clear seals `bytes` as one frame whose kind is
/// `bytes[0]` (the rest is the body), set appends `bytes` raw to the wire (an attacker's
/// injection); op bit 1 picks the direction (agent reading the client, or ctl reading the
/// agent). The reader then decodes every frame as that side does.
pub fn session(data: &[u8]) -> usize {
    let Some((&first, mut ops)) = data.split_first() else {
        return 0;
    };
    let to_agent = first & 1 == 0;
    let mut pair = established_pair();
    let mut wire = Vec::new();
    while let [op, len, rest @ ..] = ops {
        let len = usize::from(*len).min(rest.len());
        let (bytes, tail) = rest.split_at(len);
        ops = tail;
        if op & 1 == 1 {
            wire.extend_from_slice(bytes);
            continue;
        }
        let Some((&kind, body)) = bytes.split_first() else {
            continue;
        };
        let sealer = if to_agent {
            &mut pair.client_sealer
        } else {
            &mut pair.agent_sealer
        };
        let sealed = sealer.seal(kind, body, &mut wire);
        assert!(sealed.is_ok() || matches!(sealed, Err(ProtocolError::FrameTooLarge { .. })));
    }
    let opener = if to_agent {
        pair.agent_opener
    } else {
        pair.client_opener
    };
    run_now(async {
        let mut reader = SealedReader::new(FrameReader::new(&wire[..]), opener);
        let mut decoded = 0;
        if to_agent {
            loop {
                decoded += 1;
                // The agent reads one request, then stream messages; here every frame is tried
                // as both, so neither decoder goes unfuzzed.
                match reader.next().await {
                    Ok(Some((kind, body))) => {
                        if let Ok(Request::Exec(req)) = Request::decode(kind, body) {
                            // What the agent copies out of a request is bounded by the frame.
                            let env: usize = req.env.iter().map(|(k, v)| k.len() + v.len()).sum();
                            assert!(req.command.len() + env <= frame::MAX_FRAME_LEN);
                        }
                        let _ = StreamMsg::decode(kind, body);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        } else {
            loop {
                decoded += 1;
                match reader.next_server_msg().await {
                    Ok(Some(ServerMsg::Stdout(data) | ServerMsg::Stderr(data))) => {
                        assert!(data.len() <= frame::MAX_FRAME_LEN);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
        }
        decoded - 1
    })
}

/// Seed inputs that reach deep into each harness (a valid hello, a proof, sealed messages),
/// as (target, file name, bytes); `examples/seeds.rs` writes them to `seeds/<target>/`.
pub fn seeds() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    let secret = Secret::from_bytes(SECRET);
    let agent_key = derive_agent_key(&secret, KEY_ID, &agent_name());
    let mut out = Vec::new();

    // The agent side: the ClientHello a real client sends to the harness's agent, followed by a
    // sealed Exec, then the same hello under an unknown key id.
    let server = ServerHandshake::from_randomness([1; 32], [2; 32]);
    for (name, id) in [
        ("agent-valid-hello", KEY_ID),
        ("agent-unknown-id", "someone-else"),
    ] {
        let client =
            ClientHandshake::from_randomness(id, &secret, &agent_name(), [9; 32], [10; 32]);
        let (hello_frame, _) = frame::parse(server.hello(), MAX_HANDSHAKE_FRAME_LEN)
            .ok()
            .flatten()
            .expect("hello");
        let (client_hello, await_proof) = client
            .receive_server_hello(hello_frame)
            .expect("client hello");
        let mut input = vec![0];
        input.extend_from_slice(&client_hello);
        if id == KEY_ID {
            let agent = ServerHandshake::from_randomness([1; 32], [2; 32]);
            let (f, _) = frame::parse(&client_hello, MAX_HANDSHAKE_FRAME_LEN)
                .ok()
                .flatten()
                .expect("parses");
            let established = agent
                .receive_client_hello(f, |_, _| Some(&agent_key))
                .expect("agent accepts");
            let (p, _) = frame::parse(&established.reply, MAX_HANDSHAKE_FRAME_LEN)
                .ok()
                .flatten()
                .expect("proof");
            let mut session = await_proof.receive_server_proof(p).expect("client accepts");
            let exec = Request::Exec(rexec_shared::message::ExecRequest {
                command: b"ls -l".to_vec(),
                env: vec![(b"A".to_vec(), b"1".to_vec())],
                cwd: Some(b"/tmp".to_vec()),
                timeout_ms: Some(1000),
                stdin: true,
                script: None,
            });
            let mut body = Vec::new();
            exec.encode(&mut body);
            session
                .sealer
                .seal(exec.kind(), &body, &mut input)
                .expect("seal");
            for msg in [
                StreamMsg::Stdin(b"input"),
                StreamMsg::StdinEof,
                StreamMsg::Cancel { signal: 2 },
            ] {
                let mut body = Vec::new();
                msg.encode(&mut body);
                session
                    .sealer
                    .seal(msg.kind(), &body, &mut input)
                    .expect("seal");
            }
        }
        out.push(("pre_auth", name, input));
    }

    // ctl's side: the agent's hello and its proof for the harness's client, then a sealed Exit.
    let agent = ServerHandshake::from_randomness([11; 32], [12; 32]);
    let client =
        ClientHandshake::from_randomness(KEY_ID, &secret, &agent_name(), [3; 32], [4; 32]);
    let (hello_frame, _) = frame::parse(agent.hello(), MAX_HANDSHAKE_FRAME_LEN)
        .ok()
        .flatten()
        .expect("hello");
    let (client_hello, _) = client
        .receive_server_hello(hello_frame)
        .expect("client hello");
    let mut input = vec![1];
    input.extend_from_slice(agent.hello());
    let (f, _) = frame::parse(&client_hello, MAX_HANDSHAKE_FRAME_LEN)
        .ok()
        .flatten()
        .expect("parses");
    let established = agent
        .receive_client_hello(f, |_, _| Some(&agent_key))
        .expect("agent accepts");
    input.extend_from_slice(&established.reply);
    let mut sealer = established.session.sealer;
    let exit = ServerMsg::Exit(rexec_shared::message::ExitStatus {
        code: Some(3),
        signal: None,
        timed_out: false,
        shutdown_signal: None,
        stdin_cut: None,
    });
    for msg in [ServerMsg::Stdout(b"out"), ServerMsg::Stderr(b"err"), exit] {
        let mut body = Vec::new();
        msg.encode(&mut body);
        sealer.seal(msg.kind(), &body, &mut input).expect("seal");
    }
    out.push(("pre_auth", "client-valid-exchange", input));
    let mut refused = vec![1];
    refused.extend_from_slice(&refusal("authentication failed"));
    out.push(("pre_auth", "client-refused", refused));

    // The session harness: one operation list per direction.
    let op = |kind: u8, body: &[u8]| {
        let mut v = vec![0, u8::try_from(body.len() + 1).expect("short body"), kind];
        v.extend_from_slice(body);
        v
    };
    let mut exec_body = Vec::new();
    Request::Exec(rexec_shared::message::ExecRequest {
        command: b"true".to_vec(),
        env: vec![(b"K".to_vec(), b"V".to_vec())],
        ..Default::default()
    })
    .encode(&mut exec_body);
    let mut to_agent = vec![0];
    to_agent.extend(op(0x10, &exec_body));
    to_agent.extend(op(0x11, b"stdin"));
    to_agent.extend(op(0x12, b""));
    to_agent.extend(op(0x13, &[15]));
    to_agent.extend([1, 4, 0, 0, 0, 9]);
    out.push(("session", "to-agent", to_agent));
    let mut to_ctl = vec![1];
    to_ctl.extend(op(0x20, b"out"));
    to_ctl.extend(op(0x21, b"err"));
    to_ctl.extend(op(0x22, &[1, 0, 0, 0, 3, 0, 0, 0, 0]));
    to_ctl.extend(op(0x23, b"no such directory"));
    to_ctl.extend(op(0x24, b"agent 0.1.0"));
    out.push(("session", "to-ctl", to_ctl));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trivial_input_stops_early() {
        assert_eq!(pre_auth(&[]), Reached::NoFrame);
        assert_eq!(pre_auth(&[0, 0, 0, 0]), Reached::NoFrame);
        assert_eq!(pre_auth(&[1, 0, 0, 0, 1, 1]), Reached::Refused);
        assert_eq!(session(&[]), 0);
    }

    #[test]
    fn session_harness_reaches_the_decoder() {
        // One sealed Ping frame to the agent: op 0, len 1, kind 0x14.
        assert_eq!(session(&[0, 0, 1, 0x14]), 1);
        // One sealed Exit frame to ctl, then one injected raw byte that cuts the stream.
        assert_eq!(
            session(&[1, 0, 10, 0x22, 1, 0, 0, 0, 3, 0, 0, 0, 0, 1, 1, 0]),
            1
        );
    }

    #[test]
    fn seeds_reach_the_session() {
        for (target, name, input) in seeds() {
            let reached = match target {
                "pre_auth" => pre_auth(&input),
                _ => Reached::Session(session(&input)),
            };
            let expected = match name {
                "agent-valid-hello" => Reached::Session(4),
                "client-valid-exchange" => Reached::Session(3),
                "agent-unknown-id" | "client-refused" => Reached::Refused,
                "to-agent" => Reached::Session(4),
                "to-ctl" => Reached::Session(5),
                other => panic!("seed {other} has no expectation"),
            };
            assert_eq!(reached, expected, "seed {target}/{name}");
        }
    }
}
