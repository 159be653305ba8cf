//! Per-key policy: the options at the end of an agent key-file line (`user=`, `from=`,
//! `command=`, `no-stdin`, `max-timeout=`), enforced by the real agent for the real ctl, each
//! refusal audited; bad options refuse the file at start and on SIGHUP.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::util::*;

const WAIT: Duration = Duration::from_secs(20);

/// An agent whose key file holds `options` on the line of a fresh key; returns the agent and
/// the client's key file (the same key without options).
fn agent_with(options: &str) -> (Agent, PathBuf) {
    let dir = scratch();
    let line = key_line("k");
    let client = write_key_file(dir.path(), "client.key", &line);
    let keys = write_key_file(
        dir.path(),
        "keys",
        &format!("{} {options}\n", line.trim_end()),
    );
    (Agent::start_in(dir, keys, &[]), client)
}

/// `ctl exec --key-file CLIENT ARGS... TARGET COMMAND`.
fn exec_as(agent: &Agent, client: &Path, args: &[&str], command: &str) -> Ctl {
    let mut all: Vec<std::ffi::OsString> = vec!["exec".into(), "--key-file".into(), client.into()];
    all.extend(args.iter().map(Into::into));
    all.push(agent.target().into());
    all.push(command.into());
    ctl(all)
}

/// Whether the machine lets this test switch users: it runs as root and has `nobody`.
fn can_switch_users(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped {test}: running as another user needs root");
        return false;
    }
    if passwd("nobody").is_none() {
        eprintln!("skipped {test}: this host has no user nobody");
        return false;
    }
    true
}

/// `getent passwd NAME` split into its fields.
fn passwd(name: &str) -> Option<Vec<String>> {
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?;
    Some(line.split(':').map(str::to_owned).collect())
}

/// The audit line the agent wrote for a refusal of `rule`, after waiting for it.
fn refusal_audit(agent: &Agent, rule: &str) -> String {
    let needle = format!("rule=\"{rule}\"");
    let log = agent.wait_for_log(&needle, WAIT);
    log.lines()
        .find(|l| l.contains("request refused") && l.contains(&needle))
        .unwrap_or_else(|| panic!("no refusal audited for {rule}; log:\n{log}"))
        .to_owned()
}

/// Checks what ctl shows for a refusal: exit 255, the rule named, nothing run.
fn expect_refused(run: &Run, rule: &str) {
    run.expect_code(255);
    assert!(
        run.err()
            .contains(&format!("refused by the key's policy ({rule})")),
        "{run}"
    );
    assert!(run.err().contains("nothing was run"), "{run}");
    assert_eq!(run.out(), "", "{run}");
}

#[test]
fn user_nobody_runs_as_nobody_and_cannot_read_the_key_file() {
    if !can_switch_users("user_nobody_runs_as_nobody_and_cannot_read_the_key_file") {
        return;
    }
    let nobody = passwd("nobody").expect("nobody");
    let home = &nobody[5];
    let (agent, client) = agent_with("user=nobody");
    // Only the file's own mode (root, 0600) keeps nobody out: its directory is open.
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the key directory");
    let keys = agent.key_file.display().to_string();
    let run = exec_as(
        &agent,
        &client,
        &[],
        &format!("id -u; id -G; echo \"$HOME $USER $LOGNAME $SHELL\"; pwd; cat {keys}"),
    )
    .run();
    run.expect_code(1);
    let out = run.out();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{run}");
    assert_eq!(lines[0], "65534", "{run}");
    assert!(
        !lines[1].split(' ').any(|g| g == "0"),
        "kept root's group: {run}"
    );
    assert_eq!(
        lines[2],
        format!("{home} nobody nobody {}", nobody[6]),
        "{run}"
    );
    // nobody's home often does not exist (/nonexistent): then the command starts in /, as a
    // login does.
    let cwd = if Path::new(home).is_dir() {
        home.as_str()
    } else {
        "/"
    };
    assert_eq!(lines[3], cwd, "{run}");
    assert!(run.err().contains("Permission denied"), "{run}");
    assert!(!run.out().contains(" k "), "the key file was read: {run}");
}

/// A user and a group that the test creates and removes (also when it fails), with its home
/// in a scratch directory of its own that others may enter.
struct TempUser {
    name: String,
    group: String,
    home: PathBuf,
    base: tempfile::TempDir,
}

