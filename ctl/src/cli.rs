//! ctl's command line: every subcommand, option and help text (clap derive).
//!
//! Self-contained on purpose (clap, std and `rexec_shared` only), so that a man-page or
//! completion generator can include this file on its own.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use rexec_shared::cli::{parse_alive_timeout, parse_secs, AliveTimeout};

/// Run shell commands on remote agents over an authenticated, encrypted channel.
#[derive(Debug, Parser)]
#[command(version, about, max_term_width = 100, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

const EXIT_CODES: &str = "\
Exit status (ctl exec, ping, keygen):
  N        the remote command's exit code (the highest of all targets' statuses)
  128+N    the remote command was killed by signal N, or the agent was stopping and
           ended it with signal N (even if it then exited 0; stderr says so)
  124      --timeout ran out (the remote process tree was killed)
  130/143  ctl got SIGINT/SIGTERM (the remote process tree was terminated)
  255      a target could not be reached, authenticated, or its stream was cut or altered
  2        usage error, or an unusable key, hosts or config file
  1        ctl keygen: the output file exists, or cannot be written";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a shell command on one target, or many (-H, --hosts-file).
    #[command(after_help = EXEC_EXAMPLES)]
    Exec(ExecArgs),
    /// Check that targets answer and accept the key; print round-trip time and agent version.
    #[command(after_help = PING_EXAMPLES)]
    Ping(PingArgs),
    /// Copy local files (directories with -r) to one target, or many (-H, --hosts-file).
    #[command(after_help = PUSH_EXAMPLES)]
    Push(PushArgs),
    /// Copy files (directories with -r) from one target, or many, into a local directory.
    #[command(after_help = PULL_EXAMPLES)]
    Pull(PullArgs),
    /// Write a new client key file (mode 0600), or print one to stdout.
    #[command(after_help = KEYGEN_EXAMPLES)]
    Keygen(KeygenArgs),
    /// Print the key-file line an agent needs for each AGENT_NAME (from ctl's client key).
    #[command(after_help = ENROLL_EXAMPLES)]
    Enroll(EnrollArgs),
    /// Print a shell completion script for ctl to stdout.
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions(CompletionsArgs),
    /// Install and start the agent on hosts over ssh, with a key enrolled for each; ping it.
    #[command(after_help = DEPLOY_EXAMPLES)]
    Deploy(DeployArgs),
}

const EXEC_EXAMPLES: &str = "\
Examples:
  ctl exec web1 'ls -l /var/log'
  ctl exec 10.0.0.5:50007 uptime
  tar cz dir | ctl exec web1 'tar xz -C /srv'
  ctl exec --timeout 30 -e LANG=C --cwd /srv web1 'make test'
  ctl exec -H web1,web2,web3 uptime
  ctl exec -H web1,web2 -H db1 --group 'cat /etc/os-release'
  ctl exec --hosts-file fleet.txt -P 200 --script check.sh -- --quick
  tar cz site | ctl exec -H web1,web2 --stdin 'tar xz -C /srv'
  ctl exec --hosts-file fleet.txt --json 'df -h /' | jq -r 'select(.status != 0) | .target'";

const PUSH_EXAMPLES: &str = "\
DEST is a directory when it exists there or when several SOURCEs are given (or it ends in
'/'); otherwise it is the new path of the one SOURCE. Each file appears atomically: one that
fails or is cut leaves the old file in place. One line per target says what was copied.

Examples:
  ctl push web1 nginx.conf /etc/nginx/nginx.conf
  ctl push -H web1,web2 -p app.tar.gz app.sha256 /srv/releases/
  ctl push --hosts-file fleet.txt -r site /var/www/

Exit status: 0 when every target got every file; 1 when a file could not be read or
written; 255 when a target could not be reached, authenticated or its stream was cut;
124 when --timeout ran out; the highest of these over all targets.";

const PULL_EXAMPLES: &str = "\
With one TARGET the files land in LOCAL_DIR; with -H/--hosts-file in LOCAL_DIR/<target>/,
the target as written. Nothing an agent sends is written outside that directory: paths with
'..', absolute paths, and symlinks that lead out are refused.

