//! The agent under attack at the protocol level: garbage, oversized and cut frames, slow and idle
//! handshakes, forged and replayed hellos. Each attack is made against the real agent with a
//! hand-built client; each test checks that the connection is refused or closed, that nothing
//! ran, and that a legitimate client is served right after.

use std::io::Write;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use rexec_shared::frame::{self, MAX_FRAME_LEN, MAX_HANDSHAKE_FRAME_LEN};
use rexec_shared::handshake::{kind as hs, ClientHandshake};
use rexec_shared::keyfile::{KeyEntry, Secret};
use rexec_shared::session::{DirectionKeys, Sealer};

use crate::proxy::{Fault, Proxy};
use crate::rawclient::{
    authenticate, connect_from, encode_client, first_key, request, ClientMsg, HelloAnswer, RawConn,
};
use crate::util::{ctl, eventually, exec, scratch, Agent};

/// Generous bound for the agent to react to something on a loaded machine.
const REACT: Duration = Duration::from_secs(20);

/// Asserts that a legitimate `ctl exec` works against `agent`.
#[track_caller]
fn still_serves(agent: &Agent) {
    let run = exec(agent, "echo still-serving").run();
    run.expect_code(0);
    assert_eq!(run.out(), "still-serving\n", "{run}");
}

/// Asserts that the agent logged no command but the probes of [`still_serves`]: nothing that an
/// attack sent ran.
#[track_caller]
fn nothing_ran(agent: &Agent) {
    let log = agent.log();
    let ran: Vec<_> = log
        .lines()
        .filter(|l| l.contains("command finished") && !l.contains("echo still-serving"))
        .collect();
    assert!(ran.is_empty(), "a command ran: {ran:?}");
}

/// A ClientHello for `key` in answer to the hello `conn` has just received, and the state that
/// would check the agent's proof.
fn client_hello(
    conn: &mut RawConn,
    key: &KeyEntry,
) -> (Vec<u8>, rexec_shared::handshake::AwaitServerProof) {
    let hello = conn.read_server_hello();
    let (frame, _) = frame::parse(&hello, MAX_HANDSHAKE_FRAME_LEN)
        .unwrap()
        .unwrap();
    ClientHandshake::new(&key.id, &key.secret, &crate::util::agent_name())
        .receive_server_hello(frame)
        .expect("agent hello is valid")
}

/// Offsets inside a ClientHello frame (5-byte header, then the payload).
const VERSION_AT: usize = 5 + 4;
const EPH_PUB_AT: usize = 5 + 37;

/// Sends `bytes` as a client's first words and returns the agent's answer.
fn answer_to(agent: &Agent, tamper: impl FnOnce(&mut Vec<u8>)) -> HelloAnswer {
    let key = first_key(&agent.key_file);
    let mut conn = RawConn::connect(agent.addr);
    let (mut hello, _) = client_hello(&mut conn, &key);
    tamper(&mut hello);
    conn.send(&hello).expect("send hello");
    conn.read_hello_answer()
}

#[track_caller]
fn expect_refusal(answer: HelloAnswer, words: &str) {
    match answer {
        HelloAnswer::Refused(text) => assert!(
            text.contains(words),
            "refusal {text:?} does not say {words:?}"
        ),
        other => panic!("expected a refusal saying {words:?}, got {other:?}"),
    }
}

#[test]
fn garbage_is_refused_and_the_agent_keeps_serving() {
    let agent = Agent::start();
    let mut noise = b"GET / HTTP/1.1\r\nHost: agent\r\n\r\n".to_vec();
    let mut x: u32 = 0x1234_5678;
    noise.extend((0..64 * 1024).map(|_| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as u8
    }));
    for garbage in [&noise[..], &noise[31..], b"\0\0\0\0", b"\0\0\0\x05\x02RXEC"] {
        let mut conn = RawConn::connect(agent.addr);
        conn.read_server_hello();
        // The agent may close before it has read everything: a failed write is fine.
        let _ = conn.send(garbage);
        let (_, closed) = conn.drain_until_closed(REACT);
        assert!(
            closed,
            "agent kept a connection open after garbage {:?}",
            &garbage[..garbage.len().min(16)]
        );
    }
    agent.wait_for_log("bad handshake input", REACT);
    still_serves(&agent);
}

