//! Key files: `<key-id> <secret>` lines, permission checks, and generation of new keys.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rand::rngs::OsRng;
use rand::RngCore;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

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

/// One line of a key file.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// The key id, named in audit logs and sent in the clear during the handshake.
    pub id: String,
    /// The pre-shared secret.
    pub secret: Secret,
    /// What the key may do (the options at the end of its line); unrestricted without any.
    pub policy: Policy,
    /// The line of the file it came from (1-based), for messages about it.
    pub line: usize,
}

/// The keys of one key file, in file order.
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
    /// A line is not `<key-id> <secret>`.
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
    #[error("key file {} holds no keys (expected lines of '<key-id> <64 hex digits>')", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

impl KeyRing {
    /// Reads a key file, refusing one that group or others may read or write.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
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
        Self::parse(&text, path)
    }

    /// Parses key file text; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, KeyFileError> {
        let mut entries: Vec<KeyEntry> = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let malformed = |reason: &str| KeyFileError::Malformed {
                path: path.to_owned(),
                line: index + 1,
                reason: reason.to_owned(),
            };
            let (id, rest) = split_word(line);
            let (secret, options) = split_word(rest);
            if id.is_empty() || secret.is_empty() {
                return Err(malformed("expected '<key-id> <secret>'"));
            }
            if !valid_key_id(id) {
                return Err(malformed(
                    "key id must be 1-64 characters of A-Z a-z 0-9 . _ -",
                ));
            }
            let Some(secret) = Secret::from_hex(secret) else {
                return Err(malformed("secret must be 64 hex digits"));
            };
            if entries.iter().any(|e| e.id == id) {
                return Err(malformed("key id appears on an earlier line too"));
            }
            let policy = Policy::parse(options).map_err(|e| malformed(&e.to_string()))?;
            entries.push(KeyEntry {
                id: id.to_owned(),
                secret,
                policy,
                line: index + 1,
            });
        }
        if entries.is_empty() {
            return Err(KeyFileError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(Self { entries })
    }

    /// The secret for `id`, if the file holds it.
    pub fn get(&self, id: &str) -> Option<&Secret> {
        self.entries.iter().find(|e| e.id == id).map(|e| &e.secret)
    }

    /// The first key, which ctl uses unless told otherwise.
    pub fn first(&self) -> Option<&KeyEntry> {
        self.entries.first()
    }

    /// The entry for `id`.
    pub fn entry(&self, id: &str) -> Option<&KeyEntry> {
        self.entries.iter().find(|e| e.id == id)
    }

    /// Every key, in file order.
    pub fn iter(&self) -> impl Iterator<Item = &KeyEntry> {
        self.entries.iter()
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

/// The first whitespace-separated word of `text` and what follows it, leading space trimmed.
fn split_word(text: &str) -> (&str, &str) {
    let text = text.trim_start();
    let end = text.find(char::is_whitespace).unwrap_or(text.len());
    (&text[..end], text[end..].trim_start())
}

/// The text of a new key file holding one fresh key named `id`.
pub fn generate(id: &str) -> String {
    format!(
        "# rexec key file: keep it private (mode 0600). Format: <key-id> <64 hex digits>\n{id} {}\n",
        Secret::generate().to_hex()
    )
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
        assert_eq!(ring.get("b.c_d-e").unwrap().as_bytes(), &[0xab; 32]);
        assert!(ring.get("c").is_none());
    }

    #[test]
    fn malformed_lines_name_the_file_and_line() {
        let good = format!("a {}\n", "1".repeat(64));
        for (bad, reason) in [
            ("a\n", "expected"),
            (
                &*format!("c {} extra\n", "1".repeat(64)),
                "unknown option \"extra\"",
            ),
            (
                &*format!("c {} no-pty,\n", "1".repeat(64)),
                "end with a comma",
            ),
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

    #[test]
    fn options_after_the_secret_are_the_keys_policy() {
        let text = format!(
            "a {}\nb {} user=nobody,command=\"echo  two spaces\",no-stdin\n",
            "1".repeat(64),
            "2".repeat(64)
        );
        let ring = parse(&text).unwrap();
        let a = ring.entry("a").unwrap();
        assert!(a.policy.is_unrestricted());
        assert_eq!(a.line, 1);
        let b = ring.entry("b").unwrap();
        assert_eq!(b.line, 2);
        assert_eq!(b.policy.user.as_deref(), Some("nobody"));
        assert_eq!(b.policy.command.as_deref(), Some("echo  two spaces"));
        assert!(b.policy.no_stdin);
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
