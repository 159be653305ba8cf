//! What a many-target `ctl exec` sends on stdin: `--stdin` gives every target the same bytes
//! (spooled from a pipe, or read from a regular file), without it ctl says it sent nothing,
//! `-n` says so on purpose; `--script` runs with its `#!` interpreter and is audited by name
//! and digest.

use std::io::Write;
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::output_safety::run_bounded;
use crate::util::{bin, ctl, key_line, scratch, write_key_file, Agent, Ctl};

/// Two agents sharing one key, and ctl's copy of it.
fn pair() -> (Agent, Agent, std::path::PathBuf, tempfile::TempDir) {
    let dir = scratch();
    let key = key_line("input");
    let key_file = write_key_file(dir.path(), "key", &key);
    let start = || {
        let own = scratch();
        let own_key = write_key_file(own.path(), "keys", &key);
        Agent::start_in(own, own_key, &[])
    };
    (start(), start(), key_file, dir)
}

fn exec(key: &std::path::Path, hosts: &str, rest: &[&str]) -> Ctl {
    let mut args = vec!["exec", "--key-file", key.to_str().unwrap(), "-H", hosts];
    args.extend_from_slice(rest);
    ctl(args)
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn stdin_goes_to_every_target_with_the_same_bytes() {
    let (a, b, key, dir) = pair();
    let hosts = format!("{},{}", a.target(), b.target());
    let input: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let want = hex(&input);

    // From a pipe: spooled once.
    let run = exec(&key, &hosts, &["--stdin", "sha256sum"])
        .stdin(input.clone())
        .run();
    run.expect_code(0);
    for agent in [&a, &b] {
        assert!(
            run.out()
                .contains(&format!("{}: {want}  -", agent.target())),
            "{run}"
        );
    }
    assert!(!run.err().contains("stdin was not sent"), "{run}");

    // From a regular file, from where its offset stands.
    let path = dir.path().join("input");
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(b"skip").unwrap();
    file.write_all(&input).unwrap();
    drop(file);
    let mut stdin = std::fs::File::open(&path).unwrap();
    std::io::Read::read_exact(&mut stdin, &mut [0u8; 4]).unwrap();
    let out = Command::new(bin("ctl"))
        .args([
            "exec",
            "--key-file",
            key.to_str().unwrap(),
            "-H",
            &hosts,
            "--stdin",
            "sha256sum",
        ])
        .env_remove("CTL_KEY_FILE")
        .stdin(Stdio::from(stdin))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert_eq!(
        stdout.matches(&format!(": {want}  -")).count(),
        2,
        "{stdout}"
    );
}

#[test]
fn a_stdin_that_cannot_be_read_runs_nothing_on_any_target() {
    let (a, b, key, dir) = pair();
    let hosts = format!("{},{}", a.target(), b.target());
    let ran = dir.path().join("ran");
    // Reading a directory fails (EISDIR): no target may get a short input as if it were all.
    let mut cmd = Command::new(bin("ctl"));
    cmd.args([
        "exec",
        "--key-file",
        key.to_str().unwrap(),
        "-H",
        &hosts,
        "--stdin",
    ])
    .arg(format!("cat >/dev/null; touch {}", ran.display()))
    .env_remove("CTL_KEY_FILE")
    .stdin(Stdio::from(std::fs::File::open("/").unwrap()));
    let (code, out, err) = run_bounded(cmd);
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("cannot read stdin to send it to every target"),
        "{err}"
    );
    assert!(!ran.exists(), "a target ran the command: {out}{err}");
}

#[test]
fn stdin_not_sent_is_said_unless_n_says_so() {
    let (a, b, key, _dir) = pair();
    let hosts = format!("{},{}", a.target(), b.target());
    let run = exec(&key, &hosts, &["wc -c"])
        .stdin(b"data nobody reads\n".to_vec())
        .run();
    run.expect_code(0);
    assert_eq!(run.out().matches(": 0\n").count(), 2, "{run}");
    assert!(
        run.err().contains("stdin was not sent to the targets"),
        "{run}"
    );
    assert!(run.err().contains("--stdin"), "{run}");

    let run = exec(&key, &hosts, &["-n", "wc -c"])
        .stdin(b"data\n".to_vec())
        .run();
    run.expect_code(0);
    assert!(!run.err().contains("stdin was not sent"), "{run}");
    // An empty stdin is nothing to mention.
    let run = exec(&key, &hosts, &["true"]).run();
    run.expect_code(0);
    assert!(!run.err().contains("stdin was not sent"), "{run}");
    // --stdin with -n is a contradiction.
    exec(&key, &hosts, &["-n", "--stdin", "true"])
        .run()
        .expect_code(2);
}

#[test]
fn scripts_run_with_their_interpreter_and_are_audited_by_digest() {
    let (a, b, key, dir) = pair();
    let hosts = format!("{},{}", a.target(), b.target());
    let bash = dir.path().join("arrays.sh");
    let text = "#!/bin/bash\nset -e\nwords=(\"$@\")\necho \"${#words[@]} ${words[1]} $BASH_VERSION\" | cut -d. -f1\n";
    std::fs::write(&bash, text).unwrap();
    let run = exec(
        &key,
        &hosts,
        &["--script", bash.to_str().unwrap(), "--", "one", "two words"],
    )
    .run();
    run.expect_code(0);
    for agent in [&a, &b] {
        assert!(
            run.out()
                .contains(&format!("{}: 2 two words ", agent.target())),
            "{run}"
        );
        let log = agent.wait_for_log("script_sha256", std::time::Duration::from_secs(10));
        assert!(log.contains(&hex(text.as_bytes())), "{log}");
        assert!(log.contains("arrays.sh"), "{log}");
    }

    let plain = dir.path().join("plain");
    std::fs::write(&plain, "echo \"sh got $1\"\n").unwrap();
    let run = exec(&key, &hosts, &["--script", plain.to_str().unwrap(), "x"]).run();
    run.expect_code(0);
    assert_eq!(run.out().matches("sh got x\n").count(), 2, "{run}");

    let python_ok = Command::new("python3")
        .args(["-c", "pass"])
        .status()
        .is_ok_and(|s| s.success());
    if !python_ok {
        eprintln!("SKIP the python half: no python3 on this machine");
        return;
    }
    let py = dir.path().join("hello.py");
    std::fs::write(
        &py,
        "#!/usr/bin/env python3\nimport sys\nprint('py', sys.argv[1:])\n",
    )
    .unwrap();
    let run = exec(&key, &hosts, &["--script", py.to_str().unwrap(), "a"]).run();
    run.expect_code(0);
    assert_eq!(run.out().matches("py ['a']\n").count(), 2, "{run}");
}
