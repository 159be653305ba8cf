//! Key files and authentication for one target: which key ctl uses, what both binaries refuse,
//! what a wrong key or an unreachable agent gives, and `ctl keygen`.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rexec_shared::keyfile::KeyRing;

use crate::exec::{assert_serving, audit_line, WAIT};
use crate::util::{agent_cmd, ctl, exec, key_line, marker, scratch, write_key_file, Agent, Run};

/// `ctl exec --key-file KEY_FILE OPTIONS... TARGET COMMAND`.
fn exec_key(key_file: &Path, options: &[&str], target: &str, command: &str) -> Run {
    let key_file = key_file.to_string_lossy().into_owned();
    let mut args = vec!["exec", "--key-file", &key_file];
    args.extend_from_slice(options);
    args.extend([target, command]);
    ctl(args).run()
}

/// A key line with `id` and the secret of `line` (another key's line).
fn same_secret(id: &str, line: &str) -> String {
    let secret = line
        .split_whitespace()
        .nth(1)
        .expect("key line has a secret");
    format!("{id} {secret}\n")
}

/// A port on 127.0.0.1 that was just free: bound, then released.
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A witness file a command would create, to prove it never ran.
fn witness(dir: &Path) -> (PathBuf, String) {
    let path = dir.join(marker("ran"));
    let command = format!("touch {}", path.display());
    (path, command)
}

#[test]
fn wrong_secret_for_a_known_key_id_fails_authentication() {
    let agent = Agent::start();
    // Same key id as the agent's, another secret; kept next to the agent's own key.
    let wrong = write_key_file(agent.dir.path(), "wrong", &key_line("test"));
    let (ran, command) = witness(agent.dir.path());
    let run = exec_key(&wrong, &[], &agent.target(), &command);
    run.expect_code(255);
    assert!(run.err().contains("authentication failed"), "{run}");
    assert!(
        run.err().contains(&agent.target()),
        "the message names the target: {run}"
    );
    assert_eq!(run.err().lines().count(), 1, "one line on stderr: {run}");
    assert_eq!(run.out(), "", "{run}");
    assert!(!ran.exists(), "a command ran without authentication");
    agent.wait_for_log("before authentication", WAIT);
    assert_serving(&agent);
}

#[test]
fn unknown_key_id_fails_authentication() {
    let agent = Agent::start();
    let dir = scratch();
    // The agent's own secret under an id it does not know.
    let agent_line = std::fs::read_to_string(&agent.key_file).unwrap();
    let unknown = write_key_file(dir.path(), "unknown", &same_secret("stranger", &agent_line));
    let (ran, command) = witness(dir.path());
    let run = exec_key(&unknown, &[], &agent.target(), &command);
    run.expect_code(255);
    assert!(run.err().contains("authentication failed"), "{run}");
    assert!(!ran.exists(), "a command ran without authentication");
    agent.wait_for_log("unknown key id", WAIT);
    assert_serving(&agent);
}

#[test]
fn connection_refused_names_the_target() {
    let dir = scratch();
    let key = write_key_file(dir.path(), "key", &key_line("test"));
    let target = format!("127.0.0.1:{}", closed_port());
    let run = exec_key(&key, &[], &target, "true");
    run.expect_code(255);
    assert!(
        run.err().contains(&target) && run.err().contains("refused"),
        "{run}"
    );
    assert_eq!(run.err().lines().count(), 1, "one line on stderr: {run}");
}

#[test]
fn connect_timeout_bounds_a_silent_peer() {
    let dir = scratch();
    let key = write_key_file(dir.path(), "key", &key_line("test"));
    // The kernel completes the TCP connection, but nothing ever answers the handshake.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = silent.local_addr().unwrap().to_string();
    let run = exec_key(&key, &["--connect-timeout", "1"], &target, "true");
    run.expect_code(255);
    assert!(
        run.err().contains(&target) && run.err().contains("timed out"),
        "{run}"
    );
    drop(silent);
}

