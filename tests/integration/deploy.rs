//! `ctl deploy` for real: a private sshd on 127.0.0.1 (tests/integration/util.rs `Sshd`),
//! deploys into scratch roots (`--root`) so the machine's /etc and /usr are untouched, then
//! commands through the deployed agent; upgrades in place, kept and replaced keys, and one
//! clear line per host for the failures (ssh refused, a full disk).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

use crate::util::{
    bin, ctl, eventually, key_line, pids_matching, run_bounded, wait_bounded, write_key_file, Run,
    Sshd,
};

const WAIT: Duration = Duration::from_secs(60);

/// A started sshd, or `None` after saying why this machine cannot run one (only allowed
/// when REXEC_SKIP_SSHD says .ci/run could not install it).
fn sshd() -> Option<Sshd> {
    match Sshd::start() {
        Ok(sshd) => Some(sshd),
        Err(why) => {
            assert!(
                std::env::var_os("REXEC_SKIP_SSHD").is_some(),
                "cannot run a private sshd: {why}; set REXEC_SKIP_SSHD=1 to skip"
            );
            eprintln!("SKIPPED: cannot run a private sshd: {why}");
            None
        }
    }
}

/// `ctl deploy` through `sshd` into `root`, with extra arguments.
fn deploy(sshd: &Sshd, key: &Path, root: &Path, extra: &[&str]) -> Run {
    let ssh = format!("ssh -F {}", sshd.ssh_config.display());
    let mut args: Vec<String> = [
        "deploy",
        "--key-file",
        &key.to_string_lossy(),
        "--agent-binary",
        &bin("agent").to_string_lossy(),
        "--ssh",
        &ssh,
        "--root",
        &root.to_string_lossy(),
        "--listen",
        "127.0.0.1:0",
    ]
    .map(String::from)
    .into();
    args.extend(extra.iter().map(|a| a.to_string()));
    ctl(&args).timeout(WAIT).run()
}

