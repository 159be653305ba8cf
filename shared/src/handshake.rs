//! The mutual-authentication handshake (protocol version 2), as states that are consumed on
//! each step.
//!
//! ```text
//! agent  -> client  ServerHello  magic "RXEC", version, nonce_s (32), eph_pub_s (32)
//! client -> agent   ClientHello  magic, version, nonce_c, eph_pub_c, key id, agent name, proof
//! agent  -> client  ServerProof  server proof           (or Refused "authentication failed")
//! ```
//!
//! The client names the agent it expects; both sides authenticate with the key derived for
//! that (key id, agent name) from the client's master key ([`derive_agent_key`]): the client
//! derives it, the agent holds only it. Both proofs are HMAC-SHA256 over a transcript hash
//! that covers the version, both nonces and ephemeral keys, the key id and the agent name,
//! each length-prefixed, under keys that HKDF derives from the agent key *and* the X25519
//! shared secret, with a distinct label per role and purpose. Nothing here touches a socket:
//! each step takes the peer's frame and returns the bytes to send, so the whole exchange is
//! unit-tested in memory. Code that runs before both proofs are checked has no [`Session`] to
//! decrypt or send commands with.
//!
//! [`derive_agent_key`]: crate::keyfile::derive_agent_key

use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::codec::{put_bytes, put_u8, Reader};
use crate::error::ProtocolError;
use crate::frame::{self, Frame};
use crate::keyfile::{derive_agent_key, valid_key_id, Secret};
use crate::name::AgentName;
use crate::session::{DirectionKeys, Opener, Sealer};

/// The first bytes of both hellos: this is our protocol.
pub const MAGIC: [u8; 4] = *b"RXEC";
/// The protocol version; the transcript covers it, so it cannot be altered in flight. Version 1
/// (one secret shared by clients and agents) is not spoken: there is nothing to negotiate, so
/// nothing to downgrade to.
pub const VERSION: u8 = 2;

/// Frame kinds used before the session is established.
pub mod kind {
    /// Agent's hello: magic, version, nonce, ephemeral public key.
    pub const SERVER_HELLO: u8 = 0x01;
    /// Client's hello: magic, version, nonce, ephemeral public key, key id, agent name, proof.
    pub const CLIENT_HELLO: u8 = 0x02;
    /// Agent's proof.
    pub const SERVER_PROOF: u8 = 0x03;
    /// Agent's refusal, a short UTF-8 text; the agent closes after sending it.
    pub const REFUSED: u8 = 0x04;
}

/// The only refusal text sent for a wrong key id, agent name or proof, so they cannot be told
/// apart.
pub const AUTH_FAILED: &str = "authentication failed";

const SERVER_HELLO_LEN: usize = 4 + 1 + 32 + 32;
const PROOF_LEN: usize = 32;
const LABEL_TRANSCRIPT: &[u8] = b"rexec v2 transcript";
const SALT: &[u8] = b"rexec v2 key schedule";
const LABEL_CLIENT_FINISHED: &[u8] = b"rexec v2 client finished";
const LABEL_SERVER_FINISHED: &[u8] = b"rexec v2 server finished";
const LABEL_C2S_KEY: &[u8] = b"rexec v2 c2s key";
const LABEL_C2S_IV: &[u8] = b"rexec v2 c2s iv";
const LABEL_S2C_KEY: &[u8] = b"rexec v2 s2c key";
const LABEL_S2C_IV: &[u8] = b"rexec v2 s2c iv";

/// An established session: what one side seals with and what it opens with.
pub struct Session {
    /// Seals frames this side sends.
    pub sealer: Sealer,
    /// Opens frames this side receives.
    pub opener: Opener,
}

/// Who the client proved to be, and to which of the agent's names: what every decision about
/// an authenticated connection (audit, and per-key policy) starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Principal {
    /// The key id the client proved it holds.
    pub key_id: String,
    /// The agent name the client expected, and whose key it proved it holds.
    pub agent_name: AgentName,
}

