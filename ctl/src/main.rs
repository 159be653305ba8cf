//! `ctl`: run shell commands on agents, one or many at a time. See `ctl --help`.
//!
//! This file parses the command line ([`cli`]) and dispatches: `exec` and `ping` are jobs on
//! the fan-out [`engine`], shown by one of the [`render`]ers, and so are `push` and `pull`
//! ([`transfer`]); `keygen` and `completions` are
//! local.

mod cli;
mod config;
mod deploy;
mod engine;
mod enroll;
mod exit;
mod interactive;
mod job;
mod keys;
mod nodeset;
mod outcome;
mod output;
mod remote;
mod render;
mod script;
mod select;
mod setup;
mod signals;
mod spool;
mod stdin;
mod target;
mod terminal;
mod transfer;

use std::process::ExitCode;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rexec_shared::message::{ExecRequest, PtyRequest, WindowSize};

use crate::cli::{
    Cli, Command, CompletionsArgs, CopyArgs, DeployArgs, EnrollArgs, ExecArgs, KeygenArgs,
    PingArgs, PullArgs, PushArgs, TargetArgs,
};
use crate::engine::{Limits, Stop};
use crate::render::fleet::{Fleet, Options as FleetOptions, Style};
use crate::render::ping::Pings;
use crate::render::single::Single;
use crate::setup::Settings;
use crate::target::Target;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (runtime, console) = match runtime(&cli.command) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ctl: cannot start the async runtime: {e}");
            return ExitCode::from(exit::UNREACHABLE);
        }
    };
    let code = match cli.command {
        Command::Exec(args) => runtime.block_on(exec(args, console)),
        Command::Ping(args) => runtime.block_on(ping(args)),
        Command::Push(args) => runtime.block_on(push(args)),
        Command::Pull(args) => runtime.block_on(pull(args)),
        Command::Keygen(args) => keygen(args),
        Command::Enroll(args) => enroll(args),
        Command::Completions(args) => completions(args),
        Command::Deploy(args) => runtime.block_on(deploy(args)),
    };
    // Join the runtime's threads (briefly) before exiting: glibc can crash when threads exit
    // while exit() runs, and a fleet run leaves dozens of resolver threads. The thread that
    // reads stdin is not the runtime's, so it cannot hold this up.
    runtime.shutdown_timeout(Duration::from_millis(250));
    ExitCode::from(code)
}

