//! The command lines of both binaries for one target: `--help`, `--version`, usage errors,
//! `ctl ping`, and the agent's audit line per command.

use std::net::TcpListener;

use crate::exec::{assert_serving, audit_line, WAIT};
use crate::util::{agent_cmd, ctl, exec, key_line, marker, scratch, write_key_file, Agent};

/// The version both binaries are built with (the workspace's).
const VERSION: &str = env!("CARGO_PKG_VERSION");

#[test]
fn both_binaries_answer_help_and_version() {
    for (name, run) in [
        ("ctl --help", ctl(["--help"]).run()),
        ("ctl exec --help", ctl(["exec", "--help"]).run()),
        ("ctl ping --help", ctl(["ping", "--help"]).run()),
        ("ctl keygen --help", ctl(["keygen", "--help"]).run()),
        ("agent --help", agent_cmd(["--help"]).run()),
    ] {
        run.expect_code(0);
        assert!(run.out().contains("Usage"), "{name}: {run}");
    }
    let help = ctl(["exec", "--help"]).run().out();
    for option in [
        "--timeout",
        "--connect-timeout",
        "--no-stdin",
        "--env",
        "--cwd",
        "--key-file",
        "--key-id",
    ] {
        assert!(
            help.contains(option),
            "ctl exec --help mentions {option}:\n{help}"
        );
    }
    let help = agent_cmd(["--help"]).run().out();
    for option in [
        "--key-file",
        "--listen",
        "--max-connections",
        "--handshake-timeout",
    ] {
        assert!(
            help.contains(option),
            "agent --help mentions {option}:\n{help}"
        );
    }
    for (name, run) in [
        ("ctl", ctl(["--version"]).run()),
        ("agent", agent_cmd(["--version"]).run()),
    ] {
        run.expect_code(0);
        assert!(run.out().contains(VERSION), "{name} --version: {run}");
    }
}

#[test]
fn usage_errors_exit_2() {
    let dir = scratch();
    let key = write_key_file(dir.path(), "key", &key_line("test"));
    let key = key.to_str().unwrap();
    // Against a port nobody listens on: a usage error must be found before connecting.
    for args in [
        vec![],
        vec!["frobnicate"],
        vec!["exec"],
        vec!["exec", "--key-file", key],
        vec!["exec", "--key-file", key, "127.0.0.1:1"],
        vec![
            "exec",
            "--key-file",
            key,
            "--bogus-option",
            "127.0.0.1:1",
            "true",
        ],
        vec![
            "exec",
            "--key-file",
            key,
            "--timeout",
            "soon",
            "127.0.0.1:1",
            "true",
        ],
        vec![
            "exec",
            "--key-file",
            key,
            "--timeout",
            "0",
            "127.0.0.1:1",
            "true",
        ],
        vec![
            "exec",
            "--key-file",
            key,
            "--connect-timeout",
            "-1",
            "127.0.0.1:1",
            "true",
        ],
        vec![
            "exec",
            "--key-file",
            key,
            "-e",
            "NO_EQUALS",
            "127.0.0.1:1",
            "true",
        ],
        vec![
            "exec",
            "--key-file",
            key,
            "-e",
            "=value",
            "127.0.0.1:1",
            "true",
        ],
        vec!["exec", "--key-file", key, "127.0.0.1:0", "true"],
        vec!["exec", "--key-file", key, "host:notaport", "true"],
        vec!["exec", "--key-file", key, "[::1", "true"],
        vec!["ping", "--key-file", key],
    ] {
        let run = ctl(&args).run();
        run.expect_code(2);
        assert!(
            !run.err().is_empty(),
            "a usage error says what is wrong: {run}"
        );
        assert_eq!(run.out(), "", "{run}");
    }
    for args in [
        vec![],
        vec!["--key-file"],
        vec!["--key-file", key, "--listen", "not-an-address"],
    ] {
        let run = agent_cmd(&args).timeout(WAIT).run();
        run.expect_code(2);
        assert!(!run.err().contains("listening"), "{run}");
    }
}

#[test]
fn ping_reports_ok_round_trip_and_version_for_a_live_agent() {
    let agent = Agent::start();
    let key_file = agent.key_file.to_string_lossy().into_owned();
    let target = agent.target();
    let run = ctl(["ping", "--key-file", &key_file, &target]).run();
    run.expect_code(0);
    assert_eq!(run.err(), "", "{run}");
    let out = run.out();
    assert_eq!(out.lines().count(), 1, "{run}");
    let rest = out
        .strip_prefix(&format!("{target}: ok"))
        .unwrap_or_else(|| panic!("{run}"));
    assert!(rest.contains(VERSION), "the agent's version: {run}");
    let rtt = rest
        .split_whitespace()
        .next()
        .and_then(|w| w.parse::<f64>().ok());
    assert!(
        rtt.is_some_and(|ms| ms >= 0.0),
        "a round-trip time follows 'ok': {run}"
    );
    // A ping runs no command.
    assert!(!agent.log().contains("command finished"), "{}", agent.log());
    assert_serving(&agent);
}

