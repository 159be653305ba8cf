//! Interactive sessions (`ctl exec -t`): ctl runs on a real pseudo-terminal of the test's
//! (pty_util.rs), the command on one of the agent's; keys typed, screen read, modes checked.

use std::process::Command;

use crate::exec::{assert_gone, assert_serving, audit_line, exec_with, WAIT};
use rexec_shared::message::PtyRequest;

use crate::pty_util::Terminal;
use crate::rawclient::{authenticate, first_key, ClientMsg, OwnedServerMsg};
use crate::util::{bin, ctl, eventually, marker, scratch, Agent};

/// `ctl exec -t OPTIONS... TARGET [COMMAND]` on a new terminal of 24 x 80.
fn session(agent: &Agent, options: &[&str], command: Option<&str>) -> Terminal {
    let mut cmd = Command::new(bin("ctl"));
    cmd.args(["exec", "-t", "--key-file"])
        .arg(&agent.key_file)
        .args(options)
        .arg(agent.target())
        .args(command)
        .env_remove("CTL_KEY_FILE")
        .env_remove("CTL_PORT")
        .env("TERM", "xterm-256color");
    Terminal::spawn(cmd, 24, 80)
}

/// Waits for `pid=N` on the screen (printed by the remote shell before it execs the program
/// under test) and then for that process to run `program`; returns N.
fn remote_pid(term: &mut Terminal, program: &str) -> i32 {
    let end = term.wait_for("pid=", WAIT);
    term.wait_for_after(end, "\r\n", WAIT);
    let screen = term.screen();
    let pid: i32 = screen[end..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pid on the screen: {screen:?}"));
    let running = eventually(WAIT, || {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.starts_with(program.as_bytes()))
    });
    assert!(running, "remote {program} never ran as {pid}");
    pid
}

#[test]
fn the_command_gets_a_terminal_of_the_local_size_that_follows_a_resize() {
    let agent = Agent::start();
    // Prints the size at start and on every SIGWINCH (sh runs a trap between commands, so
    // after each short sleep; the loop is bounded).
    let script = "tty; echo \"term=$TERM\"; stty size; trap 'stty size' WINCH; echo ready; \
                  for i in $(seq 600); do sleep 0.1; done";
    let mut term = session(&agent, &[], Some(script));
    let before = term.modes_before();
    term.wait_for("/dev/pts/", WAIT);
    term.wait_for("term=xterm-256color", WAIT);
    term.wait_for("24 80", WAIT);
    let ready = term.wait_for("ready", WAIT);
    assert_ne!(term.modes(), before, "ctl's terminal is not in raw mode");
    term.resize(41, 133);
    term.wait_for_after(ready, "41 133", WAIT);
    // Ctrl-C reaches the remote shell as a key, not ctl as a signal.
    term.type_keys(b"\x03");
    let status = term.wait_exit(WAIT);
    assert_eq!(status.code(), Some(130), "{}", term.screen());
    assert_eq!(term.modes(), before, "ctl left its terminal changed");
}

#[test]
fn ctrl_c_interrupts_a_remote_sleep_and_ctl_exits_130() {
    let agent = Agent::start();
    let mut term = session(&agent, &[], Some("echo pid=$$; exec sleep 600"));
    let before = term.modes_before();
    let pid = remote_pid(&mut term, "sleep");
    term.type_keys(b"\x03");
    let status = term.wait_exit(WAIT);
    assert_eq!(status.code(), Some(130), "{}", term.screen());
    assert_eq!(term.modes(), before);
    assert!(eventually(WAIT, || !std::path::Path::new(&format!(
        "/proc/{pid}"
    ))
    .exists()));
    let line = audit_line(&agent, "exec sleep 600");
    assert!(line.contains("killed by signal 2"), "{line}");
}

#[test]
fn an_interactive_python_can_be_driven() {
    let agent = Agent::start();
    let mut term = session(&agent, &[], Some("python3 -i -q"));
    term.wait_for(">>> ", WAIT);
    // The remote terminal echoes and edits: a typo erased with DEL never reaches Python.
    term.type_keys(b"print(6*7x\x7f)\r");
    term.wait_for("42\r\n", WAIT);
    term.type_keys(b"import sys; sys.exit(5)\r");
    let status = term.wait_exit(WAIT);
    assert_eq!(status.code(), Some(5), "{}", term.screen());
}

#[test]
fn the_login_shell_runs_without_a_command() {
    let agent = Agent::start();
    let mut term = session(&agent, &[], None);
    // $0 of a login shell starts with a dash; the terminal buffers what is typed early.
    term.type_keys(b"echo \"zero=$0\"; tty; exit 3\r");
    term.wait_for("zero=-", WAIT);
    term.wait_for("/dev/pts/", WAIT);
    let status = term.wait_exit(WAIT);
    assert_eq!(status.code(), Some(3), "{}", term.screen());
    let line = audit_line(&agent, "login shell");
    assert!(line.contains("exit 3"), "{line}");
}

