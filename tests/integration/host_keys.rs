//! Host-bound keys (protocol version 2): an agent holds only keys derived for its own names,
//! ctl expects the agent it named, and `ctl enroll` is how an agent gets its lines.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::{
    ctl, enrolled, key_line, marker, scratch, write_key_file, Agent, Run, AGENT_NAME,
};

const WAIT: Duration = Duration::from_secs(20);

/// `ctl exec --key-file KEY [OPTIONS...] TARGET COMMAND`.
fn exec_with(key: &Path, options: &[&str], target: &str, command: &str) -> Run {
    let key = key.to_string_lossy().into_owned();
    let mut args = vec!["exec", "-n", "--key-file", key.as_str()];
    args.extend_from_slice(options);
    args.extend([target, command]);
    ctl(args).run()
}

/// A command that creates a fresh marker file, and the file: proof that it ran, or did not.
fn witness(dir: &Path) -> (PathBuf, String) {
    let path = dir.join(marker("ran"));
    let command = format!("touch {}", path.display());
    (path, command)
}

/// An agent enrolled (for client key file `client`) under the names `names` only.
fn agent_named(client: &Path, names: &[&str]) -> Agent {
    let dir = scratch();
    let text = std::fs::read_to_string(client).unwrap();
    let lines: String = names.iter().map(|n| enrolled(&text, n)).collect();
    let agent_file = write_key_file(dir.path(), "agent-keys", &lines);
    Agent::start_enrolled(&[], "127.0.0.1:0", dir, client.to_owned(), agent_file, &[])
}

#[test]
fn a_key_file_copied_from_agent_b_opens_nothing_on_a_and_nothing_on_b_through_ctl() {
    let dir = scratch();
    let client = write_key_file(dir.path(), "client", &key_line("ops"));
    let a = agent_named(&client, &["agent-a"]);
    let b = agent_named(&client, &["agent-b"]);
    // The real client reaches both, each under its own name.
    for (agent, name) in [(&a, "agent-a"), (&b, "agent-b")] {
        let run = exec_with(&client, &["--agent-name", name], &agent.target(), "echo ok");
        run.expect_code(0);
        assert_eq!(run.out(), "ok\n", "{run}");
    }

    // B's key file, as a thief would copy it.
    let stolen = std::fs::read_to_string(&b.agent_key_file).unwrap();
    let (ran, command) = witness(dir.path());
    // As ctl's key file it is refused outright: it is an agent's file.
    let as_is = write_key_file(dir.path(), "stolen", &stolen);
    let run = exec_with(&as_is, &["--agent-name", "agent-b"], &b.target(), &command);
    run.expect_code(2);
    assert!(run.err().contains("names an agent"), "{run}");
    // With the name cut off, its secret taken for a client key: nothing opens, on A or on B.
    let cut: String = stolen
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" ") + "\n")
        .collect();
    let as_client = write_key_file(dir.path(), "stolen-as-client", &cut);
    for (agent, name) in [(&a, "agent-a"), (&b, "agent-b"), (&a, "agent-b")] {
        let run = exec_with(
            &as_client,
            &["--agent-name", name],
            &agent.target(),
            &command,
        );
        run.expect_code(255);
        assert!(run.err().contains("authentication failed"), "{run}");
    }
    assert!(!ran.exists(), "a command ran with a stolen agent key file");
}

#[test]
fn ctl_reaching_b_while_expecting_a_exits_255_before_sending_and_nothing_runs_on_b() {
    let dir = scratch();
    let client = write_key_file(dir.path(), "client", &key_line("ops"));
    let b = agent_named(&client, &["agent-b"]);
    let (ran, command) = witness(dir.path());
    // The connection reaches B (as if DNS or routing sent it there) but ctl expects A.
    let run = exec_with(&client, &["--agent-name", "agent-a"], &b.target(), &command);
    run.expect_code(255);
    assert!(
        run.err().contains("\"agent-a\""),
        "names the expected agent: {run}"
    );
    assert!(
        run.err().contains("ctl enroll agent-a"),
        "says how to enroll it: {run}"
    );
    assert!(run.err().contains("nothing was sent"), "{run}");
    assert_eq!(run.out(), "", "{run}");
    b.wait_for_log("not enrolled for this agent name", WAIT);
    assert!(!ran.exists(), "the command ran on the wrong agent");
    // B itself still answers under its own name.
    exec_with(&client, &["--agent-name", "agent-b"], &b.target(), "true").expect_code(0);
}

