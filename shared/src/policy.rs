//! Per-key policy: the options at the end of an agent key-file line, as `authorized_keys` has
//! them (`user=NAME`, `from=CIDR;CIDR`, `command="TEXT"`, `no-stdin`, `no-pty`,
//! `max-timeout=SECS`), parsed into a [`Policy`].
//!
//! Only the grammar lives here; the agent decides what a policy allows (agent/src/policy.rs).
//! Anything not understood is an error naming the option, so that a typo refuses the file
//! instead of silently granting more than was meant.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::cli::parse_secs;

/// What one key may do. The default (no options) restricts nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// `user=NAME`: run commands as this user.
    pub user: Option<String>,
    /// `from=CIDR;...`: accept the key only from these networks.
    pub from: Option<Vec<Cidr>>,
    /// `command=TEXT`: run this instead of the client's command.
    pub command: Option<String>,
    /// `no-stdin`: refuse requests that send stdin.
    pub no_stdin: bool,
    /// `no-pty`: refuse requests for a pseudo-terminal.
    pub no_pty: bool,
    /// `max-timeout=SECS`: no command runs longer than this.
    pub max_timeout: Option<Duration>,
}

/// Why an options field cannot be used; the text names the option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(String);

/// Longest user name taken; Linux tools allow 32, some systems more.
const MAX_USER_LEN: usize = 256;

impl Policy {
    /// Parses a comma-separated options field (the empty field restricts nothing).
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let mut policy = Policy::default();
        for option in split_options(text)? {
            let RawOption { name, value } = option;
            let once = |seen: bool| {
                if seen {
                    Err(PolicyError(format!(
                        "option {name} is given more than once"
                    )))
                } else {
                    Ok(())
                }
            };
            match (name, value) {
                ("user", Some(v)) => {
                    once(policy.user.is_some())?;
                    policy.user = Some(parse_user(&v)?);
                }
                ("from", Some(v)) => {
                    once(policy.from.is_some())?;
                    policy.from = Some(parse_from(&v)?);
                }
                ("command", Some(v)) => {
                    once(policy.command.is_some())?;
                    if v.trim().is_empty() {
                        return Err(PolicyError("option command= needs a command".into()));
                    }
                    if v.contains('\0') {
                        return Err(PolicyError("option command= holds a NUL byte".into()));
                    }
                    policy.command = Some(v);
                }
                ("max-timeout", Some(v)) => {
                    once(policy.max_timeout.is_some())?;
                    let secs =
                        parse_secs(&v).map_err(|e| PolicyError(format!("option max-timeout: {e}")))?;
                    policy.max_timeout = Some(secs);
                }
                ("no-stdin", None) => {
                    once(policy.no_stdin)?;
                    policy.no_stdin = true;
                }
                ("no-pty", None) => {
                    once(policy.no_pty)?;
                    policy.no_pty = true;
                }
                ("user" | "from" | "command" | "max-timeout", None) => {
                    return Err(PolicyError(format!("option {name} needs a value ({name}=...)")))
                }
                ("no-stdin" | "no-pty", Some(_)) => {
                    return Err(PolicyError(format!("option {name} takes no value")))
                }
                (other, _) => {
                    return Err(PolicyError(format!(
                        "unknown option {other:?} (known: user=, from=, command=, no-stdin, no-pty, max-timeout=)"
                    )))
                }
            }
        }
        Ok(policy)
    }

    /// Whether this policy restricts nothing.
    pub fn is_unrestricted(&self) -> bool {
        *self == Policy::default()
    }

    /// Whether `from=` admits `peer` (always, without `from=`).
    pub fn admits(&self, peer: IpAddr) -> bool {
        self.from
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|net| net.contains(peer)))
    }
}

impl fmt::Display for Policy {
    /// The options field again, in a canonical order (for logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(user) = &self.user {
            parts.push(format!("user={user}"));
        }
        if let Some(from) = &self.from {
            let nets: Vec<String> = from.iter().map(Cidr::to_string).collect();
            parts.push(format!("from={}", nets.join(";")));
        }
        if let Some(command) = &self.command {
            parts.push(format!("command=\"{}\"", command.replace('"', "\\\"")));
        }
        if self.no_stdin {
            parts.push("no-stdin".into());
        }
        if self.no_pty {
            parts.push("no-pty".into());
        }
        if let Some(t) = self.max_timeout {
            parts.push(format!("max-timeout={}", t.as_secs_f64()));
        }
        f.write_str(&parts.join(","))
    }
}

struct RawOption<'a> {
    name: &'a str,
    value: Option<String>,
}

