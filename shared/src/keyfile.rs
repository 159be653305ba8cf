//! Key files, both kinds: ctl's client key files (`<key-id> <secret>`, each secret a client's
//! master key) and agents' key files (`<key-id> <secret> <agent-name> [options]`, each secret
//! derived from a master key and the agent name by [`derive_agent_key`]); the permission
//! checks both get, and generation of new keys.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use hkdf::Hkdf;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::codec::put_bytes;
use crate::name::AgentName;
use crate::policy::Policy;

/// Largest key file read; thousands of keys fit, and a mistaken path to a huge file fails fast.
pub const MAX_KEY_FILE_LEN: u64 = 1024 * 1024;

/// A 32-byte pre-shared secret; wiped from memory when dropped, never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret([u8; 32]);

impl Secret {
    /// Wraps raw secret bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// A new secret from the OS random source.
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, as written in key files.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_hex(text: &str) -> Option<Self> {
        // from_str_radix alone would also take a leading '+'.
        if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(text.as_bytes().chunks(2)) {
            let pair = std::str::from_utf8(pair).ok()?;
            *byte = u8::from_str_radix(pair, 16).ok()?;
        }
        Some(Self(bytes))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Whether `id` is 1-64 characters of `[A-Za-z0-9._-]`.
pub fn valid_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// One line of a client key file.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// The key id, named in audit logs and sent in the clear during the handshake.
    pub id: String,
    /// The client's master key.
    pub secret: Secret,
}

/// The keys of one client key file, in file order.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    entries: Vec<KeyEntry>,
}

/// Why a key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read.
    // The cause is in the message and deliberately not a `source`: `{:#}` would print it twice.
    #[error("cannot read key file {}: {cause}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// The file is open to group or others.
    #[error(
        "key file {} is accessible by group or others (mode {mode:04o}); run: chmod 600 {}",
        path.display(),
        path.display()
    )]
    Permissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The path is not a regular file (a directory, FIFO, device...).
    #[error("key file {} is not a regular file", path.display())]
    NotRegular {
        /// The file.
        path: PathBuf,
    },
    /// The file belongs to another user, who could add keys to it.
    #[error(
        "key file {} is owned by uid {owner}, not by this user (uid {euid}) or root; run: chown {euid} {}",
        path.display(),
        path.display()
    )]
    Owner {
        /// The file.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// This process's effective user.
        euid: u32,
    },
    /// The file is larger than any key file should be.
    #[error("key file {} is larger than {} bytes; is it the right file?", path.display(), MAX_KEY_FILE_LEN)]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A line is not what this kind of key file holds.
    #[error("key file {}, line {line}: {reason}", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// No key lines at all.
    #[error("key file {} holds no keys (expected lines of '{expected}')", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
        /// What a line of this kind of file looks like.
        expected: &'static str,
    },
}

/// Reads a key file, refusing one that group or others may read or write, one owned by another
/// user, and anything that is not a regular file of sensible size.
fn read_private(path: &Path) -> Result<Zeroizing<String>, KeyFileError> {
    let read_err = |cause| KeyFileError::Read {
        path: path.to_owned(),
        cause,
    };
    // One open, and every check on that descriptor: nothing can swap the file between the
    // checks and the read, and O_NONBLOCK keeps a FIFO at that path from hanging us.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(KeyFileError::NotRegular {
            path: path.to_owned(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(KeyFileError::Owner {
            path: path.to_owned(),
            owner: meta.uid(),
            euid,
        });
    }
    if meta.len() > MAX_KEY_FILE_LEN {
        return Err(KeyFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    let mut text = Zeroizing::new(String::new());
    (&mut file)
        .take(MAX_KEY_FILE_LEN)
        .read_to_string(&mut text)
        .map_err(read_err)?;
    Ok(text)
}

impl KeyRing {
    /// Reads a client key file, refusing one that group or others may read or write, one
    /// owned by another user, and anything but a regular file of sensible size.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        Self::parse(&read_private(path)?, path)
    }

    /// Parses client key file text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, KeyFileError> {
        let mut entries: Vec<KeyEntry> = Vec::new();
        for (number, line) in key_lines(text) {
            let malformed = |reason: String| KeyFileError::Malformed {
                path: path.to_owned(),
                line: number,
                reason,
            };
            let mut words = line.split_whitespace();
            let (Some(id), Some(secret)) = (words.next(), words.next()) else {
                return Err(malformed("expected '<key-id> <secret>'".into()));
            };
            if let Some(name) = words.next() {
                return Err(malformed(format!(
                    "this line names an agent ({name:?}): it is an agent's key line (from ctl \
                     enroll), which belongs in that agent's key file; ctl needs the client key \
                     from ctl keygen"
                )));
            }
            let (id, secret) = id_and_secret(id, secret).map_err(malformed)?;
            if entries.iter().any(|e| e.id == id) {
                return Err(malformed("key id appears on an earlier line too".into()));
            }
            entries.push(KeyEntry { id, secret });
        }
        if entries.is_empty() {
            return Err(KeyFileError::Empty {
                path: path.to_owned(),
                expected: "<key-id> <64 hex digits>",
            });
        }
        Ok(Self { entries })
    }

    /// Every key, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &KeyEntry> {
        self.entries.iter()
    }

    /// The first key, which ctl uses unless told otherwise.
    pub fn first(&self) -> Option<&KeyEntry> {
        self.entries.first()
    }

    /// The entry for `id`.
    pub fn entry(&self, id: &str) -> Option<&KeyEntry> {
        self.entries.iter().find(|e| e.id == id)
    }

    /// How many keys the file holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the ring is empty (never true for a loaded file).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The text of a new key file holding one fresh key named `id`.
