//! What a command starts with: no descriptor of the agent's but 0-2, `/bin/sh -c --` whatever
//! the command looks like or PATH says, and an audit record written before it runs.

use std::os::unix::fs::PermissionsExt;

use crate::exec::{exec_with, WAIT};
use crate::util::{eventually, exec, key_line, marker, scratch, write_key_file, Agent};

#[test]
fn a_descriptor_the_agent_inherited_does_not_reach_commands() {
    let dir = scratch();
    let key_file = write_key_file(dir.path(), "keys", &key_line("test"));
    // The agent's parent leaves fd 7 open on the key file, as a careless wrapper would.
    let key = key_file.to_string_lossy().into_owned();
    let wrapper = [
        "bash",
        "-c",
        r#"exec 7<"$1"; shift; exec "$@""#,
        "bash",
        &key,
    ];
    let agent = Agent::start_wrapped(&wrapper, "127.0.0.1:0", dir, key_file.clone(), &[]);
    let fd7 = std::fs::read_link(format!("/proc/{}/fd/7", agent.pid()));
    assert_eq!(
        fd7.ok(),
        Some(key_file.clone()),
        "the agent did inherit fd 7 on its key file"
    );
    let secret = std::fs::read_to_string(&key_file).unwrap();
    let secret = secret.split_whitespace().nth(1).unwrap().to_owned();
    let run = exec(&agent, "cat /proc/self/fd/7; ls /proc/self/fd").run();
    assert!(
        !run.out().contains(&secret),
        "a command read the key: {run}"
    );
    // ls's own directory descriptor is the 3.
    assert_eq!(run.out(), "0\n1\n2\n3\n", "{run}");
}

/// An executable script `name` in `dir` that prints `text`.
fn script(dir: &std::path::Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\necho {text}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_command_starting_with_a_dash_or_plus_is_a_command_not_shell_options() {
    let agent = Agent::start();
    let dir = scratch();
    script(dir.path(), "-rexec-dash", "dash-ran");
    script(dir.path(), "+rexec-plus", "plus-ran");
    let path = format!("PATH={}:/usr/bin:/bin", dir.path().display());
    for (command, out) in [("-rexec-dash", "dash-ran\n"), ("+rexec-plus", "plus-ran\n")] {
        let run = exec_with(&agent, &["-e", &path], command).run();
        run.expect_code(0);
        assert_eq!(run.out(), out, "{run}");
    }
}

#[test]
fn the_clients_path_does_not_choose_the_shell() {
    let agent = Agent::start();
    let dir = scratch();
    script(dir.path(), "sh", "a-planted-sh-ran");
    let path = format!("PATH={}:/usr/bin:/bin", dir.path().display());
    let run = exec_with(&agent, &["-e", &path], "echo the-real-sh").run();
    run.expect_code(0);
    assert_eq!(run.out(), "the-real-sh\n", "{run}");
}

#[test]
fn a_command_that_kills_the_agent_is_on_record() {
    let agent = Agent::start();
    let tag = marker("kills-agent");
    // The agent is the shell's parent; nothing is left to write an end record.
    let run = exec(&agent, &format!("echo {tag}; kill -KILL $PPID")).run();
    assert_eq!(run.code(), 255, "{run}");
    let started = |log: &str| {
        log.lines().any(|l| {
            l.contains("command started")
                && l.contains(&tag)
                && l.contains("key_id=\"test\"")
                && l.contains("peer=127.0.0.1:")
        })
    };
    assert!(
        eventually(WAIT, || started(&agent.log())),
        "no start record; agent log:\n{}",
        agent.log()
    );
}
