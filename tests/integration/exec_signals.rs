//! Single-target `ctl exec` ending by signal or deadline: remote signals, `--timeout`, ctl
//! killed or interrupted, the agent stopped; and no process of the command may survive.

use std::io::{BufRead, BufReader};

use crate::exec::{assert_gone, assert_serving, audit_line, exec_with, Running, WAIT};
use crate::util::{ctl, exec, marker, scratch, write_key_file, Agent, KillGroupOnDrop, KillOnDrop};

/// A command that prints its process group and then sleeps; `tag` marks its shell's command
/// line so /proc can be searched for it too.
fn sleeper(tag: &str) -> String {
    format!("echo $$; sleep 60; echo {tag}")
}

/// The same, ignoring SIGTERM (the shell and, by inheritance, its sleep).
fn stubborn_sleeper(tag: &str) -> String {
    format!("trap '' TERM INT; echo $$; sleep 60; echo {tag}")
}

#[test]
fn remote_signal_death_gives_128_plus_n() {
    let agent = Agent::start();
    for (command, code) in [
        ("kill -9 $$", 137),
        ("kill -TERM $$", 143),
        ("kill -INT $$", 130),
        ("kill -HUP $$", 129),
    ] {
        exec(&agent, command).run().expect_code(code);
    }
    let line = audit_line(&agent, "kill -9");
    assert!(line.contains("signal 9"), "{line}");
}

#[test]
fn timeout_gives_124_and_kills_the_process_group() {
    let agent = Agent::start();
    let tag = marker("timeout");
    let run = exec_with(&agent, &["--timeout", "2"], &sleeper(&tag))
        .timeout(WAIT)
        .run();
    run.expect_code(124);
    let pgid: i32 = run
        .out()
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("output before the timeout is kept: {run}"));
    assert!(run.err().contains("timed out"), "{run}");
    assert!(!run.out().contains(&tag), "{run}");
    assert_gone(pgid, &tag);
    let line = audit_line(&agent, &tag);
    assert!(line.contains("timed out"), "{line}");
    assert_serving(&agent);
}

#[test]
fn timeout_kills_a_command_that_ignores_sigterm() {
    let agent = Agent::start();
    let tag = marker("timeout-stubborn");
    let run = exec_with(&agent, &["--timeout", "2"], &stubborn_sleeper(&tag))
        .timeout(WAIT)
        .run();
    run.expect_code(124);
    let pgid: i32 = run.out().trim().parse().unwrap_or_else(|_| panic!("{run}"));
    // SIGTERM is ignored; SIGKILL after the grace must end it.
    assert_gone(pgid, &tag);
    assert_serving(&agent);
}

#[test]
fn timeout_that_does_not_run_out_changes_nothing() {
    let agent = Agent::start();
    let run = exec_with(&agent, &["--timeout", "30"], "echo quick; exit 5").run();
    run.expect_code(5);
    assert_eq!(run.out(), "quick\n", "{run}");
    assert_eq!(run.err(), "", "{run}");
}

#[test]
fn ctl_killed_mid_command_terminates_the_remote_group() {
    let agent = Agent::start();
    let tag = marker("ctl-killed");
    let mut run = Running::start(exec(&agent, &sleeper(&tag)));
    let pgid = run.pgid();
    run.child.signal(libc::SIGKILL);
    run.child.wait_within(WAIT, "ctl after SIGKILL");
    assert_gone(pgid, &tag);
    let line = audit_line(&agent, &tag);
    assert!(line.contains("client went away"), "{line}");
    assert_serving(&agent);
}

#[test]
fn ctl_killed_terminates_a_group_that_ignores_sigterm() {
    let agent = Agent::start();
    let tag = marker("ctl-killed-stubborn");
    let mut run = Running::start(exec(&agent, &stubborn_sleeper(&tag)));
    let pgid = run.pgid();
    run.child.signal(libc::SIGKILL);
    run.child.wait_within(WAIT, "ctl after SIGKILL");
    assert_gone(pgid, &tag);
    assert_serving(&agent);
}

/// Sends `signal` to a ctl running a command, and checks its exit code and the remote group.
fn interrupt_ctl(signal: i32, code: i32, command: fn(&str) -> String) {
    let agent = Agent::start();
    let tag = marker("ctl-interrupted");
    let mut run = Running::start(exec(&agent, &command(&tag)));
    let pgid = run.pgid();
    run.child.signal(signal);
    assert_eq!(run.code(), code, "ctl's exit code after signal {signal}");
    assert_gone(pgid, &tag);
    assert!(!run.out.rest(WAIT).contains(&tag));
    assert_serving(&agent);
}

#[test]
fn ctl_sigint_exits_130_and_terminates_the_remote_group() {
    interrupt_ctl(libc::SIGINT, 130, sleeper);
}