impl TempUser {
    /// For `test`, a user with the login shell `shell` (empty: none in the user database);
    /// `None`, with the reason printed, where the machine cannot switch users or useradd
    /// fails.
    fn create(test: &str, shell: &str) -> Option<Self> {
        if !can_switch_users(test) {
            return None;
        }
        let base = scratch();
        std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let home = base.path().join("home");
        let tag = marker("u").replace('-', "");
        // useradd takes at most 32 characters.
        let name = format!("rx{}", &tag[tag.len().saturating_sub(20)..]);
        let group = format!("{name}g");
        let made = Command::new("groupadd")
            .arg(&group)
            .status()
            .is_ok_and(|s| s.success());
        if !made {
            eprintln!("skipped {test}: groupadd failed");
            return None;
        }
        let user = Self {
            name,
            group,
            home,
            base,
        };
        let made = Command::new("useradd")
            .args(["-m", "-d"])
            .arg(&user.home)
            .args(["-s", shell, "-G", &user.group, &user.name])
            .status()
            .is_ok_and(|s| s.success());
        if !made {
            eprintln!("skipped {test}: useradd failed");
        }
        made.then_some(user)
    }
}

impl Drop for TempUser {
    fn drop(&mut self) {
        // -r also removes the home; its note about a missing mail spool is noise.
        let _ = Command::new("userdel")
            .args(["-r", &self.name])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = Command::new("groupdel").arg(&self.group).status();
    }
}

#[test]
fn a_created_user_gets_its_groups_home_and_environment() {
    let Some(user) = TempUser::create(
        "a_created_user_gets_its_groups_home_and_environment",
        "/bin/sh",
    ) else {
        return;
    };
    let (base, home) = (user.base.path(), user.home.clone());
    let (agent, client) = agent_with(&format!("user={}", user.name));
    let run = exec_as(
        &agent,
        &client,
        &[],
        "id -un; id -gn; id -Gn; echo \"$HOME $USER $LOGNAME $SHELL\"; pwd; touch made-here; stat -c %U made-here",
    )
    .run();
    run.expect_code(0);
    let out = run.out();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], user.name, "{run}");
    let primary = lines[1];
    let groups: Vec<&str> = lines[2].split(' ').collect();
    assert!(
        groups.contains(&primary) && groups.contains(&user.group.as_str()),
        "{run}"
    );
    assert!(!groups.contains(&"root"), "{run}");
    let home = home.display().to_string();
    assert_eq!(
        lines[3],
        format!("{home} {0} {0} /bin/sh", user.name),
        "{run}"
    );
    assert_eq!(lines[4], home, "{run}");
    assert_eq!(lines[5], user.name, "{run}");

    // --cwd is entered with the user's rights: a directory only root may enter is refused.
    let private = base.join("private");
    std::fs::create_dir(&private).expect("mkdir");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let cwd = private.display().to_string();
    let run = exec_as(&agent, &client, &["--cwd", &cwd], "echo inside").run();
    run.expect_code(255);
    assert!(
        run.err().contains(&format!("as user {}", user.name))
            && run.err().contains("Permission denied"),
        "{run}"
    );
}

#[test]
fn an_empty_login_shell_in_the_user_database_means_bin_sh() {
    let test = "an_empty_login_shell_in_the_user_database_means_bin_sh";
    let Some(user) = TempUser::create(test, "") else {
        return;
    };
    assert_eq!(
        passwd(&user.name).map(|f| f[6].clone()),
        Some(String::new())
    );
    let (agent, client) = agent_with(&format!("user={}", user.name));
    let run = exec_as(&agent, &client, &[], "echo \"shell=$SHELL\"").run();
    run.expect_code(0);
    assert_eq!(run.out(), "shell=/bin/sh\n", "{run}");
    // A session without a command runs the login shell, as login(1) would: /bin/sh.
    let mut cmd = Command::new(bin("ctl"));
    cmd.args(["exec", "-t", "--key-file"])
        .arg(&client)
        .arg(agent.target())
        .env_remove("CTL_KEY_FILE")
        .env_remove("CTL_PORT")
        .env("TERM", "xterm-256color");
    let mut term = crate::pty_util::Terminal::spawn(cmd, 24, 80);
    term.type_keys(b"echo \"zero=$0 user=$(id -un)\"; exit 4\r");
    term.wait_for(&format!("zero=-sh user={}", user.name), WAIT);
    let status = term.wait_exit(WAIT);
    assert_eq!(status.code(), Some(4), "{}", term.screen());
}

