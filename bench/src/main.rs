//! `bench-hold`: opens many connections to an agent, completes the handshake on each, and then
//! holds them idle, so that bench/run.sh can read what an idle authenticated connection costs
//! the agent in memory.
//!
//! It sends no request: the agent keeps such a connection until `--handshake-timeout`, so the
//! agent under test must be started with a timeout longer than `--hold-secs`. It exits by
//! itself after `--hold-secs`, or earlier when killed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rexec_shared::keyfile::KeyRing;
use rexec_shared::name::AgentName;
use rexec_shared::transport::client_handshake;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Hold COUNT authenticated, idle connections to an agent.
#[derive(Debug, Parser)]
#[command(version, about, max_term_width = 100)]
struct Cli {
    /// Agent address, `ip:port`.
    #[arg(long, value_name = "ADDR:PORT")]
    target: std::net::SocketAddr,

    /// Key file; its first key is used.
    #[arg(long, value_name = "PATH")]
    key_file: PathBuf,

    /// Connections to open and hold.
    #[arg(long, value_name = "N", default_value_t = 500)]
    count: usize,

    /// Handshakes in flight at once; keep it under the agent's --max-unauthenticated, which
    /// otherwise drops the oldest to make room.
    #[arg(long, value_name = "N", default_value_t = 16)]
    parallel: usize,

    /// Written (with the count) once every connection is authenticated.
    #[arg(long, value_name = "PATH")]
    ready_file: PathBuf,

    /// Seconds to hold the connections before exiting.
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    hold_secs: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-hold: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-hold: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ring = KeyRing::load(&cli.key_file)?;
    let key = ring
        .first()
        .with_context(|| format!("key file {} holds no keys", cli.key_file.display()))?
        .clone();
    let limit = Arc::new(Semaphore::new(cli.parallel.max(1)));
    let mut tasks = JoinSet::new();
    for n in 0..cli.count {
        let (limit, key, target) = (limit.clone(), key.clone(), cli.target);
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let stream = TcpStream::connect(target)
                .await
                .with_context(|| format!("connection {n}: cannot connect to {target}"))?;
            let (read, write) = stream.into_split();
            // The agent is expected under its address, as ctl expects a target given as one.
            let name = AgentName::parse(&target.ip().to_string()).map_err(anyhow::Error::msg)?;
            client_handshake(read, write, &key.id, &key.secret, &name)
                .await
                .with_context(|| format!("connection {n}: handshake failed"))
        });
    }
    // Keep both halves of every connection: dropping either would close it.
    let mut held = Vec::with_capacity(cli.count);
    while let Some(joined) = tasks.join_next().await {
        held.push(joined.context("a connection task panicked")??);
    }
    std::fs::write(&cli.ready_file, format!("{}\n", held.len()))
        .with_context(|| format!("cannot write {}", cli.ready_file.display()))?;
    println!(
        "holding {} authenticated connections to {}",
        held.len(),
        cli.target
    );
    tokio::time::sleep(Duration::from_secs(cli.hold_secs)).await;
    Ok(())
}
