//! Agent names: the name ctl expects the agent it reaches to hold keys for, in the one
//! canonical form that both sides compare, derive keys from and put on the wire.
//!
//! Canonical form: ASCII lowercase, one trailing dot dropped, an IPv6 address (brackets
//! allowed around it) in its RFC 5952 form (an IPv4-mapped address `::ffff:a.b.c.d` with its last
//! 32 bits in dotted decimal, every other address in hexadecimal only); 1-253 characters of
//! `a-z 0-9 . _ : -`, not ending in a dot. Taking the canonical form twice gives the same name,
//! so the name `ctl enroll` derives a key for is the one the agent files it under.

use std::fmt;
use std::net::Ipv6Addr;

/// Longest agent name, the longest DNS name; it fits in the one length byte of the ClientHello.
pub const MAX_NAME_LEN: usize = 253;

/// An agent name in canonical form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentName(String);

impl AgentName {
    /// The canonical form of `text`, or why it cannot be an agent name.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid agent name {text:?}: {why}");
        let mut name = text.trim();
        if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
            name = inner;
        }
        if let Some(stripped) = name.strip_suffix('.') {
            name = stripped;
        }
        if name.is_empty() {
            return Err(bad("empty"));
        }
        // "web1.." would become "web1.", whose canonical form is "web1": a key derived for one
        // spelling would be filed under another.
        if name.ends_with('.') {
            return Err(bad("ends with more than one dot"));
        }
        let name = match name.parse::<Ipv6Addr>() {
            Ok(addr) => addr.to_string(),
            Err(_) => name.to_ascii_lowercase(),
        };
        if name.len() > MAX_NAME_LEN {
            return Err(bad("longer than 253 characters"));
        }
        if !name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b':' | b'-')
        }) {
            return Err(bad(
                "use letters, digits and . _ : - only (an IDN in its xn-- form)",
            ));
        }
        Ok(Self(name))
    }

    /// `text` as a name if it is already in canonical form: what the agent accepts on the wire,
    /// so that one name has exactly one encoding.
    pub fn from_canonical(text: &str) -> Option<Self> {
        Self::parse(text).ok().filter(|name| name.0 == text)
    }

    /// The canonical text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(text: &str) -> String {
        AgentName::parse(text).unwrap().to_string()
    }

    #[test]
    fn names_compare_case_insensitively_without_a_trailing_dot() {
        assert_eq!(canon("Web1.Example.COM."), "web1.example.com");
        assert_eq!(canon("127.0.0.1"), "127.0.0.1");
        assert_eq!(canon("db_2"), "db_2");
    }

    #[test]
    fn ipv6_addresses_take_their_canonical_form() {
        assert_eq!(canon("[::1]"), "::1");
        assert_eq!(canon("0:0:0:0:0:0:0:1"), "::1");
        assert_eq!(canon("2001:DB8:0:0::1"), "2001:db8::1");
        // As docs/protocol.md pins it (implementations differ here): only an IPv4-mapped
        // address keeps dotted decimal; the longest run of zero fields (the first of equal
        // runs) is the one shortened, and a single zero field is not.
        assert_eq!(canon("::FFFF:192.0.2.1"), "::ffff:192.0.2.1");
        assert_eq!(canon("::ffff:c000:201"), "::ffff:192.0.2.1");
        assert_eq!(canon("::192.0.2.1"), "::c000:201");
        assert_eq!(canon("64:ff9b::192.0.2.1"), "64:ff9b::c000:201");
        assert_eq!(canon("1:0:0:1:0:0:0:1"), "1:0:0:1::1");
        assert_eq!(canon("1:0:0:1:0:0:1:1"), "1::1:0:0:1:1");
        assert_eq!(canon("1:0:1:1:1:1:1:1"), "1:0:1:1:1:1:1:1");
        // IPv4 addresses are taken as written: "127.1" is another name than "127.0.0.1".
        assert_eq!(canon("127.1"), "127.1");
    }

    #[test]
    fn the_canonical_form_of_a_canonical_name_is_itself() {
        for text in [
            "Web1.",
            "web1",
            "[::1]",
            "[web1.]",
            "::FFFF:1.2.3.4",
            " db_2 ",
            "a..b",
            ".a",
        ] {
            let once = canon(text);
            assert_eq!(canon(&once), once, "{text:?}");
            assert!(AgentName::from_canonical(&once).is_some(), "{text:?}");
        }
        // One trailing dot is dropped; a name that would keep one after that is refused, so
        // that no name enrolls under one spelling and is filed under another.
        for bad in ["web1..", "..", "[::1].."] {
            assert!(AgentName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_canonical_text_is_accepted_from_the_wire() {
        assert!(AgentName::from_canonical("web1").is_some());
        assert!(AgentName::from_canonical("Web1").is_none());
        assert!(AgentName::from_canonical("web1.").is_none());
        assert!(AgentName::from_canonical("0::1").is_none());
        assert!(AgentName::from_canonical("[::1]").is_none());
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in ["", ".", "a b", "a/b", "é", "a\u{0}", &"a".repeat(254), "[]"] {
            assert!(AgentName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(AgentName::parse(&"a".repeat(253)).is_ok());
    }
}
