//! Property tests of everything that parses peer input: the frame codec, the message decoders,
//! the handshake steps and the sealed session. Arbitrary bytes never panic, every encoded value
//! decodes to itself, and whatever decodes re-encodes to the same bytes.

// Test code: a failed expectation is a failed test, so unwrap, expect and panic are the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use proptest::collection::vec;
use proptest::prelude::*;
use rexec_shared::frame::{self, HEADER_LEN, MAX_FRAME_LEN, MAX_HANDSHAKE_FRAME_LEN};
use rexec_shared::handshake::{kind as hs, ClientHandshake, ServerHandshake};
use rexec_shared::keyfile::{derive_agent_key, Secret};
use rexec_shared::message::{ExecRequest, ExitStatus, Request, ScriptInfo, ServerMsg, StreamMsg};
use rexec_shared::name::AgentName;
use rexec_shared::session::{DirectionKeys, Opener, Sealer};
use rexec_shared::transport::{FrameReader, SealedReader};
use rexec_shared::ProtocolError;
use tokio::io::{AsyncRead, ReadBuf};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

/// A reader that hands out its bytes in the given chunk sizes, as a socket might.
struct Chunked {
    data: Vec<u8>,
    pos: usize,
    sizes: Vec<usize>,
    next: usize,
}

impl AsyncRead for Chunked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let size = self
            .sizes
            .get(self.next)
            .copied()
            .unwrap_or(usize::MAX)
            .max(1);
        self.next += 1;
        let n = size.min(buf.remaining()).min(self.data.len() - self.pos);
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

fn keys(byte: u8) -> DirectionKeys {
    DirectionKeys {
        key: [byte; 32],
        iv: [byte ^ 0x5a; 12],
    }
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn exec_request() -> impl Strategy<Value = ExecRequest> {
    (
        bytes(200),
        vec((bytes(20), bytes(40)), 0..6),
        prop::option::of(vec(any::<u8>(), 1..40)),
        prop::option::of(1..u64::MAX),
        any::<bool>(),
        prop::option::of((bytes(40), any::<[u8; 32]>())),
    )
        .prop_map(
            |(command, env, cwd, timeout_ms, stdin, script)| ExecRequest {
                command,
                env,
                cwd,
                timeout_ms,
                stdin,
                script: script.map(|(name, digest)| ScriptInfo { name, digest }),
            },
        )
}

/// An owned client message, from which the borrowed form is made.
#[derive(Debug, Clone)]
enum Client {
    Exec(ExecRequest),
    Stdin(Vec<u8>),
    StdinEof,
    Cancel(u8),
    Ping,
}

/// A client message in either of its forms: the request, or a message that follows it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ClientForm<'a> {
    Request(Request),
    Stream(StreamMsg<'a>),
}

impl ClientForm<'_> {
    fn kind(&self) -> u8 {
        match self {
            Self::Request(r) => r.kind(),
            Self::Stream(m) => m.kind(),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Request(r) => r.encode(out),
            Self::Stream(m) => m.encode(out),
        }
    }
}

/// Decodes a client body with whichever decoder knows `kind`; the two know disjoint kinds.
fn decode_client(kind: u8, body: &[u8]) -> Result<ClientForm<'_>, ProtocolError> {
    let request = Request::decode(kind, body);
    let stream = StreamMsg::decode(kind, body);
    assert!(
        request.is_err() || stream.is_err(),
        "kind {kind:#04x} decodes as a request and as a stream message"
    );
    match (request, stream) {
        (Ok(r), _) => Ok(ClientForm::Request(r)),
        (_, Ok(m)) => Ok(ClientForm::Stream(m)),
        (Err(e), _) => Err(e),
    }
}

impl Client {
    fn as_msg(&self) -> ClientForm<'_> {
        match self {
            Self::Exec(req) => ClientForm::Request(Request::Exec(req.clone())),
            Self::Stdin(data) => ClientForm::Stream(StreamMsg::Stdin(data)),
            Self::StdinEof => ClientForm::Stream(StreamMsg::StdinEof),
            Self::Cancel(signal) => ClientForm::Stream(StreamMsg::Cancel { signal: *signal }),
            Self::Ping => ClientForm::Request(Request::Ping),
        }
    }
}