/// The runtime for `command`, and for one target's output passed through, the console it
/// writes to where that runs on ctl's own thread. One target whose writes cannot hold up a
/// thread (output to files, `/dev/null` or pipes opened again non-blocking, see
/// [`output::Console`]), and a ping of one target, run on ctl's own thread: starting and
/// joining a worker, and handing each wake-up across to it, are a measurable part of a
/// short run (docs/benchmarks.md, section 9). Otherwise a write to a terminal may stall (flow control,
/// a slow screen): it runs under `block_in_place` on a worker of the multi-thread runtime, so
/// that the heartbeats go on; one target needs one worker.
fn runtime(
    command: &Command,
) -> std::io::Result<(tokio::runtime::Runtime, Option<output::Console>)> {
    let one_thread = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    if matches!(command, Command::Ping(_)) && command.one_target() {
        return Ok((one_thread()?, None));
    }
    if command.passes_through() {
        let runtime = one_thread()?;
        // The console's pipes are registered with this runtime, so opened within it.
        let console = {
            let _entered = runtime.enter();
            output::Console::open()
        };
        if let Some(console) = console {
            return Ok((runtime, Some(console)));
        }
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if command.one_target() {
        builder.worker_threads(1);
    }
    Ok((builder.enable_all().build()?, None))
}

/// Prints a usage-class error and returns the usage exit status.
fn usage_error(message: impl std::fmt::Display) -> u8 {
    eprintln!("ctl: {message:#}");
    exit::USAGE
}

/// The targets chosen by `extra` (positional), -H, --hosts-file and -x.
fn choose(args: &TargetArgs, extra: &[String], settings: &Settings) -> Result<Vec<Target>, String> {
    let targets = select::select(&select::Sources {
        positional: extra,
        hosts: &args.hosts,
        hosts_file: args.hosts_file.as_deref(),
        exclude: &args.exclude,
        port: settings.port,
        config: &settings.config,
    })?;
    with_agent_name(args, targets)
}

/// Applies `--agent-name` (one target only) and checks that every target has an agent name
/// ctl can expect.
fn with_agent_name(args: &TargetArgs, mut targets: Vec<Target>) -> Result<Vec<Target>, String> {
    if let Some(name) = &args.agent_name {
        if targets.len() != 1 || args.many() {
            return Err(
                "--agent-name names one agent: use it with one target (for many, give each \
                 target's name as the second field of its hosts-file line)"
                    .into(),
            );
        }
        let name = rexec_shared::name::AgentName::parse(name)?;
        for target in &mut targets {
            target.name = Some(name.to_string());
        }
    }
    for target in &targets {
        target.expected_name()?;
    }
    Ok(targets)
}

async fn exec(args: ExecArgs, console: Option<output::Console>) -> u8 {
    setup::init_logging(args.targets.verbose);
    if let Some(user) = &args.login {
        return usage_error(format!(
            "ctl has no -l: the user {user:?} a command runs as is chosen on the agent, by the \
             key's policy (user= in the agent's key file)"
        ));
    }
    let settings = match setup::resolve(&args.targets, &args.key) {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    if args.tty {
        return exec_tty(args, settings).await;
    }
    let mut words = args.words.clone();
    let mut no_stdin = args.no_stdin;
    let targets = if args.targets.many() {
        match choose(&args.targets, &[], &settings) {
            Ok(t) if t.is_empty() => {
                return usage_error(
                    "no targets: -H and --hosts-file named none (or -x removed all)",
                )
            }
            Ok(t) => t,
            Err(e) => return usage_error(e),
        }
    } else if words.is_empty() {
        return usage_error("missing TARGET: give a target, or -H/--hosts-file");
    } else {
        let word = words.remove(0);
        // As ssh does: options may follow the target, and a `--` there ends them.
        while let Some(first) = words.first() {
            match first.as_str() {
                "-n" | "--no-stdin" => no_stdin = true,
                "--" => {
                    words.remove(0);
                    break;
                }
                _ => break,
            }
            words.remove(0);
        }
        match choose(&args.targets, std::slice::from_ref(&word), &settings) {
            Ok(t) if t.len() == 1 => t,
            Ok(t) => {
                return usage_error(format!(
                    "TARGET {word:?} names {} targets; use -H {word:?} to run on several",
                    t.len()
                ))
            }
            Err(e) => return usage_error(e),
        }
    };
    let single = !args.targets.many();
    let script = match &args.script {
        Some(path) => match std::fs::read(path) {
            Ok(bytes) => Some(bytes),
            Err(e) => return usage_error(format!("cannot read script {}: {e}", path.display())),
        },
        None => None,
    };
    let command = match &script {
        Some(bytes) => script::command_line(bytes, &words),
        None if words.is_empty() => return usage_error("missing COMMAND to run"),
        None => words.join(" "),
    };
    let script_info = match (&args.script, &script) {
        (Some(path), Some(bytes)) => Some(script::info(path, bytes)),
        _ => None,
    };
    if let Some(dir) = &args.output_dir {
        if let Err(e) = std::fs::create_dir_all(dir) {
            return usage_error(format!("cannot create --output-dir {}: {e}", dir.display()));
        }
    }
    let per_target = if args.output_dir.is_some() { 3 } else { 1 };
    if let Err(e) = setup::fit_fd_limit(settings.parallel, per_target) {
        return usage_error(e);
    }
    let key = match keys::load(settings.key_file.as_deref(), args.key.key_id.as_deref()) {
        Ok(key) => key,
        Err(e) => return usage_error(format!("{e:#}")),
    };
    // --group is a many-target display, so a lone TARGET with it runs as one (no stdin);
    // a lone TARGET with --json keeps its stdin.
    let many = !single || (args.group && !args.json);
    let input = match script {
        Some(bytes) => job::Input::Fixed(bytes.into()),
        None if !many && !no_stdin && !stdin::is_dev_null() => job::Input::forward(),
        None if args.stdin => match tokio::task::spawn_blocking(stdin::Replayable::take).await {
            Ok(Ok(replay)) => job::Input::Replay(Arc::new(replay)),
            Ok(Err(e)) => {
                eprintln!("ctl: cannot read stdin to send it to every target: {e}");
                return exit::FAILURE;
            }
            Err(e) => {
                eprintln!("ctl: internal error reading stdin: {e}");
                return exit::FAILURE;
            }
        },
        None => job::Input::Empty,
    };
    // Stdin ctl did not send, and was not told to leave alone, is mentioned at the end (by
    // then a producer such as `tar c |` has written what it will).
    let check_unsent = many && !no_stdin && !matches!(input, job::Input::Replay(_));
    let unsent_early = check_unsent && stdin::has_unread_data();
    let job = Arc::new(job::Exec {
        key,
        request: ExecRequest {
            command: command.into_bytes(),
            env: args
                .env
                .iter()
                .map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes()))
                .collect(),
            cwd: args.cwd.clone().map(String::into_bytes),
            timeout_ms: args.timeout.map(|t| t.as_millis().max(1) as u64),
            stdin: input.sends(),
            script: script_info,
        },
        input,
        connect_timeout: settings.connect_timeout,
        retries: args.targets.retry,
    });
    let interrupted = signals::watch();
    let stop = Stop::following(interrupted.clone());
    let limits = Limits {
        parallel: settings.parallel as usize,
        max_fail: args.max_fail.map(|n| n as usize),
        batch: args.batch.map(|n| n as usize),
    };
    let total = targets.len();
    let code = if !many && !args.json {
        let mut renderer = Single::new(args.timeout, args.output_dir.clone(), console);
        engine::run(job, targets, limits, stop, &mut renderer).await
    } else {
        let style = match (args.json, args.group) {
            (true, _) => Style::Json,
            (false, true) => Style::Group,
            (false, false) => Style::Lines,
        };
        let renderer = Fleet::new(FleetOptions {
            style,
            many,
            prefix: !args.no_prefix,
            total,
            timeout: args.timeout,
            output_dir: args.output_dir.clone(),
            failed_to: args.failed_to.clone(),
        });
        let mut renderer = match renderer {
            Ok(renderer) => renderer,
            Err(e) => {
                eprintln!("ctl: {e}");
                return exit::FAILURE;
            }
        };
        engine::run(job, targets, limits, stop, &mut renderer).await
    };
    if check_unsent && (unsent_early || stdin::has_unread_data()) {
        eprintln!(
            "ctl: stdin was not sent to the targets: with -H/--hosts-file, give --stdin to send \
             it to every target (or -n to say it is not for them)"
        );
    }
    let signalled = *interrupted.borrow();
    match signalled {
        Some(sig) => exit::signalled(sig),
        None => code,
    }
}

