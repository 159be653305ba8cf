//! The agent's command line: its options, help text and exit statuses. Self-contained (clap,
//! std, `rexec_shared` and tracing-subscriber's filter parser only) so that `xtask` can build
//! the man page from this very definition.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::{Parser, ValueEnum};
use rexec_shared::cli::{parse_alive_timeout, parse_secs, AliveTimeout};
use tracing_subscriber::EnvFilter;

/// Default `--max-connections` (also `config::Config`'s).
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default `--max-unauthenticated` (also `config::Config`'s).
pub const DEFAULT_MAX_UNAUTHENTICATED: usize = 64;

/// Remote command-execution agent.
///
/// Listens on TCP, proves to each client (and has each client prove) that both hold a key from
/// the key file, then runs the client's command as `/bin/sh -c -- COMMAND` in its own process
/// group and streams its output back over an encrypted, authenticated channel. Each command's
/// whole process tree is held in a cgroup of its own where the agent can make one (else the
/// agent is a child subreaper and marks each command's processes); the start-up log says which
/// (`containment=cgroup` or `containment=subreaper`).
///
/// Once it accepts connections it writes a line containing `listening` and the bound address
/// to stderr. SIGTERM or SIGINT stops it: running commands are terminated and it exits 0.
/// SIGHUP re-reads the key file without touching running commands.
///
/// Every command is logged when it starts (target `audit`: peer, key_id, command) and when it
/// ends (also status, exit_code or signal, duration_ms, bytes_out), whatever the log level.
#[derive(Debug, Parser)]
// Name and about are spelled out (not taken from Cargo) so that xtask, which compiles this
// file too, builds the man page with them.
#[command(
    name = "agent",
    version,
    about = "Remote command-execution agent: authenticates clients with a pre-shared key and runs \
             their commands",
    long_about,
    max_term_width = 100,
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Key file: lines `<key-id> <64 hex digits> <agent-name> [options]` as `ctl enroll` prints
    /// them (options: user=, from=, command=, no-stdin, no-pty, max-timeout=); must not be
    /// readable by group or others.
    #[arg(long, value_name = "PATH")]
    pub key_file: PathBuf,

    /// Address and port to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:50007")]
    pub listen: SocketAddr,

    /// Most connections held at once; at the limit, one still authenticating gives way.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub max_connections: usize,

    /// Most connections still authenticating; the busiest source's oldest gives way.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_UNAUTHENTICATED,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub max_unauthenticated: usize,

    /// Most connections still authenticating from one IP address (default: no limit).
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    pub max_unauthenticated_per_source: Option<usize>,

    /// Seconds a client has to authenticate and send its request.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub handshake_timeout: Duration,

    /// Seconds a client may send nothing, not even a heartbeat, before the agent ends its
    /// command's process tree (a frozen client, or the network to it gone). A command that is
    /// merely quiet is never cut: ctl's heartbeats keep coming. 0 or `off`: never.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_alive_timeout)]
    pub alive_timeout: AliveTimeout,

    /// Seconds between SIGTERM and SIGKILL when a command's process tree is killed.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_secs)]
    pub kill_grace: Duration,

    /// How each command's process tree is held: a cgroup per command (`cgroup`), the agent
    /// as child subreaper (`subreaper`), or the cgroup where one can be made (`auto`).
    #[arg(long, value_name = "MODE", value_enum, default_value_t = ContainmentMode::Auto)]
    pub containment: ContainmentMode,

    /// The cgroup v2 directory to make the commands' cgroups in [default: the agent's own
    /// cgroup]. Under systemd the unit needs `Delegate=yes`.
    #[arg(long, value_name = "DIR")]
    pub cgroup_parent: Option<PathBuf>,

    /// Log line format on stderr: `text` for people, `json` (one object per line) for shippers.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = Format::Text)]
    pub log_format: Format,

    /// Log level (error, warn, info, debug, trace) or a RUST_LOG-style filter [default:
    /// $RUST_LOG, else info]. Audit and lifecycle lines are written at every level.
    #[arg(long, value_name = "LEVEL", value_parser = parse_filter)]
    pub log_level: Option<String>,
}

/// Examples and exit statuses, kept out of the doc comment so clap does not rewrap them.
const AFTER_HELP: &str = "\
Examples:
  ctl keygen --id ops -o ~/.config/rexec/key             # on the client: its master key
  ctl enroll -o /etc/rexec/keys web1                     # the line web1 needs, to install there
  agent --key-file /etc/rexec/keys                       # listens on 0.0.0.0:50007
  agent --key-file keys --listen 127.0.0.1:0             # a free port on loopback
  agent --key-file /etc/rexec/keys --log-format json --log-level warn
  RUST_LOG=info,agent::connection=debug agent --key-file /etc/rexec/keys
  kill -HUP $(pidof agent)                               # re-read the key file

Exit status:
  0  stopped cleanly (SIGTERM, SIGINT)
  1  the key file is unusable, or the address cannot be bound
  2  usage error";

/// The containment asked for on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ContainmentMode {
    /// A cgroup per command where the agent can make one, else the subreaper.
    Auto,
    /// A cgroup per command; the agent refuses to start where it cannot make one.
    Cgroup,
    /// The agent as a child subreaper, with a marker in each command's environment.
    Subreaper,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `TIME LEVEL target: message key=value...`, for people and journald.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `message`, fields, `target`), for log
    /// shippers.
    Json,
}

/// Checks a `--log-level` value: a level (`error`, `warn`, `info`, `debug`, `trace`, `off`)
/// or a `RUST_LOG`-style filter such as `info,agent::request::exec=debug`.
pub fn parse_filter(text: &str) -> Result<String, String> {
    // A lone word would otherwise be read as a target name ("loud" = trace for target "loud").
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let word = text.trim();
    if !word.contains(['=', ',', '[']) && !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(word)) {
        return Err(format!(
            "{text:?} is not a log level: use one of {}, or a filter",
            LEVELS.join(", ")
        ));
    }
    match EnvFilter::builder().parse(text) {
        Ok(_) => Ok(text.to_owned()),
        Err(e) => Err(format!("{text:?} is not a log level or filter: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_checked() {
        assert!(parse_filter("warn").is_ok());
        assert!(parse_filter("info,agent::request::exec=debug").is_ok());
        assert!(parse_filter("WARN").is_ok());
        assert!(parse_filter("loud").is_err());
        assert!(parse_filter("agent=loud").is_err());
    }
}
