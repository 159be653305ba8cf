//! The mutual-authentication handshake, as states that are consumed on each step.
//!
//! ```text
//! agent  -> client  ServerHello  magic "RXEC", version, nonce_s (32), eph_pub_s (32)
//! client -> agent   ClientHello  magic, version, nonce_c, eph_pub_c, key id, client proof
//! agent  -> client  ServerProof  server proof           (or Refused "authentication failed")
//! ```
//!
//! Both proofs are HMAC-SHA256 over a transcript hash, under keys that HKDF derives from the
//! pre-shared secret *and* the X25519 shared secret, with distinct labels per role. Nothing here
//! touches a socket: each step takes the peer's frame and returns the bytes to send, so the
//! whole exchange is unit-tested in memory. Code that runs before both proofs are checked has no
//! [`Session`] to decrypt or send commands with.

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::error::ProtocolError;
use crate::frame::{self, Frame};
use crate::keyfile::{valid_key_id, Secret};
use crate::session::{DirectionKeys, Opener, Sealer};

/// The first bytes of both hellos: this is our protocol.
pub const MAGIC: [u8; 4] = *b"RXEC";
/// The protocol version; the transcript covers it, so it cannot be altered in flight.
pub const VERSION: u8 = 1;

/// Frame kinds used before the session is established.
pub mod kind {
    /// Agent's hello: magic, version, nonce, ephemeral public key.
    pub const SERVER_HELLO: u8 = 0x01;
    /// Client's hello: magic, version, nonce, ephemeral public key, key id, proof.
    pub const CLIENT_HELLO: u8 = 0x02;
    /// Agent's proof.
    pub const SERVER_PROOF: u8 = 0x03;
    /// Agent's refusal, a short UTF-8 text; the agent closes after sending it.
    pub const REFUSED: u8 = 0x04;
}

/// The only refusal text sent for a wrong key id or proof, so the two cannot be told apart.
pub const AUTH_FAILED: &str = "authentication failed";

const SERVER_HELLO_LEN: usize = 4 + 1 + 32 + 32;
const PROOF_LEN: usize = 32;
const SALT: &[u8] = b"rexec v1 key schedule";
const LABEL_CLIENT_FINISHED: &[u8] = b"rexec v1 client finished";
const LABEL_SERVER_FINISHED: &[u8] = b"rexec v1 server finished";
const LABEL_C2S_KEY: &[u8] = b"rexec v1 c2s key";
const LABEL_C2S_IV: &[u8] = b"rexec v1 c2s iv";
const LABEL_S2C_KEY: &[u8] = b"rexec v1 s2c key";
const LABEL_S2C_IV: &[u8] = b"rexec v1 s2c iv";

/// An established session: what one side seals with and what it opens with.
pub struct Session {
    /// Seals frames this side sends.
    pub sealer: Sealer,
    /// Opens frames this side receives.
    pub opener: Opener,
}

/// The agent's first state: its hello is ready to send.
pub struct ServerHandshake {
    hello: Vec<u8>,
    eph: StaticSecret,
}

/// Who the client proved to be: what every decision about an authenticated connection (audit,
/// and per-key policy) starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Principal {
    /// The key id the client proved it holds.
    pub key_id: String,
}

/// What the agent has once the client is authenticated.
pub struct ServerEstablished {
    /// Who the client is.
    pub principal: Principal,
    /// The ServerProof frame to send before anything else.
    pub reply: Vec<u8>,
    /// The session keys.
    pub session: Session,
}

/// The client's first state: waiting for the agent's hello.
pub struct ClientHandshake {
    key_id: String,
    secret: Secret,
    nonce: [u8; 32],
    eph: StaticSecret,
}

/// The client's second state: its hello is sent, the agent's proof is awaited.
pub struct AwaitServerProof {
    /// HMAC under the agent's finished key, already fed the transcript: the proof it expects.
    server_mac: Hmac<Sha256>,
    session: Session,
}

/// Refusal frame with `text`, sent in the clear before closing.
pub fn refusal(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    frame::encode(kind::REFUSED, text.as_bytes(), &mut out);
    out
}

impl ServerHandshake {
    /// A fresh handshake with a nonce and ephemeral key from the OS random source.
    pub fn new() -> Self {
        Self::from_randomness(random32(), random32())
    }