/// `exec -t`: one interactive session on one target, through the engine like any exec.
async fn exec_tty(args: ExecArgs, settings: setup::Settings) -> u8 {
    let conflicting = [
        (args.targets.many(), "-H/--hosts-file"),
        (args.json, "--json"),
        (args.group, "--group"),
        (args.script.is_some(), "--script"),
        (args.no_stdin, "-n/--no-stdin"),
    ];
    if let Some((_, option)) = conflicting.iter().find(|(given, _)| *given) {
        return usage_error(format!(
            "-t runs one interactive session on one target; it cannot be combined with {option}"
        ));
    }
    let mut words = args.words.clone();
    if words.is_empty() {
        return usage_error("missing TARGET for the interactive session");
    }
    let word = words.remove(0);
    let target = match choose(&args.targets, std::slice::from_ref(&word), &settings) {
        Ok(mut t) if t.len() == 1 => t.remove(0),
        Ok(t) => {
            return usage_error(format!(
                "TARGET {word:?} names {} targets; -t runs one interactive session on one",
                t.len()
            ))
        }
        Err(e) => return usage_error(e),
    };
    let key = match keys::load(settings.key_file.as_deref(), args.key.key_id.as_deref()) {
        Ok(key) => key,
        Err(e) => return usage_error(format!("{e:#}")),
    };
    let job = Arc::new(job::Session {
        key,
        request: PtyRequest {
            command: (!words.is_empty()).then(|| words.join(" ").into_bytes()),
            term: interactive::local_term(),
            // Read from the terminal once connected, in case it changes meanwhile.
            size: WindowSize::default(),
            env: args
                .env
                .iter()
                .map(|(k, v)| (k.clone().into_bytes(), v.clone().into_bytes()))
                .collect(),
            cwd: args.cwd.clone().map(String::into_bytes),
            timeout_ms: args.timeout.map(|t| t.as_millis().max(1) as u64),
        },
        connect_timeout: settings.connect_timeout,
    });
    let interrupted = signals::watch();
    let stop = Stop::following(interrupted.clone());
    let limits = Limits {
        parallel: 1,
        max_fail: None,
        batch: None,
    };
    // No --output-dir: the session's screen is for the terminal.
    let mut renderer = Single::new(args.timeout, None, None);
    let code = engine::run(job, [target], limits, stop, &mut renderer).await;
    let signalled = *interrupted.borrow();
    match signalled {
        Some(sig) => exit::signalled(sig),
        None => code,
    }
}

