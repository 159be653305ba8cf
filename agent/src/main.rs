//! `agent`: the daemon that authenticates clients with a pre-shared key and runs their
//! commands. See `agent --help` and docs/protocol.md.

mod admission;
mod audit;
mod config;
mod connection;
mod containment;
mod credentials;
mod keystore;
mod logging;
mod policy;
mod process;
mod request;
mod server;
mod tty;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::builder::TypedValueParser;
use clap::Parser;
use rexec_shared::cli::parse_secs;
use rexec_shared::keyfile::AgentKeys;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::keystore::KeyStore;
use crate::logging::LIFECYCLE;

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
#[command(version, about, long_about, max_term_width = 100, after_help = AFTER_HELP)]
struct Cli {
    /// Key file: lines `<key-id> <64 hex digits> <agent-name> [options]` as `ctl enroll` prints
    /// them (options: user=, from=, command=, no-stdin, no-pty, max-timeout=); must not be
    /// readable by group or others.
    #[arg(long, value_name = "PATH")]
    key_file: PathBuf,

    /// Address and port to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:50007")]
    listen: SocketAddr,

    /// Most connections held at once; at the limit, one still authenticating gives way.
    #[arg(long, value_name = "N", default_value_t = Config::default().max_connections,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    max_connections: usize,

    /// Most connections still authenticating; the busiest source's oldest gives way.
    #[arg(long, value_name = "N", default_value_t = Config::default().max_unauthenticated,
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    max_unauthenticated: usize,

    /// Most connections still authenticating from one IP address (default: no limit).
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..).map(|n| n as usize))]
    max_unauthenticated_per_source: Option<usize>,

    /// Seconds a client has to authenticate and send its request.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    handshake_timeout: Duration,

    /// Seconds between SIGTERM and SIGKILL when a command's process tree is killed.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_secs)]
    kill_grace: Duration,

    /// How each command's process tree is held: a cgroup per command (`cgroup`), the agent
    /// as child subreaper (`subreaper`), or the cgroup where one can be made (`auto`).
    #[arg(long, value_name = "MODE", value_enum, default_value_t = containment::Mode::Auto)]
    containment: containment::Mode,

    /// The cgroup v2 directory to make the commands' cgroups in [default: the agent's own
    /// cgroup]. Under systemd the unit needs `Delegate=yes`.
    #[arg(long, value_name = "DIR")]
    cgroup_parent: Option<PathBuf>,

    /// Log line format on stderr: `text` for people, `json` (one object per line) for shippers.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = logging::Format::Text)]
    log_format: logging::Format,

    /// Log level (error, warn, info, debug, trace) or a RUST_LOG-style filter [default:
    /// $RUST_LOG, else info]. Audit and lifecycle lines are written at every level.
    #[arg(long, value_name = "LEVEL", value_parser = logging::parse_filter)]
    log_level: Option<String>,
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

fn main() -> ExitCode {
    // First, before anything opens a descriptor of its own: whatever the agent inherited
    // beyond 0-2 (a key file, a socket of its parent's) must not reach any command.
    let inherited = close_inherited_on_exec();
    let cli = Cli::parse();
    let format = cli.log_format;
    logging::init(format, cli.log_level.as_deref());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            logging::fatal(format, &format!("cannot start the async runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    if let Err(e) = inherited {
        logging::fatal(
            format,
            &format!("cannot mark inherited descriptors close-on-exec: {e}"),
        );
        return ExitCode::from(1);
    }
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::fatal(format, &format!("{e:#}"));
            ExitCode::from(1)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let keys = load_keys(&cli.key_file)?;
    let config = Config {
        max_connections: cli.max_connections,
        max_unauthenticated: cli.max_unauthenticated.min(cli.max_connections),
        max_unauthenticated_per_source: cli.max_unauthenticated_per_source,
        handshake_timeout: cli.handshake_timeout,
        kill_grace: cli.kill_grace,
        ..Config::default()
    };
    let mut sigterm =
        signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
    let mut sigint =
        signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    let key_file = cli.key_file.display();
    tracing::info!(target: LIFECYCLE, keys = keys.len(), %key_file, "loaded the key file");
    let (held, fallback) = containment::init(cli.containment, cli.cgroup_parent.as_deref())
        .map_err(|e| anyhow::anyhow!("cannot set up --containment: {e}"))?;
    match (&held, fallback) {
        (containment::Containment::Cgroup { parent }, _) => tracing::info!(
            target: LIFECYCLE,
            containment = "cgroup",
            parent = %parent.display(),
            "each command runs in a cgroup of its own"
        ),
        (containment::Containment::Subreaper, None) => tracing::info!(
            target: LIFECYCLE,
            containment = "subreaper",
            "each command's processes are marked; the agent adopts their orphans"
        ),
        (containment::Containment::Subreaper, Some(why)) => tracing::warn!(
            target: LIFECYCLE,
            containment = "subreaper",
            "no cgroup for commands ({why}); each command's processes are marked and the agent adopts their orphans"
        ),
    }
    // The address ends the line (no fields follow) so that scripts can take the last word.
    tracing::info!(target: LIFECYCLE, "agent {} listening on {addr}", env!("CARGO_PKG_VERSION"));
    let shutdown = async {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!(target: LIFECYCLE, "received SIGTERM"),
            _ = sigint.recv() => tracing::info!(target: LIFECYCLE, "received SIGINT"),
        }
    };
    let store = Arc::new(KeyStore::new(keys));
    let reloader = store.clone();
    let key_file = cli.key_file.clone();
    tokio::spawn(async move {
        while sighup.recv().await.is_some() {
            reload(&reloader, &key_file);
        }
    });
    server::run(listener, store, config, shutdown).await;
    tracing::info!(target: LIFECYCLE, "stopped");
    Ok(())
}

/// Marks every descriptor but 0, 1 and 2 close-on-exec.
fn close_inherited_on_exec() -> std::io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags; no descriptor is closed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // Before Linux 5.11: one by one. The directory's own descriptor is close-on-exec already.
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Some(fd) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if fd > 2 {
            // SAFETY: fcntl on a descriptor number; one that is not open just fails with EBADF.
            unsafe {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                if flags >= 0 {
                    libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
                }
            }
        }
    }
    Ok(())
}

/// Reads the key file and checks that the agent can honour every key's options.
fn load_keys(path: &std::path::Path) -> anyhow::Result<AgentKeys> {
    let ring = AgentKeys::load(path)?;
    credentials::check_key_users(&ring, path).map_err(anyhow::Error::msg)?;
    Ok(ring)
}

/// Re-reads the key file; a bad file is refused and the keys in force stay.
fn reload(store: &KeyStore, path: &std::path::Path) {
    match load_keys(path) {
        Ok(ring) => {
            let keys = ring.len();
            // Replaced before the line is written, so whoever reads the line can rely on it.
            store.replace(ring);
            let key_file = path.display();
            tracing::info!(target: LIFECYCLE, keys, %key_file, "reloaded the key file on SIGHUP");
        }
        Err(e) => tracing::error!(
            target: LIFECYCLE,
            key_file = %path.display(),
            "key file reload refused, keeping the keys in force: {e:#}"
        ),
    }
}
