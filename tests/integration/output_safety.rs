//! What a target sends cannot forge ctl's output or grow ctl's memory, and a local stdin that
//! fails is never passed off as a clean end of input (issue 11, items 5, 8 and 9).

use std::process::{Command, Stdio};

use std::time::Duration;

use crate::fleet::{path_str, Fleet};
use crate::util::{bin, reader, wait_bounded, Agent};

/// Runs `cmd` to its end within a minute: (exit code, stdout, stderr).
pub(crate) fn run_bounded(mut cmd: Command) -> (Option<i32>, String, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = reader(child.stdout.take().expect("stdout"));
    let err = reader(child.stderr.take().expect("stderr"));
    let Some(status) = wait_bounded(&mut child, Duration::from_secs(60)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not finish within a minute");
    };
    let text = |h: std::thread::JoinHandle<Vec<u8>>| {
        String::from_utf8_lossy(&h.join().unwrap()).into_owned()
    };
    (status.code(), text(out), text(err))
}

/// Prints a carriage return and an erase-line escape inside one line.
const FORGERY: &str = r"printf 'a\rb\033[Kc\n'";

#[test]
fn control_characters_are_escaped_in_prefixed_and_group_output_only() {
    let fleet = Fleet::start(1);
    let t = fleet.target(0);
    let run = fleet.exec(&["-H", &t, FORGERY]).run();
    run.expect_code(0);
    assert_eq!(
        run.stdout,
        format!("{t}: a\\rb\\x1b[Kc\n").into_bytes(),
        "{run}"
    );

    let run = fleet.exec(&["--group", "-H", &t, FORGERY]).run();
    run.expect_code(0);
    assert!(run.out().contains("\na\\rb\\x1b[Kc\n"), "{run}");
    assert!(
        !run.stdout.contains(&b'\r') && !run.stdout.contains(&0x1b),
        "{run}"
    );

    // --json and single-target output stay byte-exact.
    let run = fleet.exec(&["--json", "-H", &t, FORGERY]).run();
    run.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(run.out().trim()).unwrap();
    assert_eq!(v["stdout"], "a\rb\x1b[Kc\n", "{run}");
    let run = fleet.exec(&[&t, FORGERY]).run();
    run.expect_code(0);
    assert_eq!(run.stdout, b"a\rb\x1b[Kc\n", "{run}");
}

/// ctl's peak RSS in KiB running `args` (measured by /usr/bin/time), or None without it.
fn peak_rss_kib(args: &[String]) -> Option<(u64, String)> {
    if !std::path::Path::new("/usr/bin/time").exists() {
        eprintln!("SKIPPED part of the test: /usr/bin/time is missing (apt-get install time)");
        return None;
    }
    let mut cmd = Command::new("/usr/bin/time");
    cmd.arg("-f")
        .arg("maxrss=%M")
        .arg(bin("ctl"))
        .args(args)
        .env_remove("CTL_KEY_FILE")
        .stdin(Stdio::null());
    let (_, _, err) = run_bounded(cmd);
    let line = err.lines().rev().find(|l| l.starts_with("maxrss="))?;
    Some((line["maxrss=".len()..].trim().parse().ok()?, err))
}

#[test]
fn a_target_sending_millions_of_empty_lines_does_not_grow_ctl() {
    let fleet = Fleet::start(1);
    // 8 MiB of newlines: 8 million lines, each written with its prefix.
    let args: Vec<String> = [
        "exec",
        "--key-file",
        &path_str(&fleet.key_file),
        "-H",
        &fleet.target(0),
        "head -c 8388608 /dev/zero | tr '\\0' '\\n'",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let Some((kib, err)) = peak_rss_kib(&args) else {
        return;
    };
    assert!(kib < 48 * 1024, "ctl peaked at {kib} KiB\n{err}");
}

#[test]
fn a_failing_stdin_is_reported_and_cancels_the_command() {
    let agent = Agent::start();
    // Reading a directory fails (EISDIR): that is not the end of the input.
    let dir = std::fs::File::open("/").unwrap();
    let mut cmd = Command::new(bin("ctl"));
    cmd.args([
        "exec",
        "--key-file",
        agent.key_file.to_str().unwrap(),
        &agent.target(),
    ])
    .arg("cat >/dev/null; echo finished")
    .env_remove("CTL_KEY_FILE")
    .stdin(Stdio::from(dir));
    let (code, out, err) = run_bounded(cmd);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("reading stdin failed"), "{err}");
    assert!(!out.contains("finished"), "{out}{err}");
}