/// Splits `a,b=c,d="x, y"` into options; commas and spaces count only outside double quotes,
/// and inside them `\"` is a quote (as in `authorized_keys`; any other backslash is kept).
fn split_options(text: &str) -> Result<Vec<RawOption<'_>>, PolicyError> {
    let mut options = Vec::new();
    let mut rest = text.trim();
    if rest.is_empty() {
        return Ok(options);
    }
    loop {
        let name_end = rest
            .find(|c: char| c == '=' || c == ',' || c.is_whitespace())
            .unwrap_or(rest.len());
        let name = &rest[..name_end];
        if name.is_empty() {
            return Err(PolicyError(
                "empty option (two commas in a row, or a comma at the start or end)".into(),
            ));
        }
        rest = &rest[name_end..];
        let value = if let Some(after) = rest.strip_prefix('=') {
            let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
                unquote(quoted, name)?
            } else {
                let end = after
                    .find(|c: char| c == ',' || c.is_whitespace() || c == '"')
                    .unwrap_or(after.len());
                if after[end..].starts_with('"') {
                    return Err(PolicyError(format!(
                        "option {name}: a double quote may only open the value (write {name}=\"...\")"
                    )));
                }
                (after[..end].to_owned(), &after[end..])
            };
            rest = after;
            Some(value)
        } else {
            None
        };
        options.push(RawOption { name, value });
        if rest.is_empty() {
            return Ok(options);
        }
        match rest.strip_prefix(',') {
            Some("") => return Err(PolicyError("the options end with a comma".into())),
            Some(after) if !after.starts_with(char::is_whitespace) => rest = after,
            _ => {
                return Err(PolicyError(format!(
                    "unexpected space after option {name}; options are separated by commas without spaces, and a value holding a space or comma is double-quoted"
                )))
            }
        }
    }
}

/// Reads a quoted value up to its closing quote; returns it and the text after the quote.
fn unquote<'a>(text: &'a str, name: &str) -> Result<(String, &'a str), PolicyError> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &text[i + 1..])),
            '\\' if text[i + 1..].starts_with('"') => {
                value.push('"');
                chars.next();
            }
            c => value.push(c),
        }
    }
    Err(PolicyError(format!(
        "option {name}: the double quote that opens its value is never closed"
    )))
}

fn parse_user(name: &str) -> Result<String, PolicyError> {
    // The portable user-name characters; a name that getpwnam might read in surprising ways
    // (empty, spaces, a leading dash, path separators) is refused outright.
    let ok = (1..=MAX_USER_LEN).contains(&name.len())
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !name.bytes().all(|b| b.is_ascii_digit());
    if ok {
        Ok(name.to_owned())
    } else {
        Err(PolicyError(format!(
            "option user={name:?}: not a user name (letters, digits, . _ -, not all digits, not starting with -)"
        )))
    }
}