/// A word as a user would type it to `sh`: unchanged when nothing in it is special.
fn shell_quote_if_needed(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@%+".contains(c));
    if plain {
        word.to_owned()
    } else {
        script::shell_quote(word)
    }
}

async fn deploy(args: DeployArgs) -> u8 {
    setup::init_logging(args.targets.verbose);
    let settings = match setup::resolve(&args.targets, &args.key) {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    let targets = match choose(&args.targets, &args.positional, &settings) {
        Ok(t) if t.is_empty() => return usage_error("missing TARGET to deploy to"),
        Ok(t) => t,
        Err(e) => return usage_error(e),
    };
    let key = match keys::load(settings.key_file.as_deref(), args.key.key_id.as_deref()) {
        Ok(key) => key,
        Err(e) => return usage_error(format!("{e:#}")),
    };
    let binary = match &args.agent_binary {
        Some(path) => path.clone(),
        None => match std::env::current_exe() {
            Ok(exe) => exe.with_file_name("agent"),
            Err(e) => return usage_error(format!("cannot find ctl's own executable: {e}")),
        },
    };
    let bytes = match std::fs::read(&binary) {
        Ok(bytes) => bytes,
        Err(e) => {
            return usage_error(format!(
                "cannot read the agent binary {}: {e}; give its path with --agent-binary",
                binary.display()
            ))
        }
    };
    let ssh: Vec<String> = args.ssh.split_whitespace().map(str::to_owned).collect();
    if ssh.is_empty() {
        return usage_error("--ssh is empty: give the ssh command, e.g. --ssh ssh");
    }
    let mut ssh_argv = ssh;
    for option in &args.ssh_options {
        ssh_argv.extend(["-o".to_owned(), option.clone()]);
    }
    if let Some(root) = &args.root {
        if !root.starts_with('/') {
            return usage_error(format!("--root {root:?} must be an absolute path"));
        }
    }
    let many = args.targets.many() || targets.len() > 1;
    let job = Arc::new(deploy::Deploy {
        key,
        ssh: ssh_argv,
        agent_b64: deploy::encode_binary(&bytes),
        root: args.root.clone(),
        listen: args.listen,
        replace_keys: args.replace_keys,
        connect_timeout: settings.connect_timeout,
    });
    if args.dry_run {
        for target in &targets {
            for line in job.dry_run(target) {
                println!("{target}: {line}");
            }
        }
        return 0;
    }
    let limits = Limits {
        parallel: settings.parallel as usize,
        max_fail: None,
        batch: None,
    };
    let interrupted = signals::watch();
    let stop = Stop::following(interrupted.clone());
    let mut renderer = render::deploy::Deploys::new(many);
    let code = engine::run(job, targets, limits, stop, &mut renderer).await;
    let signalled = *interrupted.borrow();
    match signalled {
        Some(sig) => exit::signalled(sig),
        None => code,
    }
}

async fn ping(args: PingArgs) -> u8 {
    setup::init_logging(args.targets.verbose);
    let settings = match setup::resolve(&args.targets, &args.key) {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    let targets = match choose(&args.targets, &args.positional, &settings) {
        Ok(t) if t.is_empty() => return usage_error("missing TARGET to ping"),
        Ok(t) => t,
        Err(e) => return usage_error(e),
    };
    if let Err(e) = setup::fit_fd_limit(settings.parallel, 1) {
        return usage_error(e);
    }
    let key = match keys::load(settings.key_file.as_deref(), args.key.key_id.as_deref()) {
        Ok(key) => key,
        Err(e) => return usage_error(format!("{e:#}")),
    };
    let job = Arc::new(job::Ping {
        key,
        timeout: settings.connect_timeout,
        retries: args.targets.retry,
    });
    let limits = Limits {
        parallel: settings.parallel as usize,
        max_fail: None,
        batch: None,
    };
    let stop = Stop::following(signals::watch());
    engine::run(job, targets, limits, stop, &mut Pings::new()).await
}

/// The targets and the remaining words of a push or pull command line.
fn copy_targets(
    targets: &TargetArgs,
    settings: &Settings,
    words: &[std::ffi::OsString],
) -> Result<(Vec<Target>, Vec<std::ffi::OsString>), String> {
    let mut words = words.to_vec();
    if targets.many() {
        let list = choose(targets, &[], settings)?;
        if list.is_empty() {
            return Err("no targets: -H and --hosts-file named none".into());
        }
        return Ok((list, words));
    }
    if words.is_empty() {
        return Err("missing TARGET: give a target, or -H/--hosts-file".into());
    }
    let first = words.remove(0);
    let text = first
        .to_str()
        .ok_or_else(|| format!("invalid target {first:?}: not UTF-8"))?;
    let list = choose(targets, &[text.to_owned()], settings)?;
    if list.len() != 1 {
        return Err(format!(
            "TARGET {text:?} names {} targets; use -H {text:?} to copy to several",
            list.len()
        ));
    }
    Ok((list, words))
}

async fn push(args: PushArgs) -> u8 {
    use std::os::unix::ffi::OsStrExt;
    setup::init_logging(args.targets.verbose);
    let settings = match setup::resolve(&args.targets, &args.key) {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    let (targets, mut words) = match copy_targets(&args.targets, &settings, &args.words) {
        Ok(x) => x,
        Err(e) => return usage_error(e),
    };
    let Some(dest) = words.pop().filter(|_| !words.is_empty()) else {
        return usage_error(
            "missing SOURCE or DEST: give at least one local SOURCE and a remote DEST",
        );
    };
    // Sources that cannot be read at all are reported once, before any connection.
    let mut worst = 0;
    let mut sources = Vec::new();
    for source in &words {
        let shown = transfer::safe(&source.to_string_lossy());
        match std::fs::metadata(source) {
            Ok(meta) if meta.is_dir() && !args.copy.recursive => {
                eprintln!("ctl: {shown} is a directory (use -r to copy it)");
                worst = exit::FAILURE;
            }
            Ok(_) => sources.push(source.as_bytes().to_vec()),
            Err(e) => {
                eprintln!("ctl: cannot read {shown}: {e}");
                worst = exit::FAILURE;
            }
        }
    }
    if sources.is_empty() {
        return worst;
    }
    let key = match keys::load(settings.key_file.as_deref(), args.key.key_id.as_deref()) {
        Ok(key) => key,
        Err(e) => return usage_error(format!("{e:#}")),
    };
    let request = rexec_shared::files::wire::PushRequest {
        into_dir: words.len() > 1 || dest.as_bytes().ends_with(b"/"),
        dest: dest.as_bytes().to_vec(),
        keep_times: args.copy.preserve,
    };
    let report: transfer::hub::Report = Box::new(|message| eprintln!("ctl: {message}"));
    let job = transfer::Push {
        common: transfer_common(key, &settings, &args.copy, args.targets.retry),
        hub: transfer::hub::Hub::new(sources, args.copy.recursive, report),
        request,
    };
    let code = run_transfer(Arc::new(job), &args.targets, &settings, &args.copy, targets).await;
    worst.max(code)
}

async fn pull(args: PullArgs) -> u8 {
    use std::os::unix::ffi::OsStrExt;
    setup::init_logging(args.targets.verbose);
    let settings = match setup::resolve(&args.targets, &args.key) {
        Ok(s) => s,
        Err(e) => return usage_error(e),
    };
    let (targets, mut words) = match copy_targets(&args.targets, &settings, &args.words) {
        Ok(x) => x,
        Err(e) => return usage_error(e),
    };
    let Some(local_dir) = words.pop().filter(|_| !words.is_empty()) else {
        return usage_error(
            "missing REMOTE or LOCAL_DIR: give at least one remote path and a local directory",
        );
    };
    let local_dir = std::path::PathBuf::from(local_dir);
    match std::fs::metadata(&local_dir) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => {
            eprintln!("ctl: {} is not a directory", local_dir.display());
            return exit::FAILURE;
        }
        Err(e) => {
            eprintln!("ctl: cannot use {}: {e}", local_dir.display());
            return exit::FAILURE;
        }
    }
    let key = match keys::load(settings.key_file.as_deref(), args.key.key_id.as_deref()) {
        Ok(key) => key,
        Err(e) => return usage_error(format!("{e:#}")),
    };
    let job = transfer::Pull {
        common: transfer_common(key, &settings, &args.copy, args.targets.retry),
        request: rexec_shared::files::wire::PullRequest {
            paths: words.iter().map(|w| w.as_bytes().to_vec()).collect(),
            recursive: args.copy.recursive,
        },
        local_dir,
        many: args.targets.many(),
        keep_times: args.copy.preserve,
    };
    run_transfer(Arc::new(job), &args.targets, &settings, &args.copy, targets).await
}

fn transfer_common(
    key: rexec_shared::keyfile::KeyEntry,
    settings: &Settings,
    copy: &CopyArgs,
    retries: u32,
) -> transfer::Common {
    transfer::Common {
        key,
        connect_timeout: settings.connect_timeout,
        retries,
        timeout: copy.timeout,
    }
}

async fn run_transfer<J: engine::Job<Done = transfer::Transfer>>(
    job: Arc<J>,
    target_args: &TargetArgs,
    settings: &Settings,
    copy: &CopyArgs,
    targets: Vec<Target>,
) -> u8 {
    if let Err(e) = setup::fit_fd_limit(settings.parallel, 2) {
        return usage_error(e);
    }
    let interrupted = signals::watch();
    let stop = Stop::following(interrupted.clone());
    let limits = Limits {
        parallel: settings.parallel as usize,
        max_fail: None,
        batch: None,
    };
    let mut renderer =
        render::transfer::Transfers::new(copy.json, target_args.many(), targets.len());
    let code = engine::run(job, targets, limits, stop, &mut renderer).await;
    let signalled = *interrupted.borrow();
    match signalled {
        Some(sig) => exit::signalled(sig),
        None => code,
    }
}

fn completions(args: CompletionsArgs) -> u8 {
    // Generated into memory first: clap_complete panics on a failed write (say, a closed pipe).
    let Ok(shell) = clap_complete::Shell::from_str(&args.shell) else {
        return usage_error(format!("unknown shell {:?}", args.shell));
    };
    let mut script = Vec::new();
    let mut command = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut command, "ctl", &mut script);
    match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("ctl: cannot write the completion script to stdout: {e}");
            exit::FAILURE
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
            // Documented in --help: 1, not the usage status, as the command line was fine.
            Err(e) => {
                eprintln!("ctl: {e:#}");
                exit::FAILURE
            }
        },
        None => {
            print!("{}", rexec_shared::keyfile::generate(&args.id));
            0
        }
    }
}