fn client_msg() -> impl Strategy<Value = Client> {
    prop_oneof![
        exec_request().prop_map(Client::Exec),
        bytes(300).prop_map(Client::Stdin),
        Just(Client::StdinEof),
        any::<u8>().prop_map(Client::Cancel),
        Just(Client::Ping),
    ]
}

/// An owned agent message.
#[derive(Debug, Clone)]
enum Server {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(ExitStatus),
    Error(String),
    Pong(String),
}

impl Server {
    fn as_msg(&self) -> ServerMsg<'_> {
        match self {
            Self::Stdout(data) => ServerMsg::Stdout(data),
            Self::Stderr(data) => ServerMsg::Stderr(data),
            Self::Exit(status) => ServerMsg::Exit(*status),
            Self::Error(text) => ServerMsg::Error(text.clone()),
            Self::Pong(version) => ServerMsg::Pong {
                version: version.clone(),
            },
        }
    }
}

fn exit_status() -> impl Strategy<Value = ExitStatus> {
    // A process ends with a code or by a signal (1..=64), never both.
    let code = (0..=255i32).prop_map(|c| (Some(c), None));
    let signal = (1..=64i32).prop_map(|s| (None, Some(s)));
    // The agent ends a command for its timeout or for its own shutdown, never both.
    let ended = prop_oneof![
        Just((false, None)),
        Just((true, None)),
        (1..=64i32).prop_map(|s| (false, Some(s))),
    ];
    let stdin_cut = proptest::option::of(any::<u64>());
    (prop_oneof![code, signal], ended, stdin_cut).prop_map(
        |((code, signal), (timed_out, shutdown_signal), stdin_cut)| ExitStatus {
            code,
            signal,
            timed_out,
            shutdown_signal,
            stdin_cut,
        },
    )
}

