//! A command ended by the agent's own shutdown (SIGTERM to the agent) is never reported as a
//! success: ctl exits 128+N for the signal the agent used and says so, for one target, many
//! (prefixed, `--group`, `--json`), even when the command caught the signal and exited 0.

use std::path::Path;

use crate::exec::{audit_line, Running, WAIT};
use crate::fleet::{folded, summary, Fleet};
use crate::util::{eventually, exec, marker, scratch, Agent, KillOnDrop, Run};

/// Catches SIGTERM and exits 0 (as a service stopping "cleanly" would); says `ready` once
/// the trap is set.
fn trapping(tag: &str) -> String {
    format!("trap 'exit 0' TERM; echo ready; while :; do sleep 0.1; done # {tag}")
}

/// The line ctl must print for `target` when the agent's shutdown ended its command.
fn told(target: &str, signal: &str) -> String {
    format!("ctl: {target}: the agent was shutting down and ended the command with {signal}")
}

/// Runs `command` on `agent`, stops the agent with SIGTERM once it said `ready`, and returns
/// ctl's exit code and stderr.
fn stop_agent_after_ready(agent: &Agent, command: &str) -> (i32, String) {
    let mut run = Running::start(exec(agent, command));
    assert_eq!(run.line().trim_end(), "ready");
    agent.signal(libc::SIGTERM);
    let code = run.code();
    (code, run.err.rest(WAIT))
}

#[test]
fn a_command_that_traps_term_and_exits_0_at_agent_shutdown_gives_143() {
    let agent = Agent::start();
    let tag = marker("shutdown-trap");
    let (code, err) = stop_agent_after_ready(&agent, &trapping(&tag));
    assert_eq!(
        code, 143,
        "not a success, whatever the command exited with: {err}"
    );
    assert!(err.contains(&told(&agent.target(), "SIGTERM")), "{err:?}");
    // (The remote sh may add `Terminated` for the sleep it was waiting on.)
    let ours = err.lines().filter(|l| l.starts_with("ctl: ")).count();
    assert_eq!(ours, 1, "one line says what happened: {err:?}");
    let line = audit_line(&agent, &tag);
    assert!(
        line.contains("exit 0, agent shutting down (ended with signal 15)"),
        "{line}"
    );
}

#[test]
fn a_command_killed_by_term_at_agent_shutdown_gives_143_and_says_why() {
    let agent = Agent::start();
    let tag = marker("shutdown-plain");
    let (code, err) = stop_agent_after_ready(&agent, &format!("echo ready; sleep 60 # {tag}"));
    assert_eq!(code, 143, "{err}");
    assert!(err.contains(&told(&agent.target(), "SIGTERM")), "{err:?}");
    let line = audit_line(&agent, &tag);
    assert!(line.contains("agent shutting down"), "{line}");
}

#[test]
fn a_command_that_ignores_term_at_agent_shutdown_gives_137_naming_sigkill() {
    let agent = Agent::start_with(&["--kill-grace", "0.5"]);
    let tag = marker("shutdown-stubborn");
    let command = format!("trap '' TERM; echo ready; sleep 60 # {tag}");
    let (code, err) = stop_agent_after_ready(&agent, &command);
    assert_eq!(code, 137, "{err}");
    assert!(err.contains(&told(&agent.target(), "SIGKILL")), "{err:?}");
}

/// Runs `command` with `options` on both agents of `fleet` (as two targets), waits until
/// each has written its pid under `dir` (the trap is set by then), stops both agents with
/// SIGTERM, and returns the run.
fn stop_fleet_mid_command(fleet: &Fleet, options: &[&str], dir: &Path) -> Run {
    let tag = marker("shutdown-fleet");
    // Silent (sh may say `Terminated` of the sleep it was waiting for), so that a --group
    // block is only its heading.
    let command = format!(
        "trap 'exit 0' TERM; exec 2>/dev/null; touch {}/$$; while :; do sleep 0.1; done # {tag}",
        dir.display()
    );
    let targets = format!("{},{}", fleet.target(0), fleet.target(1));
    let mut args = options.to_vec();
    args.extend(["-H", &targets, &command]);
    let mut child = KillOnDrop(fleet.exec(&args).spawn());
    let out = crate::util::reader(child.stdout.take().expect("ctl stdout"));
    let err = crate::util::reader(child.stderr.take().expect("ctl stderr"));
    let started = || std::fs::read_dir(dir).is_ok_and(|d| d.count() == 2);
    assert!(eventually(WAIT, started), "both commands should start");
    for agent in &fleet.agents {
        agent.signal(libc::SIGTERM);
    }
    let status = child.wait_within(WAIT, "ctl after the agents stopped");
    Run {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
        cmdline: format!("ctl {args:?}"),
    }
}

#[test]
fn a_fleet_run_reports_the_agent_shutdown_per_target() {
    let fleet = Fleet::start(2);
    let dir = scratch();
    let run = stop_fleet_mid_command(&fleet, &[], dir.path());
    run.expect_code(143);
    let (a, b) = (fleet.target(0), fleet.target(1));
    for target in [&a, &b] {
        assert!(run.err().contains(&told(target, "SIGTERM")), "{run}");
    }
    assert_eq!(
        summary(&run),
        format!(
            "ctl: 2 targets: 0 ok, 2 failed (SIGTERM at agent shutdown: {}), 0 unreachable",
            folded(&[&a, &b])
        ),
        "{run}"
    );
}

#[test]
fn a_group_run_heads_its_block_with_the_agent_shutdown() {
    let fleet = Fleet::start(2);
    let dir = scratch();
    let run = stop_fleet_mid_command(&fleet, &["--group"], dir.path());
    run.expect_code(143);
    let (a, b) = (fleet.target(0), fleet.target(1));
    let rule = "----------------";
    assert_eq!(
        run.out(),
        format!(
            "{rule}\n{} (SIGTERM at agent shutdown)\n{rule}\n",
            folded(&[&a, &b])
        ),
        "{run}"
    );
    for target in [&a, &b] {
        assert!(run.err().contains(&told(target, "SIGTERM")), "{run}");
    }
}

#[test]
fn json_records_carry_the_agent_shutdown_and_its_signal() {
    let fleet = Fleet::start(2);
    let dir = scratch();
    let run = stop_fleet_mid_command(&fleet, &["--json"], dir.path());
    run.expect_code(143);
    let records: Vec<serde_json::Value> = run
        .out()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}\n{run}")))
        .collect();
    assert_eq!(records.len(), 2, "{run}");
    for record in records {
        assert_eq!(record["status"], 143, "{record}");
        assert_eq!(record["agent_shutdown"], true, "{record}");
        assert_eq!(record["shutdown_signal"], 15, "{record}");
        // The command's own ending is kept: it caught SIGTERM and exited 0.
        assert_eq!(record["exit_code"], 0, "{record}");
        assert!(record["signal"].is_null(), "{record}");
        assert_eq!(record["timed_out"], false, "{record}");
        assert!(record["error"].is_null(), "{record}");
    }
}
