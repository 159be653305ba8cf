//! `ctl`: run shell commands on agents, one or many at a time. See `ctl --help`.

mod fleet;
mod json;
mod keys;
mod output;
mod remote;
mod target;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use rexec_shared::cli::parse_secs;
use rexec_shared::keyfile::KeyEntry;
use rexec_shared::message::ExecRequest;
use rexec_shared::DEFAULT_PORT;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

use crate::target::Target;

/// Exit status for a usage error or an unusable key file.
const EXIT_USAGE: u8 = 2;
/// Exit status when a target could not be reached, authenticated, or kept intact.
const EXIT_UNREACHABLE: u8 = 255;
/// Time ctl waits after forwarding SIGINT/SIGTERM for the remote side to report.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Run shell commands on remote agents over an authenticated, encrypted channel.
#[derive(Debug, Parser)]
#[command(version, about, max_term_width = 100, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "\
Exit status of `ctl exec`:
  N        the remote command's exit code (the highest of all targets' statuses)
  128+N    the remote command was killed by signal N
  124      --timeout ran out (the remote process group was killed)
  130/143  ctl got SIGINT/SIGTERM (the remote process group was terminated)
  255      a target could not be reached, authenticated, or its stream was cut or altered
  2        usage error, or an unusable key file";

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a shell command on one target, or many (-H, --hosts-file).
    #[command(after_help = EXEC_EXAMPLES)]
    Exec(ExecArgs),
    /// Check that targets answer and accept the key; print round-trip time and agent version.
    #[command(after_help = PING_EXAMPLES)]
    Ping(PingArgs),
    /// Write a new key file (mode 0600), or print one to stdout.
    #[command(after_help = KEYGEN_EXAMPLES)]
    Keygen(KeygenArgs),
    /// Print a shell completion script for ctl to stdout.
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions(CompletionsArgs),
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
  ctl exec --hosts-file fleet.txt --json 'df -h /' | jq -r 'select(.status != 0) | .target'";

const PING_EXAMPLES: &str = "\
Examples:
  ctl ping web1 web2:50007
  ctl ping --hosts-file fleet.txt";

const KEYGEN_EXAMPLES: &str = "\
Examples:
  ctl keygen --id ops -o ~/.config/rexec/key
  ctl keygen --id ci >> /etc/rexec/keys   (then chmod 600; send the agent SIGHUP)";

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  ctl completions bash > ~/.local/share/bash-completion/completions/ctl
  ctl completions zsh > ~/.zfunc/_ctl    (with fpath+=~/.zfunc before compinit in ~/.zshrc)
  ctl completions fish > ~/.config/fish/completions/ctl.fish";

/// Which key to authenticate with.
#[derive(Debug, Args)]
struct KeyArgs {
    /// Key file [default: $CTL_KEY_FILE, else ~/.config/rexec/key].
    #[arg(
        long,
        value_name = "PATH",
        env = "CTL_KEY_FILE",
        hide_env_values = true
    )]
    key_file: Option<PathBuf>,

    /// Use the key with this id instead of the file's first one.
    #[arg(long, value_name = "ID")]
    key_id: Option<String>,
}

/// Where to connect and how patiently.
#[derive(Debug, Args)]
struct TargetArgs {
    /// Targets, comma-separated (repeatable); selects many-target output even for one.
    #[arg(
        short = 'H',
        long = "hosts",
        value_name = "TARGET,...",
        value_delimiter = ','
    )]
    hosts: Vec<String>,

    /// File with one target per line (blank lines and # comments skipped).
    #[arg(long, value_name = "FILE")]
    hosts_file: Option<PathBuf>,

    /// Most targets to run at once.
    #[arg(short = 'P', long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    parallel: u32,

    /// Seconds allowed to connect and authenticate, per target.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    connect_timeout: Duration,

    /// Port for targets that name none.
    #[arg(long, value_name = "PORT", env = "CTL_PORT", default_value_t = DEFAULT_PORT)]
    port: u16,
}

impl TargetArgs {
    fn many(&self) -> bool {
        !self.hosts.is_empty() || self.hosts_file.is_some()
    }
}