fn server_msg() -> impl Strategy<Value = Server> {
    prop_oneof![
        bytes(300).prop_map(Server::Stdout),
        bytes(300).prop_map(Server::Stderr),
        exit_status().prop_map(Server::Exit),
        ".{0,80}".prop_map(Server::Error),
        ".{0,40}".prop_map(Server::Pong),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parse_never_panics_and_its_answer_is_consistent(buf in bytes(2048), max in 1usize..=MAX_FRAME_LEN) {
        match frame::parse(&buf, max) {
            Ok(Some((f, used))) => {
                let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                prop_assert_eq!(used, 4 + len);
                prop_assert!(used <= buf.len() && len <= max && len >= 1);
                prop_assert_eq!(f.kind, buf[4]);
                prop_assert_eq!(f.payload, &buf[HEADER_LEN..used]);
            }
            Ok(None) => {
                if buf.len() >= 4 {
                    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    prop_assert!(buf.len() < 4 + len && len <= max && len >= 1);
                }
            }
            Err(ProtocolError::EmptyFrame) => prop_assert_eq!(&buf[..4], &[0, 0, 0, 0]),
            Err(ProtocolError::FrameTooLarge { len, max: limit }) => prop_assert!(len > limit),
            Err(other) => prop_assert!(false, "unexpected error {other}"),
        }
    }

    #[test]
    fn encoded_frames_parse_back_at_any_split(
        frames in vec((any::<u8>(), bytes(600)), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut wire = Vec::new();
        for (kind, payload) in &frames {
            frame::encode(*kind, payload, &mut wire);
        }
        // A prefix that ends inside the first frame is incomplete, never an error.
        let first = HEADER_LEN + frames[0].1.len();
        let at = cut.index(first);
        prop_assert_eq!(frame::parse(&wire[..at], MAX_FRAME_LEN).unwrap(), None);
        let mut rest = &wire[..];
        for (kind, payload) in &frames {
            let (f, used) = frame::parse(rest, MAX_FRAME_LEN).unwrap().unwrap();
            prop_assert_eq!(f.kind, *kind);
            prop_assert_eq!(f.payload, &payload[..]);
            rest = &rest[used..];
        }
        prop_assert!(rest.is_empty());
    }

    #[test]
    fn the_frame_reader_yields_the_same_frames_however_the_bytes_arrive(
        frames in vec((any::<u8>(), bytes(3000)), 0..5),
        sizes in vec(1usize..700, 0..40),
        cut_tail in any::<bool>(),
    ) {
        let mut wire = Vec::new();
        for (kind, payload) in &frames {
            frame::encode(*kind, payload, &mut wire);
        }
        if cut_tail {
            wire.extend_from_slice(&[0, 0, 0, 9, 1]);
        }
        let reader = Chunked { data: wire, pos: 0, sizes, next: 0 };
        let got = runtime().block_on(async move {
            let mut reader = FrameReader::new(reader);
            let mut got = Vec::new();
            loop {
                match reader.next(MAX_FRAME_LEN).await {
                    Ok(Some(f)) => got.push((f.kind(), f.payload.to_vec())),
                    Ok(None) => return (got, None),
                    Err(e) => return (got, Some(e)),
                }
            }
        });
        prop_assert_eq!(&got.0, &frames);
        prop_assert_eq!(got.1.is_some(), cut_tail);
        if let Some(e) = got.1 {
            prop_assert!(matches!(e, ProtocolError::Truncated), "{e}");
        }
    }

    #[test]
    fn arbitrary_client_bodies_never_panic_and_what_decodes_re_encodes_exactly(kind in 0x0eu8..0x1f, body in bytes(400)) {
        if let Ok(msg) = decode_client(kind, &body) {
            prop_assert_eq!(msg.kind(), kind);
            let mut again = Vec::new();
            msg.encode(&mut again);
            prop_assert_eq!(again, body);
        }
    }

    #[test]
    fn structured_exec_bodies_with_lying_lengths_never_panic(
        flags in any::<u8>(),
        timeout in any::<u64>(),
        lens in vec(any::<u32>(), 0..6),
        tail in bytes(64),
    ) {
        let mut body = vec![flags];
        body.extend_from_slice(&timeout.to_be_bytes());
        for len in lens {
            body.extend_from_slice(&len.to_be_bytes());
            body.extend_from_slice(&tail[..tail.len().min(len as usize)]);
        }
        let _ = Request::decode(rexec_shared::message::kind::EXEC, &body);
    }

    #[test]
    fn arbitrary_server_bodies_never_panic(kind in 0x1eu8..0x2e, body in bytes(400)) {
        if let Ok(msg) = ServerMsg::decode(kind, &body) {
            prop_assert_eq!(msg.kind(), kind);
        }
    }

    #[test]
    fn every_client_message_round_trips(msg in client_msg()) {
        let msg = msg.as_msg();
        let mut body = Vec::new();
        msg.encode(&mut body);
        prop_assert_eq!(decode_client(msg.kind(), &body).unwrap(), msg);
    }

    #[test]
    fn every_server_message_round_trips(msg in server_msg()) {
        let msg = msg.as_msg();
        let mut body = Vec::new();
        msg.encode(&mut body);
        prop_assert_eq!(ServerMsg::decode(msg.kind(), &body).unwrap(), msg);
    }

    #[test]
    fn sealed_messages_round_trip_and_any_flipped_bit_is_caught(
        msgs in vec(client_msg(), 1..5),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let mut sealer = Sealer::new(&keys(3));
        let mut wire = Vec::new();
        let mut bodies = Vec::new();
        for msg in &msgs {
            let msg = msg.as_msg();
            let mut body = Vec::new();
            msg.encode(&mut body);
            sealer.seal(msg.kind(), &body, &mut wire).unwrap();
            bodies.push((msg.kind(), body));
        }
        let open_all = |wire: Vec<u8>| {
            runtime().block_on(async move {
                let mut reader = SealedReader::new(FrameReader::new(&wire[..]), Opener::new(&keys(3)));
                let mut got = Vec::new();
                loop {
                    match reader.next().await {
                        Ok(Some((kind, body))) => got.push((kind, body.to_vec())),
                        Ok(None) => return Ok(got),
                        Err(e) => return Err(e),
                    }
                }
            })
        };
        prop_assert_eq!(open_all(wire.clone()).unwrap(), bodies.clone());
        let mut bad = wire;
        let at = flip.index(bad.len());
        bad[at] ^= 1 << bit;
        match open_all(bad) {
            // Only a complete, authentic stream is accepted, so the flip cannot pass unnoticed.
            Ok(got) => prop_assert!(false, "a flipped bit went unnoticed: {} frames opened", got.len()),
            Err(e) => prop_assert!(
                matches!(e, ProtocolError::Integrity | ProtocolError::Truncated | ProtocolError::FrameTooLarge { .. } | ProtocolError::EmptyFrame),
                "unexpected error {e}"
            ),
        }
    }

    #[test]
    fn arbitrary_bytes_in_a_session_never_panic_and_never_open(wire in bytes(4096)) {
        runtime().block_on(async move {
            let mut reader = SealedReader::new(FrameReader::new(&wire[..]), Opener::new(&keys(4)));
            // Random bytes do not carry a valid tag (2^-128), so nothing opens.
            assert!(!matches!(reader.next_stream_msg().await, Ok(Some(_))));
        });
    }

    #[test]
    fn arbitrary_client_hellos_never_panic_and_never_authenticate(payload in bytes(MAX_HANDSHAKE_FRAME_LEN), kind in prop_oneof![Just(hs::CLIENT_HELLO), any::<u8>()]) {
        let secret = Secret::from_bytes([9; 32]);
        let server = ServerHandshake::new();
        let mut wire = Vec::new();
        frame::encode(kind, &payload, &mut wire);
        let (f, _) = frame::parse(&wire, MAX_HANDSHAKE_FRAME_LEN).unwrap().unwrap();
        prop_assert!(server.receive_client_hello(f, |_, _| Some(&secret)).is_err());
    }

    #[test]
    fn a_mutated_real_client_hello_never_authenticates(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let secret = Secret::from_bytes([9; 32]);
        let server = ServerHandshake::new();
        let (f, _) = frame::parse(server.hello(), MAX_HANDSHAKE_FRAME_LEN).unwrap().unwrap();
        let name = AgentName::parse("agent1").unwrap();
        // What the agent holds for "ops" under its name: the unmutated hello would pass.
        let agent_key = derive_agent_key(&secret, "ops", &name);
        let (mut hello, _) = ClientHandshake::new("ops", &secret, &name).receive_server_hello(f).unwrap();
        let i = HEADER_LEN + at.index(hello.len() - HEADER_LEN);
        prop_assume!(hello[i] != byte);
        hello[i] = byte;
        let (f, _) = frame::parse(&hello, MAX_HANDSHAKE_FRAME_LEN).unwrap().unwrap();
        prop_assert!(server.receive_client_hello(f, |_, _| Some(&agent_key)).is_err());
    }

    #[test]
    fn arbitrary_agent_hellos_and_proofs_never_panic_and_never_pass(hello in bytes(100), proof in bytes(64), kind in any::<u8>()) {
        let client = ClientHandshake::new(
            "ops",
            &Secret::from_bytes([9; 32]),
            &AgentName::parse("agent1").unwrap(),
        );
        let mut wire = Vec::new();
        frame::encode(kind, &hello, &mut wire);
        let (f, _) = frame::parse(&wire, MAX_HANDSHAKE_FRAME_LEN).unwrap().unwrap();
        if let Ok((_, await_proof)) = client.receive_server_hello(f) {
            let mut wire = Vec::new();
            frame::encode(hs::SERVER_PROOF, &proof, &mut wire);
            let (f, _) = frame::parse(&wire, MAX_HANDSHAKE_FRAME_LEN).unwrap().unwrap();
            prop_assert!(await_proof.receive_server_proof(f).is_err());
        }
    }
}