#[test]
fn ping_names_each_target_as_given_and_fails_if_any_is_down() {
    let agent = Agent::start();
    let key_file = agent.key_file.to_string_lossy().into_owned();
    let live = agent.target();
    let spelled = format!("localhost:{}", agent.addr.port());
    let dead = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    };
    let run = ctl(["ping", "--key-file", &key_file, &live, &spelled]).run();
    run.expect_code(0);
    assert_eq!(run.out().lines().count(), 2, "one line per target: {run}");
    assert_eq!(run.err(), "", "{run}");

    let run = ctl(["ping", "--key-file", &key_file, &live, &dead, &spelled]).run();
    run.expect_code(255);
    let out = run.out();
    assert!(
        out.lines().any(|l| l.starts_with(&format!("{live}: ok"))),
        "{run}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("{spelled}: ok"))),
        "spelling kept: {run}"
    );
    assert_eq!(out.lines().count(), 2, "{run}");
    let err = run.err();
    assert_eq!(err.lines().count(), 1, "{run}");
    assert!(
        err.starts_with(&format!("ctl: {dead}: ")) && err.contains("refused"),
        "{run}"
    );

    // Only the dead one: nothing on stdout, 255.
    let run = ctl(["ping", "--key-file", &key_file, &dead]).run();
    run.expect_code(255);
    assert_eq!(run.out(), "", "{run}");
    assert!(run.err().starts_with(&format!("ctl: {dead}: ")), "{run}");
}

#[test]
fn ping_with_a_wrong_key_fails_authentication() {
    let agent = Agent::start();
    let dir = scratch();
    let wrong = write_key_file(dir.path(), "wrong", &key_line("test"));
    let target = agent.target();
    let run = ctl([
        "ping".as_ref(),
        "--key-file".as_ref(),
        wrong.as_os_str(),
        target.as_ref(),
    ])
    .run();
    run.expect_code(255);
    assert_eq!(run.out(), "", "{run}");
    assert!(
        run.err().starts_with(&format!("ctl: {target}: "))
            && run.err().contains("authentication failed"),
        "{run}"
    );
}

#[test]
fn audit_line_names_peer_key_command_status_and_duration() {
    let agent = Agent::start();
    let tag = marker("audit");
    let command = format!("echo {tag}; exit 7");
    exec(&agent, &command).run().expect_code(7);
    let line = audit_line(&agent, &tag);
    assert!(line.contains("peer=127.0.0.1:"), "peer address: {line}");
    assert!(line.contains("key_id=\"test\""), "key id: {line}");
    assert!(
        line.contains(&format!("command=\"{command}\"")),
        "command: {line}"
    );
    assert!(line.contains("exit 7"), "status: {line}");
    let duration = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("duration_ms="));
    assert!(
        duration.is_some_and(|d| d.parse::<u64>().is_ok()),
        "duration: {line}"
    );

    // A signal death and a timeout are told apart from an exit.
    let tag = marker("audit-signal");
    exec(&agent, &format!("kill -9 $$; echo {tag}"))
        .run()
        .expect_code(137);
    assert!(audit_line(&agent, &tag).contains("signal 9"));
}

#[test]
fn audit_logs_one_line_per_command_even_with_newlines_in_it() {
    let agent = Agent::start();
    let tag = marker("audit-lines");
    let commands = [
        format!("echo {tag}-a"),
        format!("echo {tag}-b\necho second line"),
        format!("printf '%s' \"{tag}-c\""),
    ];
    for command in &commands {
        exec(&agent, command).run().expect_code(0);
    }
    audit_line(&agent, &format!("{tag}-c"));
    let log = agent.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&tag)).collect();
    assert_eq!(
        lines.len(),
        6,
        "one line per command as it starts and ends:\n{log}"
    );
    let count = |what: &str| lines.iter().filter(|l| l.contains(what)).count();
    assert_eq!(count("command started"), 3, "{log}");
    assert_eq!(count("command finished"), 3, "{log}");
    assert!(
        !log.lines().any(|l| l.starts_with("echo second line")),
        "a newline in a command stays escaped:\n{log}"
    );
}

#[test]
fn failed_exec_before_start_is_audited_as_not_run() {
    let agent = Agent::start();
    let tag = marker("audit-cwd");
    let missing = format!("/nonexistent/{tag}");
    let run = crate::exec::exec_with(&agent, &["--cwd", &missing], "true").run();
    run.expect_code(255);
    let line = audit_line(&agent, &tag);
    assert!(line.contains("not run"), "{line}");
}

#[test]
fn agent_refuses_an_address_in_use_naming_it() {
    let dir = scratch();
    let key = write_key_file(
        dir.path(),
        "key",
        &crate::util::enrolled(&key_line("test"), crate::util::AGENT_NAME),
    );
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let run = agent_cmd([
        "--key-file".as_ref(),
        key.as_os_str(),
        "--listen".as_ref(),
        addr.as_ref(),
    ])
    .timeout(WAIT)
    .run();
    assert_ne!(run.code(), 0, "{run}");
    assert!(
        run.err().contains(&addr),
        "the message names the address: {run}"
    );
    assert!(!run.err().contains("listening on"), "{run}");
    drop(taken);
}
