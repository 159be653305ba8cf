//! The rough edges a new user hit (issue 14), each against the real binaries: ssh-like
//! argument handling, a foreign server's banner, empty environment variables, truthful
//! timeout and cancel messages, `-l`/`user@`, durations with units, and `-v`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::Duration;

use crate::util::{ctl, eventually, exec, scratch, Agent, Ctl, KillOnDrop, LineReader};

/// Stops `agent` with SIGSTOP and waits until every one of its threads is stopped.
fn freeze(agent: &Agent) {
    agent.signal(libc::SIGSTOP);
    let stopped = eventually(Duration::from_secs(10), || {
        let tasks = format!("/proc/{}/task", agent.pid());
        std::fs::read_dir(tasks).is_ok_and(|dir| {
            dir.filter_map(Result::ok).all(|t| {
                std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
                    stat.rsplit(')')
                        .next()
                        .is_some_and(|r| r.trim_start().starts_with('T'))
                })
            })
        })
    });
    assert!(stopped, "the agent did not stop");
}

/// Waits until the remote command has printed `started` (so it runs on the agent).
fn wait_started(child: &mut KillOnDrop) {
    let lines = LineReader::new(child.stdout.take().expect("ctl stdout"));
    assert_eq!(
        lines.next(Duration::from_secs(20)).as_deref(),
        Some("started\n")
    );
}

/// `ctl exec --key-file KEY OPTIONS... TARGET COMMAND` against `agent`.
fn exec_with(agent: &Agent, options: &[&str], command: &str) -> Ctl {
    let key = agent.key_file.to_str().unwrap().to_owned();
    let target = agent.target();
    let mut args = vec!["exec", "--key-file", &key];
    args.extend_from_slice(options);
    args.extend([target.as_str(), command]);
    ctl(args)
}

#[test]
fn a_leading_double_dash_and_n_after_the_target_are_options_as_in_ssh() {
    let agent = Agent::start();
    let key = agent.key_file.to_str().unwrap().to_owned();
    let target = agent.target();
    let run = ctl(["exec", "--key-file", &key, &target, "--", "echo", "hi"]).run();
    run.expect_code(0);
    assert_eq!(run.out(), "hi\n", "{run}");
    // -n after the target: the command gets an empty stdin, not ctl's.
    let run = ctl(["exec", "--key-file", &key, &target, "-n", "cat"])
        .stdin("not for the remote\n")
        .run();
    run.expect_code(0);
    assert_eq!(run.out(), "", "{run}");
    // A `--` later in the command is the command's.
    let run = ctl(["exec", "--key-file", &key, &target, "echo", "--", "x"]).run();
    assert_eq!(run.out(), "-- x\n", "{run}");
}

#[test]
fn an_ssh_server_is_named_as_not_an_agent() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // A tiny fake ssh server: its banner, then it waits for the client to go.
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"SSH-2.0-OpenSSH_9.2\r\n").unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut sink = [0u8; 1024];
        while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
    });
    let agent_dir = scratch();
    let key = crate::util::write_key_file(agent_dir.path(), "key", &crate::util::key_line("k"));
    let run = ctl([
        "exec".as_ref(),
        "--key-file".as_ref(),
        key.as_os_str(),
        addr.to_string().as_ref(),
        "true".as_ref(),
    ])
    .run();
    run.expect_code(255);
    assert!(
        run.err()
            .contains("not a rexec agent (it sent SSH-2.0-OpenSSH_9.2)"),
        "{run}"
    );
    server.join().unwrap();
}

#[test]
fn empty_environment_variables_count_as_unset() {
    let agent = Agent::start();
    let run = exec(&agent, "echo ok")
        .env("CTL_PORT", "")
        .env("CTL_KEY_FILE", "")
        .run();
    run.expect_code(0);
    assert_eq!(run.out(), "ok\n", "{run}");
    // A bad value names the variable, not an option.
    let run = exec(&agent, "true").env("CTL_PORT", "http").run();
    run.expect_code(2);
    assert!(run.err().contains("CTL_PORT=\"http\""), "{run}");
}

#[test]
fn a_frozen_agent_is_not_claimed_killed_and_a_cancel_names_the_target() {
    let agent = Agent::start();
    let target = agent.target();
    // The agent freezes once the command runs: ctl's --timeout passes with no word from it.
    let mut child =
        KillOnDrop(exec_with(&agent, &["--timeout", "1"], "echo started; sleep 30").spawn());
    wait_started(&mut child);
    freeze(&agent);
    let status = child.wait_within(Duration::from_secs(30), "ctl past --timeout");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(124), "{err}");
    assert!(!err.contains("was killed"), "{err}");
    assert!(
        err.contains(&format!("ctl: {target}: ")) && err.contains("did not confirm"),
        "{err}"
    );
    agent.signal(libc::SIGCONT);

    // SIGTERM to ctl (as an outer `timeout` sends) with the agent frozen: the message names
    // the target that did not confirm.
    let mut child = KillOnDrop(exec(&agent, "echo started; sleep 30").spawn());
    wait_started(&mut child);
    freeze(&agent);
    child.signal(libc::SIGTERM);
    let status = child.wait_within(Duration::from_secs(20), "ctl after SIGTERM");
    assert_eq!(status.code(), Some(143));
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        err.contains(&format!("ctl: {target} did not confirm the cancel")),
        "{err}"
    );
    agent.signal(libc::SIGCONT);
}

#[test]
fn users_are_chosen_by_key_policy_not_by_ctl() {
    let agent = Agent::start();
    let key = agent.key_file.to_str().unwrap().to_owned();
    let target = agent.target();
    let run = ctl(["exec", "--key-file", &key, "-l", "nobody", &target, "id"]).run();
    run.expect_code(2);
    assert!(
        run.err().contains("policy") && !run.err().contains("-- -l"),
        "{run}"
    );
    let run = ctl([
        "exec",
        "--key-file",
        &key,
        &format!("nobody@{target}"),
        "id",
    ])
    .run();
    run.expect_code(2);
    assert!(
        run.err().contains("policy") && !run.err().contains("resolve"),
        "{run}"
    );
}

#[test]
fn durations_take_units() {
    let agent = Agent::start();
    let run = exec_with(
        &agent,
        &["--timeout", "1m", "--connect-timeout", "2s"],
        "echo fine",
    )
    .run();
    run.expect_code(0);
    assert_eq!(run.out(), "fine\n", "{run}");
    let run = exec_with(&agent, &["--timeout", "1d"], "true").run();
    run.expect_code(2);
    assert!(run.err().contains("s, m or h"), "{run}");
}

#[test]
fn verbose_shows_connect_handshake_and_timing_steps() {
    let agent = Agent::start();
    let run = exec_with(&agent, &["-v"], "true").run();
    run.expect_code(0);
    for step in [
        "connecting",
        "handshake",
        "authenticated",
        "exchange ended",
        "elapsed",
    ] {
        assert!(run.err().contains(step), "no {step:?}: {run}");
    }
    let quiet = exec(&agent, "true").run();
    assert_eq!(quiet.err(), "", "{quiet}");
}
