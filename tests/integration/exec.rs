//! Single-target `ctl exec` against a real agent: streams, exit codes, streaming as produced,
//! stdin, environment and working directory, background children. Helpers shared by the
//! `exec_*` modules live here too.

use std::io::Write;
use std::process::ChildStdin;
use std::time::Duration;

use crate::util::{
    ctl, exec, group_members, marker, pids_matching, scratch, Agent, Ctl, KillGroupOnDrop,
    KillOnDrop, LineReader,
};

/// Bound on waiting for one line of output, or for a process to exit, on a loaded machine.
pub const WAIT: Duration = Duration::from_secs(30);

/// `ctl exec --key-file KEY OPTIONS... TARGET COMMAND` against `agent`.
pub fn exec_with(agent: &Agent, options: &[&str], command: &str) -> Ctl {
    let key_file = agent.key_file.to_string_lossy().into_owned();
    let target = agent.target();
    let mut args = vec!["exec", "--key-file", &key_file];
    args.extend_from_slice(options);
    args.push(&target);
    args.push(command);
    ctl(args)
}

/// A ctl started in the background, with its output read line by line.
pub struct Running {
    /// The ctl process (killed if the test fails early).
    pub child: KillOnDrop,
    /// ctl's stdout.
    pub out: LineReader,
    /// ctl's stderr.
    pub err: LineReader,
    /// ctl's stdin, open until the test drops or closes it.
    pub stdin: Option<ChildStdin>,
}

impl Running {
    /// Starts `ctl`.
    pub fn start(ctl: Ctl) -> Self {
        let mut child = KillOnDrop(ctl.spawn());
        let out = LineReader::new(child.stdout.take().expect("ctl stdout"));
        let err = LineReader::new(child.stderr.take().expect("ctl stderr"));
        let stdin = child.stdin.take();
        Self {
            child,
            out,
            err,
            stdin,
        }
    }

    /// The next stdout line, panicking if none comes within [`WAIT`].
    #[track_caller]
    pub fn line(&self) -> String {
        self.out
            .next(WAIT)
            .unwrap_or_else(|| panic!("no stdout line from ctl within {WAIT:?}"))
    }

    /// Reads the remote shell's `$$` (its process group, printed as the first line).
    #[track_caller]
    pub fn pgid(&self) -> i32 {
        let line = self.line();
        line.trim()
            .parse()
            .unwrap_or_else(|_| panic!("expected a pid line, got {line:?}"))
    }

    /// Waits (bounded) for ctl to exit and returns its exit code.
    #[track_caller]
    pub fn code(&mut self) -> i32 {
        let status = self.child.wait_within(WAIT, "ctl");
        status
            .code()
            .unwrap_or_else(|| panic!("ctl was killed by a signal: {status:?}"))
    }
}

/// Asserts that no process of process group `pgid` and none whose command line holds `marker`
/// is left, waiting (bounded) for them to die.
#[track_caller]
pub fn assert_gone(pgid: i32, marker: &str) {
    let gone = crate::util::eventually(WAIT, || {
        group_members(pgid).is_empty() && pids_matching(marker).is_empty()
    });
    assert!(
        gone,
        "remote processes survived: group {pgid}: {:?}, matching {marker:?}: {:?}",
        group_members(pgid),
        pids_matching(marker)
    );
}

/// Waits (bounded) for the agent's audit line for the command holding `needle`; returns it.
#[track_caller]
pub fn audit_line(agent: &Agent, needle: &str) -> String {
    let find = || {
        agent
            .log()
            .lines()
            .find(|l| l.contains("command finished") && l.contains(needle))
            .map(str::to_owned)
    };
    if crate::util::eventually(WAIT, || find().is_some()) {
        return find().unwrap_or_default();
    }
    panic!("no audit line for {needle:?}; agent log:\n{}", agent.log())
}

/// Asserts that `agent` still runs commands.
#[track_caller]
pub fn assert_serving(agent: &Agent) {
    let run = exec(agent, "echo still-serving").run();
    run.expect_code(0);
    assert_eq!(run.out(), "still-serving\n", "{run}");
}

#[test]
fn ls_runs_end_to_end_with_streams_and_status() {
    let agent = Agent::start();
    let run = exec(&agent, "echo to-out; echo to-err >&2; exit 3").run();
    run.expect_code(3);
    assert_eq!(run.out(), "to-out\n", "{run}");
    assert_eq!(run.err(), "to-err\n", "{run}");
    let log = agent.wait_for_log("command finished", std::time::Duration::from_secs(5));
    assert!(
        log.contains("key_id=\"test\"") && log.contains("exit 3"),
        "{log}"
    );
}