Examples:
  ctl pull web1 /etc/nginx/nginx.conf .
  ctl pull -H web1,web2 -r /var/log/nginx logs/      # logs/web1/nginx/..., logs/web2/nginx/...

Exit status: as for push.";

const PING_EXAMPLES: &str = "\
Examples:
  ctl ping web1 web2:50007
  ctl ping --hosts-file fleet.txt";

const KEYGEN_EXAMPLES: &str = "\
Examples:
  ctl keygen --id ops -o ~/.config/rexec/key
  ctl keygen --id ci >> /etc/rexec/keys   (then chmod 600; send the agent SIGHUP)";

const ENROLL_EXAMPLES: &str = "\
Each line is `<key-id> <secret> <agent-name>`: the key this client uses with that agent under
that name, derived from the client key, which never appears in the output. An agent holds
only its own lines, so a copy of its key file opens nothing else. An agent reached under
several names (a DNS name and an IP) needs one line per name.

Examples:
  ctl enroll web1 > web1.keys                   # install as web1's --key-file (mode 0600)
  ctl enroll -o /tmp/db1.keys db1.example.com
  ctl enroll web1 10.0.0.5                      # web1 and its address, one line each
  ctl enroll --hosts-file fleet.txt             # every target's name (second field if given)";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  ctl completions bash > ~/.local/share/bash-completion/completions/ctl
  ctl completions zsh > ~/.zfunc/_ctl    (with fpath+=~/.zfunc before compinit in ~/.zshrc)
  ctl completions fish > ~/.config/fish/completions/ctl.fish";

const DEPLOY_EXAMPLES: &str = "\
Examples:
  ctl deploy web1 web2                         # ssh web1, web2: install, enroll, start, ping
  ctl deploy -H 'web[01-20]' -P 10 --ssh-option User=admin
  ctl deploy --dry-run --hosts-file fleet.txt  # what would be done, and nothing
  ctl deploy --replace-keys web1               # a new key file instead of keeping the old
  ctl deploy --ssh 'ssh -F ./ssh_config' --root /tmp/scratch --listen 127.0.0.1:0 test1

What it does on each host, over one ssh connection (as root, or through sudo -n):
  copies the agent to /usr/local/bin/agent (an upgrade in place when it is there),
  writes /etc/rexec/keys with the key enrolled for the host's name (sent over ssh's
  stdin, never on a command line) unless it holds that key id (--replace-keys),
  installs, enables and (re)starts rexec-agent.service (the agent runs as root, each
  key's commands as its user=); without systemd (or with --root) it starts the agent in
  the background and says so.
  Then it pings the new agent. Exit status: 0 when every host answered the ping, 1 when
  a host refused a step, 255 when ssh or the ping could not reach one.";

/// Which key to authenticate with.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// Key file [default: $CTL_KEY_FILE, else the config's key_file, else ~/.config/rexec/key].
    #[arg(long, value_name = "PATH")]
    pub key_file: Option<PathBuf>,

    /// Use the key with this id instead of the file's first one.
    #[arg(long, value_name = "ID")]
    pub key_id: Option<String>,
}

/// Where to connect and how patiently. Options without a default here take theirs from the
/// environment, then from ctl's config file.
#[derive(Debug, Args)]
pub struct TargetArgs {
    /// Targets, comma-separated, with ranges (web[01-20]) and @groups (repeatable); selects
    /// many-target output even for one.
    #[arg(short = 'H', long = "hosts", value_name = "TARGET,...")]
    pub hosts: Vec<String>,

    /// File with one target per line, optionally followed by its agent name (blank lines
    /// and # comments skipped).
    #[arg(long, value_name = "FILE")]
    pub hosts_file: Option<PathBuf>,

    /// Leave out these targets (same syntax as -H; repeatable).
    #[arg(short = 'x', long = "exclude", value_name = "TARGET,...")]
    pub exclude: Vec<String>,

    /// Most targets to run at once [default: 64].
    #[arg(short = 'P', long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub parallel: Option<u32>,