#[test]
fn an_alias_works_with_its_own_enrolled_line_and_only_with_it() {
    let dir = scratch();
    let client = write_key_file(dir.path(), "client", &key_line("ops"));
    // Enrolled under its address and the alias "db.example", not under "other".
    let agent = agent_named(&client, &[AGENT_NAME, "db.example"]);
    exec_with(&client, &[], &agent.target(), "true").expect_code(0);
    for alias in ["db.example", "DB.Example."] {
        let run = exec_with(
            &client,
            &["--agent-name", alias],
            &agent.target(),
            "echo alias",
        );
        run.expect_code(0);
        assert_eq!(run.out(), "alias\n", "{run}");
    }
    let run = exec_with(&client, &["--agent-name", "other"], &agent.target(), "true");
    run.expect_code(255);
    assert!(run.err().contains("ctl enroll other"), "{run}");
}

#[test]
fn a_hosts_file_second_field_names_the_agent_to_expect() {
    let dir = scratch();
    let client = write_key_file(dir.path(), "client", &key_line("ops"));
    let a = agent_named(&client, &["agent-a"]);
    let b = agent_named(&client, &["agent-b"]);
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        format!(
            "# target name\n{} agent-a\n{} agent-a\n",
            a.target(),
            b.target()
        ),
    )
    .unwrap();
    let key = client.to_string_lossy().into_owned();
    let hosts_arg = hosts.to_string_lossy().into_owned();
    let run = ctl([
        "exec",
        "--key-file",
        &key,
        "--hosts-file",
        &hosts_arg,
        "echo hi",
    ])
    .run();
    // A answers; B, listed as agent-a, does not hold agent-a's key: 255 for the fleet.
    run.expect_code(255);
    assert!(run.out().contains(&format!("{}: hi", a.target())), "{run}");
    assert!(!run.out().contains(&format!("{}: hi", b.target())), "{run}");
    assert!(run.err().contains("agent-a"), "{run}");
    // --agent-name is for one target only.
    let run = ctl([
        "exec",
        "--key-file",
        &key,
        "--hosts-file",
        &hosts_arg,
        "--agent-name",
        "x",
        "true",
    ])
    .run();
    run.expect_code(2);
    assert!(run.err().contains("--agent-name"), "{run}");
}

#[test]
fn revoking_a_client_is_removing_its_lines_and_sighup() {
    let dir = scratch();
    let one = write_key_file(dir.path(), "one", &key_line("one"));
    let two = write_key_file(dir.path(), "two", &key_line("two"));
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    let agent_dir = scratch();
    let agent_file = write_key_file(
        agent_dir.path(),
        "agent-keys",
        &format!(
            "{}{}",
            enrolled(&read(&one), AGENT_NAME),
            enrolled(&read(&two), AGENT_NAME)
        ),
    );
    let agent = Agent::start_enrolled(
        &[],
        "127.0.0.1:0",
        agent_dir,
        one.clone(),
        agent_file.clone(),
        &[],
    );
    exec_with(&one, &[], &agent.target(), "true").expect_code(0);
    exec_with(&two, &[], &agent.target(), "true").expect_code(0);
    std::fs::write(&agent_file, enrolled(&read(&two), AGENT_NAME)).unwrap();
    agent.signal(libc::SIGHUP);
    agent.wait_for_log("reloaded the key file", WAIT);
    let (ran, command) = witness(dir.path());
    let run = exec_with(&one, &[], &agent.target(), &command);
    run.expect_code(255);
    assert!(run.err().contains("ctl enroll 127.0.0.1"), "{run}");
    assert!(!ran.exists(), "a revoked client ran a command");
    exec_with(&two, &[], &agent.target(), "true").expect_code(0);
}

#[test]
fn enroll_finds_the_key_file_where_exec_does() {
    // CTL_KEY_FILE, as for every other ctl command (bench scripts and deploy rely on it).
    let dir = scratch();
    let client_text = key_line("ops");
    let client = write_key_file(dir.path(), "client", &client_text);
    let run = ctl(["enroll", "web1"]).env("CTL_KEY_FILE", &client).run();
    run.expect_code(0);
    assert_eq!(run.out(), enrolled(&client_text, "web1"), "{run}");
}