fn enroll(args: EnrollArgs) -> u8 {
    let config = match crate::config::Config::load() {
        Ok(config) => config,
        Err(e) => return usage_error(format!("{e:#}")),
    };
    let key_file = setup::key_file(&args.key, &config);
    let key = match keys::load(key_file.as_deref(), args.key.key_id.as_deref()) {
        Ok(key) => key,
        Err(e) => return usage_error(format!("{e:#}")),
    };
    let mut names = Vec::new();
    for text in &args.names {
        match rexec_shared::name::AgentName::parse(text) {
            Ok(name) => names.push(name),
            Err(e) => return usage_error(e),
        }
    }
    let mut listed: Vec<Target> = Vec::new();
    for spelling in args.hosts.iter().filter(|h| !h.trim().is_empty()) {
        match Target::parse(spelling, rexec_shared::DEFAULT_PORT) {
            Ok(t) => listed.push(t),
            Err(e) => return usage_error(e),
        }
    }
    if let Some(path) = &args.hosts_file {
        match target::read_hosts_file(path, rexec_shared::DEFAULT_PORT) {
            Ok(t) => listed.extend(t),
            Err(e) => return usage_error(e),
        }
    }
    for target in &listed {
        match target.expected_name() {
            Ok(name) => names.push(name),
            Err(e) => return usage_error(format!("{target}: {e}")),
        }
    }
    if names.is_empty() {
        return usage_error("missing AGENT_NAME: give agent names, or -H/--hosts-file");
    }
    let lines = enroll::lines(&key, &names);
    match &args.output {
        Some(path) if names.len() > 1 => usage_error(format!(
            "-o {} takes one agent name ({} given): each agent gets its own file",
            path.display(),
            names.len()
        )),
        Some(path) => match enroll::write_new(path, &lines) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("ctl: {e:#}");
                exit::FAILURE
            }
        },
        None => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            match out.write_all(lines.as_bytes()).and_then(|()| out.flush()) {
                Ok(()) => 0,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
                Err(e) => {
                    eprintln!("ctl: cannot write to stdout: {e}");
                    exit::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// build.rs links libgcc's unwinder statically: a panic still unwinds to its catcher
    /// (else the process aborts here).
    #[test]
    fn a_panic_unwinds_with_the_unwinder_build_rs_links() {
        let caught = std::panic::catch_unwind(|| {
            let _guard = String::from("dropped while unwinding");
            panic!("unwind through a frame with a destructor");
        });
        assert!(caught.is_err());
    }

    /// ... and the shared one is not loaded.
    #[test]
    #[cfg(static_unwinder)]
    fn libgcc_s_is_not_loaded() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        assert!(!maps.contains("libgcc_s"), "{maps}");
    }
}