#[test]
fn the_terminal_modes_come_back_when_the_agent_is_killed_mid_session() {
    let agent = Agent::start();
    let mut term = session(&agent, &[], Some("echo pid=$$; exec sleep 600"));
    let before = term.modes_before();
    let pid = remote_pid(&mut term, "sleep");
    assert_ne!(term.modes(), before, "ctl's terminal is not in raw mode");
    agent.signal(libc::SIGKILL);
    let status = term.wait_exit(WAIT);
    assert_eq!(status.code(), Some(255), "{}", term.screen());
    assert!(term.screen().contains("ctl: "), "{}", term.screen());
    assert_eq!(term.modes(), before);
    // The agent is gone; its command's terminal went with it (SIGHUP to the session).
    assert!(eventually(WAIT, || !std::path::Path::new(&format!(
        "/proc/{pid}"
    ))
    .exists()));
}

#[test]
fn a_frozen_agent_ends_the_session_with_255_and_the_terminal_restored() {
    let agent = Agent::start();
    let mut term = session(
        &agent,
        &["--alive-timeout", "2"],
        Some("echo pid=$$; exec sleep 600"),
    );
    let before = term.modes_before();
    let pid = remote_pid(&mut term, "sleep");
    agent.signal(libc::SIGSTOP);
    let status = term.wait_exit(WAIT);
    agent.signal(libc::SIGCONT);
    assert_eq!(status.code(), Some(255), "{}", term.screen());
    assert!(
        term.screen()
            .contains("no sign of life from the agent for 2s"),
        "{}",
        term.screen()
    );
    assert_eq!(term.modes(), before);
    // Thawed, the agent finds the client gone and ends the session's tree.
    assert!(eventually(WAIT, || !std::path::Path::new(&format!(
        "/proc/{pid}"
    ))
    .exists()));
}

#[test]
fn an_idle_session_outlives_many_alive_timeouts() {
    // Nobody types, nothing is shown: the heartbeats alone keep both sides content.
    let agent = Agent::start_with(&["--alive-timeout", "1"]);
    let mut term = session(
        &agent,
        &["--alive-timeout", "1"],
        Some("sleep 4; echo still-here"),
    );
    term.wait_for("still-here", WAIT);
    let status = term.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "{}", term.screen());
}

#[test]
fn sigterm_to_ctl_ends_the_session_and_restores_the_terminal() {
    let agent = Agent::start();
    let tag = marker("pty-term");
    let mut term = session(
        &agent,
        &[],
        Some(&format!("echo pid=$$; exec sleep 600 # {tag}")),
    );
    let before = term.modes_before();
    let pid = remote_pid(&mut term, "sleep");
    term.signal(libc::SIGTERM);
    let status = term.wait_exit(WAIT);
    assert_eq!(status.code(), Some(143), "{}", term.screen());
    assert_eq!(term.modes(), before);
    assert_gone(pid, &tag);
}

#[test]
fn tilde_dot_drops_the_session_and_the_remote_command_is_killed() {
    let agent = Agent::start();
    let tag = marker("pty-drop");
    let script = format!("echo pid=$$; exec sleep 601 # {tag}");
    let mut term = session(&agent, &[], Some(&script));
    let before = term.modes_before();
    let pid = remote_pid(&mut term, "sleep");
    term.type_keys(b"\r~.");
    let status = term.wait_exit(WAIT);
    assert_eq!(status.code(), Some(255), "{}", term.screen());
    assert!(
        term.screen().contains("dropped with ~."),
        "{}",
        term.screen()
    );
    assert_eq!(term.modes(), before);
    assert_gone(pid, "sleep 601");
    let line = audit_line(&agent, &tag);
    assert!(line.contains("client went away"), "{line}");
    assert_serving(&agent);
}

#[test]
fn timeout_kills_the_session_with_124() {
    let agent = Agent::start();
    let mut term = session(
        &agent,
        &["--timeout", "1"],
        Some("echo pid=$$; exec sleep 600"),
    );
    let before = term.modes_before();
    remote_pid(&mut term, "sleep");
    let status = term.wait_exit(WAIT);
    assert_eq!(status.code(), Some(124), "{}", term.screen());
    assert!(term.screen().contains("timed out"), "{}", term.screen());
    assert_eq!(term.modes(), before);
}

#[test]
fn output_arrives_merged_on_stdout_with_the_commands_status() {
    // Without a local terminal too: ctl's stdout gets both streams, as with `ssh -t`.
    let agent = Agent::start();
    let run = exec_with(&agent, &["-t"], "echo to-out; echo to-err >&2; tty; exit 7")
        .timeout(WAIT)
        .run();
    run.expect_code(7);
    assert!(run.out().contains("to-out\r\n"), "{run}");
    assert!(run.out().contains("to-err\r\n"), "{run}");
    assert!(run.out().contains("/dev/pts/"), "{run}");
    assert_eq!(run.err(), "", "{run}");
}

