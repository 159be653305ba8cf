//! `ctl enroll`: the agent key-file line for each agent name, derived from ctl's client key.
//! The client's master key never appears in what is printed or written.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context};
use rexec_shared::keyfile::{enroll_line, KeyEntry};
use rexec_shared::name::AgentName;
use zeroize::Zeroizing;

/// The header of a file written with `-o`.
const HEADER: &str = "# rexec agent key file: keep it private (mode 0600). \
Format: <key-id> <64 hex digits> <agent-name>\n";

/// The lines for `names`, one per name, in order and without repeats.
pub fn lines(key: &KeyEntry, names: &[AgentName]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::new());
    let mut seen: Vec<&AgentName> = Vec::new();
    for name in names {
        if seen.contains(&name) {
            continue;
        }
        seen.push(name);
        out.push_str(&enroll_line(key, name));
        out.push('\n');
    }
    out
}

/// Writes `lines` to a new file at `path` with mode 0600, refusing to replace an existing one.
pub fn write_new(path: &Path, lines: &str) -> anyhow::Result<()> {
    if lines.is_empty() {
        bail!("nothing to write: no agent names given");
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
    file.write_all(HEADER.as_bytes())
        .and_then(|()| file.write_all(lines.as_bytes()))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use rexec_shared::keyfile::{AgentKeys, Secret};

    use super::*;

    #[test]
    fn lines_parse_as_an_agent_key_file_and_hold_no_master() {
        let key = KeyEntry {
            id: "ops".into(),
            secret: Secret::from_bytes([3; 32]),
        };
        let names: Vec<AgentName> = ["Web1.", "web1", "10.0.0.5"]
            .iter()
            .map(|n| AgentName::parse(n).unwrap())
            .collect();
        let text = lines(&key, &names);
        assert_eq!(text.lines().count(), 2, "a repeated name is enrolled once");
        assert!(!text.contains(&key.secret.to_hex()));
        let keys = AgentKeys::parse(&text, Path::new("-")).unwrap();
        assert!(keys.get("ops", &names[0]).is_some());
        assert!(keys.get("ops", &names[2]).is_some());
    }
}