pub fn generate(id: &str) -> String {
    format!(
        "# rexec key file: keep it private (mode 0600). Format: <key-id> <64 hex digits>\n{id} {}\n",
        Secret::generate().to_hex()
    )
}

/// The key lines of a key file as (1-based line number, trimmed text): comments and blank lines
/// skipped.
fn key_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(index, raw)| (index + 1, raw.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
}

/// The key id and secret fields of a line, checked.
fn id_and_secret(id: &str, secret: &str) -> Result<(String, Secret), String> {
    if !valid_key_id(id) {
        return Err("key id must be 1-64 characters of A-Z a-z 0-9 . _ -".into());
    }
    let secret = Secret::from_hex(secret).ok_or("secret must be 64 hex digits")?;
    Ok((id.to_owned(), secret))
}

/// Salt of the agent key derivation (HKDF-SHA256 extract); docs/protocol.md, "Keys".
const AGENT_KEY_SALT: &[u8] = b"rexec v2 agent key salt";
/// Label of the agent key derivation (HKDF-SHA256 expand).
const AGENT_KEY_LABEL: &[u8] = b"rexec v2 agent key";

/// The key an agent named `name` holds for the client whose master key is `master` under
/// `key_id`: HKDF-SHA256 with the master as input key material and, as info, the label, the key
/// id and the name, each length-prefixed, so no two (key id, name) pairs share an input and no
/// agent key yields another.
pub fn derive_agent_key(master: &Secret, key_id: &str, name: &AgentName) -> Secret {
    let hkdf = Hkdf::<Sha256>::new(Some(AGENT_KEY_SALT), master.as_bytes());
    let mut info = Vec::with_capacity(16 + key_id.len() + name.as_str().len() + 12);
    put_bytes(&mut info, AGENT_KEY_LABEL);
    put_bytes(&mut info, key_id.as_bytes());
    put_bytes(&mut info, name.as_str().as_bytes());
    let mut out = Secret([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's limit of 8160 bytes.
    #[allow(clippy::expect_used)]
    hkdf.expand(&info, &mut out.0)
        .expect("HKDF output length is within limits");
    out
}

/// The agent key-file line for `name` from the client key `entry`, as `ctl enroll` prints it.
pub fn enroll_line(entry: &KeyEntry, name: &AgentName) -> Zeroizing<String> {
    let key = derive_agent_key(&entry.secret, &entry.id, name);
    Zeroizing::new(format!("{} {} {}", entry.id, key.to_hex(), name))
}

/// One line of an agent key file: the key one client uses for this agent under one name.
#[derive(Debug, Clone)]
pub struct AgentKey {
    /// The client's key id.
    pub id: String,
    /// The agent name the key was derived for.
    pub name: AgentName,
    /// The derived key.
    pub secret: Secret,
    /// What the key may do (the options at the end of its line); unrestricted without any.
    pub policy: Policy,
    /// The line of the file it came from (1-based), for messages about it.
    pub line: usize,
}

/// The keys of one agent key file, found by (key id, agent name).
#[derive(Debug, Clone, Default)]
pub struct AgentKeys {
    by_id_and_name: HashMap<(String, AgentName), AgentKey>,
    ids: HashSet<String>,
}

/// Where a key id first appeared in an agent key file, and with which options.
struct FirstLine {
    line: usize,
    name: AgentName,
    policy: Policy,
}

impl AgentKeys {
    /// Reads an agent key file, with the same checks as [`KeyRing::load`].
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        Self::parse(&read_private(path)?, path)
    }

    /// Parses agent key file text; `path` only names the file in errors.
    ///
    /// Lines are `<key-id> <secret> <agent-name> [options]`. A line without a name is refused:
    /// it is a client's master key, which must never sit on an agent. Options are the key's
    /// [`Policy`]; one that is not understood refuses the file, and so do lines of one key id
    /// with different options: the client holds the key for every name it is enrolled under
    /// and chooses the name it sends, so it would choose the least restricted line.
    pub fn parse(text: &str, path: &Path) -> Result<Self, KeyFileError> {
        let mut by_id_and_name = HashMap::new();
        let mut first_lines: HashMap<String, FirstLine> = HashMap::new();
        for (number, line) in key_lines(text) {
            let malformed = |reason: String| KeyFileError::Malformed {
                path: path.to_owned(),
                line: number,
                reason,
            };
            let mut rest = line;
            let mut word = || {
                let trimmed = rest.trim_start();
                let end = trimmed.find(char::is_whitespace).unwrap_or(trimmed.len());
                let (word, tail) = trimmed.split_at(end);
                rest = tail;
                (!word.is_empty()).then_some(word)
            };
            let (Some(id), Some(secret)) = (word(), word()) else {
                return Err(malformed(
                    "expected '<key-id> <secret> <agent-name>' (the line ctl enroll prints)".into(),
                ));
            };
            let Some(name) = word() else {
                return Err(malformed(
                    "no agent name: this looks like a client key (from ctl keygen), which never \
                     belongs on an agent; put here the line `ctl enroll AGENT_NAME` prints"
                        .into(),
                ));
            };
            let (id, secret) = id_and_secret(id, secret).map_err(malformed)?;
            let name = AgentName::parse(name).map_err(malformed)?;
            let policy = Policy::parse(rest.trim()).map_err(|e| malformed(e.to_string()))?;
            let key = (id.clone(), name.clone());
            if by_id_and_name.contains_key(&key) {
                return Err(malformed(format!(
                    "key id {id:?} for agent name {name:?} appears on an earlier line too"
                )));
            }
            match first_lines.get(&id) {
                Some(first) if first.policy != policy => {
                    return Err(malformed(format!(
                        "key id {id:?} has other options here than on line {} (for agent name \
                         {:?}): its client holds the key for every name it is enrolled under and \
                         picks the name, so the least restricted line would apply; give every \
                         line of one key id the same options",
                        first.line,
                        first.name.as_str()
                    )));
                }
                Some(_) => {}
                None => {
                    first_lines.insert(
                        id.clone(),
                        FirstLine {
                            line: number,
                            name: name.clone(),
                            policy: policy.clone(),
                        },
                    );
                }
            }
            by_id_and_name.insert(
                key,
                AgentKey {
                    id,
                    name,
                    secret,
                    policy,
                    line: number,
                },
            );
        }
        if by_id_and_name.is_empty() {
            return Err(KeyFileError::Empty {
                path: path.to_owned(),
                expected: "<key-id> <64 hex digits> <agent-name>",
            });
        }
        Ok(Self {
            by_id_and_name,
            ids: first_lines.into_keys().collect(),
        })
    }

    /// The key for `id` under `name`. One hash-map lookup: the time does not depend on which
    /// ids or names the file holds, nor on where in the file a line is.
    pub fn get(&self, id: &str, name: &AgentName) -> Option<&AgentKey> {
        self.by_id_and_name.get(&(id.to_owned(), name.clone()))
    }

    /// Whether some line holds key id `id` (under any name): for the agent's log only.
    pub fn has_id(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// How many lines the file holds.
    pub fn len(&self) -> usize {
        self.by_id_and_name.len()
    }

    /// Every line, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &AgentKey> {
        self.by_id_and_name.values()
    }

    /// Whether there are none (never true for a loaded file).
    pub fn is_empty(&self) -> bool {
        self.by_id_and_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<KeyRing, KeyFileError> {
        KeyRing::parse(text, Path::new("/etc/keys"))
    }

    #[test]
    fn generated_file_parses_back() {
        let text = generate("ops-1");
        let ring = parse(&text).unwrap();
        assert_eq!(ring.len(), 1);
        assert_eq!(ring.first().unwrap().id, "ops-1");
        assert_ne!(generate("a"), generate("a"), "secrets must be random");
    }

    #[test]
    fn comments_blank_lines_and_several_keys() {
        let text = format!(
            "# keys\n\n  a {}\nb.c_d-e {}\n",
            "0".repeat(64),
            "Ab".repeat(32)
        );
        let ring = parse(&text).unwrap();
        assert_eq!(ring.len(), 2);
        assert_eq!(
            ring.entry("b.c_d-e").unwrap().secret.as_bytes(),
            &[0xab; 32]
        );
        assert!(ring.entry("c").is_none());
    }

    #[test]
    fn malformed_lines_name_the_file_and_line() {
        let good = format!("a {}\n", "1".repeat(64));
        for (bad, reason) in [
            ("a\n", "expected"),
            (&*format!("a {} web1\n", "1".repeat(64)), "names an agent"),
            ("a 1234\n", "64 hex"),
            (&*format!("a {}\n", "g".repeat(64)), "64 hex"),
            (&*format!("bad/id {}\n", "1".repeat(64)), "key id"),
            (
                &*format!("{} {}\n", "x".repeat(65), "1".repeat(64)),
                "key id",
            ),
            (&*format!("a {}\n", "1".repeat(64)), "earlier line"),
        ] {
            let text = format!("# header\n{good}{bad}");
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains("/etc/keys") && err.contains("line 3"), "{err}");
            assert!(err.contains(reason), "{err}");
        }
    }

    fn agent_parse(text: &str) -> Result<AgentKeys, KeyFileError> {
        AgentKeys::parse(text, Path::new("/etc/rexec/agent-keys"))
    }

    fn master(b: u8) -> KeyEntry {
        KeyEntry {
            id: "ops".into(),
            secret: Secret::from_bytes([b; 32]),
        }
    }

    fn name(text: &str) -> AgentName {
        AgentName::parse(text).unwrap()
    }

    #[test]
    fn agent_keys_are_bound_to_the_master_the_key_id_and_the_name() {
        let a = derive_agent_key(&master(1).secret, "ops", &name("a"));
        assert_eq!(
            a.as_bytes(),
            derive_agent_key(&master(1).secret, "ops", &name("A.")).as_bytes(),
            "the same canonical name derives the same key"
        );
        for other in [
            derive_agent_key(&master(2).secret, "ops", &name("a")),
            derive_agent_key(&master(1).secret, "ops2", &name("a")),
            derive_agent_key(&master(1).secret, "ops", &name("b")),
        ] {
            assert_ne!(a.as_bytes(), other.as_bytes());
        }
        // Length prefixes: moving a character between the key id and the name changes the key.
        assert_ne!(
            derive_agent_key(&master(1).secret, "ab", &name("c")).as_bytes(),
            derive_agent_key(&master(1).secret, "a", &name("bc")).as_bytes()
        );
        assert_ne!(a.as_bytes(), master(1).secret.as_bytes());
    }

    #[test]
    fn enrolled_lines_parse_back_and_are_found_by_id_and_name() {
        let client = master(7);
        let text = format!(
            "# web1 and its alias\n{}\n{}\n",
            &*enroll_line(&client, &name("web1.example.com")),
            &*enroll_line(&client, &name("192.0.2.10")),
        );
        assert!(
            !text.contains(&client.secret.to_hex()),
            "the master key leaked"
        );
        let keys = agent_parse(&text).unwrap();
        assert_eq!(keys.len(), 2);
        let found = keys.get("ops", &name("web1.example.com")).unwrap();
        assert_eq!(
            found.secret.as_bytes(),
            derive_agent_key(&client.secret, "ops", &name("web1.example.com")).as_bytes()
        );
        assert!(keys.get("ops", &name("192.0.2.10")).is_some());
        assert!(keys.get("ops", &name("web2")).is_none());
        assert!(keys.get("dev", &name("web1.example.com")).is_none());
        assert!(keys.has_id("ops") && !keys.has_id("dev"));
        // Names in the file are taken in canonical form.
        let keys = agent_parse(&format!("ops {} Web1.\n", "1".repeat(64))).unwrap();
        assert!(keys.get("ops", &name("web1")).is_some());
    }

    #[test]
    fn options_after_the_agent_name_are_the_keys_policy() {
        let hex = "1".repeat(64);
        let text = format!(
            "a {hex} web1\nb {hex} web1 user=nobody,command=\"echo  two spaces\",no-stdin\n"
        );
        let keys = agent_parse(&text).unwrap();
        let a = keys.get("a", &name("web1")).unwrap();
        assert!(a.policy.is_unrestricted());
        assert_eq!(a.line, 1);
        let b = keys.get("b", &name("web1")).unwrap();
        assert_eq!(b.line, 2);
        assert_eq!(b.policy.user.as_deref(), Some("nobody"));
        assert_eq!(b.policy.command.as_deref(), Some("echo  two spaces"));
        assert!(b.policy.no_stdin);
    }

    #[test]
    fn malformed_agent_lines_name_the_file_and_line() {
        let hex = "1".repeat(64);
        let good = format!("a {hex} web1\n");
        for (bad, reason) in [
            (format!("a {hex}\n"), "client key"),
            ("a\n".to_owned(), "expected"),
            ("a 1234 web1\n".to_owned(), "64 hex"),
            (format!("bad/id {hex} web1\n"), "key id"),
            (format!("a {hex} bad/name\n"), "invalid agent name"),
            (
                format!("a {hex} web1 permit-all\n"),
                "unknown option \"permit-all\"",
            ),
            (format!("a {hex} web1 no-pty,\n"), "end with a comma"),
            (format!("a {hex} WEB1.\n"), "earlier line"),
        ] {
            let text = format!("# header\n{good}{bad}");
            let err = agent_parse(&text).unwrap_err().to_string();
            assert!(
                err.contains("/etc/rexec/agent-keys") && err.contains("line 3"),
                "{err}"
            );
            assert!(err.contains(reason), "{bad:?}: {err}");
        }
        // The same key id for two names (an alias) and two ids for one name are fine.
        agent_parse(&format!("{good}a {hex} web1-alias\nb {hex} web1\n")).unwrap();
        let err = agent_parse("# nothing\n").unwrap_err().to_string();
        assert!(err.contains("<agent-name>"), "{err}");
    }

    #[test]
    fn every_line_of_one_key_id_carries_the_same_options() {
        // The client chooses the name it sends, so an alias line without the restriction of
        // the main line would let it shed the restriction.
        let hex = "1".repeat(64);
        let text = format!(
            "# web1\nops {hex} web1 user=deploy,no-pty\ndev {hex} web1\nops {hex} 10.0.0.5\n"
        );
        let err = agent_parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("/etc/rexec/agent-keys")
                && err.contains("line 4")
                && err.contains("other options here than on line 2")
                && err.contains("\"web1\""),
            "{err}"
        );
        let text = format!("ops {hex} web1 no-pty\nops {hex} web2 no-pty,no-stdin\n");
        assert!(agent_parse(&text).is_err());
        // The same options (in any spelling) under every name are fine.
        let keys = agent_parse(&format!(
            "ops {hex} web1 user=deploy,no-pty\nops {hex} 10.0.0.5 no-pty,user=deploy\n"
        ))
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.has_id("ops") && !keys.has_id("dev"));
    }

    #[test]
    fn empty_file_is_refused() {
        assert!(matches!(
            parse("# nothing\n\n"),
            Err(KeyFileError::Empty { .. })
        ));
    }

    #[test]
    fn key_id_rules() {
        assert!(valid_key_id("a"));
        assert!(valid_key_id(&"z".repeat(64)));
        assert!(!valid_key_id(""));
        assert!(!valid_key_id(&"z".repeat(65)));
        assert!(!valid_key_id("a b"));
        assert!(!valid_key_id("é"));
    }

    #[test]
    fn secret_must_be_plain_hex_digits() {
        let err = parse(&format!("a {}\n", "+f".repeat(32)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("64 hex digits"), "{err}");
    }

    #[test]
    fn load_checks_mode_type_and_reads_the_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rexec-keyfile-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(&path, generate("a")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = KeyRing::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("mode 0640") && err.contains(&*path.to_string_lossy()),
            "{err}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(KeyRing::load(&path).unwrap().len(), 1);
        let err = KeyRing::load(&dir).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secret_debug_does_not_leak() {
        let s = Secret::from_bytes([0xab; 32]);
        assert!(!format!("{s:?}").contains("ab"));
    }
}