#[test]
fn from_refuses_other_sources_and_accepts_listed_ones() {
    let dir = scratch();
    let (outside, inside) = (key_line("outside"), key_line("inside"));
    let outside_key = write_key_file(dir.path(), "outside.key", &outside);
    let inside_key = write_key_file(dir.path(), "inside.key", &inside);
    let keys = write_key_file(
        dir.path(),
        "keys",
        &format!(
            "{} from=192.0.2.0/24;2001:db8::/32\n{} from=10.0.0.0/8;127.0.0.0/8\n",
            outside.trim_end(),
            inside.trim_end()
        ),
    );
    let agent = Agent::start_in(dir, keys, &[]);
    let flag = agent.dir.path().join("ran");
    let touch = format!("touch {}", flag.display());
    let run = exec_as(&agent, &outside_key, &[], &touch).run();
    expect_refused(&run, "from");
    assert!(
        run.err().contains(
            "key outside is accepted only from 192.0.2.0/24;2001:db8::/32, not from 127.0.0.1"
        ),
        "{run}"
    );
    let audit = refusal_audit(&agent, "from");
    assert!(
        audit.contains("key_id=\"outside\"") && audit.contains(&touch),
        "{audit}"
    );
    assert!(!flag.exists(), "a refused command ran");

    let run = exec_as(&agent, &inside_key, &[], "echo inside").run();
    run.expect_code(0);
    assert_eq!(run.out(), "inside\n");
}

#[test]
fn from_takes_ipv6_and_compares_an_ipv4_mapped_peer_as_ipv4() {
    let dir = scratch();
    let (v4, v6) = (key_line("v4"), key_line("v6"));
    let v4_key = write_key_file(dir.path(), "v4.key", &v4);
    let v6_key = write_key_file(dir.path(), "v6.key", &v6);
    let text = format!(
        "{} from=127.0.0.0/8\n{} from=::1\n",
        v4.trim_end(),
        v6.trim_end()
    );
    let keys = write_key_file(dir.path(), "keys", &text);
    let run = |key: &Path, target: &str| {
        ctl([
            "exec".as_ref(),
            "-n".as_ref(),
            "--key-file".as_ref(),
            key.as_os_str(),
            target.as_ref(),
            "echo in".as_ref(),
        ])
        .run()
    };

    // An IPv6 socket bound to the IPv4-mapped loopback sees 127.0.0.1 as ::ffff:127.0.0.1.
    let mapped = Agent::start_on("[::ffff:127.0.0.1]:0", dir, keys, &[]);
    let target = format!("127.0.0.1:{}", mapped.addr.port());
    run(&v4_key, &target).expect_code(0);
    let refused = run(&v6_key, &target);
    expect_refused(&refused, "from");
    assert!(refused.err().contains("not from 127.0.0.1"), "{refused}");

    // Over IPv6 loopback, ::1 is the peer.
    let dir = scratch();
    let keys = write_key_file(dir.path(), "keys", &text);
    let v6_agent = Agent::start_on("[::1]:0", dir, keys, &[]);
    let target = v6_agent.target();
    run(&v6_key, &target).expect_code(0);
    let refused = run(&v4_key, &target);
    expect_refused(&refused, "from");
    assert!(refused.err().contains("not from ::1"), "{refused}");
    refusal_audit(&v6_agent, "from");
}