#[derive(Debug, Args)]
struct ExecArgs {
    #[command(flatten)]
    key: KeyArgs,

    #[command(flatten)]
    targets: TargetArgs,

    /// Seconds the command may run; then its process group is killed and ctl exits 124.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    timeout: Option<Duration>,

    /// Give the command an empty stdin instead of forwarding ctl's.
    #[arg(short = 'n', long)]
    no_stdin: bool,

    /// Set a variable in the remote environment (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,

    /// Remote working directory.
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,

    /// Write one JSON object per target to stdout (JSON Lines) instead of the output.
    #[arg(long)]
    json: bool,

    /// Print each target's output as one block when it finishes, folding identical outputs.
    #[arg(long)]
    group: bool,

    /// Run this local script on every target (as `sh -s`; COMMAND words become its arguments).
    #[arg(long, value_name = "FILE")]
    script: Option<PathBuf>,

    /// TARGET (unless -H or --hosts-file is given), then the COMMAND words, joined by spaces.
    #[arg(value_name = "[TARGET] COMMAND", trailing_var_arg = true)]
    words: Vec<String>,
}

#[derive(Debug, Args)]
struct PingArgs {
    #[command(flatten)]
    key: KeyArgs,

    #[command(flatten)]
    targets: TargetArgs,

    /// Targets to ping.
    #[arg(value_name = "TARGET")]
    positional: Vec<String>,
}

#[derive(Debug, Args)]
struct KeygenArgs {
    /// Key id written in the file (what agent audit logs name).
    #[arg(long, value_name = "NAME", default_value = "default")]
    id: String,

    /// Write to this new file (mode 0600) instead of stdout; never overwrites.
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    output: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct CompletionsArgs {
    /// Shell to write the completion script for.
    #[arg(value_name = "SHELL", value_enum)]
    shell: clap_complete::Shell,
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ctl: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_UNREACHABLE);
        }
    };
    let code = match cli.command {
        Command::Exec(args) => runtime.block_on(exec(args)),
        Command::Ping(args) => runtime.block_on(ping(args)),
        Command::Keygen(args) => keygen(args),
        Command::Completions(args) => completions(args),
    };
    // Join the runtime's threads (briefly) before exiting: glibc can crash when threads exit
    // while exit() runs, and a fleet run leaves dozens of resolver threads. The thread that
    // reads stdin is not the runtime's, so it cannot hold this up.
    runtime.shutdown_timeout(Duration::from_millis(250));
    ExitCode::from(code)
}

/// Prints a usage-class error and returns the usage exit status.
fn usage_error(message: impl std::fmt::Display) -> u8 {
    eprintln!("ctl: {message:#}");
    EXIT_USAGE
}

/// The targets named by -H and --hosts-file, in order, duplicates removed.
fn fleet_targets(args: &TargetArgs, extra: &[String]) -> Result<Vec<Target>, String> {
    let mut spellings: Vec<String> = extra.to_vec();
    spellings.extend(args.hosts.iter().filter(|h| !h.trim().is_empty()).cloned());
    if let Some(path) = &args.hosts_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read hosts file {}: {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            Target::parse(line, args.port)
                .map_err(|e| format!("hosts file {}, line {}: {e}", path.display(), n + 1))?;
            spellings.push(line.to_owned());
        }
    }
    let mut targets: Vec<Target> = Vec::new();
    for spelling in spellings {
        let target = Target::parse(&spelling, args.port)?;
        if !targets.iter().any(|t| t.spelling == target.spelling) {
            targets.push(target);
        }
    }
    Ok(targets)
}