/// The pid and port a successful deploy line names.
fn pid_and_port(run: &Run) -> (i32, u16) {
    let out = run.out();
    let number_after = |word: &str| {
        out.split(word)
            .nth(1)
            .and_then(|rest| {
                rest.trim_start()
                    .split(|c: char| !c.is_ascii_digit())
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no {word:?} in the deploy line\n{run}"))
    };
    (number_after("pid "), number_after("port ") as u16)
}

/// Stops a deployed agent by its pid, and waits until it is gone.
fn stop_agent(pid: i32) {
    // SAFETY: kill on a pid the deploy just reported for the agent it started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    assert!(
        eventually(WAIT, || !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(
                |s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z'))
            )),
        "deployed agent {pid} did not stop on SIGTERM"
    );
}

/// Agents a test deployed: whichever still runs when the test ends (a failed assertion)
/// is killed by its pid.
#[derive(Default)]
struct Deployed(Vec<i32>);

impl Drop for Deployed {
    fn drop(&mut self) {
        for &pid in &self.0 {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            if exe.to_string_lossy().contains("/usr/local/bin/agent") {
                // SAFETY: kill on the pid of an agent this test deployed (checked by its exe).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// A tmpfs mounted on a directory, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let out = run_bounded("umount", &[self.0.to_string_lossy().as_ref()], WAIT);
        if !out.status.success() {
            eprintln!("cannot unmount the tmpfs on {}", self.0.display());
        }
    }
}

/// `echo` through the agent on `port` with `key`.
fn exec_via(key: &Path, port: u16, command: &str) -> Run {
    ctl([
        "exec",
        "--key-file",
        &key.to_string_lossy(),
        &format!("127.0.0.1:{port}"),
        command,
    ])
    .run()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn deploy_installs_starts_and_runs_commands_then_upgrades_in_place() {
    let Some(sshd) = sshd() else { return };
    let dir = crate::util::scratch();
    let line = key_line("ops");
    let secret = line.split_whitespace().nth(1).unwrap().to_owned();
    // What the agent is to hold: the line enrolled for the name ctl expects, never the master.
    let enrolled_line = crate::util::enrolled(&line, "127.0.0.1");
    let derived = enrolled_line.split_whitespace().nth(1).unwrap().to_owned();
    assert_ne!(derived, secret);
    let key = write_key_file(dir.path(), "client", &line);
    let root = dir.path().join("root");

    // While it runs, the secret is on no process's command line (ssh, sh, sudo, the agent).
    let ssh = format!("ssh -F {}", sshd.ssh_config.display());
    let mut child: Child = ctl([
        "deploy",
        "--key-file",
        &key.to_string_lossy(),
        "--agent-binary",
        &bin("agent").to_string_lossy(),
        "--ssh",
        &ssh,
        "--root",
        &root.to_string_lossy(),
        "--listen",
        "127.0.0.1:0",
        "127.0.0.1",
    ])
    .spawn();
    let out = crate::util::reader(child.stdout.take().unwrap());
    let err = crate::util::reader(child.stderr.take().unwrap());
    drop(child.stdin.take());
    let mut seen = Vec::new();
    let status = loop {
        seen.extend(pids_matching(&secret));
        seen.extend(pids_matching(&derived));
        if let Some(status) = wait_bounded(&mut child, Duration::from_millis(5)) {
            break status;
        }
    };
    let first = Run {
        cmdline: "ctl deploy 127.0.0.1".into(),
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    };
    assert!(
        seen.is_empty(),
        "the secret was on the command line of {seen:?}"
    );
    first.expect_code(0);
    let text = first.out();
    assert!(
        text.starts_with("127.0.0.1: deployed agent ")
            && text.contains("started in the background")
            && text.contains("keys written")
            && text.contains("ping ok"),
        "{first}"
    );
    let (pid, port) = pid_and_port(&first);
    let mut deployed = Deployed::default();
    deployed.0.push(pid);

    // Installed under the scratch root, keys private.
    assert_eq!(mode(&root.join("usr/local/bin/agent")), 0o755);
    assert_eq!(mode(&root.join("etc/rexec")), 0o700);
    assert_eq!(mode(&root.join("etc/rexec/keys")), 0o600);
    let keys = std::fs::read_to_string(root.join("etc/rexec/keys")).unwrap();
    assert!(
        keys.lines().any(|l| l.trim() == enrolled_line.trim()) && !keys.contains(&secret),
        "the agent must hold the line enrolled for 127.0.0.1 and never the master key: {keys}"
    );

    // A command through the deployed agent.
    let run = exec_via(&key, port, "echo deployed-$((40 + 2))");
    run.expect_code(0);
    assert_eq!(run.out(), "deployed-42\n");

    // Again: an upgrade in place. The old agent is stopped, a new one started, keys kept.
    let second = deploy(&sshd, &key, &root, &["127.0.0.1"]);
    second.expect_code(0);
    assert!(second.out().contains("keys kept"), "{second}");
    let (pid2, port2) = pid_and_port(&second);
    deployed.0.push(pid2);
    assert_ne!(pid, pid2, "{second}");
    assert!(
        !Path::new(&format!("/proc/{pid}/exe")).exists()
            || std::fs::read_link(format!("/proc/{pid}/exe")).is_err(),
        "the old agent {pid} still runs"
    );
    exec_via(&key, port2, "true").expect_code(0);

    // --replace-keys with another client key: the new one works, the old one no longer does.
    let other = write_key_file(dir.path(), "other", &key_line("ops2"));
    let third = deploy(&sshd, &other, &root, &["--replace-keys", "127.0.0.1"]);
    third.expect_code(0);
    assert!(third.out().contains("keys replaced"), "{third}");
    let (pid3, port3) = pid_and_port(&third);
    deployed.0.push(pid3);
    exec_via(&other, port3, "true").expect_code(0);
    exec_via(&key, port3, "true").expect_code(255);
    stop_agent(pid3);
}

#[test]
fn deploy_failures_give_one_line_per_host_and_the_exit_status() {
    let Some(sshd) = sshd() else { return };
    let dir = crate::util::scratch();
    let key = write_key_file(dir.path(), "client", &key_line("ops"));
    let root = dir.path().join("root");

    // ssh refused (the `dead` host of the ssh config is a closed port): 255, one line.
    let run = deploy(&sshd, &key, &root, &["-H", "dead"]);
    run.expect_code(255);
    let err = run.err();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{run}");
    assert!(
        lines[0].starts_with("dead: ssh failed: ") && lines[0].contains("refused"),
        "{run}"
    );
    assert_eq!(
        lines[1], "ctl: 1 target: 0 ok, 0 failed, 1 unreachable (dead)",
        "{run}"
    );
    assert!(!root.exists(), "nothing should have been written");

    // A full disk: a 1 MiB tmpfs as the root; the binary does not fit. Status 1, one line.
    let small = dir.path().join("small");
    std::fs::create_dir(&small).unwrap();
    let mounted = run_bounded(
        "mount",
        &[
            "-t",
            "tmpfs",
            "-o",
            "size=1m",
            "tmpfs",
            &small.to_string_lossy(),
        ],
        WAIT,
    );
    if !mounted.status.success() {
        eprintln!(
            "SKIPPED the full-disk case: cannot mount a tmpfs: {}",
            String::from_utf8_lossy(&mounted.stderr)
        );
        return;
    }
    let tmpfs = Tmpfs(small.clone());
    let run = deploy(&sshd, &key, &small, &["127.0.0.1"]);
    drop(tmpfs);
    run.expect_code(1);
    assert!(
        run.err()
            .starts_with("127.0.0.1: no space left for the agent: ")
            && run.err().lines().count() == 1,
        "{run}"
    );
}

#[test]
fn dry_run_says_what_it_would_do_and_does_nothing() {
    let dir = crate::util::scratch();
    let key = write_key_file(dir.path(), "client", &key_line("ops"));
    let root = dir.path().join("root");
    let run = ctl([
        "deploy",
        "--dry-run",
        "--key-file",
        &key.to_string_lossy(),
        "--agent-binary",
        &bin("agent").to_string_lossy(),
        // A command that fails if anything runs it.
        "--ssh",
        "false",
        "--root",
        &root.to_string_lossy(),
        "-H",
        "web1,web2",
    ])
    .run();
    run.expect_code(0);
    let out = run.out();
    for host in ["web1", "web2"] {
        assert!(
            out.contains(&format!("{host}: would run: false -o BatchMode=yes"))
                && out.contains(&format!("{host}: would copy the agent"))
                && out.contains(&format!("enrolled for \"{host}\""))
                && out.contains(&format!("{host}: would ping {host}")),
            "{run}"
        );
    }
    let secret = std::fs::read_to_string(&key).unwrap();
    let secret = secret.split_whitespace().nth(1).unwrap();
    assert!(
        !out.contains(secret),
        "the dry run printed the secret\n{run}"
    );
    assert!(!root.exists());
}