#[test]
fn stdout_and_stderr_are_routed_separately_byte_for_byte() {
    let agent = Agent::start();
    // Interleaved writes, NUL and non-UTF-8 bytes, no trailing newline on either stream.
    let run = exec(
        &agent,
        r"printf 'o1\n'; printf 'e1\n' >&2; printf 'o\000\377\r\n'; printf 'e\001\200' >&2; printf 'o-end'",
    )
    .run();
    run.expect_code(0);
    assert_eq!(run.stdout, b"o1\no\x00\xff\r\no-end", "{run}");
    assert_eq!(run.stderr, b"e1\ne\x01\x80", "{run}");
}

#[test]
fn exit_codes_are_the_remote_commands() {
    let agent = Agent::start();
    for (command, code) in [
        ("true", 0),
        ("false", 1),
        ("exit 3", 3),
        ("exit 254", 254),
        ("exit 255", 255),
    ] {
        let run = exec(&agent, command).run();
        run.expect_code(code);
        // A remote `exit 255` is not an error of ctl's own: nothing is added to stderr.
        assert_eq!(run.err(), "", "{run}");
    }
    let missing = marker("no-such-command");
    let run = exec(&agent, &missing).run();
    run.expect_code(127);
    assert!(
        run.err().contains(&missing),
        "sh's own message comes through: {run}"
    );
}

#[test]
fn command_words_are_joined_with_spaces_like_ssh() {
    let agent = Agent::start();
    let key_file = agent.key_file.to_string_lossy().into_owned();
    let run = ctl([
        "exec",
        "--key-file",
        &key_file,
        &agent.target(),
        "echo",
        "a   b",
        "c;",
        "echo",
        "$((6*7));",
        "echo",
        "-n",
        "words-may-start-with-a-hyphen",
    ])
    .run();
    run.expect_code(0);
    assert_eq!(
        run.out(),
        "a b c\n42\nwords-may-start-with-a-hyphen",
        "{run}"
    );
}

#[test]
fn output_is_streamed_as_it_is_produced() {
    let agent = Agent::start();
    // The command cannot write its second lines until the test has seen the first ones, so
    // output held back until the end would hang here (and fail on the bound).
    let mut run = Running::start(exec(
        &agent,
        "echo first; echo first-err >&2; read reply; echo \"second $reply\"; echo second-err >&2",
    ));
    assert_eq!(run.line(), "first\n");
    assert_eq!(run.err.next(WAIT).as_deref(), Some("first-err\n"));
    assert!(
        run.child.try_wait().unwrap().is_none(),
        "ctl ended before the command did"
    );
    run.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    assert_eq!(run.line(), "second go\n");
    assert_eq!(run.err.next(WAIT).as_deref(), Some("second-err\n"));
    assert_eq!(run.code(), 0);
}

#[test]
fn output_is_streamed_while_the_command_sleeps() {
    let agent = Agent::start();
    let tag = marker("sleeper");
    let mut run = Running::start(exec(&agent, &format!("echo $$; sleep 60; echo {tag}")));
    let pgid = run.pgid();
    // The first line arrived while the command sleeps before its second.
    assert!(
        run.child.try_wait().unwrap().is_none(),
        "ctl ended before the command did"
    );
    assert!(
        !group_members(pgid).is_empty(),
        "the remote command should still be running"
    );
    run.child.signal(libc::SIGTERM);
    assert_eq!(run.code(), 143);
    assert_gone(pgid, &tag);
}

#[test]
fn stdin_is_forwarded_until_eof() {
    let agent = Agent::start();
    let run = exec(&agent, "cat; echo after-eof")
        .stdin("hello\nworld, no newline")
        .run();
    run.expect_code(0);
    assert_eq!(run.out(), "hello\nworld, no newlineafter-eof\n", "{run}");

    let run = exec(&agent, "wc -c; cat").stdin(Vec::new()).run();
    run.expect_code(0);
    assert_eq!(
        run.out().trim(),
        "0",
        "empty stdin is an immediate EOF: {run}"
    );
}

#[test]
fn no_stdin_gives_an_empty_stdin_even_while_ctl_stdin_stays_open() {
    let agent = Agent::start();
    for flag in ["-n", "--no-stdin"] {
        let mut run = Running::start(exec_with(&agent, &[flag], "cat; echo done"));
        run.stdin
            .as_mut()
            .unwrap()
            .write_all(b"must not arrive\n")
            .unwrap();
        // ctl's stdin is never closed here; the remote cat must end on its own.
        assert_eq!(run.code(), 0, "{flag}");
        assert_eq!(run.out.rest(WAIT), "done\n", "{flag}");
        drop(run.stdin.take());
    }
}