#[test]
fn key_file_open_to_group_or_others_is_refused_by_ctl() {
    let agent = Agent::start();
    let dir = scratch();
    let (ran, command) = witness(dir.path());
    for mode in [0o640, 0o604, 0o620, 0o602, 0o644, 0o666] {
        let key = dir.path().join(format!("key-{mode:o}"));
        std::fs::copy(&agent.key_file, &key).unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let run = exec_key(&key, &[], &agent.target(), &command);
        run.expect_code(2);
        let err = run.err();
        assert!(err.contains(key.to_str().unwrap()), "names the file: {run}");
        assert!(
            err.contains(&format!("{mode:04o}")),
            "names the mode: {run}"
        );
    }
    assert!(!ran.exists(), "a command ran with a refused key file");
    // ctl refused before connecting: the agent saw no client at all.
    assert!(!agent.log().contains("peer="), "{}", agent.log());
    // Owner-only modes are fine.
    let key = dir.path().join("key-400");
    std::fs::copy(&agent.key_file, &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
    exec_key(&key, &[], &agent.target(), "true").expect_code(0);
}

#[test]
fn key_file_open_to_group_or_others_is_refused_by_the_agent() {
    let dir = scratch();
    for mode in [0o640, 0o604] {
        let key = write_key_file(
            dir.path(),
            &format!("agent-key-{mode:o}"),
            &key_line("test"),
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
        let run = agent_cmd([
            "--key-file".as_ref(),
            key.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
        ])
        .timeout(WAIT)
        .run();
        assert_ne!(run.code(), 0, "{run}");
        assert!(
            !run.err().contains("listening"),
            "it must not accept connections: {run}"
        );
        assert!(
            run.err().contains(key.to_str().unwrap()),
            "names the file: {run}"
        );
        assert!(
            run.err().contains(&format!("{mode:04o}")),
            "names the mode: {run}"
        );
    }
}

/// Malformed key files, with the line number each must be reported at.
fn malformed_key_files() -> Vec<(&'static str, String, usize)> {
    let good = key_line("good");
    let hex = "ab".repeat(32);
    vec![
        (
            "bad hex",
            format!("# comment\n{good}bad {}\n", "zz".repeat(32)),
            3,
        ),
        ("short secret", format!("{good}short abcd\n"), 2),
        ("bad id", format!("\nbad/id {hex}\n"), 2),
        ("too long id", format!("{} {hex}\n", "x".repeat(65)), 1),
        ("extra word", format!("{good}\n\nid {hex} extra\n"), 4),
        ("missing secret", format!("{good}# ok\nlonely\n"), 3),
        ("duplicate id", format!("{good}{good}"), 2),
    ]
}

/// Malformed agent key files (`<key-id> <secret> <agent-name> [options]`), with the line number
/// each must be reported at.
fn malformed_agent_key_files() -> Vec<(&'static str, String, usize)> {
    let good = format!("good {} 127.0.0.1\n", "cd".repeat(32));
    let hex = "ab".repeat(32);
    vec![
        (
            "bad hex",
            format!("# comment\n{good}bad {} web1\n", "zz".repeat(32)),
            3,
        ),
        ("short secret", format!("{good}short abcd web1\n"), 2),
        ("bad id", format!("\nbad/id {hex} web1\n"), 2),
        ("too long id", format!("{} {hex} web1\n", "x".repeat(65)), 1),
        ("a client key line", format!("{good}\n\nid {hex}\n"), 4),
        ("bad agent name", format!("{good}id {hex} bad/name\n"), 2),
        (
            "unknown option",
            format!("{good}id {hex} web1 permit-all\n"),
            2,
        ),
        ("missing secret", format!("{good}# ok\nlonely\n"), 3),
        ("duplicate id and name", format!("{good}{good}"), 2),
    ]
}

#[test]
fn malformed_key_file_is_refused_by_ctl_naming_file_and_line() {
    let dir = scratch();
    let (ran, command) = witness(dir.path());
    // A live agent with the good key: the refusal must come before any connection.
    let agent_key = write_key_file(dir.path(), "agent-key", &key_line("good"));
    let agent = Agent::start_in(scratch(), agent_key, &[]);
    for (i, (what, text, line)) in malformed_key_files().into_iter().enumerate() {
        let key = write_key_file(dir.path(), &format!("bad-{i}"), &text);
        let run = exec_key(&key, &[], &agent.target(), &command);
        run.expect_code(2);
        let err = run.err();
        assert!(
            err.contains(key.to_str().unwrap()),
            "{what}: names the file: {run}"
        );
        assert!(
            err.contains(&format!("line {line}")),
            "{what}: names line {line}: {run}"
        );
    }
    assert!(!ran.exists());
    // ctl refused before connecting: the agent saw no client at all.
    assert!(!agent.log().contains("peer="), "{}", agent.log());
    assert_serving(&agent);
}

#[test]
fn malformed_key_file_is_refused_by_the_agent_naming_file_and_line() {
    let dir = scratch();
    for (i, (what, text, line)) in malformed_agent_key_files().into_iter().enumerate() {
        let key = write_key_file(dir.path(), &format!("bad-{i}"), &text);
        let run = agent_cmd([
            "--key-file".as_ref(),
            key.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
        ])
        .timeout(WAIT)
        .run();
        assert_ne!(run.code(), 0, "{what}: {run}");
        assert!(!run.err().contains("listening"), "{what}: {run}");
        assert!(
            run.err().contains(key.to_str().unwrap()),
            "{what}: names the file: {run}"
        );
        assert!(
            run.err().contains(&format!("line {line}")),
            "{what}: names line {line}: {run}"
        );
    }
}

#[test]
fn missing_or_empty_key_files_are_refused() {
    let dir = scratch();
    let missing = dir.path().join("no-such-key");
    let run = exec_key(&missing, &[], "127.0.0.1:1", "true");
    run.expect_code(2);
    assert!(run.err().contains(missing.to_str().unwrap()), "{run}");

    let empty = write_key_file(dir.path(), "empty", "# nothing here\n\n");
    let run = exec_key(&empty, &[], "127.0.0.1:1", "true");
    run.expect_code(2);
    assert!(run.err().contains(empty.to_str().unwrap()), "{run}");
    let run = agent_cmd([
        "--key-file".as_ref(),
        empty.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
    ])
    .timeout(WAIT)
    .run();
    assert_ne!(run.code(), 0, "{run}");
    assert!(run.err().contains(empty.to_str().unwrap()), "{run}");

    // No --key-file, no CTL_KEY_FILE and no default file: a usage error saying what to do.
    let home = scratch();
    let run = ctl(["exec", "127.0.0.1:1", "true"])
        .env("HOME", home.path())
        .env("XDG_CONFIG_HOME", home.path())
        .run();
    run.expect_code(2);
    assert!(
        run.err().contains("--key-file") && run.err().contains("CTL_KEY_FILE"),
        "{run}"
    );
}

#[test]
fn ctl_uses_the_first_key_unless_key_id_names_another() {
    let dir = scratch();
    let (first, second) = (key_line("first"), key_line("second"));
    let agent_key = write_key_file(dir.path(), "agent-keys", &format!("{first}{second}"));
    let agent = Agent::start_in(scratch(), agent_key, &[]);

    // ctl's file: "second" is right, "first" holds a secret the agent does not accept.
    let wrong_first = same_secret("first", &key_line("x"));
    let key = write_key_file(
        dir.path(),
        "ctl-keys",
        &format!("# mine\n\n{wrong_first}{second}"),
    );
    let run = exec_key(&key, &[], &agent.target(), "echo default");
    run.expect_code(255);
    assert!(
        run.err().contains("authentication failed") && run.err().contains("first"),
        "{run}"
    );

    let tag = marker("key-id");
    let run = exec_key(
        &key,
        &["--key-id", "second"],
        &agent.target(),
        &format!("echo {tag}"),
    );
    run.expect_code(0);
    assert_eq!(run.out(), format!("{tag}\n"), "{run}");
    assert!(audit_line(&agent, &tag).contains("key_id=\"second\""));

    // And with the right first line, the default picks it.
    let key = write_key_file(
        dir.path(),
        "ctl-keys-2",
        &format!("{first}{}", same_secret("second", &key_line("y"))),
    );
    let tag = marker("first-key");
    exec_key(&key, &[], &agent.target(), &format!("echo {tag}")).expect_code(0);
    assert!(audit_line(&agent, &tag).contains("key_id=\"first\""));

    // A --key-id the file does not hold is a usage error naming the file and the id.
    let run = exec_key(&key, &["--key-id", "absent"], &agent.target(), "true");
    run.expect_code(2);
    assert!(
        run.err().contains(key.to_str().unwrap()) && run.err().contains("absent"),
        "{run}"
    );
}

#[test]
fn ctl_key_file_env_is_honoured_and_the_option_wins() {
    let agent = Agent::start();
    let run = ctl(["exec", &agent.target(), "echo via-env"])
        .env("CTL_KEY_FILE", &agent.key_file)
        .run();
    run.expect_code(0);
    assert_eq!(run.out(), "via-env\n", "{run}");

    // --key-file takes precedence over an unusable $CTL_KEY_FILE.
    let dir = scratch();
    let bad = write_key_file(dir.path(), "bad", "not a key file\n");
    let key_file = agent.key_file.to_string_lossy().into_owned();
    let run = ctl([
        "exec",
        "--key-file",
        &key_file,
        &agent.target(),
        "echo via-option",
    ])
    .env("CTL_KEY_FILE", &bad)
    .run();
    run.expect_code(0);
    assert_eq!(run.out(), "via-option\n", "{run}");

    // And the variable alone, pointing at the bad file, is refused like the option would be.
    let run = ctl(["exec", &agent.target(), "true"])
        .env("CTL_KEY_FILE", &bad)
        .run();
    run.expect_code(2);
    assert!(
        run.err().contains(bad.to_str().unwrap()) && run.err().contains("line 1"),
        "{run}"
    );
}

#[test]
fn agent_accepts_every_key_of_its_file_and_logs_which() {
    let dir = scratch();
    let lines: Vec<String> = ["ops", "ci.runner", "backup_2"]
        .iter()
        .map(|id| key_line(id))
        .collect();
    let agent_key = write_key_file(
        dir.path(),
        "agent-keys",
        &format!("# fleet keys\n{}\n# end\n", lines.concat()),
    );
    let agent = Agent::start_in(scratch(), agent_key, &[]);
    for line in &lines {
        let id = line.split_whitespace().next().unwrap();
        let key = write_key_file(dir.path(), &format!("ctl-{id}"), line);
        let tag = marker("multi-key");
        let run = exec_key(&key, &[], &agent.target(), &format!("echo {tag}"));
        run.expect_code(0);
        assert_eq!(run.out(), format!("{tag}\n"), "{run}");
        let audit = audit_line(&agent, &tag);
        assert!(
            audit.contains(&format!("key_id=\"{id}\"")),
            "the audit line names key {id}: {audit}"
        );
    }
}

#[test]
fn keygen_writes_a_private_file_that_works_with_an_agent() {
    let dir = scratch();
    let path = dir.path().join("new-key");
    let run = ctl([
        "keygen".as_ref(),
        "--id".as_ref(),
        "ops-1".as_ref(),
        "-o".as_ref(),
        path.as_os_str(),
    ])
    .run();
    run.expect_code(0);
    assert_eq!(run.out(), "", "the key goes to the file only: {run}");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
    let ring = KeyRing::load(&path).expect("ctl keygen writes a valid key file");
    assert_eq!(ring.len(), 1);
    assert!(ring.entry("ops-1").is_some());

    // The same file serves the agent and ctl.
    let agent = Agent::start_in(dir, path.clone(), &[]);
    let tag = marker("keygen");
    let run = exec_key(&path, &[], &agent.target(), &format!("echo {tag}"));
    run.expect_code(0);
    assert!(audit_line(&agent, &tag).contains("key_id=\"ops-1\""));
}

#[test]
fn keygen_refuses_to_overwrite_an_existing_file() {
    let dir = scratch();
    let path = dir.path().join("existing");
    std::fs::write(&path, "precious\n").unwrap();
    let run = ctl(["keygen".as_ref(), "-o".as_ref(), path.as_os_str()]).run();
    assert_ne!(run.code(), 0, "{run}");
    assert!(
        run.err().contains(path.to_str().unwrap()) && run.err().contains("overwrite"),
        "{run}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious\n");
    // Also when the existing file is a key file.
    let key = dir.path().join("key");
    ctl(["keygen".as_ref(), "--output".as_ref(), key.as_os_str()])
        .run()
        .expect_code(0);
    let before = std::fs::read(&key).unwrap();
    let run = ctl(["keygen".as_ref(), "--output".as_ref(), key.as_os_str()]).run();
    assert_ne!(run.code(), 0, "{run}");
    assert_eq!(std::fs::read(&key).unwrap(), before);
}

#[test]
fn keygen_without_output_prints_a_fresh_key_to_stdout() {
    let first = ctl(["keygen", "--id", "printed"]).run();
    first.expect_code(0);
    let ring =
        KeyRing::parse(&first.out(), Path::new("<stdout>")).expect("a valid key file on stdout");
    assert!(ring.entry("printed").is_some(), "{first}");
    let second = ctl(["keygen", "--id", "printed"]).run();
    second.expect_code(0);
    assert_ne!(first.out(), second.out(), "every key is new");
    // The default id is a valid one too.
    let default = ctl(["keygen"]).run();
    default.expect_code(0);
    KeyRing::parse(&default.out(), Path::new("<stdout>")).expect("a valid key file");
}

#[test]
fn keygen_refuses_an_invalid_key_id() {
    let dir = scratch();
    let path = dir.path().join("key");
    for args in [
        vec!["keygen", "--id", "bad id"],
        vec!["keygen", "--id", "a/b", "-o", path.to_str().unwrap()],
    ] {
        let run = ctl(&args).run();
        run.expect_code(2);
        assert!(run.err().contains("key id"), "{run}");
        assert_eq!(run.out(), "", "{run}");
    }
    assert!(!path.exists(), "no file is written for an invalid id");
}

#[test]
fn agent_keeps_serving_after_failed_authentications() {
    let agent = Agent::start();
    let dir = scratch();
    let wrong = write_key_file(dir.path(), "wrong", &key_line("test"));
    for _ in 0..5 {
        exec_key(&wrong, &[], &agent.target(), "true").expect_code(255);
    }
    assert_serving(&agent);
    let run = exec(&agent, "exit 0").run();
    run.expect_code(0);
}