/// The agent's first state: its hello is ready to send.
pub struct ServerHandshake {
    hello: Vec<u8>,
    nonce: [u8; 32],
    eph: StaticSecret,
    /// `eph`'s public key, made once: a scalar multiplication is most of a hello's cost.
    eph_pub: [u8; 32],
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
    agent_name: AgentName,
    agent_key: Secret,
    nonce: [u8; 32],
    eph: StaticSecret,
    /// `eph`'s public key, made with the state (before the agent's hello is in, so off the
    /// round trip's path).
    eph_pub: [u8; 32],
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

/// What both proofs and the key schedule cover, encoded field by field with length prefixes
/// (docs/protocol.md, "Transcript"): no two different handshakes encode alike.
struct Transcript<'a> {
    server_nonce: &'a [u8; 32],
    server_eph: &'a [u8; 32],
    client_nonce: &'a [u8; 32],
    client_eph: &'a [u8; 32],
    key_id: &'a str,
    agent_name: &'a AgentName,
}

impl Transcript<'_> {
    /// The hash the client's proof covers (h1), and the hasher to continue for h2.
    fn h1(&self) -> ([u8; 32], Sha256) {
        let mut fields = Vec::with_capacity(256);
        put_bytes(&mut fields, LABEL_TRANSCRIPT);
        put_u8(&mut fields, VERSION);
        put_bytes(&mut fields, self.server_nonce);
        put_bytes(&mut fields, self.server_eph);
        put_bytes(&mut fields, self.client_nonce);
        put_bytes(&mut fields, self.client_eph);
        put_bytes(&mut fields, self.key_id.as_bytes());
        put_bytes(&mut fields, self.agent_name.as_str().as_bytes());
        let mut hasher = Sha256::new();
        hasher.update(&fields);
        (hasher.clone().finalize().into(), hasher)
    }
}

/// h2: the transcript followed by the client's proof; the agent's proof and the traffic keys
/// cover it.
fn h2(mut hasher: Sha256, client_proof: &[u8]) -> [u8; 32] {
    let mut field = Vec::with_capacity(4 + PROOF_LEN);
    put_bytes(&mut field, client_proof);
    hasher.update(&field);
    hasher.finalize().into()
}

impl ServerHandshake {
    /// A fresh handshake with a nonce and ephemeral key from the OS random source.
    pub fn new() -> Self {
        Self::from_randomness(random32(), random32())
    }

    /// A handshake from given randomness; tests use it to replay a conversation exactly.
    pub fn from_randomness(nonce: [u8; 32], eph_secret: [u8; 32]) -> Self {
        let eph = StaticSecret::from(eph_secret);
        let eph_pub = PublicKey::from(&eph).to_bytes();
        let mut payload = Vec::with_capacity(SERVER_HELLO_LEN);
        payload.extend_from_slice(&MAGIC);
        payload.push(VERSION);
        payload.extend_from_slice(&nonce);
        payload.extend_from_slice(&eph_pub);
        let mut hello = Vec::new();
        frame::encode(kind::SERVER_HELLO, &payload, &mut hello);
        Self {
            hello,
            nonce,
            eph,
            eph_pub,
        }
    }

    /// The ServerHello frame to send first.
    pub fn hello(&self) -> &[u8] {
        &self.hello
    }

    /// Checks the client's hello and proof; `lookup` maps (key id, agent name) to the key this
    /// agent holds for them.
    ///
    /// An unknown key id or name costs the same work as a wrong proof and fails the same way.
    pub fn receive_client_hello<'k>(
        self,
        frame: Frame<'_>,
        lookup: impl FnOnce(&str, &AgentName) -> Option<&'k Secret>,
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
        // Made on every path, so an unknown key id or name costs exactly what a known one does.
        let dummy = Secret::from_bytes(random32());
        let known = lookup(hello.key_id, &hello.agent_name);
        let secret = known.unwrap_or(&dummy);
        let server_eph = self.eph_pub;
        let (h1, hasher) = Transcript {
            server_nonce: &self.nonce,
            server_eph: &server_eph,
            client_nonce: &hello.nonce,
            client_eph: &hello.eph_pub,
            key_id: hello.key_id,
            agent_name: &hello.agent_name,
        }
        .h1();