    /// Time allowed to connect and authenticate, per target (30, 90s, 5m, 2h) [default: 5s].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub connect_timeout: Option<Duration>,

    /// Give up on a target that sends nothing, not even a heartbeat, for this long while ctl
    /// waits (a frozen agent, or the network to it gone): exit 255 naming it. A quiet command
    /// is never cut, the agent's heartbeats keep coming. 0 or `off`: never [default: 30].
    #[arg(long, value_name = "SECS", value_parser = parse_alive_timeout)]
    pub alive_timeout: Option<AliveTimeout>,

    /// Port for targets that name none [default: $CTL_PORT, else 50007].
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,

    /// Try a target that could not be reached up to N more times (never once a command
    /// has started).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub retry: u32,

    /// Show connect, handshake and timing steps on stderr (also RUST_LOG=ctl=debug).
    #[arg(short = 'v', long)]
    pub verbose: bool,

    /// The agent name to expect at the one target [default: its host as written].
    #[arg(long, value_name = "NAME")]
    pub agent_name: Option<String>,
}

/// `ctl enroll`.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    #[command(flatten)]
    pub key: KeyArgs,

    /// Write a new file (mode 0600) instead of printing; one AGENT_NAME only.
    #[arg(short = 'o', long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Enroll these targets' expected names, comma-separated (repeatable).
    #[arg(
        short = 'H',
        long = "hosts",
        value_name = "TARGET,...",
        value_delimiter = ','
    )]
    pub hosts: Vec<String>,

    /// Enroll every target of this hosts file (its second field, else its host).
    #[arg(long, value_name = "FILE")]
    pub hosts_file: Option<PathBuf>,

    /// Agent names: a host name or address as ctl's targets name it.
    #[arg(value_name = "AGENT_NAME")]
    pub names: Vec<String>,
}

impl Command {
    /// Whether this run talks to one target alone (named on the command line, not through
    /// -H or --hosts-file).
    pub fn one_target(&self) -> bool {
        match self {
            Command::Exec(a) => !a.targets.many(),
            Command::Push(a) => !a.targets.many(),
            Command::Pull(a) => !a.targets.many(),
            Command::Ping(a) => !a.targets.many() && a.positional.len() <= 1,
            _ => false,
        }
    }
}

impl Command {
    /// Whether this runs one target with its output passed through as it comes (`exec`
    /// without -t, --json or --group, and not to many targets).
    pub fn passes_through(&self) -> bool {
        matches!(self, Command::Exec(a) if !a.targets.many() && !a.tty && !a.json && !a.group)
    }
}

impl TargetArgs {
    /// Whether many-target mode was asked for.
    pub fn many(&self) -> bool {
        !self.hosts.is_empty() || self.hosts_file.is_some()
    }
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub key: KeyArgs,

    #[command(flatten)]
    pub targets: TargetArgs,

    /// Run on a pseudo-terminal, interactively, as `ssh -t`; without COMMAND, the login shell.
    #[arg(short = 't', long = "tty")]
    pub tty: bool,

    /// Time the command may run (30, 90s, 5m, 2h); then its process tree is killed and ctl
    /// exits 124.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub timeout: Option<Duration>,

    /// Give the command an empty stdin instead of forwarding ctl's.
    #[arg(short = 'n', long)]
    pub no_stdin: bool,

    /// With many targets, send ctl's stdin to every target (the same bytes to each).
    #[arg(long, conflicts_with_all = ["no_stdin", "script"])]
    pub stdin: bool,

    /// Set a variable in the remote environment (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// Remote working directory.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,

    /// Write one JSON object per target to stdout (JSON Lines) instead of the output.
    #[arg(long, conflicts_with_all = ["group", "no_prefix"])]
    pub json: bool,

    /// Print each target's output as one block when it finishes, folding identical outputs
    /// (and exit statuses).
    #[arg(long)]
    pub group: bool,

    /// Write many-target output lines without the `TARGET: ` prefix.
    #[arg(short = 'N', long)]
    pub no_prefix: bool,

    /// Also write each target's stdout and stderr, raw, to DIR/TARGET.out and .err.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,

    /// Start no new target once N targets have failed.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_fail: Option<u32>,