#[test]
fn an_oversized_length_is_refused_from_its_four_bytes_without_allocating() {
    let agent = Agent::start();
    still_serves(&agent);
    let before = agent.rss_kib();
    for _ in 0..200 {
        let mut conn = RawConn::connect(agent.addr);
        conn.read_server_hello();
        conn.send(&[0xff, 0xff, 0xff, 0xff]).expect("send length");
        let (_, closed) = conn.drain_until_closed(REACT);
        assert!(closed, "connection left open after a 4 GiB length");
    }
    agent.wait_for_log("exceeds the 512-byte limit", REACT);
    let grown = agent.rss_kib().saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "agent grew by {grown} KiB after 200 claims of 4 GiB"
    );
    nothing_ran(&agent);
    still_serves(&agent);
}

#[test]
fn authenticated_claims_of_big_frames_cost_only_what_arrives() {
    // After authentication a frame may be up to ~1 MiB; a peer that claims that much and sends
    // a little must not make the agent hold the claimed length.
    const CONNS: usize = 100;
    let agent = Agent::start_with(&["--handshake-timeout", "60"]);
    let key = first_key(&agent.key_file);
    still_serves(&agent);
    let before = agent.rss_kib();
    let mut held = Vec::new();
    for _ in 0..CONNS {
        let mut authed = authenticate(agent.addr, &key).expect("authenticate");
        let mut bytes = frame::header(0x10, MAX_FRAME_LEN - 1).to_vec();
        bytes.extend_from_slice(&[0u8; 1024]);
        authed.conn.send(&bytes).expect("send a partial frame");
        held.push(authed);
    }
    // Give the agent time to read what was sent, watching its memory all along.
    let mut peak = 0;
    let end = Instant::now() + Duration::from_secs(2);
    while Instant::now() < end {
        peak = peak.max(agent.rss_kib());
        std::thread::sleep(Duration::from_millis(50));
    }
    let grown = peak.saturating_sub(before);
    assert!(
        grown < 48 * 1024,
        "agent grew by {grown} KiB for {CONNS} claims of {MAX_FRAME_LEN} bytes with 1 KiB sent each"
    );
    // A length beyond the session limit is refused at once, and said to be an integrity failure.
    drop(held);
    let mut fresh = authenticate(agent.addr, &key).expect("authenticate");
    fresh
        .conn
        .send(&[0xff, 0xff, 0xff, 0xff, 0x10])
        .expect("send");
    let result = fresh.collect().expect("agent explains");
    let error = result.error.expect("an error message");
    assert!(
        error.contains("integrity") && error.contains("nothing was run"),
        "{error}"
    );
    nothing_ran(&agent);
    still_serves(&agent);
}

#[test]
fn a_frame_cut_in_half_closes_the_connection() {
    let agent = Agent::start_with(&["--handshake-timeout", "2"]);
    let key = first_key(&agent.key_file);

    // Half a hello, then the client closes its side: the agent sees a truncated frame.
    let mut conn = RawConn::connect(agent.addr);
    let (hello, _) = client_hello(&mut conn, &key);
    conn.send(&hello[..hello.len() / 2]).expect("send half");
    conn.stream.shutdown(Shutdown::Write).expect("half-close");
    let (_, closed) = conn.drain_until_closed(REACT);
    assert!(closed, "connection left open after a truncated hello");
    agent.wait_for_log("truncated", REACT);

    // Half a hello, then silence: the handshake timeout closes it.
    let mut conn = RawConn::connect(agent.addr);
    let (hello, _) = client_hello(&mut conn, &key);
    conn.send(&hello[..hello.len() / 2]).expect("send half");
    let (_, closed) = conn.drain_until_closed(REACT);
    assert!(
        closed,
        "connection left open after half a hello and silence"
    );
    agent.wait_for_log("handshake not completed within", REACT);

    // Half of a sealed request after a good handshake: no request within the timeout.
    let mut authed = authenticate(agent.addr, &key).expect("authenticate");
    let exec_frame = authed.seal(&ClientMsg::Exec(request("echo should-not-run")));
    authed
        .conn
        .send(&exec_frame[..exec_frame.len() / 2])
        .expect("send half");
    let (_, closed) = authed.conn.drain_until_closed(REACT);
    assert!(closed, "connection left open after half a request");
    agent.wait_for_log("no request within the handshake timeout", REACT);
    nothing_ran(&agent);
    still_serves(&agent);
}