#[test]
fn a_forced_command_runs_whatever_was_asked_and_sees_the_original() {
    let (agent, client) =
        agent_with(r#"command="echo forced; echo \"asked: $REXEC_ORIGINAL_COMMAND\"""#);
    let flag = agent.dir.path().join("ran");
    let asked = format!("touch {}", flag.display());
    let run = exec_as(&agent, &client, &[], &asked).run();
    run.expect_code(0);
    assert_eq!(run.out(), format!("forced\nasked: {asked}\n"), "{run}");
    assert!(!flag.exists(), "the client's own command ran");

    // Variables and a directory from the client could change what the forced command does.
    let run = exec_as(&agent, &client, &["-e", "PATH=/tmp"], "x").run();
    expect_refused(&run, "command");
    assert!(run.err().contains("-e"), "{run}");
    refusal_audit(&agent, "command");
}

#[test]
fn no_stdin_refuses_piped_stdin() {
    let (agent, client) = agent_with("no-stdin");
    let run = exec_as(&agent, &client, &[], "cat")
        .stdin("secret input\n")
        .run();
    expect_refused(&run, "no-stdin");
    assert!(
        run.err().contains("-n"),
        "the message says what to do: {run}"
    );
    let audit = refusal_audit(&agent, "no-stdin");
    assert!(
        audit.contains("key_id=\"k\"") && audit.contains("command=\"cat\""),
        "{audit}"
    );

    let run = exec_as(&agent, &client, &["-n"], "echo without-stdin").run();
    run.expect_code(0);
    assert_eq!(run.out(), "without-stdin\n");
}

#[test]
fn max_timeout_caps_a_longer_or_absent_timeout() {
    let (agent, client) = agent_with("max-timeout=1");
    // Were the cap not applied, each run would outlast the harness's bound and fail the test.
    let bound = Duration::from_secs(30);
    for args in [&[][..], &["--timeout", "1000"][..]] {
        let run = exec_as(&agent, &client, args, "echo started; sleep 1000")
            .timeout(bound)
            .run();
        run.expect_code(124);
        assert_eq!(run.out(), "started\n", "{run}");
        assert!(run.err().contains("timed out"), "{run}");
    }
    // A shorter timeout of the client's own stays as it is.
    let run = exec_as(
        &agent,
        &client,
        &["--timeout", "0.2"],
        "sleep 1000; echo late",
    )
    .timeout(bound)
    .run();
    run.expect_code(124);
    assert!(run.err().contains("timed out after 0.2s"), "{run}");
}

#[test]
fn bad_options_refuse_the_key_file_at_start() {
    let dir = scratch();
    let line = key_line("k");
    for (options, expect) in [
        (
            "no-stdin,permit-everything",
            "unknown option \"permit-everything\"",
        ),
        ("from=10.0.0.0/33", "prefix length"),
        ("max-timeout=soon", "max-timeout"),
        ("command=\"echo", "never closed"),
        (
            "user=rexec-no-such-user",
            "no user named rexec-no-such-user",
        ),
    ] {
        let keys = write_key_file(
            dir.path(),
            "keys",
            &format!("# header\n{} {AGENT_NAME} {options}\n", line.trim_end()),
        );
        let run = agent_cmd([
            "--key-file".as_ref(),
            keys.as_os_str(),
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
        ])
        .run();
        run.expect_code(1);
        let want = format!("key file {}, line 2: ", keys.display());
        assert!(
            run.err().contains(&want) && run.err().contains(expect),
            "{options}: {run}"
        );
        assert!(!run.err().contains("listening"), "{run}");
    }
}

#[test]
fn user_needs_an_agent_running_as_root() {
    if !can_switch_users("user_needs_an_agent_running_as_root") {
        return;
    }
    let dir = scratch();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let keys = write_key_file(
        dir.path(),
        "keys",
        &format!("{} {AGENT_NAME} user=nobody\n", key_line("k").trim_end()),
    );
    // SAFETY: chown on a path we own, to the uid the agent will run as.
    let c_path = std::ffi::CString::new(keys.display().to_string()).expect("path");
    assert_eq!(unsafe { libc::chown(c_path.as_ptr(), 65534, 65534) }, 0);
    let run = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(bin("agent"))
        .arg("--key-file")
        .arg(&keys)
        .args(["--listen", "127.0.0.1:0"])
        .output();
    let Ok(out) = run else {
        eprintln!("skipped user_needs_an_agent_running_as_root: setpriv is not installed");
        return;
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("key file {}, line 1: user=nobody needs an agent running as root (this one runs as uid 65534)", keys.display())),
        "{err}"
    );
}

#[test]
fn sighup_with_a_bad_option_keeps_the_policy_in_force() {
    let dir = scratch();
    let line = key_line("k");
    let client = write_key_file(dir.path(), "client.key", &line);
    let keys = write_key_file(
        dir.path(),
        "keys",
        &format!("{} no-stdin\n", line.trim_end()),
    );
    let agent = Agent::start_in(dir, keys, &[]);
    let keys = agent.agent_key_file.clone();
    let piped = || exec_as(&agent, &client, &[], "cat").stdin("x").run();
    expect_refused(&piped(), "no-stdin");

    // A typo in the new file: refused, naming file, line and option; no-stdin stays.
    let staged = write_key_file(
        agent.dir.path(),
        "keys.staged",
        &format!(
            "# v2\n{}",
            enrolled(&format!("{} no-stdn\n", line.trim_end()), AGENT_NAME)
        ),
    );
    std::fs::rename(&staged, &keys).expect("rename");
    agent.signal(libc::SIGHUP);
    let log = agent.wait_for_log("reload refused", WAIT);
    let refusal = log
        .lines()
        .find(|l| l.contains("reload refused"))
        .unwrap_or_default();
    assert!(
        refusal.contains(&format!("key file {}, line 2", keys.display()))
            && refusal.contains("unknown option \"no-stdn\""),
        "{refusal}"
    );
    expect_refused(&piped(), "no-stdin");

    // The corrected file takes effect.
    let staged = write_key_file(
        agent.dir.path(),
        "keys.staged",
        &enrolled(&line, AGENT_NAME),
    );
    std::fs::rename(&staged, &keys).expect("rename");
    agent.signal(libc::SIGHUP);
    agent.wait_for_log("reloaded the key file", WAIT);
    let run = piped();
    run.expect_code(0);
    assert_eq!(run.out(), "x");
}