    /// A handshake from given randomness; tests use it to replay a conversation exactly.
    pub fn from_randomness(nonce: [u8; 32], eph_secret: [u8; 32]) -> Self {
        let eph = StaticSecret::from(eph_secret);
        let mut payload = Vec::with_capacity(SERVER_HELLO_LEN);
        payload.extend_from_slice(&MAGIC);
        payload.push(VERSION);
        payload.extend_from_slice(&nonce);
        payload.extend_from_slice(PublicKey::from(&eph).as_bytes());
        let mut hello = Vec::new();
        frame::encode(kind::SERVER_HELLO, &payload, &mut hello);
        Self { hello, eph }
    }

    /// The ServerHello frame to send first.
    pub fn hello(&self) -> &[u8] {
        &self.hello
    }

    /// Checks the client's hello and proof; `lookup` maps a key id to its secret.
    ///
    /// An unknown key id costs the same work as a wrong proof and fails the same way.
    pub fn receive_client_hello<'k>(
        self,
        frame: Frame<'_>,
        lookup: impl FnOnce(&str) -> Option<&'k Secret>,
    ) -> Result<ServerEstablished, ProtocolError> {
        if frame.kind != kind::CLIENT_HELLO {
            return Err(ProtocolError::UnexpectedFrame(frame.kind));
        }
        let hello = ClientHello::parse(frame.payload)?;
        let peer = PublicKey::from(hello.eph_pub);
        let dh = self.eph.diffie_hellman(&peer);
        if !dh.was_contributory() {
            return Err(ProtocolError::WeakKey);
        }
        // Made on every path, so an unknown key id costs exactly what a known one does.
        let dummy = Secret::from_bytes(random32());
        let known = lookup(hello.key_id);
        let secret = known.unwrap_or(&dummy);
        let mut transcript = Sha256::new();
        transcript.update(&self.hello);
        transcript.update(frame.header());
        transcript.update(&frame.payload[..frame.payload.len() - PROOF_LEN]);
        let h1: [u8; 32] = transcript.clone().finalize().into();

        let schedule = KeySchedule::new(secret, dh.as_bytes());
        let mut mac = schedule.finished_mac(LABEL_CLIENT_FINISHED, &h1);
        mac.update(&h1);
        let proof_ok = mac.verify_slice(hello.proof).is_ok();
        if !proof_ok || known.is_none() {
            return Err(ProtocolError::AuthFailed);
        }

        transcript.update(hello.proof);
        let h2: [u8; 32] = transcript.finalize().into();
        let server_proof = schedule.proof(LABEL_SERVER_FINISHED, &h2);
        let mut reply = Vec::new();
        frame::encode(kind::SERVER_PROOF, server_proof.as_ref(), &mut reply);
        let (c2s, s2c) = schedule.traffic_keys(&h2);
        Ok(ServerEstablished {
            principal: Principal {
                key_id: hello.key_id.to_owned(),
            },
            reply,
            session: Session {
                sealer: Sealer::new(&s2c),
                opener: Opener::new(&c2s),
            },
        })
    }
}

impl Default for ServerHandshake {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientHandshake {
    /// A client handshake for `key_id`, with randomness from the OS.
    pub fn new(key_id: &str, secret: Secret) -> Self {
        Self::from_randomness(key_id, secret, random32(), random32())
    }

    /// A client handshake from given randomness (tests).
    pub fn from_randomness(
        key_id: &str,
        secret: Secret,
        nonce: [u8; 32],
        eph_secret: [u8; 32],
    ) -> Self {
        Self {
            key_id: key_id.to_owned(),
            secret,
            nonce,
            eph: StaticSecret::from(eph_secret),
        }
    }

