//! Finding and reading ctl's key, and writing new key files.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use rexec_shared::keyfile::{self, KeyEntry, KeyRing};

/// The key file used when neither `--key-file` nor `CTL_KEY_FILE` names one:
/// `$XDG_CONFIG_HOME/rexec/key`, else `~/.config/rexec/key`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some(base.join("rexec").join("key"))
}

/// Loads the key to authenticate with: the first line of the file, or the one named `key_id`.
pub fn load(path: Option<&Path>, key_id: Option<&str>) -> anyhow::Result<KeyEntry> {
    let path = match path {
        Some(p) => p.to_owned(),
        None => match default_path() {
            Some(p) if p.exists() => p,
            _ => bail!(
                "no key file: pass --key-file PATH, set CTL_KEY_FILE, or create {} (ctl keygen -o PATH)",
                default_path().map_or_else(|| "~/.config/rexec/key".into(), |p| p.display().to_string())
            ),
        },
    };
    let ring = KeyRing::load(&path)?;
    let entry = match key_id {
        Some(id) => ring
            .entry(id)
            .with_context(|| format!("key file {} has no key with id {id:?}", path.display()))?,
        None => ring
            .first()
            .with_context(|| format!("key file {} holds no keys", path.display()))?,
    };
    Ok(entry.clone())
}

/// Writes a new key file at `path` with mode 0600 (missing parent directories 0700),
/// refusing to replace an existing file.
pub fn write_new(path: &Path, id: &str) -> anyhow::Result<()> {
    if !keyfile::valid_key_id(id) {
        bail!("invalid key id {id:?}: use 1-64 characters of A-Z a-z 0-9 . _ -");
    }
    // As ssh-keygen does: missing parent directories are created, private to the user.
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .with_context(|| format!("cannot create directory {}", parent.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| match path.exists() {
            true => format!("refusing to overwrite existing file {}", path.display()),
            false => format!("cannot create {}", path.display()),
        })?;
    file.write_all(keyfile::generate(id).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