#[test]
fn push_and_pull_under_user_have_that_users_rights() {
    let Some(user) = TempUser::create("push_and_pull_under_user_have_that_users_rights", "/bin/sh")
    else {
        return;
    };
    let (base, home) = (user.base.path(), user.home.clone());
    let (agent, client) = agent_with(&format!("user={}", user.name));
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the key directory");
    let local = scratch();
    let src = local.path().join("notes.txt");
    std::fs::write(&src, b"pushed\n").expect("write");
    let copy = |verb: &str, args: &[&str]| {
        let mut all: Vec<std::ffi::OsString> =
            vec![verb.into(), "--key-file".into(), client.as_os_str().into()];
        all.push(agent.target().into());
        all.extend(args.iter().map(Into::into));
        ctl(all).run()
    };
    let src_s = src.display().to_string();

    // A relative destination is in the user's home, and the file is the user's.
    copy("push", &[&src_s, "notes.txt"]).expect_code(0);
    let pushed = home.join("notes.txt");
    assert_eq!(std::fs::read(&pushed).expect("pushed file"), b"pushed\n");
    let owner = Command::new("stat")
        .args(["-c", "%U"])
        .arg(&pushed)
        .output()
        .expect("stat");
    assert_eq!(String::from_utf8_lossy(&owner.stdout).trim(), user.name);

    // Where the user may not write, the push fails, and nothing appears there.
    let root_only = base.join("root-only");
    std::fs::create_dir(&root_only).expect("mkdir");
    let run = copy("push", &[&src_s, &format!("{}/", root_only.display())]);
    run.expect_code(1);
    assert!(run.err().contains("Permission denied"), "{run}");
    assert!(!root_only.join("notes.txt").exists());

    // A pull reads as the user: its own file comes, the agent's key file does not.
    let got = scratch();
    let got_s = got.path().display().to_string();
    copy("pull", &["notes.txt", &got_s]).expect_code(0);
    assert_eq!(
        std::fs::read(got.path().join("notes.txt")).expect("pulled"),
        b"pushed\n"
    );
    let keys = agent.key_file.display().to_string();
    let run = copy("pull", &[&keys, &got_s]);
    run.expect_code(1);
    assert!(
        run.err().to_lowercase().contains("permission denied"),
        "{run}"
    );
    assert!(!got.path().join("keys").exists(), "the key file was pulled");
}

#[test]
fn no_pty_refuses_a_terminal_session_and_audits_it() {
    let (agent, client) = agent_with("no-pty");
    let run = exec_as(&agent, &client, &["-t"], "echo ran").run();
    expect_refused(&run, "no-pty");
    assert!(!run.out().contains("ran"), "{run}");
    let line = refusal_audit(&agent, "no-pty");
    assert!(line.contains("terminal: echo ran"), "{line}");
    // The key still runs commands without a terminal.
    exec_as(&agent, &client, &[], "true").run().expect_code(0);
}

#[test]
fn a_terminal_session_runs_as_the_keys_user_on_a_terminal_it_owns() {
    if !can_switch_users("a_terminal_session_runs_as_the_keys_user_on_a_terminal_it_owns") {
        return;
    }
    let (agent, client) = agent_with("user=nobody");
    let run = exec_as(
        &agent,
        &client,
        &["-t"],
        "echo \"who=$(id -un)\"; stat -c 'owner=%U' \"$(tty)\"",
    )
    .run();
    run.expect_code(0);
    assert!(run.out().contains("who=nobody"), "{run}");
    assert!(run.out().contains("owner=nobody"), "{run}");
}