#[test]
fn enroll_prints_lines_without_the_master_and_writes_new_private_files() {
    let dir = scratch();
    let client_text = key_line("ops");
    let client = write_key_file(dir.path(), "client", &client_text);
    let master = client_text.split_whitespace().nth(1).unwrap().to_owned();
    let key = client.to_string_lossy().into_owned();
    let run = ctl([
        "enroll",
        "--key-file",
        &key,
        "Web1.Example.",
        "10.0.0.5",
        "web1.example",
    ])
    .run();
    run.expect_code(0);
    let out = run.out();
    assert!(!out.contains(&master), "the master key was printed: {run}");
    let names: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert_eq!(
        names,
        ["web1.example", "10.0.0.5"],
        "canonical names, repeats once: {run}"
    );
    assert_eq!(
        out,
        enrolled(&client_text, "web1.example") + &enrolled(&client_text, "10.0.0.5")
    );

    // -o writes a new 0600 file with that one line, and refuses to overwrite it.
    let path = dir.path().join("web1.keys");
    let path_arg = path.to_string_lossy().into_owned();
    ctl(["enroll", "--key-file", &key, "-o", &path_arg, "web1"])
        .run()
        .expect_code(0);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let written = std::fs::read_to_string(&path).unwrap();
    assert!(
        written.contains(&enrolled(&client_text, "web1")),
        "{written}"
    );
    let again = ctl(["enroll", "--key-file", &key, "-o", &path_arg, "web1"]).run();
    assert_ne!(again.code(), 0, "{again}");
    assert!(again.err().contains("refusing to overwrite"), "{again}");
    let many = ctl(["enroll", "--key-file", &key, "-o", &path_arg, "a", "b"]).run();
    many.expect_code(2);

    // --hosts-file: each target's second field, else its host.
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "web2:50007\n10.0.0.9 db9.example\n[::1]:7\n").unwrap();
    let hosts_arg = hosts.to_string_lossy().into_owned();
    let run = ctl(["enroll", "--key-file", &key, "--hosts-file", &hosts_arg]).run();
    run.expect_code(0);
    let names: Vec<String> = run
        .out()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_owned))
        .collect();
    assert_eq!(names, ["web2", "db9.example", "::1"], "{run}");
}

#[test]
fn an_agent_refuses_a_client_key_line_and_names_the_file_and_line() {
    let dir = scratch();
    let client_line = key_line("ops");
    let file = write_key_file(
        dir.path(),
        "agent-keys",
        &format!(
            "# agent keys\n{}{client_line}",
            enrolled(&client_line, "web1")
        ),
    );
    let path = file.to_string_lossy().into_owned();
    let run = crate::util::agent_cmd(["--key-file", path.as_str(), "--listen", "127.0.0.1:0"])
        .timeout(WAIT)
        .run();
    assert_ne!(run.code(), 0, "{run}");
    assert!(
        run.err().contains(&path) && run.err().contains("line 3"),
        "{run}"
    );
    assert!(run.err().contains("client key"), "{run}");
    assert!(run.err().contains("never belongs on an agent"), "{run}");
}

#[test]
fn an_agent_refuses_lines_of_one_key_id_with_different_options_for_different_names() {
    // The client holds the key for every name it is enrolled under and picks the name: a bare
    // alias line would undo the restriction of the main line.
    let dir = scratch();
    let client_line = key_line("ops");
    let restricted = format!("{} no-pty,no-stdin\n", client_line.trim_end());
    let file = write_key_file(
        dir.path(),
        "agent-keys",
        &format!(
            "# agent keys\n{}{}",
            enrolled(&restricted, "web1"),
            enrolled(&client_line, "10.0.0.5")
        ),
    );
    let path = file.to_string_lossy().into_owned();
    let run = crate::util::agent_cmd(["--key-file", path.as_str(), "--listen", "127.0.0.1:0"])
        .timeout(WAIT)
        .run();
    assert_ne!(run.code(), 0, "{run}");
    assert!(
        run.err().contains(&path)
            && run.err().contains("line 3")
            && run.err().contains("than on line 2"),
        "{run}"
    );
}
