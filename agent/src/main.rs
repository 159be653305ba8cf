//! `agent`: the daemon that authenticates clients with a pre-shared key and runs their
//! commands. See `agent --help` and docs/protocol.md.

mod admission;
mod audit;
mod cli;
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
mod spawn;
mod tty;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use rexec_shared::keyfile::AgentKeys;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};

use crate::cli::Cli;
use crate::config::Config;
use crate::keystore::KeyStore;
use crate::logging::LIFECYCLE;

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
        alive_timeout: cli.alive_timeout.0,
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