async fn exec(args: ExecArgs) -> u8 {
    let mut words = args.words.clone();
    let single = if args.targets.many() {
        None
    } else if words.is_empty() {
        return usage_error("missing TARGET: give a target, or -H/--hosts-file");
    } else {
        match Target::parse(&words.remove(0), args.targets.port) {
            Ok(t) => Some(t),
            Err(e) => return usage_error(e),
        }
    };
    let script = match &args.script {
        Some(path) => match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) => return usage_error(format!("cannot read script {}: {e}", path.display())),
        },
        None => None,
    };
    let command = match &script {
        // `sh -s ARGS` reads the script from stdin and gives it ARGS as $1...
        Some(_) => std::iter::once("sh -s --".to_owned())
            .chain(words.iter().map(|w| shell_quote(w)))
            .collect::<Vec<_>>()
            .join(" "),
        None if words.is_empty() => return usage_error("missing COMMAND to run"),
        None => words.join(" "),
    };
    let key = match keys::load(args.key.key_file.as_deref(), args.key.key_id.as_deref()) {
        Ok(key) => key,
        Err(e) => return usage_error(format!("{e:#}")),
    };
    let request = ExecRequest {
        command: command.into_bytes(),
        env: args
            .env
            .iter()
            .map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes()))
            .collect(),
        cwd: args.cwd.clone().map(String::into_bytes),
        timeout_ms: args.timeout.map(|t| t.as_millis().max(1) as u64),
        stdin: script.is_some() || (single.is_some() && !args.no_stdin),
    };
    let (cancel_tx, cancel_rx) = watch::channel(None);
    let interrupted = watch_signals(cancel_tx);
    match single {
        Some(target) if !args.json && !args.group => {
            let stdin = match script {
                Some(bytes) => Some(fixed_input(bytes)),
                None => (!args.no_stdin).then(forward_stdin),
            };
            let mut out = output::Passthrough::new();
            let outcome = remote::exec(
                &target,
                &key,
                request,
                args.targets.connect_timeout,
                stdin,
                cancel_rx,
                &mut out,
            )
            .await;
            if let Some(sig) = *interrupted.borrow() {
                return 128 + sig as u8;
            }
            report_single(&target, &outcome, args.timeout)
        }
        _ => {
            // --group is a many-target display, so a lone TARGET with it runs as one (no stdin).
            let many = single.is_none() || (args.group && !args.json);
            let targets = match single {
                Some(target) => vec![target],
                None => match fleet_targets(&args.targets, &[]) {
                    Ok(t) if t.is_empty() => {
                        return usage_error("no targets: -H and --hosts-file named none")
                    }
                    Ok(t) => t,
                    Err(e) => return usage_error(e),
                },
            };
            let input = match script {
                Some(bytes) => fleet::Input::Script(bytes.into()),
                None if !many && !args.no_stdin => fleet::Input::Forward(forward_stdin()),
                None => fleet::Input::Empty,
            };
            let stdin = !matches!(input, fleet::Input::Empty);
            let mode = match (args.json, args.group) {
                (true, _) => fleet::Mode::Json,
                (false, true) => fleet::Mode::Group,
                (false, false) => fleet::Mode::Lines,
            };
            let plan = fleet::Plan {
                targets,
                key,
                request: ExecRequest { stdin, ..request },
                input,
                connect_timeout: args.targets.connect_timeout,
                parallel: args.targets.parallel as usize,
                mode,
                many,
                timeout: args.timeout,
            };
            let code = fleet::run(plan, cancel_rx).await;
            if let Some(sig) = *interrupted.borrow() {
                return 128 + sig as u8;
            }
            code
        }
    }
}

/// Prints the one line of diagnosis a single-target run ends with, if any; returns the status.
fn report_single(target: &Target, outcome: &remote::Outcome, timeout: Option<Duration>) -> u8 {
    if let Some(failure) = &outcome.failure {
        eprintln!("ctl: {target}: {failure}");
    } else if outcome.local_timeout || outcome.status.is_some_and(|s| s.timed_out) {
        let secs = timeout.map_or(0.0, |t| t.as_secs_f64());
        eprintln!("ctl: {target}: command timed out after {secs}s; its process group was killed");
    }
    outcome.exit_code()
}

