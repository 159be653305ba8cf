//! Targets as users write them: `host`, `host:port`, `ip:port`, `[ipv6]:port`.

use std::fmt;
use std::net::IpAddr;

use rexec_shared::name::AgentName;

/// One agent to talk to, with the spelling the user gave kept for output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    /// Exactly as written on the command line or in the hosts file.
    pub spelling: String,
    /// Host name or address, without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// The agent name expected there, when given apart from the host (a hosts-file line's
    /// second field); otherwise the host is the name.
    pub name: Option<String>,
}

impl Target {
    /// Parses `text`, using `default_port` when it names none.
    pub fn parse(text: &str, default_port: u16) -> Result<Self, String> {
        let spelling = text.trim().to_owned();
        let bad = |why: &str| format!("invalid target {spelling:?}: {why}");
        if spelling.is_empty() {
            return Err(bad("empty"));
        }
        let (host, port) = if let Some(rest) = spelling.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(|| bad("missing ']'"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("expected ':' after ']'"))?,
                    ),
                ),
            }
        } else if spelling.matches(':').count() > 1 {
            // A bare IPv6 address: the port cannot be given without brackets.
            (spelling.as_str(), None)
        } else {
            match spelling.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (spelling.as_str(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        if let Some((user, _)) = host.split_once('@') {
            return Err(bad(&format!(
                "ctl takes no user@: the user {user:?} would run as is chosen on the agent, by \
                 the key's policy (user= in the agent's key file)"
            )));
        }
        if host.contains(',') {
            return Err(bad(
                "one target per entry (a ',' separates targets in -H lists)",
            ));
        }
        if host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/')
        {
            return Err(bad("host contains a space, '/' or a control character"));
        }
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => return Err(bad("port must be a number from 1 to 65535")),
            },
        };
        let host = host.to_owned();
        Ok(Self {
            spelling,
            host,
            port,
            name: None,
        })
    }

    /// What makes two targets the same: the host compared case-insensitively without a
    /// trailing dot (IP addresses in canonical form), and the port.
    pub fn key(&self) -> (String, u16) {
        let host = match self.host.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => self.host.trim_end_matches('.').to_ascii_lowercase(),
        };
        (host, self.port)
    }

    /// The agent name ctl expects this target to hold a key for: the one given, else the host
    /// as written, in canonical form.
    pub fn expected_name(&self) -> Result<AgentName, String> {
        AgentName::parse(self.name.as_deref().unwrap_or(&self.host)).map_err(|e| match &self.name {
            Some(_) => e,
            None => format!(
                "{e}; give the agent's name with --agent-name, or as the second field of its hosts-file line"
            ),
        })
    }

    /// `host:port` in the form the resolver takes.
    pub fn socket_spec(&self) -> (String, u16) {
        (self.host.clone(), self.port)
    }
}

/// The targets of a hosts file: one per line, `TARGET [AGENT_NAME]`; blank lines and `#`
/// comments skipped. Errors name the file and the line.
pub fn read_hosts_file(path: &std::path::Path, default_port: u16) -> Result<Vec<Target>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read hosts file {}: {e}", path.display()))?;
    let mut targets = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |e: String| format!("hosts file {}, line {}: {e}", path.display(), n + 1);
        let mut fields = line.split_whitespace();
        let (Some(spelling), name, None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(at("expected 'TARGET' or 'TARGET AGENT_NAME'".into()));
        };
        let mut target = Target::parse(spelling, default_port).map_err(at)?;
        if let Some(name) = name {
            target.name = Some(AgentName::parse(name).map_err(at)?.to_string());
        }
        targets.push(target);
    }
    Ok(targets)
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spelling)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> (String, u16) {
        let t = Target::parse(text, 50007).unwrap();
        assert_eq!(t.spelling, text);
        (t.host, t.port)
    }

    #[test]
    fn accepted_forms() {
        assert_eq!(parsed("web1"), ("web1".into(), 50007));
        assert_eq!(parsed("web1:2222"), ("web1".into(), 2222));
        assert_eq!(parsed("10.0.0.1:1"), ("10.0.0.1".into(), 1));
        assert_eq!(parsed("[::1]:9"), ("::1".into(), 9));
        assert_eq!(parsed("[::1]"), ("::1".into(), 50007));
        assert_eq!(parsed("fe80::1"), ("fe80::1".into(), 50007));
    }

    #[test]
    fn duplicates_compare_canonically() {
        let key = |t: &str| Target::parse(t, 50007).unwrap().key();
        assert_eq!(key("web1"), key("WEB1:50007"));
        assert_eq!(key("web1."), key("web1"));
        assert_eq!(key("[::1]"), key("[0:0::1]:50007"));
        assert_ne!(key("web1"), key("web1:2"));
        assert_ne!(key("web1"), key("web2"));
    }

    #[test]
    fn users_and_lists_are_refused_with_the_reason() {
        let err = Target::parse("nobody@127.0.0.1", 1).unwrap_err();
        assert!(err.contains("policy") && err.contains("nobody"), "{err}");
        let err = Target::parse("127.0.0.6,127.0.0.7", 1).unwrap_err();
        assert!(err.contains("one target"), "{err}");
    }

    #[test]
    fn rejected_forms_say_why() {
        for bad in [
            "", ":22", "h:0", "h:x", "h:70000", "[::1", "[::1]x", "a b", "h/x",
        ] {
            let err = Target::parse(bad, 50007).unwrap_err();
            assert!(err.contains("invalid target"), "{bad}: {err}");
        }
    }
}