#[test]
fn ctl_sigterm_exits_143_and_terminates_the_remote_group() {
    interrupt_ctl(libc::SIGTERM, 143, sleeper);
}

#[test]
fn ctl_sigint_terminates_a_group_that_ignores_it() {
    interrupt_ctl(libc::SIGINT, 130, stubborn_sleeper);
}

#[test]
fn closed_ctl_stdout_ends_the_remote_command_like_a_pipeline() {
    // As with `yes | head -1` locally: once nobody reads ctl's output, the remote command is
    // ended (by SIGPIPE) instead of running forever.
    let agent = Agent::start();
    let tag = marker("sigpipe");
    let mut child = KillOnDrop(exec(&agent, &format!("echo $$; yes {tag}")).spawn());
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    let pgid: i32 = first
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("expected a pid line, got {first:?}"));
    let mut second = String::new();
    out.read_line(&mut second).unwrap();
    assert_eq!(second.trim(), tag);
    drop(out);
    let status = child.wait_within(WAIT, "ctl with a closed stdout");
    assert_eq!(status.code(), Some(128 + libc::SIGPIPE), "{status:?}");
    assert_gone(pgid, &tag);
}

/// Stops the agent while a command runs; checks what ctl is told and that nothing survives.
fn stop_agent_mid_command(signal: i32, command: fn(&str) -> String, code: i32) {
    let agent = Agent::start();
    let tag = marker("agent-stopped");
    let mut run = Running::start(exec(&agent, &command(&tag)));
    let pgid = run.pgid();
    agent.signal(signal);
    assert_eq!(
        run.code(),
        code,
        "ctl is told the signal that ended the command"
    );
    assert_gone(pgid, &tag);
    let log = agent.log();
    let status = agent.stop();
    assert_eq!(
        status.code(),
        Some(0),
        "the agent exits 0 after a clean stop; log:\n{log}"
    );
}

#[test]
fn agent_sigterm_ends_running_commands_and_exits_0() {
    stop_agent_mid_command(libc::SIGTERM, sleeper, 143);
}

#[test]
fn agent_sigint_ends_running_commands_and_exits_0() {
    stop_agent_mid_command(libc::SIGINT, sleeper, 143);
}

#[test]
fn agent_stop_kills_a_command_that_ignores_sigterm() {
    // SIGTERM is ignored, so SIGKILL ends it after the grace and the client is told so.
    stop_agent_mid_command(libc::SIGTERM, stubborn_sleeper, 137);
}

#[test]
fn idle_agent_stops_cleanly_on_sigterm_and_sigint() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let agent = Agent::start();
        let target = agent.target();
        // The agent's key directory goes with it; keep a copy of the key for ctl.
        let keep = scratch();
        let key_file = write_key_file(
            keep.path(),
            "key",
            &std::fs::read_to_string(&agent.key_file).unwrap(),
        );
        agent.signal(signal);
        let status = agent.stop();
        assert_eq!(status.code(), Some(0), "signal {signal}");
        // It no longer accepts connections.
        let key_file = key_file.to_string_lossy().into_owned();
        let run = ctl(["exec", "--key-file", &key_file, &target, "true"]).run();
        run.expect_code(255);
        assert!(run.err().contains(&target), "{run}");
    }
}

#[test]
fn agent_killed_mid_command_gives_255_with_one_line() {
    let agent = Agent::start();
    let tag = marker("agent-killed");
    let mut run = Running::start(exec(&agent, &sleeper(&tag)));
    let pgid = run.pgid();
    // Nothing is left to end the orphaned command once the agent is gone: the test does.
    let cleanup = KillGroupOnDrop(pgid);
    agent.signal(libc::SIGKILL);
    assert_eq!(
        run.code(),
        255,
        "a cut stream is ctl's error, not the command's status"
    );
    let err = run.err.rest(WAIT);
    assert_eq!(
        err.lines().count(),
        1,
        "one line saying what happened: {err:?}"
    );
    assert!(err.contains(&agent.target()), "{err:?}");
    drop(cleanup);
    assert_gone(pgid, &tag);
}

#[test]
fn unresponsive_agent_past_the_timeout_still_gives_124_and_the_group_dies() {
    let agent = Agent::start();
    let tag = marker("agent-stopped-timeout");
    let mut run = Running::start(exec_with(&agent, &["--timeout", "2"], &sleeper(&tag)));
    let pgid = run.pgid();
    let cleanup = KillGroupOnDrop(pgid);
    // A frozen agent cannot report the timeout; ctl must give up by itself.
    agent.signal(libc::SIGSTOP);
    let code = run.code();
    agent.signal(libc::SIGCONT);
    assert_eq!(code, 124);
    assert!(run.err.rest(WAIT).contains("timed out"));
    // Once it runs again, the agent's own deadline has passed and it kills the group.
    assert_gone(pgid, &tag);
    drop(cleanup);
    assert_serving(&agent);
}