        let schedule = KeySchedule::new(secret, dh.as_bytes());
        let mut mac = schedule.finished_mac(LABEL_CLIENT_FINISHED, &h1);
        mac.update(&h1);
        let proof_ok = mac.verify_slice(hello.proof).is_ok();
        if !proof_ok || known.is_none() {
            return Err(ProtocolError::AuthFailed);
        }

        let h2 = h2(hasher, hello.proof);
        let server_proof = schedule.proof(LABEL_SERVER_FINISHED, &h2);
        let mut reply = Vec::new();
        frame::encode(kind::SERVER_PROOF, server_proof.as_ref(), &mut reply);
        let (c2s, s2c) = schedule.traffic_keys(&h2);
        Ok(ServerEstablished {
            principal: Principal {
                key_id: hello.key_id.to_owned(),
                agent_name: hello.agent_name,
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
    /// A client handshake with the master key `master` under `key_id`, for the agent named
    /// `agent_name`, with randomness from the OS.
    pub fn new(key_id: &str, master: &Secret, agent_name: &AgentName) -> Self {
        Self::from_randomness(key_id, master, agent_name, random32(), random32())
    }

    /// A client handshake from given randomness (tests).
    pub fn from_randomness(
        key_id: &str,
        master: &Secret,
        agent_name: &AgentName,
        nonce: [u8; 32],
        eph_secret: [u8; 32],
    ) -> Self {
        let eph = StaticSecret::from(eph_secret);
        let eph_pub = PublicKey::from(&eph).to_bytes();
        Self {
            key_id: key_id.to_owned(),
            agent_name: agent_name.clone(),
            agent_key: derive_agent_key(master, key_id, agent_name),
            nonce,
            eph,
            eph_pub,
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
        let mut r = Reader::new(&p[5..]);
        let server_nonce: [u8; 32] = r.array()?;
        let server_eph: [u8; 32] = r.array()?;
        let dh = self.eph.diffie_hellman(&PublicKey::from(server_eph));
        if !dh.was_contributory() {
            return Err(ProtocolError::WeakKey);
        }
        let client_eph = self.eph_pub;
        let name = self.agent_name.as_str();

        let mut payload =
            Vec::with_capacity(4 + 1 + 64 + 2 + self.key_id.len() + name.len() + PROOF_LEN);
        payload.extend_from_slice(&MAGIC);
        payload.push(VERSION);
        payload.extend_from_slice(&self.nonce);
        payload.extend_from_slice(&client_eph);
        // valid_key_id bounds the length to 64 and AgentName to 253: each fits in a byte.
        payload.push(self.key_id.len() as u8);
        payload.extend_from_slice(self.key_id.as_bytes());
        payload.push(name.len() as u8);
        payload.extend_from_slice(name.as_bytes());
        let header = frame::header(kind::CLIENT_HELLO, payload.len() + PROOF_LEN);

        let (h1, hasher) = Transcript {
            server_nonce: &server_nonce,
            server_eph: &server_eph,
            client_nonce: &self.nonce,
            client_eph: &client_eph,
            key_id: &self.key_id,
            agent_name: &self.agent_name,
        }
        .h1();
        let schedule = KeySchedule::new(&self.agent_key, dh.as_bytes());
        let proof = schedule.proof(LABEL_CLIENT_FINISHED, &h1);
        let h2 = h2(hasher, proof.as_ref());

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
    nonce: [u8; 32],
    eph_pub: [u8; 32],
    key_id: &'a str,
    agent_name: AgentName,
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
        let malformed = |_| ProtocolError::Malformed("client hello");
        let mut r = Reader::new(&p[5..]);
        let nonce = r.array().map_err(malformed)?;
        let eph_pub = r.array().map_err(malformed)?;
        let id_len = r.u8().map_err(malformed)?;
        let key_id = r.take(usize::from(id_len)).map_err(malformed)?;
        let name_len = r.u8().map_err(malformed)?;
        let name = r.take(usize::from(name_len)).map_err(malformed)?;
        let proof = r.take(PROOF_LEN).map_err(malformed)?;
        r.expect_empty().map_err(malformed)?;
        let key_id = std::str::from_utf8(key_id)
            .ok()
            .filter(|id| valid_key_id(id))
            .ok_or(ProtocolError::Malformed("key id"))?;
        // Only the canonical spelling is accepted, so one name has one encoding.
        let agent_name = std::str::from_utf8(name)
            .ok()
            .and_then(AgentName::from_canonical)
            .ok_or(ProtocolError::Malformed("agent name"))?;
        Ok(Self {
            nonce,
            eph_pub,
            key_id,
            agent_name,
            proof,
        })
    }
}

/// HKDF over the agent key and the X25519 shared secret.
struct KeySchedule(Hkdf<Sha256>);

impl KeySchedule {
    fn new(agent_key: &Secret, dh: &[u8; 32]) -> Self {
        let mut ikm = Zeroizing::new([0u8; 64]);
        ikm[..32].copy_from_slice(agent_key.as_bytes());
        ikm[32..].copy_from_slice(dh);
        Self(Hkdf::<Sha256>::new(Some(SALT), ikm.as_ref()))
    }

    /// HKDF-Expand with info = the label and the transcript hash, each length-prefixed.
    fn expand<const N: usize>(&self, label: &[u8], transcript: &[u8; 32]) -> Zeroizing<[u8; N]> {
        let mut info = Vec::with_capacity(8 + label.len() + 32);
        put_bytes(&mut info, label);
        put_bytes(&mut info, transcript);
        let mut out = Zeroizing::new([0u8; N]);
        // N is at most 32 here, far below HKDF-SHA256's 8160-byte limit.
        #[allow(clippy::expect_used)]
        self.0
            .expand(&info, out.as_mut())
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
    use crate::keyfile::enroll_line;

    fn frame_of(bytes: &[u8]) -> Frame<'_> {
        let (frame, used) = parse(bytes, MAX_HANDSHAKE_FRAME_LEN).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        frame
    }

    fn secret(b: u8) -> Secret {
        Secret::from_bytes([b; 32])
    }

    fn name(text: &str) -> AgentName {
        AgentName::parse(text).unwrap()
    }

    fn agent1() -> AgentName {
        name("agent1")
    }

    /// The key agent1 holds for the master `secret(b)` under key id "ops".
    fn agent_key(b: u8) -> Secret {
        derive_agent_key(&secret(b), "ops", &agent1())
    }

    /// Runs a handshake where agent1 holds the key for master `agent_master` under id "ops"
    /// and the client uses master `client_key`; `tamper` may alter the client hello in flight.
    fn run(
        agent_master: u8,
        client_id: &str,
        client_key: u8,
        tamper: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(Session, Session), ProtocolError> {
        let server = ServerHandshake::new();
        let server_hello = server.hello().to_vec();
        let client = ClientHandshake::new(client_id, &secret(client_key), &agent1());
        let (mut client_hello, await_proof) =
            client.receive_server_hello(frame_of(&server_hello))?;
        tamper(&mut client_hello);
        let known = agent_key(agent_master);
        let established = server.receive_client_hello(frame_of(&client_hello), |id, name| {
            (id == "ops" && *name == agent1()).then_some(&known)
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
    fn a_client_expecting_another_agent_fails_and_learns_nothing_more() {
        // agent1 holds keys for itself only; a client that expects agent2 gets the same
        // refusal as for a wrong key.
        let server = ServerHandshake::new();
        let client = ClientHandshake::new("ops", &secret(9), &name("agent2"));
        let (hello, _) = client
            .receive_server_hello(frame_of(server.hello()))
            .unwrap();
        let known = agent_key(9);
        let result = server.receive_client_hello(frame_of(&hello), |id, name| {
            (id == "ops" && *name == agent1()).then_some(&known)
        });
        assert!(matches!(result, Err(ProtocolError::AuthFailed)));
    }

    #[test]
    fn an_agent_key_for_one_name_does_not_answer_for_another() {
        // An agent that holds the key for "agent2" (stolen from agent2) but is asked for
        // agent1 by name: even offering that key for every name it is asked, its proof fails.
        let server = ServerHandshake::new();
        let client = ClientHandshake::new("ops", &secret(9), &agent1());
        let (hello, _) = client
            .receive_server_hello(frame_of(server.hello()))
            .unwrap();
        let stolen = derive_agent_key(&secret(9), "ops", &name("agent2"));
        let result = server.receive_client_hello(frame_of(&hello), |_, _| Some(&stolen));
        assert!(matches!(result, Err(ProtocolError::AuthFailed)));
    }

    #[test]
    fn the_principal_names_the_key_id_and_the_agent_name_the_client_expected() {
        let server = ServerHandshake::new();
        let client = ClientHandshake::new("ops", &secret(9), &name("alias.example"));
        let (hello, _) = client
            .receive_server_hello(frame_of(server.hello()))
            .unwrap();
        let for_alias = derive_agent_key(&secret(9), "ops", &name("alias.example"));
        let mut asked = None;
        let established = server
            .receive_client_hello(frame_of(&hello), |id, name| {
                asked = Some((id.to_owned(), name.clone()));
                Some(&for_alias)
            })
            .unwrap();
        assert_eq!(asked, Some(("ops".to_owned(), name("alias.example"))));
        assert_eq!(established.principal.key_id, "ops");
        assert_eq!(established.principal.agent_name, name("alias.example"));
    }

    #[test]
    fn a_name_in_non_canonical_form_is_refused_on_the_wire() {
        let server = ServerHandshake::new();
        let client = ClientHandshake::new("ops", &secret(9), &agent1());
        let (mut hello, _) = client
            .receive_server_hello(frame_of(server.hello()))
            .unwrap();
        // "agent1" -> "Agent1": same length, not canonical.
        let at = hello.windows(6).position(|w| w == b"agent1").unwrap();
        hello[at] = b'A';
        let known = agent_key(9);
        let result = server.receive_client_hello(frame_of(&hello), |_, _| Some(&known));
        assert!(matches!(
            result,
            Err(ProtocolError::Malformed("agent name"))
        ));
    }

    #[test]
    fn a_version_1_hello_is_refused_by_both_sides() {
        // A v1 client hello (version byte 1, no agent name) reaching a v2 agent.
        let server = ServerHandshake::new();
        let mut payload = MAGIC.to_vec();
        payload.push(1);
        payload.extend_from_slice(&[7u8; 64]);
        payload.push(3);
        payload.extend_from_slice(b"ops");
        payload.extend_from_slice(&[0u8; 32]);
        let mut v1 = Vec::new();
        frame::encode(kind::CLIENT_HELLO, &payload, &mut v1);
        let known = agent_key(9);
        assert!(matches!(
            server.receive_client_hello(frame_of(&v1), |_, _| Some(&known)),
            Err(ProtocolError::VersionMismatch(1))
        ));
        // A v1 agent's hello reaching a v2 client.
        let mut payload = MAGIC.to_vec();
        payload.push(1);
        payload.extend_from_slice(&[7u8; 64]);
        let mut v1 = Vec::new();
        frame::encode(kind::SERVER_HELLO, &payload, &mut v1);
        let client = ClientHandshake::new("ops", &secret(9), &agent1());
        assert!(matches!(
            client.receive_server_hello(frame_of(&v1)),
            Err(ProtocolError::VersionMismatch(1))
        ));
    }

    #[test]
    fn tampering_any_byte_of_the_client_hello_fails() {
        let len = {
            let server = ServerHandshake::new();
            let client = ClientHandshake::new("ops", &secret(9), &agent1());
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
            let client = ClientHandshake::new("ops", &secret(9), &agent1());
            let Ok((client_hello, _)) = client.receive_server_hello(frame_of(&hello)) else {
                continue; // refused by the client already (magic, version, weak key)
            };
            let known = agent_key(9);
            let result = server.receive_client_hello(frame_of(&client_hello), |_, _| Some(&known));
            assert!(result.is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn version_byte_change_is_refused() {
        let server = ServerHandshake::new();
        let mut hello = server.hello().to_vec();
        hello[frame::HEADER_LEN + 4] = 1;
        let client = ClientHandshake::new("ops", &secret(9), &agent1());
        assert!(matches!(
            client.receive_server_hello(frame_of(&hello)),
            Err(ProtocolError::VersionMismatch(1))
        ));
    }

    #[test]
    fn server_proof_replayed_as_client_proof_is_rejected() {
        // A peer that has seen the agent's proof in one session reflects it back as its own
        // proof in the same transcript position; distinct role labels make it fail.
        let server = ServerHandshake::from_randomness([1; 32], [2; 32]);
        let client =
            ClientHandshake::from_randomness("ops", &secret(9), &agent1(), [3; 32], [4; 32]);
        let (client_hello, _) = client
            .receive_server_hello(frame_of(server.hello()))
            .unwrap();
        let known = agent_key(9);
        let established = server
            .receive_client_hello(frame_of(&client_hello), |_, _| Some(&known))
            .unwrap();
        let server_proof = &established.reply[frame::HEADER_LEN..];

        let server = ServerHandshake::from_randomness([1; 32], [2; 32]);
        let mut forged = client_hello.clone();
        let n = forged.len();
        forged[n - PROOF_LEN..].copy_from_slice(server_proof);
        let result = server.receive_client_hello(frame_of(&forged), |_, _| Some(&known));
        assert!(matches!(result, Err(ProtocolError::AuthFailed)));
    }

    #[test]
    fn client_hello_replayed_to_a_new_handshake_is_rejected() {
        let server = ServerHandshake::new();
        let client = ClientHandshake::new("ops", &secret(9), &agent1());
        let (client_hello, _) = client
            .receive_server_hello(frame_of(server.hello()))
            .unwrap();
        let known = agent_key(9);
        let fresh = ServerHandshake::new();
        let result = fresh.receive_client_hello(frame_of(&client_hello), |_, _| Some(&known));
        assert!(matches!(result, Err(ProtocolError::AuthFailed)));
    }

    #[test]
    fn agent_without_the_key_cannot_prove_itself() {
        let server = ServerHandshake::new();
        let client = ClientHandshake::new("ops", &secret(9), &agent1());
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
        let client = ClientHandshake::new("ops", &secret(9), &agent1());
        assert!(matches!(
            client.receive_server_hello(frame_of(&hello)),
            Err(ProtocolError::WeakKey)
        ));

        let server = ServerHandshake::new();
        let client = ClientHandshake::new("ops", &secret(9), &agent1());
        let (mut client_hello, _) = client
            .receive_server_hello(frame_of(server.hello()))
            .unwrap();
        let start = frame::HEADER_LEN + 37;
        client_hello[start..start + 32].fill(0);
        let known = agent_key(9);
        let result = server.receive_client_hello(frame_of(&client_hello), |_, _| Some(&known));
        assert!(matches!(result, Err(ProtocolError::WeakKey)));
    }

    #[test]
    fn agent_hello_sent_back_to_an_agent_is_refused() {
        let server = ServerHandshake::new();
        let echo = server.hello().to_vec();
        let known = agent_key(9);
        let result = server.receive_client_hello(frame_of(&echo), |_, _| Some(&known));
        assert!(matches!(
            result,
            Err(ProtocolError::UnexpectedFrame(kind::SERVER_HELLO))
        ));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The values of the worked example in docs/protocol.md, section 8, in order: under each
    /// title line, the hex at the start of its indented lines, up to the first word that is
    /// not hex.
    fn documented_vector() -> Vec<String> {
        let doc = include_str!("../../docs/protocol.md");
        let section = doc
            .split("## 8. Worked example")
            .nth(1)
            .and_then(|rest| rest.split("\n## ").next())
            .expect("docs/protocol.md has section 8");
        let block = section
            .split("```text\n")
            .nth(1)
            .and_then(|rest| rest.split("```").next())
            .expect("section 8 has a text block");
        let mut values = Vec::new();
        let mut current: Option<String> = None;
        for line in block.lines() {
            if line.starts_with("  ") {
                let hex: String = line
                    .split_whitespace()
                    .take_while(|word| word.bytes().all(|b| b.is_ascii_hexdigit()))
                    .collect();
                current.get_or_insert_with(String::new).push_str(&hex);
            } else if let Some(value) = current.take() {
                values.push(value);
            }
        }
        values.extend(current);
        values
    }

    /// The worked example in docs/protocol.md: fixed randomness, key id "ops", master key
    /// 0x05 x 32, agent name "agent1". Every value is read from the document itself, so the
    /// document cannot drift from the code.
    #[test]
    fn known_answer_vector_matches_docs() {
        let server = ServerHandshake::from_randomness([1; 32], [2; 32]);
        let client =
            ClientHandshake::from_randomness("ops", &secret(5), &agent1(), [3; 32], [4; 32]);
        let server_hello = server.hello().to_vec();
        let (client_hello, await_proof) = client
            .receive_server_hello(frame_of(&server_hello))
            .unwrap();
        let known = agent_key(5);
        let established = server
            .receive_client_hello(frame_of(&client_hello), |id, name| {
                (id == "ops" && *name == agent1()).then_some(&known)
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

        // The intermediate values, recomputed from the same inputs.
        let agent_eph = StaticSecret::from([2u8; 32]);
        let client_eph = StaticSecret::from([4u8; 32]);
        let dh = client_eph.diffie_hellman(&PublicKey::from(&agent_eph));
        let (h1, hasher) = Transcript {
            server_nonce: &[1; 32],
            server_eph: PublicKey::from(&agent_eph).as_bytes(),
            client_nonce: &[3; 32],
            client_eph: PublicKey::from(&client_eph).as_bytes(),
            key_id: "ops",
            agent_name: &agent1(),
        }
        .h1();
        let client_proof = &client_hello[client_hello.len() - PROOF_LEN..];
        let h2 = h2(hasher, client_proof);
        let mut ikm = known.as_bytes().to_vec();
        ikm.extend_from_slice(dh.as_bytes());
        let (prk, _) = Hkdf::<Sha256>::extract(Some(SALT), &ikm);
        let (c2s, s2c) = KeySchedule::new(&known, dh.as_bytes()).traffic_keys(&h2);

        let computed = [
            ("K", hex(known.as_bytes())),
            ("ServerHello", hex(&server_hello)),
            ("dh", hex(dh.as_bytes())),
            ("h1", hex(&h1)),
            ("PRK", hex(&prk)),
            ("ClientHello", hex(&client_hello)),
            ("h2", hex(&h2)),
            ("ServerProof", hex(&established.reply)),
            ("c2s", hex(&c2s.key) + &hex(&c2s.iv)),
            ("s2c", hex(&s2c.key) + &hex(&s2c.iv)),
            ("Exec body", hex(&body)),
            ("sealed Exec", hex(&exec)),
        ];
        let documented = documented_vector();
        assert_eq!(documented.len(), computed.len(), "{documented:?}");
        for ((what, value), doc) in computed.iter().zip(&documented) {
            assert_eq!(value, doc, "{what} differs from docs/protocol.md section 8");
        }
        // `ctl enroll agent1` prints K under the key id and name.
        assert_eq!(
            *enroll_line(
                &crate::keyfile::KeyEntry {
                    id: "ops".into(),
                    secret: secret(5),
                },
                &agent1()
            ),
            format!("ops {} agent1", documented[0])
        );
    }

    #[test]
    fn refusal_text_reaches_the_client() {
        let client = ClientHandshake::new("ops", &secret(9), &agent1());
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
        let client = ClientHandshake::new("ops", &secret(9), &agent1());
        match client
            .receive_server_hello(frame_of(&refusal("authentication failed\u{202e}\x1b[2J")))
        {
            Err(ProtocolError::Refused(text)) => assert_eq!(text, "authentication failed????[2J"),
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("refusal accepted as a hello"),
        }
    }
}