#[test]
fn a_slow_handshake_is_cut_off_at_the_handshake_timeout() {
    let agent = Agent::start_with(&["--handshake-timeout", "2"]);
    let key = first_key(&agent.key_file);
    let mut conn = RawConn::connect(agent.addr);
    let (hello, _) = client_hello(&mut conn, &key);
    // One byte every 50 ms: the whole hello would take over 5 s.
    let started = Instant::now();
    let mut sent = 0;
    for byte in &hello {
        if conn.stream.write_all(&[*byte]).is_err() {
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = conn.read_hello_answer();
    assert!(
        matches!(answer, HelloAnswer::Closed),
        "slow hello got {answer:?} after {sent} bytes in {:?}",
        started.elapsed()
    );
    agent.wait_for_log("handshake not completed within", REACT);
    nothing_ran(&agent);
    still_serves(&agent);
}

/// Opens `n` connections to `addr` from `from` that do nothing at all.
fn idle_connections(from: IpAddr, addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| connect_from(from, addr).expect("open an idle connection"))
        .collect()
}

/// Opens `n` connections that read the agent's hello and send part of a valid ClientHello.
fn half_handshakes(agent: &Agent, n: usize) -> Vec<RawConn> {
    let key = first_key(&agent.key_file);
    (0..n)
        .map(|_| {
            let mut conn = RawConn::connect(agent.addr);
            let (hello, _) = client_hello(&mut conn, &key);
            conn.send(&hello[..40]).expect("send part of a hello");
            conn
        })
        .collect()
}

/// Runs a legitimate exec that must get in within `connect` seconds.
#[track_caller]
fn gets_in(agent: &Agent, connect: &str) {
    let run = ctl([
        "exec",
        "-n",
        "--connect-timeout",
        connect,
        "--key-file",
        agent.key_file.to_str().unwrap(),
        &agent.target(),
        "echo in",
    ])
    .run();
    run.expect_code(0);
    assert_eq!(run.out(), "in\n", "{run}");
}

#[test]
fn hundreds_of_idle_and_half_finished_handshakes_do_not_keep_a_client_out() {
    // A handshake timeout far longer than the client's connect timeout: the idle connections
    // must give way by the unauthenticated bound, not by timing out.
    let agent = Agent::start_with(&["--handshake-timeout", "120"]);
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let idle = idle_connections(loopback, agent.addr, 300);
    let half = half_handshakes(&agent, 100);
    for _ in 0..5 {
        gets_in(&agent, "10");
    }
    agent.wait_for_log("dropped to make room", REACT);
    drop((idle, half));
    still_serves(&agent);
}

#[test]
fn idle_handshakes_cannot_take_the_connection_slots_of_authenticated_clients() {
    // Four slots: two held by running commands, the rest contended by idle connections. The
    // idle ones must give way to a client that authenticates, long before they time out.
    let agent = Agent::start_with(&[
        "--max-connections",
        "4",
        "--max-unauthenticated",
        "4",
        "--handshake-timeout",
        "120",
    ]);
    let key = first_key(&agent.key_file);
    let mut running = Vec::new();
    for _ in 0..2 {
        let mut authed = authenticate(agent.addr, &key).expect("authenticate");
        authed
            .send(&ClientMsg::Exec(request("sleep 300")))
            .expect("send exec");
        running.push(authed);
    }
    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let idle = idle_connections(loopback, agent.addr, 50);
    for _ in 0..3 {
        gets_in(&agent, "10");
    }
    drop(idle);
    // Closing the two clients ends their commands (the agent kills the groups).
    drop(running);
    agent.wait_for_log("client went away", REACT);
    still_serves(&agent);
}

#[test]
fn the_per_source_bound_closes_a_flooding_address_at_once_and_spares_others() {
    let agent = Agent::start_with(&[
        "--max-unauthenticated-per-source",
        "4",
        "--handshake-timeout",
        "120",
    ]);
    let attacker: IpAddr = "127.0.0.2".parse().unwrap();
    let mut held: Vec<RawConn> = idle_connections(attacker, agent.addr, 4)
        .into_iter()
        .map(RawConn::from_stream)
        .collect();
    for conn in &mut held {
        conn.read_server_hello();
    }
    // Beyond its share, the attacker's connections are closed without a hello.
    for _ in 0..20 {
        let mut conn = RawConn::from_stream(connect_from(attacker, agent.addr).expect("connect"));
        let (got, closed) = conn.drain_until_closed(REACT);
        assert!(
            closed && got.is_empty(),
            "connection beyond the per-source bound got {} bytes",
            got.len()
        );
    }
    // The bound is per address: a client from elsewhere gets in, and the attacker's held
    // handshakes were not evicted to make room for it.
    gets_in(&agent, "10");
    for conn in &mut held {
        let (_, closed) = conn.drain_until_closed(Duration::from_millis(100));
        assert!(!closed, "a held handshake was closed");
    }
    // Freeing one slot lets the attacker's address in once more.
    held.pop();
    assert!(
        eventually(REACT, || {
            let mut conn =
                RawConn::from_stream(connect_from(attacker, agent.addr).expect("connect"));
            matches!(
                conn.read_frame(MAX_HANDSHAKE_FRAME_LEN),
                Ok(Some((hs::SERVER_HELLO, _, _)))
            )
        }),
        "the per-source count was not released"
    );
    agent.wait_for_log(
        "too many unauthenticated connections from this address",
        REACT,
    );
}

#[test]
fn without_a_per_source_bound_one_address_may_hold_many_handshakes() {
    let agent = Agent::start_with(&["--handshake-timeout", "120"]);
    let attacker: IpAddr = "127.0.0.2".parse().unwrap();
    let mut held: Vec<RawConn> = idle_connections(attacker, agent.addr, 20)
        .into_iter()
        .map(RawConn::from_stream)
        .collect();
    for conn in &mut held {
        conn.read_server_hello();
    }
    gets_in(&agent, "10");
}

#[test]
fn low_order_x25519_keys_are_refused_and_nothing_runs() {
    let agent = Agent::start();
    let hex = |s: &str| -> [u8; 32] {
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    };
    // The points of small order on Curve25519 and non-canonical encodings of them.
    let weak = [
        [0u8; 32],
        hex("0100000000000000000000000000000000000000000000000000000000000000"),
        hex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
        hex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
        hex("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
        hex("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
        hex("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
    ];
    for point in weak {
        let answer = answer_to(&agent, |hello| {
            hello[EPH_PUB_AT..EPH_PUB_AT + 32].copy_from_slice(&point)
        });
        expect_refusal(answer, "weak");
    }
    nothing_ran(&agent);
    still_serves(&agent);
}

#[test]
fn a_changed_version_byte_is_refused() {
    let agent = Agent::start();
    // 1 is the version before host-bound keys: refused by name like any other.
    for version in [0u8, 1, 3, 0xff] {
        let answer = answer_to(&agent, |hello| hello[VERSION_AT] = version);
        expect_refusal(answer, &format!("unsupported protocol version {version}"));
    }
    nothing_ran(&agent);
    still_serves(&agent);
}

#[test]
fn the_agents_own_hello_sent_back_is_refused() {
    let agent = Agent::start();
    let mut conn = RawConn::connect(agent.addr);
    let hello = conn.read_server_hello();
    conn.send(&hello).expect("send the hello back");
    expect_refusal(conn.read_hello_answer(), "unexpected frame kind 0x01");
    nothing_ran(&agent);
    still_serves(&agent);
}

#[test]
fn two_agents_connected_to_each_other_refuse_each_other() {
    let a = Agent::start();
    let b = Agent::start();
    let to_a = TcpStream::connect(a.addr).expect("connect to a");
    let to_b = TcpStream::connect(b.addr).expect("connect to b");
    let splice = |from: &TcpStream, to: &TcpStream| {
        let (mut from, mut to) = (from.try_clone().unwrap(), to.try_clone().unwrap());
        from.set_read_timeout(Some(REACT)).unwrap();
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut to);
            let _ = to.shutdown(Shutdown::Write);
        })
    };
    let one = splice(&to_a, &to_b);
    let two = splice(&to_b, &to_a);
    one.join().unwrap();
    two.join().unwrap();
    for agent in [&a, &b] {
        agent.wait_for_log("unexpected frame kind 0x01", REACT);
        nothing_ran(agent);
        still_serves(agent);
    }
}

#[test]
fn a_command_sent_before_the_proof_is_refused_and_nothing_runs() {
    let agent = Agent::start();
    let key = first_key(&agent.key_file);
    let dir = scratch();
    let pwned = |n: u32| dir.path().join(format!("pwned-{n}"));
    let touch = |n: u32| request(&format!("touch {}", pwned(n).display()));

    // A plaintext exec frame in place of the hello.
    let mut conn = RawConn::connect(agent.addr);
    conn.read_server_hello();
    let mut bytes = Vec::new();
    frame::encode(0x10, &encode_client(&ClientMsg::Exec(touch(1))), &mut bytes);
    conn.send(&bytes).expect("send");
    expect_refusal(conn.read_hello_answer(), "unexpected frame kind 0x10");

    // A hello under the wrong secret, with a sealed exec sent right behind it.
    let mut conn = RawConn::connect(agent.addr);
    let wrong = KeyEntry {
        id: key.id.clone(),
        secret: Secret::from_bytes([7; 32]),
    };
    let (mut bytes, _) = client_hello(&mut conn, &wrong);
    let exec_frame = sealed_with_a_guessed_session(2);
    bytes.extend_from_slice(&exec_frame);
    conn.send(&bytes).expect("send");
    expect_refusal(conn.read_hello_answer(), "authentication failed");

    // A hello without its proof, then an exec frame.
    let mut conn = RawConn::connect(agent.addr);
    let (hello, _) = client_hello(&mut conn, &key);
    let body = &hello[frame::HEADER_LEN..hello.len() - 32];
    let mut bytes = Vec::new();
    frame::encode(hs::CLIENT_HELLO, body, &mut bytes);
    frame::encode(0x10, &encode_client(&ClientMsg::Exec(touch(3))), &mut bytes);
    conn.send(&bytes).expect("send");
    expect_refusal(conn.read_hello_answer(), "malformed client hello");

    // An exec frame sealed in another, finished session, sent as the first frame of a new one.
    let mut other = authenticate(agent.addr, &key).expect("authenticate");
    let stolen = other.seal(&ClientMsg::Exec(touch(4)));
    drop(other);
    let mut conn = RawConn::connect(agent.addr);
    conn.read_server_hello();
    conn.send(&stolen).expect("send");
    expect_refusal(conn.read_hello_answer(), "unexpected frame kind 0x10");

    agent.wait_for_log("authentication failed", REACT);
    for n in 1..=4 {
        assert!(!pwned(n).exists(), "request {n} ran");
    }
    nothing_ran(&agent);
    still_serves(&agent);
}

/// An exec frame sealed under keys the attacker chose: without the secret it cannot derive the
/// live session's keys, and the agent must not open anything before the proof anyway.
fn sealed_with_a_guessed_session(n: u32) -> Vec<u8> {
    let keys = DirectionKeys {
        key: [7; 32],
        iv: [7; 12],
    };
    let mut out = Vec::new();
    let body = encode_client(&ClientMsg::Exec(request(&format!("echo guessed-{n}"))));
    Sealer::new(&keys).seal(0x10, &body, &mut out).unwrap();
    out
}

/// Appends one line to `file` each time it runs.
fn counting_command(file: &Path) -> String {
    format!("echo run >> {}", file.display())
}

fn lines_in(file: &Path) -> usize {
    std::fs::read_to_string(file)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[test]
fn bytes_replayed_from_an_earlier_session_run_nothing() {
    let agent = Agent::start();
    let key = first_key(&agent.key_file);
    let dir = scratch();
    let count = dir.path().join("count");

    // One legitimate run through a recording relay.
    let proxy = Proxy::start(agent.addr, Fault::None);
    let run = ctl([
        "exec",
        "-n",
        "--key-file",
        agent.key_file.to_str().unwrap(),
        &proxy.addr.to_string(),
        &counting_command(&count),
    ])
    .run();
    run.expect_code(0);
    let recorded = proxy.finish();
    assert_eq!(lines_in(&count), 1);
    let (_, hello_len) = frame::parse(&recorded.to_agent, MAX_HANDSHAKE_FRAME_LEN)
        .ok()
        .flatten()
        .map(|(f, used)| (f.kind, used))
        .expect("recorded hello");

    // The whole recording, replayed on new connections: the agent's fresh nonce makes the old
    // proof worthless.
    for _ in 0..3 {
        let mut conn = RawConn::connect(agent.addr);
        conn.read_server_hello();
        conn.send(&recorded.to_agent).expect("replay");
        expect_refusal(conn.read_hello_answer(), "authentication failed");
    }

    // The old sealed request after a fresh, genuine handshake: the session keys differ.
    let mut authed = authenticate(agent.addr, &key).expect("authenticate");
    authed
        .send_raw(&recorded.to_agent[hello_len..])
        .expect("replay the request");
    let result = authed.collect().expect("agent explains");
    let error = result.error.expect("an error message");
    assert!(
        error.contains("integrity check failed on the agent"),
        "{error}"
    );

    agent.wait_for_log("reading the request failed", REACT);
    assert_eq!(lines_in(&count), 1, "a replayed request ran");
    still_serves(&agent);
}

#[test]
fn an_unauthenticated_flood_does_not_flood_the_log() {
    let agent = Agent::start_with(&["--max-unauthenticated-per-source", "2"]);
    let capped: IpAddr = "127.0.0.3".parse().unwrap();
    let noisy: IpAddr = "127.0.0.4".parse().unwrap();
    let started = Instant::now();
    // Refused by the per-source bound, and closed for garbage: both are logged, within a rate.
    let _held = idle_connections(capped, agent.addr, 2);
    let garbage = |from: IpAddr| {
        let mut conn = RawConn::from_stream(connect_from(from, agent.addr).expect("connect"));
        let _ = conn.send(b"\xff\xff\xff\xff");
        let (_, closed) = conn.drain_until_closed(REACT);
        assert!(closed, "a refused connection stayed open");
    };
    for _ in 0..400 {
        garbage(capped);
        garbage(noisy);
    }
    // The count of what was left out is logged when the next line is due.
    assert!(
        eventually(REACT, || {
            garbage(noisy);
            agent.log().contains("were not logged")
        }),
        "no line counts the suppressed ones"
    );
    let seconds = started.elapsed().as_secs() + 1;
    let lines = agent
        .log()
        .lines()
        .filter(|l| l.contains("before authentication") || l.contains("too many unauthenticated"))
        .count() as u64;
    assert!(
        lines <= 21 * seconds,
        "{lines} log lines about unauthenticated connections in {seconds} s"
    );
    still_serves(&agent);
}