#[test]
fn the_clients_path_does_not_choose_a_sessions_shell() {
    use std::os::unix::fs::PermissionsExt;
    let agent = Agent::start();
    let dir = scratch();
    let planted = dir.path().join("sh");
    std::fs::write(&planted, "#!/bin/sh\necho a-planted-sh-ran\n").unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("PATH={}:/usr/bin:/bin", dir.path().display());
    let run = exec_with(&agent, &["-t", "-e", &path], "echo the-real-sh")
        .timeout(WAIT)
        .run();
    run.expect_code(0);
    assert!(run.out().contains("the-real-sh"), "{run}");
    assert!(!run.out().contains("a-planted-sh-ran"), "{run}");
}

#[test]
fn tty_with_many_targets_is_a_usage_error() {
    let agent = Agent::start();
    let key = agent.key_file.to_string_lossy().into_owned();
    for extra in [&["-H", "127.0.0.1:1"][..], &["--hosts-file", "/dev/null"]] {
        let mut args = vec!["exec", "-t", "--key-file", &key];
        args.extend_from_slice(extra);
        args.push("true");
        let run = ctl(&args).run();
        run.expect_code(2);
        assert!(run.err().contains("-H/--hosts-file"), "{run}");
    }
}

/// A `Pty` request for `command` on a terminal of `rows` x `cols`, as a raw client sends it.
fn pty_request(command: &str, term: &[u8], rows: u16, cols: u16) -> ClientMsg {
    ClientMsg::Pty(PtyRequest {
        command: Some(command.as_bytes().to_vec()),
        term: term.to_vec(),
        size: rexec_shared::message::WindowSize { rows, cols },
        ..Default::default()
    })
}

#[test]
fn a_term_with_control_characters_is_refused_and_nothing_runs() {
    let agent = Agent::start();
    let dir = scratch();
    let flag = dir.path().join("ran");
    let mut conn = authenticate(agent.addr, &first_key(&agent.key_file)).expect("authenticate");
    let command = format!("touch {}", flag.display());
    conn.send(&pty_request(&command, b"xterm\x1b]0;owned\x07", 24, 80))
        .expect("send");
    let result = conn.collect().expect("an answer");
    let error = result.error.unwrap_or_default();
    assert!(
        error.contains("TERM") && error.contains("nothing was run"),
        "{error:?}"
    );
    assert!(!flag.exists(), "the command ran");
    assert_serving(&agent);
}

#[test]
fn window_sizes_of_zero_or_absurd_are_clamped_and_a_resize_first_is_refused() {
    let agent = Agent::start();
    let key = first_key(&agent.key_file);
    // 0 x 0 (unknown) starts at 24 x 80; a resize to 65535 x 65535 is clamped; the keys that
    // follow it in the stream let the command look after the resize arrived.
    let mut conn = authenticate(agent.addr, &key).expect("authenticate");
    conn.send(&pty_request(
        "stty size; read x; echo resized; stty size",
        b"xterm",
        0,
        0,
    ))
    .expect("send");
    let mut first = Vec::new();
    while !String::from_utf8_lossy(&first).contains("24 80\r\n") {
        match conn.recv().expect("output") {
            Some(OwnedServerMsg::Stdout(data)) => first.extend(data),
            other => panic!("{other:?} after {:?}", String::from_utf8_lossy(&first)),
        }
    }
    conn.send(&ClientMsg::WindowSize(u16::MAX, u16::MAX))
        .expect("send");
    conn.send(&ClientMsg::Stdin(b"\r".to_vec())).expect("send");
    let result = conn.collect().expect("a result");
    let screen = String::from_utf8_lossy(&result.stdout);
    assert_eq!(result.status.and_then(|s| s.code), Some(0), "{screen:?}");
    assert!(screen.contains("resized\r\n1024 2048\r\n"), "{screen:?}");

    // A resize before any request: there is no terminal, and it is not a request.
    let mut conn = authenticate(agent.addr, &key).expect("authenticate");
    conn.send(&ClientMsg::WindowSize(50, 100)).expect("send");
    let result = conn.collect().expect("an answer");
    let error = result.error.unwrap_or_default();
    assert!(error.contains("nothing was run"), "{error:?}");
    assert_serving(&agent);
}

#[test]
fn a_session_the_agents_shutdown_ended_gives_143_even_if_it_exited_0() {
    let agent = Agent::start();
    let tag = marker("pty-shutdown");
    let script = format!("trap 'exit 0' TERM; echo ready; while :; do sleep 0.1; done # {tag}");
    let mut term = session(&agent, &[], Some(&script));
    let before = term.modes_before();
    term.wait_for("ready", WAIT);
    agent.signal(libc::SIGTERM);
    let status = term.wait_exit(WAIT);
    assert_eq!(status.code(), Some(143), "{}", term.screen());
    let said = format!(
        "ctl: {}: the agent was shutting down and ended the command with SIGTERM",
        agent.target()
    );
    assert!(term.screen().contains(&said), "{}", term.screen());
    assert_eq!(term.modes(), before);
    let line = audit_line(&agent, &tag);
    assert!(line.contains("exit 0, agent shutting down"), "{line}");
}