    /// Takes the agent's hello; returns the ClientHello frame to send and the next state.
    pub fn receive_server_hello(
        self,
        frame: Frame<'_>,
    ) -> Result<(Vec<u8>, AwaitServerProof), ProtocolError> {
        if frame.kind == kind::REFUSED {
            // The agent never refuses before its hello for a bad key, so this text is not taken
            // as a verdict on the key: whoever sent it has proved nothing.
            return Err(ProtocolError::Refused(printable(frame.payload)));
        }
        if frame.kind != kind::SERVER_HELLO {
            return Err(ProtocolError::UnexpectedFrame(frame.kind));
        }
        let p = frame.payload;
        if p.len() < 5 || p[..4] != MAGIC {
            return Err(ProtocolError::BadMagic);
        }
        if p[4] != VERSION {
            return Err(ProtocolError::VersionMismatch(p[4]));
        }
        if p.len() != SERVER_HELLO_LEN {
            return Err(ProtocolError::Malformed("server hello"));
        }
        if !valid_key_id(&self.key_id) {
            return Err(ProtocolError::Malformed("key id"));
        }
        let mut server_pub = [0u8; 32];
        server_pub.copy_from_slice(&p[37..69]);
        let dh = self.eph.diffie_hellman(&PublicKey::from(server_pub));
        if !dh.was_contributory() {
            return Err(ProtocolError::WeakKey);
        }

        let mut payload = Vec::with_capacity(4 + 1 + 64 + 1 + self.key_id.len() + PROOF_LEN);
        payload.extend_from_slice(&MAGIC);
        payload.push(VERSION);
        payload.extend_from_slice(&self.nonce);
        payload.extend_from_slice(PublicKey::from(&self.eph).as_bytes());
        // valid_key_id bounds the length to 64, so it fits in a byte.
        payload.push(self.key_id.len() as u8);
        payload.extend_from_slice(self.key_id.as_bytes());
        let header = frame::header(kind::CLIENT_HELLO, payload.len() + PROOF_LEN);

        let mut transcript = Sha256::new();
        transcript.update(frame.header());
        transcript.update(frame.payload);
        transcript.update(header);
        transcript.update(&payload);
        let h1: [u8; 32] = transcript.clone().finalize().into();
        let schedule = KeySchedule::new(&self.secret, dh.as_bytes());
        let proof = schedule.proof(LABEL_CLIENT_FINISHED, &h1);
        transcript.update(proof.as_ref());
        let h2: [u8; 32] = transcript.finalize().into();

        let mut hello = Vec::with_capacity(frame::HEADER_LEN + payload.len() + PROOF_LEN);
        hello.extend_from_slice(&header);
        hello.extend_from_slice(&payload);
        hello.extend_from_slice(proof.as_ref());

        let (c2s, s2c) = schedule.traffic_keys(&h2);
        let next = AwaitServerProof {
            server_mac: {
                let mut mac = schedule.finished_mac(LABEL_SERVER_FINISHED, &h2);
                mac.update(&h2);
                mac
            },
            session: Session {
                sealer: Sealer::new(&c2s),
                opener: Opener::new(&s2c),
            },
        };
        Ok((hello, next))
    }
}

impl AwaitServerProof {
    /// Checks the agent's proof; only then is the session handed out.
    pub fn receive_server_proof(self, frame: Frame<'_>) -> Result<Session, ProtocolError> {
        match frame.kind {
            kind::SERVER_PROOF => {}
            kind::REFUSED => return Err(refused(frame.payload)),
            other => return Err(ProtocolError::UnexpectedFrame(other)),
        }
        self.server_mac
            .verify_slice(frame.payload)
            .map_err(|_| ProtocolError::BadServerProof)?;
        Ok(self.session)
    }
}

/// Refusal text as something safe to print: printable ASCII only, at most 200 characters, so a
/// peer cannot move the cursor or reorder a terminal line with control or bidi characters.
fn printable(payload: &[u8]) -> String {
    payload
        .iter()
        .take(200)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect()
}

fn refused(payload: &[u8]) -> ProtocolError {
    let text = printable(payload);
    if text == AUTH_FAILED {
        ProtocolError::AuthFailed
    } else {
        ProtocolError::Refused(text)
    }
}

struct ClientHello<'a> {
    eph_pub: [u8; 32],
    key_id: &'a str,
    proof: &'a [u8],
}

impl<'a> ClientHello<'a> {
    fn parse(p: &'a [u8]) -> Result<Self, ProtocolError> {
        if p.len() < 5 || p[..4] != MAGIC {
            return Err(ProtocolError::BadMagic);
        }
        if p[4] != VERSION {
            return Err(ProtocolError::VersionMismatch(p[4]));
        }
        let id_len = *p.get(69).ok_or(ProtocolError::Malformed("client hello"))? as usize;
        if p.len() != 70 + id_len + PROOF_LEN {
            return Err(ProtocolError::Malformed("client hello"));
        }
        let key_id = std::str::from_utf8(&p[70..70 + id_len])
            .ok()
            .filter(|id| valid_key_id(id))
            .ok_or(ProtocolError::Malformed("key id"))?;
        let mut eph_pub = [0u8; 32];
        eph_pub.copy_from_slice(&p[37..69]);
        Ok(Self {
            eph_pub,
            key_id,
            proof: &p[70 + id_len..],
        })
    }
}

