//! ctl's config file, `$XDG_CONFIG_HOME/rexec/config.toml` (default
//! `~/.config/rexec/config.toml`): host groups and defaults. A missing file is an empty
//! config; a broken one is an error that names the file.
//!
//! ```toml
//! port = 50007
//! parallel = 128
//! key_file = "/home/ops/.config/rexec/key"
//! connect_timeout = "3s"            # or a number of seconds
//! alive_timeout = 60                # 0 or "off": never give up on a silent target
//!
//! [groups]
//! web = "web[01-20]"
//! all = "@web,db1,db2"
//!
//! [agent_names]                     # the agent name expected at a host, when not the host
//! "10.0.0.5" = "web5"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use rexec_shared::cli::{parse_alive_timeout, AliveTimeout};
use serde::Deserialize;

/// A duration in the config: seconds as a number, or text as on the command line (`5m`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Secs {
    Number(f64),
    Text(String),
}

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    port: Option<u16>,
    parallel: Option<u32>,
    key_file: Option<PathBuf>,
    connect_timeout: Option<Secs>,
    alive_timeout: Option<Secs>,
    #[serde(default)]
    groups: BTreeMap<String, String>,
    #[serde(default)]
    agent_names: BTreeMap<String, String>,
}

/// ctl's settings from its config file.
#[derive(Debug, Default)]
pub struct Config {
    /// Default port for targets that name none.
    pub port: Option<u16>,
    /// Default `-P`.
    pub parallel: Option<u32>,
    /// Default key file.
    pub key_file: Option<PathBuf>,
    /// Default `--connect-timeout`.
    pub connect_timeout: Option<Duration>,
    /// Default `--alive-timeout`.
    pub alive_timeout: Option<AliveTimeout>,
    /// `@NAME` groups: each a target list.
    pub groups: BTreeMap<String, String>,
    /// Expected agent names by host, when not the host itself.
    pub agent_names: BTreeMap<String, String>,
}

/// `$XDG_CONFIG_HOME/rexec/config.toml`, else `~/.config/rexec/config.toml`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".config")))?;
    Some(base.join("rexec").join("config.toml"))
}

impl Config {
    /// Reads the config file at its default place; none there is an empty config.
    pub fn load() -> anyhow::Result<Self> {
        match default_path() {
            Some(path) if path.exists() => Self::read(&path),
            _ => Ok(Self::default()),
        }
    }

    /// Reads the config file at `path`.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        let file: File = toml::from_str(text)?;
        let connect_timeout = match file.connect_timeout {
            None => None,
            Some(Secs::Number(n)) => Some(
                rexec_shared::cli::parse_secs(&n.to_string())
                    .map_err(|e| anyhow::anyhow!("connect_timeout: {e}"))?,
            ),
            Some(Secs::Text(t)) => Some(
                rexec_shared::cli::parse_secs(&t)
                    .map_err(|e| anyhow::anyhow!("connect_timeout: {e}"))?,
            ),
        };
        let alive_timeout = match file.alive_timeout {
            None => None,
            Some(Secs::Number(n)) => Some(n.to_string()),
            Some(Secs::Text(t)) => Some(t),
        }
        .map(|t| parse_alive_timeout(&t).map_err(|e| anyhow::anyhow!("alive_timeout: {e}")))
        .transpose()?;
        if file.parallel == Some(0) {
            anyhow::bail!("parallel must be at least 1");
        }
        for name in file.groups.keys() {
            if name.is_empty() || name.contains(['@', ',', '[', ']', ' ']) {
                anyhow::bail!("group name {name:?} may not be empty or hold @ , [ ] or spaces");
            }
        }
        Ok(Self {
            port: file.port,
            parallel: file.parallel,
            key_file: file.key_file,
            connect_timeout,
            alive_timeout,
            groups: file.groups,
            agent_names: file.agent_names,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_and_groups_are_read() {
        let c = Config::parse(
            "port = 7\nparallel = 9\nkey_file = \"/k\"\nconnect_timeout = \"2m\"\n\
             [groups]\nweb = \"web[1-2]\"\n[agent_names]\n\"10.0.0.5\" = \"web5\"\n",
        )
        .unwrap();
        assert_eq!(c.port, Some(7));
        assert_eq!(c.parallel, Some(9));
        assert_eq!(c.key_file.as_deref(), Some(Path::new("/k")));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(120)));
        assert_eq!(c.groups["web"], "web[1-2]");
        assert_eq!(c.agent_names["10.0.0.5"], "web5");
        let c = Config::parse("connect_timeout = 1.5").unwrap();
        assert_eq!(c.connect_timeout, Some(Duration::from_millis(1500)));
        assert!(Config::parse("").unwrap().groups.is_empty());
    }

    #[test]
    fn mistakes_are_refused() {
        for bad in [
            "prot = 1",
            "port = 70000",
            "parallel = 0",
            "connect_timeout = \"soon\"",
            "[groups]\n\"a b\" = \"x\"",
            "[groups]\nweb = 3",
        ] {
            assert!(Config::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