    /// Run targets in batches of N, each finished before the next starts.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: Option<u32>,

    /// Write the targets that did not succeed to FILE, one per line (for --hosts-file).
    #[arg(long, value_name = "FILE")]
    pub failed_to: Option<PathBuf>,

    /// Run this local script on every target with its #! interpreter (else sh); COMMAND words
    /// become its arguments.
    #[arg(long, value_name = "FILE")]
    pub script: Option<PathBuf>,

    /// Not supported: the user is chosen on the agent, by the key's policy.
    #[arg(short = 'l', long = "login", value_name = "USER", hide = true)]
    pub login: Option<String>,

    /// TARGET (unless -H or --hosts-file is given), then the COMMAND words, joined by spaces.
    #[arg(value_name = "[TARGET] COMMAND", trailing_var_arg = true)]
    pub words: Vec<String>,
}

/// Options push and pull share.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// Copy directories and everything in them (symlinks are copied as symlinks).
    #[arg(short = 'r', long)]
    pub recursive: bool,

    /// Keep modification times (modes are always kept).
    #[arg(short = 'p', long)]
    pub preserve: bool,

    /// Seconds one target's transfer may take; then it is cut (nothing partial is kept).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub timeout: Option<Duration>,

    /// Write one JSON object per target to stdout (JSON Lines) instead of result lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    #[command(flatten)]
    pub key: KeyArgs,

    #[command(flatten)]
    pub targets: TargetArgs,

    #[command(flatten)]
    pub copy: CopyArgs,

    /// TARGET (unless -H or --hosts-file is given), the local SOURCEs, then the remote DEST.
    #[arg(value_name = "[TARGET] SOURCE... DEST", required = true,
          value_parser = clap::value_parser!(std::ffi::OsString))]
    pub words: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub key: KeyArgs,

    #[command(flatten)]
    pub targets: TargetArgs,

    #[command(flatten)]
    pub copy: CopyArgs,

    /// TARGET (unless -H or --hosts-file is given), the REMOTE paths, then the LOCAL_DIR.
    #[arg(value_name = "[TARGET] REMOTE... LOCAL_DIR", required = true,
          value_parser = clap::value_parser!(std::ffi::OsString))]
    pub words: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
pub struct PingArgs {
    #[command(flatten)]
    pub key: KeyArgs,

    #[command(flatten)]
    pub targets: TargetArgs,

    /// Targets to ping.
    #[arg(value_name = "TARGET")]
    pub positional: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub key: KeyArgs,

    #[command(flatten)]
    pub targets: TargetArgs,

    /// The agent binary to install [default: `agent` beside ctl's own executable].
    #[arg(long, value_name = "PATH")]
    pub agent_binary: Option<PathBuf>,

    /// The ssh command, with arguments of its own, split at spaces.
    #[arg(long, value_name = "COMMAND", default_value = "ssh")]
    pub ssh: String,

    /// An option for ssh, as `ssh -o OPTION` (repeatable): Port=2222, User=admin, ...
    #[arg(long = "ssh-option", value_name = "OPTION")]
    pub ssh_options: Vec<String>,

    /// Install under this directory instead of / (no systemd, no account; for tests).
    #[arg(long, value_name = "DIR")]
    pub root: Option<String>,

    /// Address the agent listens on [default: 0.0.0.0 and the target's port].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,

    /// Write a new key file even where the host's holds this key id already.
    #[arg(long)]
    pub replace_keys: bool,

    /// Print what would be done on each host, and do nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Hosts to deploy to.
    #[arg(value_name = "TARGET")]
    pub positional: Vec<String>,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Key id written in the file (what agent audit logs name).
    #[arg(long, value_name = "NAME", default_value = "default")]
    pub id: String,

    /// Write to this new file (mode 0600, missing parent directories 0700) instead of
    /// stdout; never overwrites (exit status 1 if it exists).
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// Shell to write the completion script for.
    #[arg(value_name = "SHELL", value_parser = ["bash", "elvish", "fish", "powershell", "zsh"])]
    pub shell: String,
}

pub fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}