/// HKDF over the pre-shared secret and the X25519 shared secret.
struct KeySchedule(Hkdf<Sha256>);

impl KeySchedule {
    fn new(psk: &Secret, dh: &[u8; 32]) -> Self {
        let mut ikm = Zeroizing::new([0u8; 64]);
        ikm[..32].copy_from_slice(psk.as_bytes());
        ikm[32..].copy_from_slice(dh);
        Self(Hkdf::<Sha256>::new(Some(SALT), ikm.as_ref()))
    }

    fn expand<const N: usize>(&self, label: &[u8], transcript: &[u8; 32]) -> Zeroizing<[u8; N]> {
        let mut out = Zeroizing::new([0u8; N]);
        // N is at most 32 here, far below HKDF-SHA256's 8160-byte limit.
        #[allow(clippy::expect_used)]
        self.0
            .expand_multi_info(&[label, transcript], out.as_mut())
            .expect("HKDF output length is within limits");
        out
    }

    fn finished_mac(&self, label: &[u8], transcript: &[u8; 32]) -> Hmac<Sha256> {
        let key = self.expand::<32>(label, transcript);
        #[allow(clippy::expect_used)] // HMAC takes keys of any length.
        <Hmac<Sha256> as Mac>::new_from_slice(key.as_ref()).expect("any key length works")
    }

    fn proof(&self, label: &[u8], transcript: &[u8; 32]) -> Zeroizing<[u8; 32]> {
        let mut mac = self.finished_mac(label, transcript);
        mac.update(transcript);
        Zeroizing::new(mac.finalize().into_bytes().into())
    }

    /// Client-to-agent and agent-to-client keys.
    fn traffic_keys(&self, h2: &[u8; 32]) -> (DirectionKeys, DirectionKeys) {
        let c2s = DirectionKeys {
            key: *self.expand::<32>(LABEL_C2S_KEY, h2),
            iv: *self.expand::<12>(LABEL_C2S_IV, h2),
        };
        let s2c = DirectionKeys {
            key: *self.expand::<32>(LABEL_S2C_KEY, h2),
            iv: *self.expand::<12>(LABEL_S2C_IV, h2),
        };
        (c2s, s2c)
    }
}