/// Quotes a word for `sh` so it arrives as one argument.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Forwards SIGINT/SIGTERM to `cancel`, and forces an exit if the remote side does not report
/// in time. Returns the signal received, if any.
fn watch_signals(cancel: watch::Sender<Option<i32>>) -> watch::Receiver<Option<i32>> {
    let interrupted = cancel.subscribe();
    let installed =
        signal(SignalKind::interrupt()).and_then(|int| Ok((int, signal(SignalKind::terminate())?)));
    match installed {
        Ok((mut sigint, mut sigterm)) => {
            tokio::spawn(async move {
                let sig = tokio::select! {
                    _ = sigint.recv() => libc::SIGINT,
                    _ = sigterm.recv() => libc::SIGTERM,
                };
                let _ = cancel.send(Some(sig));
                tokio::time::sleep(CANCEL_WAIT).await;
                eprintln!(
                    "ctl: remote side did not confirm the cancel within {CANCEL_WAIT:?}; exiting"
                );
                std::process::exit(128 + sig);
            });
        }
        Err(e) => eprintln!("ctl: warning: cannot install signal handlers: {e}"),
    }
    interrupted
}

/// Reads ctl's stdin on its own thread (a blocking read must not stall the runtime) and hands
/// chunks over as they come; the channel closes at end of input.
fn forward_stdin() -> remote::StdinChunks {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("ctl: reading stdin failed, sending end of input: {e}");
                    break;
                }
            }
        }
    });
    rx
}

/// A stdin that delivers `bytes` and then ends.
fn fixed_input(bytes: Vec<u8>) -> remote::StdinChunks {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        for chunk in bytes.chunks(256 * 1024) {
            if tx.send(chunk.to_vec()).await.is_err() {
                return;
            }
        }
    });
    rx
}

async fn ping(args: PingArgs) -> u8 {
    let targets = match fleet_targets(&args.targets, &args.positional) {
        Ok(t) if t.is_empty() => return usage_error("missing TARGET to ping"),
        Ok(t) => t,
        Err(e) => return usage_error(e),
    };
    let key = match keys::load(args.key.key_file.as_deref(), args.key.key_id.as_deref()) {
        Ok(key) => key,
        Err(e) => return usage_error(format!("{e:#}")),
    };
    ping_all(
        targets,
        key,
        args.targets.connect_timeout,
        args.targets.parallel as usize,
    )
    .await
}

/// Pings every target, up to `parallel` at once, printing one line each as they answer.
async fn ping_all(targets: Vec<Target>, key: KeyEntry, timeout: Duration, parallel: usize) -> u8 {
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(parallel));
    let key = std::sync::Arc::new(key);
    let mut tasks = tokio::task::JoinSet::new();
    for target in targets {
        let (limit, key) = (limit.clone(), key.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let result = remote::ping(&target, &key, timeout).await;
            (target, result)
        });
    }
    let mut worst = 0;
    while let Some(joined) = tasks.join_next().await {
        let Ok((target, result)) = joined else {
            continue;
        };
        match result {
            Ok(pong) => println!(
                "{target}: ok {:.2} ms {}",
                pong.rtt.as_secs_f64() * 1000.0,
                pong.version
            ),
            Err(failure) => {
                eprintln!("{target}: {failure}");
                worst = EXIT_UNREACHABLE;
            }
        }
    }
    worst
}

fn completions(args: CompletionsArgs) -> u8 {
    // Generated into memory first: clap_complete panics on a failed write (say, a closed pipe).
    let mut script = Vec::new();
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(args.shell, &mut command, "ctl", &mut script);
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("ctl: cannot write the completion script to stdout: {e}");
            1
        }
    }
}

fn keygen(args: KeygenArgs) -> u8 {
    // An invalid id is a usage error whether or not -o is given.
    if !rexec_shared::keyfile::valid_key_id(&args.id) {
        return usage_error(format!(
            "invalid key id {:?}: use 1-64 characters of A-Z a-z 0-9 . _ -",
            args.id
        ));
    }
    match &args.output {
        Some(path) => match keys::write_new(path, &args.id) {
            Ok(()) => {
                eprintln!(
                    "ctl: wrote key {:?} to {} (mode 0600)",
                    args.id,
                    path.display()
                );
                0
            }
            Err(e) => {
                eprintln!("ctl: {e:#}");
                1
            }
        },
        None => {
            print!("{}", rexec_shared::keyfile::generate(&args.id));
            0
        }
    }
}