fn parse_from(text: &str) -> Result<Vec<Cidr>, PolicyError> {
    let nets = text
        .split([';', ','])
        .map(|part| {
            Cidr::parse(part.trim())
                .map_err(|why| PolicyError(format!("option from={text}: {why}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(nets)
}

/// An IPv4 or IPv6 network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/LEN` or a bare address (a single host: /32 or /128). Host bits set below
    /// the prefix (`10.1.2.3/8`) are refused: they usually mean a mistyped length.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("empty address".into());
        }
        let (addr_text, prefix_text) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr_text
            .parse()
            .map_err(|_| format!("{addr_text:?} is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix_text {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(format!("{text:?}: prefix length must be 0-{max}")),
            },
        };
        let cidr = Self { addr, prefix };
        if cidr.network() != bits(addr) {
            return Err(format!(
                "{text:?} has host bits set; did you mean {}?",
                Self {
                    addr: from_bits(addr, cidr.network()),
                    prefix
                }
            ));
        }
        Ok(cidr)
    }

    /// Whether `ip` is inside this network. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as
    /// a dual-stack socket reports IPv4 peers) counts as the IPv4 address it carries.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        (bits(ip) & self.mask()) == self.network()
    }

    fn mask(&self) -> u128 {
        let width = if self.addr.is_ipv4() { 32 } else { 128 };
        let host_bits = width - u32::from(self.prefix);
        let full = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        full.checked_shl(host_bits).map_or(0, |m| m & full)
    }

    fn network(&self) -> u128 {
        bits(self.addr) & self.mask()
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_bits(like: IpAddr, value: u128) -> IpAddr {
    match like {
        // The value came from an IPv4 address masked within 32 bits.
        IpAddr::V4(_) => IpAddr::V4((value as u32).into()),
        IpAddr::V6(_) => IpAddr::V6(value.into()),
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, String> {
        Policy::parse(text).map_err(|e| e.to_string())
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn empty_field_restricts_nothing() {
        let p = parse("").unwrap();
        assert!(p.is_unrestricted());
        assert!(p.admits(ip("203.0.113.9")));
    }

    #[test]
    fn every_option_parses() {
        let p = parse(
            r#"user=nobody,from=10.0.0.0/8;2001:db8::/32;192.0.2.7,command="echo \"hi\", there",no-stdin,no-pty,max-timeout=1.5"#,
        )
        .unwrap();
        assert_eq!(p.user.as_deref(), Some("nobody"));
        assert_eq!(p.command.as_deref(), Some(r#"echo "hi", there"#));
        assert!(p.no_stdin && p.no_pty);
        assert_eq!(p.max_timeout, Some(Duration::from_millis(1500)));
        let from: Vec<String> = p.from.unwrap().iter().map(Cidr::to_string).collect();
        assert_eq!(from, ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32"]);
    }

    #[test]
    fn unquoted_command_without_spaces_and_other_backslashes_are_kept() {
        assert_eq!(
            parse("command=uptime").unwrap().command.as_deref(),
            Some("uptime")
        );
        assert_eq!(
            parse(r#"command="printf 'a\nb'""#)
                .unwrap()
                .command
                .as_deref(),
            Some(r"printf 'a\nb'")
        );
        // Inside quotes, a comma separates from= networks too (as ssh users write them).
        let p = parse(r#"from="127.0.0.0/8,::1""#).unwrap();
        assert_eq!(p.from.unwrap().len(), 2);
    }

    #[test]
    fn display_gives_back_an_equivalent_field() {
        let text =
            r#"user=a,from=10.0.0.0/8,command="say \"x, y\"",no-stdin,no-pty,max-timeout=30"#;
        let p = parse(text).unwrap();
        assert_eq!(p.to_string(), text);
        assert_eq!(parse(&p.to_string()).unwrap(), p);
    }

    #[test]
    fn bad_options_are_named() {
        for (text, expect) in [
            ("restrict", "unknown option \"restrict\""),
            ("no-pty,permit-X", "unknown option \"permit-X\""),
            ("user", "option user needs a value"),
            ("user=", "option user=\"\""),
            ("user=-rf", "not a user name"),
            ("user=../x", "not a user name"),
            ("user=1000", "not a user name"),
            ("user=a,user=b", "option user is given more than once"),
            ("no-stdin=yes", "option no-stdin takes no value"),
            ("no-pty,no-pty", "option no-pty is given more than once"),
            ("from=10.0.0.0/33", "prefix length must be 0-32"),
            ("from=::/129", "prefix length must be 0-128"),
            ("from=10.1.2.3/8", "did you mean 10.0.0.0/8"),
            ("from=web1", "not an IPv4 or IPv6 address"),
            ("from=10.0.0.0/+8", "prefix length"),
            ("from=10.0.0.1;", "empty address"),
            ("max-timeout=0", "option max-timeout"),
            ("max-timeout=soon", "not a duration"),
            ("command=\"\"", "option command= needs a command"),
            ("command=\"echo", "never closed"),
            ("command=echo\"x\"", "may only open the value"),
            ("command=\"a\"b", "unexpected space after option command"),
            ("no-pty, no-stdin", "unexpected space after option no-pty"),
            ("no-pty,", "end with a comma"),
            (",no-pty", "empty option"),
            ("no-pty,,no-stdin", "empty option"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(expect), "{text:?}: {err}");
        }
    }

    #[test]
    fn cidrs_match_their_addresses() {
        let net = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(net.contains(ip("127.0.0.1")) && net.contains(ip("127.255.255.255")));
        assert!(!net.contains(ip("128.0.0.1")) && !net.contains(ip("10.0.0.1")));
        // A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d.
        assert!(net.contains(ip("::ffff:127.0.0.1")));
        assert!(!net.contains(ip("::1")));

        let host = Cidr::parse("192.0.2.7").unwrap();
        assert!(host.contains(ip("192.0.2.7")) && !host.contains(ip("192.0.2.8")));

        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(
            !v6.contains(ip("32.1.13.184")),
            "families never match each other"
        );
        assert!(Cidr::parse("::1").unwrap().contains(ip("::1")));

        for any in ["0.0.0.0/0", "::/0"] {
            let all = Cidr::parse(any).unwrap();
            assert!(all.contains(ip(if any.contains(':') {
                "2001:db8::1"
            } else {
                "8.8.8.8"
            })));
        }
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("::ffff:8.8.8.8")));
    }

    #[test]
    fn from_admits_only_listed_networks() {
        let p = parse("from=10.0.0.0/8;::1").unwrap();
        assert!(p.admits(ip("10.9.9.9")) && p.admits(ip("::1")));
        assert!(!p.admits(ip("127.0.0.1")));
    }
}