fn random32() -> [u8; 32] {
    let mut out = [0u8; 32];
    OsRng.fill_bytes(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{parse, MAX_HANDSHAKE_FRAME_LEN};

    fn frame_of(bytes: &[u8]) -> Frame<'_> {
        let (frame, used) = parse(bytes, MAX_HANDSHAKE_FRAME_LEN).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        frame
    }

    fn secret(b: u8) -> Secret {
        Secret::from_bytes([b; 32])
    }

    /// Runs a handshake where the agent knows `agent_key` under id "ops" and the client uses
    /// `client_key`; `tamper` may alter the client hello in flight.
    fn run(
        agent_key: u8,
        client_id: &str,
        client_key: u8,
        tamper: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(Session, Session), ProtocolError> {
        let server = ServerHandshake::new();
        let server_hello = server.hello().to_vec();
        let client = ClientHandshake::new(client_id, secret(client_key));
        let (mut client_hello, await_proof) =
            client.receive_server_hello(frame_of(&server_hello))?;
        tamper(&mut client_hello);
        let known = secret(agent_key);
        let established = server.receive_client_hello(frame_of(&client_hello), |id| {
            (id == "ops").then_some(&known)
        })?;
        assert_eq!(established.principal.key_id, "ops");
        let client_session = await_proof.receive_server_proof(frame_of(&established.reply))?;
        Ok((client_session, established.session))
    }

    #[test]
    fn matching_keys_establish_a_working_session_both_ways() {
        let (mut client, mut server) = run(9, "ops", 9, |_| {}).unwrap();
        let mut wire = Vec::new();
        client.sealer.seal(0x10, b"ls -l", &mut wire).unwrap();
        let (f, _) = parse(&wire, frame::MAX_FRAME_LEN).unwrap().unwrap();
        let header = f.header();
        let mut payload = f.payload.to_vec();
        assert_eq!(server.opener.open(header, &mut payload).unwrap(), b"ls -l");

        let mut back = Vec::new();
        server.sealer.seal(0x20, b"total 0", &mut back).unwrap();
        let (f, _) = parse(&back, frame::MAX_FRAME_LEN).unwrap().unwrap();
        let mut payload = f.payload.to_vec();
        assert_eq!(
            client.opener.open(f.header(), &mut payload).unwrap(),
            b"total 0"
        );
    }

    #[test]
    fn wrong_secret_fails_with_auth_failed() {
        assert!(matches!(
            run(9, "ops", 8, |_| {}),
            Err(ProtocolError::AuthFailed)
        ));
    }

    #[test]
    fn unknown_key_id_fails_the_same_way() {
        assert!(matches!(
            run(9, "nobody", 9, |_| {}),
            Err(ProtocolError::AuthFailed)
        ));
    }

    #[test]
    fn tampering_any_byte_of_the_client_hello_fails() {
        let len = {
            let server = ServerHandshake::new();
            let client = ClientHandshake::new("ops", secret(9));
            let (hello, _) = client
                .receive_server_hello(frame_of(server.hello()))
                .unwrap();
            hello.len()
        };
        for i in frame::HEADER_LEN..len {
            let result = run(9, "ops", 9, |hello| hello[i] ^= 0x01);
            assert!(result.is_err(), "flip at byte {i} was accepted");
        }
    }

    #[test]
    fn tampered_server_hello_fails_the_client_or_the_agent() {
        for i in frame::HEADER_LEN..frame::HEADER_LEN + SERVER_HELLO_LEN {
            let server = ServerHandshake::new();
            let mut hello = server.hello().to_vec();
            hello[i] ^= 0x80;
            let client = ClientHandshake::new("ops", secret(9));
            let Ok((client_hello, _)) = client.receive_server_hello(frame_of(&hello)) else {
                continue; // refused by the client already (magic, version, weak key)
            };
            let known = secret(9);
            let result = server.receive_client_hello(frame_of(&client_hello), |_| Some(&known));
            assert!(result.is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn version_byte_change_is_refused() {
        let server = ServerHandshake::new();
        let mut hello = server.hello().to_vec();
        hello[frame::HEADER_LEN + 4] = 2;
        let client = ClientHandshake::new("ops", secret(9));
        assert!(matches!(
            client.receive_server_hello(frame_of(&hello)),
            Err(ProtocolError::VersionMismatch(2))
        ));
    }

    #[test]
    fn server_proof_replayed_as_client_proof_is_rejected() {
        // A peer that has seen the agent's proof in one session reflects it back as its own
        // proof in the same transcript position; distinct role labels make it fail.
        let server = ServerHandshake::from_randomness([1; 32], [2; 32]);
        let client = ClientHandshake::from_randomness("ops", secret(9), [3; 32], [4; 32]);
        let (client_hello, _) = client
            .receive_server_hello(frame_of(server.hello()))
            .unwrap();
        let known = secret(9);
        let established = server
            .receive_client_hello(frame_of(&client_hello), |_| Some(&known))
            .unwrap();
        let server_proof = &established.reply[frame::HEADER_LEN..];

        let server = ServerHandshake::from_randomness([1; 32], [2; 32]);
        let mut forged = client_hello.clone();
        let n = forged.len();
        forged[n - PROOF_LEN..].copy_from_slice(server_proof);
        let result = server.receive_client_hello(frame_of(&forged), |_| Some(&known));
        assert!(matches!(result, Err(ProtocolError::AuthFailed)));
    }

    #[test]
    fn client_hello_replayed_to_a_new_handshake_is_rejected() {
        let server = ServerHandshake::new();
        let client = ClientHandshake::new("ops", secret(9));
        let (client_hello, _) = client
            .receive_server_hello(frame_of(server.hello()))
            .unwrap();
        let known = secret(9);
        let fresh = ServerHandshake::new();
        let result = fresh.receive_client_hello(frame_of(&client_hello), |_| Some(&known));
        assert!(matches!(result, Err(ProtocolError::AuthFailed)));
    }

    #[test]
    fn agent_without_the_key_cannot_prove_itself() {
        let server = ServerHandshake::new();
        let client = ClientHandshake::new("ops", secret(9));
        let (_, await_proof) = client
            .receive_server_hello(frame_of(server.hello()))
            .unwrap();
        let mut fake = Vec::new();
        frame::encode(kind::SERVER_PROOF, &[0u8; 32], &mut fake);
        assert!(matches!(
            await_proof.receive_server_proof(frame_of(&fake)),
            Err(ProtocolError::BadServerProof)
        ));
    }

    #[test]
    fn low_order_keys_are_rejected_on_both_sides() {
        // The all-zero point is of low order: any shared secret with it is all zeros.
        let mut hello = Vec::new();
        let mut payload = MAGIC.to_vec();
        payload.push(VERSION);
        payload.extend_from_slice(&[0u8; 64]);
        frame::encode(kind::SERVER_HELLO, &payload, &mut hello);
        let client = ClientHandshake::new("ops", secret(9));
        assert!(matches!(
            client.receive_server_hello(frame_of(&hello)),
            Err(ProtocolError::WeakKey)
        ));

        let server = ServerHandshake::new();
        let client = ClientHandshake::new("ops", secret(9));
        let (mut client_hello, _) = client
            .receive_server_hello(frame_of(server.hello()))
            .unwrap();
        let start = frame::HEADER_LEN + 37;
        client_hello[start..start + 32].fill(0);
        let known = secret(9);
        let result = server.receive_client_hello(frame_of(&client_hello), |_| Some(&known));
        assert!(matches!(result, Err(ProtocolError::WeakKey)));
    }

    #[test]
    fn agent_hello_sent_back_to_an_agent_is_refused() {
        let server = ServerHandshake::new();
        let echo = server.hello().to_vec();
        let known = secret(9);
        let result = server.receive_client_hello(frame_of(&echo), |_| Some(&known));
        assert!(matches!(
            result,
            Err(ProtocolError::UnexpectedFrame(kind::SERVER_HELLO))
        ));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The worked example in docs/protocol.md: fixed randomness, key id "ops", secret 0x05 x 32.
    #[test]
    fn known_answer_vector_matches_docs() {
        let server = ServerHandshake::from_randomness([1; 32], [2; 32]);
        let client = ClientHandshake::from_randomness("ops", secret(5), [3; 32], [4; 32]);
        let server_hello = server.hello().to_vec();
        let (client_hello, await_proof) = client
            .receive_server_hello(frame_of(&server_hello))
            .unwrap();
        let known = secret(5);
        let established = server
            .receive_client_hello(frame_of(&client_hello), |id| {
                (id == "ops").then_some(&known)
            })
            .unwrap();
        let mut session = await_proof
            .receive_server_proof(frame_of(&established.reply))
            .unwrap();
        let mut body = Vec::new();
        crate::message::Request::Exec(crate::message::ExecRequest {
            command: b"true".to_vec(),
            ..Default::default()
        })
        .encode(&mut body);
        let mut exec = Vec::new();
        session
            .sealer
            .seal(crate::message::kind::EXEC, &body, &mut exec)
            .unwrap();

        assert_eq!(
            hex(&server_hello),
            "000000460152584543010101010101010101010101010101010101010101010101010101010101010101\
             ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59"
        );
        assert_eq!(
            hex(&client_hello),
            "0000006a0252584543010303030303030303030303030303030303030303030303030303030303030303\
             ac01b2209e86354fb853237b5de0f4fab13c7fcbf433a61c019369617fecf10b036f7073\
             68d73584a9190678aba723d7b13b19e3e66349450caef92eff400ac34eac1df0"
        );
        assert_eq!(
            hex(&established.reply),
            "0000002103b218c5411c651754cf7268e52dd00b9e5b5baeaa1edcea8f93ee032801b77182"
        );
        assert_eq!(
            hex(&body),
            "00000000000000000000000004747275650000000000000000"
        );
        assert_eq!(
            hex(&exec),
            "0000002a10c54f8c8fcad057fe9f1432a604a8d36beabd669fccd4ba5f6ab6f673e91f3427a04a6acee047b64b14"
        );
    }

    #[test]
    fn refusal_text_reaches_the_client() {
        let client = ClientHandshake::new("ops", secret(9));
        let refusal_frame = refusal("too many unauthenticated connections");
        match client.receive_server_hello(frame_of(&refusal_frame)) {
            Err(ProtocolError::Refused(text)) => {
                assert_eq!(text, "too many unauthenticated connections")
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("refusal accepted as a hello"),
        }
        // Before the agent's hello even "authentication failed" is only a refusal, and terminal
        // control and bidi characters are neutralized.
        let client = ClientHandshake::new("ops", secret(9));
        match client
            .receive_server_hello(frame_of(&refusal("authentication failed\u{202e}\x1b[2J")))
        {
            Err(ProtocolError::Refused(text)) => assert_eq!(text, "authentication failed????[2J"),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("refusal accepted as a hello"),
        }
    }
}