#[test]
fn a_command_that_ignores_stdin_ends_while_ctl_stdin_stays_open() {
    let agent = Agent::start();
    let mut run = Running::start(exec(&agent, "echo ignoring stdin"));
    assert_eq!(run.code(), 0);
    assert_eq!(run.out.rest(WAIT), "ignoring stdin\n");
}

#[test]
fn env_options_set_the_remote_environment() {
    let agent = Agent::start();
    let run = exec_with(
        &agent,
        &["-e", "A=1", "--env", "B=two words", "-e", "EMPTY=", "-e", "EQ=x=y"],
        r#"printf '%s|%s|%s|%s|%s|%s\n' "$A" "$B" "${EMPTY-unset}" "$EQ" "$HOME" "${REXEC_CTL_ONLY-unset}""#,
    )
    .env("REXEC_CTL_ONLY", "ctl's own environment must not leak")
    .run();
    run.expect_code(0);
    // The rest of the agent's environment is kept (HOME is inherited from this test).
    let home = std::env::var("HOME").unwrap_or_default();
    assert_eq!(
        run.out(),
        format!("1|two words||x=y|{home}|unset\n"),
        "{run}"
    );
}

#[test]
fn env_option_overrides_the_agents_variable() {
    let agent = Agent::start();
    let run = exec_with(&agent, &["-e", "HOME=/rexec-home"], "echo $HOME").run();
    run.expect_code(0);
    assert_eq!(run.out(), "/rexec-home\n", "{run}");
}

#[test]
fn cwd_option_sets_the_remote_directory_and_defaults_to_the_agents() {
    let agent = Agent::start();
    let dir = scratch();
    let wanted = dir.path().canonicalize().unwrap();
    let run = exec_with(&agent, &["--cwd", wanted.to_str().unwrap()], "pwd -P").run();
    run.expect_code(0);
    assert_eq!(run.out(), format!("{}\n", wanted.display()), "{run}");

    let run = exec(&agent, "pwd -P").run();
    run.expect_code(0);
    let own = std::env::current_dir().unwrap().canonicalize().unwrap();
    assert_eq!(
        run.out(),
        format!("{}\n", own.display()),
        "the agent's directory by default: {run}"
    );
}

#[test]
fn missing_cwd_is_a_clear_error_and_runs_nothing() {
    let agent = Agent::start();
    let dir = scratch();
    let witness = dir.path().join("ran");
    let command = format!("touch {}", witness.display());
    let missing = dir.path().join(marker("no-such-dir"));
    let run = exec_with(&agent, &["--cwd", missing.to_str().unwrap()], &command).run();
    run.expect_code(255);
    assert!(
        run.err().contains(missing.to_str().unwrap()),
        "the message names the directory: {run}"
    );
    assert!(
        run.err().contains(&agent.target()),
        "the message names the target: {run}"
    );
    assert_eq!(run.out(), "", "{run}");

    let file = dir.path().join("plain-file");
    std::fs::write(&file, "x").unwrap();
    let run = exec_with(&agent, &["--cwd", file.to_str().unwrap()], &command).run();
    run.expect_code(255);
    assert!(
        run.err().contains(file.to_str().unwrap()) && run.err().contains("not a directory"),
        "{run}"
    );
    assert!(
        !witness.exists(),
        "the command must not run without its directory"
    );
    assert_serving(&agent);
}

#[test]
fn background_child_keeps_running_and_ctl_returns_promptly() {
    let agent = Agent::start();
    let tag = marker("background");
    // The background child inherits the command's stdout and stderr and keeps them open;
    // ctl must still return once the shell itself has exited (well before the 60 s sleep).
    let run = exec(
        &agent,
        &format!("echo $$; sh -c 'sleep 60; :' {tag} & echo started"),
    )
    .timeout(WAIT)
    .run();
    let pgid: i32 = run
        .out()
        .lines()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    let cleanup = KillGroupOnDrop(pgid);
    run.expect_code(0);
    assert_eq!(run.out(), format!("{pgid}\nstarted\n"), "{run}");
    audit_line(&agent, &tag);
    let survivors = pids_matching(&tag);
    assert!(
        !survivors.is_empty(),
        "the background child was killed with the command: {run}"
    );
    assert!(!group_members(pgid).is_empty());
    // Kill it ourselves, by its process group, and make sure it went.
    drop(cleanup);
    assert_gone(pgid, &tag);
    assert_serving(&agent);
}

#[test]
fn agent_serves_several_clients_at_once() {
    let agent = Agent::start();
    // Three commands each waiting for input: all three must be running at the same time.
    let mut runs: Vec<Running> = (0..3)
        .map(|i| {
            Running::start(exec(
                &agent,
                &format!("echo ready-{i}; read x; echo done-{i}-$x"),
            ))
        })
        .collect();
    for (i, run) in runs.iter().enumerate() {
        assert_eq!(run.line(), format!("ready-{i}\n"));
    }
    for (i, run) in runs.iter_mut().enumerate() {
        run.stdin.as_mut().unwrap().write_all(b"ok\n").unwrap();
        assert_eq!(run.line(), format!("done-{i}-ok\n"));
        assert_eq!(run.code(), 0);
    }
}

#[test]
fn target_forms_and_default_port_reach_the_agent() {
    let agent = Agent::start();
    let port = agent.addr.port().to_string();
    let key_file = agent.key_file.to_string_lossy().into_owned();
    let host_port = format!("localhost:{port}");
    for (options, target) in [
        (vec![], host_port.as_str()),
        (vec!["--port", port.as_str()], "127.0.0.1"),
        (vec!["--port", port.as_str()], "localhost"),
    ] {
        let mut args = vec!["exec", "--key-file", &key_file];
        args.extend(&options);
        args.extend([target, "echo reached"]);
        let run = ctl(&args).run();
        run.expect_code(0);
        assert_eq!(run.out(), "reached\n", "{run}");
    }
    // $CTL_PORT is the default port when --port is not given.
    let run = ctl(["exec", "--key-file", &key_file, "127.0.0.1", "echo via-env"])
        .env("CTL_PORT", &port)
        .run();
    run.expect_code(0);
    assert_eq!(run.out(), "via-env\n", "{run}");
}

#[test]
fn ipv6_loopback_targets_work() {
    let dir = scratch();
    let key_file = crate::util::write_key_file(dir.path(), "keys", &crate::util::key_line("v6"));
    let agent = Agent::start_on("[::1]:0", dir, key_file, &[]);
    assert!(agent.addr.is_ipv6(), "{}", agent.addr);
    let port = agent.addr.port().to_string();
    let bracketed = format!("[::1]:{port}");
    let key_file = agent.key_file.to_string_lossy().into_owned();
    for (options, target) in [
        (vec![], bracketed.as_str()),
        (vec!["--port", port.as_str()], "::1"),
    ] {
        let mut args = vec!["exec", "--key-file", &key_file];
        args.extend(&options);
        args.extend([target, "echo over-ipv6"]);
        let run = ctl(&args).run();
        run.expect_code(0);
        assert_eq!(run.out(), "over-ipv6\n", "{run}");
    }
    assert!(audit_line(&agent, "over-ipv6").contains("peer=[::1]:"));
}

#[test]
fn command_runs_as_sh_in_its_own_process_group_as_the_agents_user() {
    let agent = Agent::start();
    let tag = marker("own-group");
    let mut run = Running::start(exec(&agent, &format!("echo $$; id -u; read x; echo {tag}")));
    let pgid = run.pgid();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(run.line().trim(), uid.to_string());
    let members = group_members(pgid);
    assert!(
        members.contains(&pgid),
        "the shell leads its own group: {members:?}"
    );
    assert!(
        !members.contains(&agent.pid()),
        "the agent is not in the command's group"
    );
    let cmdline = std::fs::read(format!("/proc/{pgid}/cmdline")).unwrap_or_default();
    let argv: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    assert_eq!(
        argv.first().copied(),
        Some(&b"sh"[..]),
        "{:?}",
        String::from_utf8_lossy(&cmdline)
    );
    assert_eq!(argv.get(1).copied(), Some(&b"-c"[..]));
    run.stdin.as_mut().unwrap().write_all(b"\n").unwrap();
    assert_eq!(run.line(), format!("{tag}\n"));
    assert_eq!(run.code(), 0);
}

#[test]
fn a_stream_closed_early_does_not_cut_the_other() {
    let agent = Agent::start();
    let run = exec(
        &agent,
        "echo before; exec 1>&-; sleep 1; echo still-err >&2; exit 4",
    )
    .run();
    run.expect_code(4);
    assert_eq!(run.out(), "before\n", "{run}");
    assert_eq!(run.err(), "still-err\n", "{run}");
    let run = exec(&agent, "exec 2>&-; echo err-closed; exit 0").run();
    run.expect_code(0);
    assert_eq!(run.out(), "err-closed\n", "{run}");
}
