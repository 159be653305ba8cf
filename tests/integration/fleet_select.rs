//! Choosing and steering fleet runs against real agents on loopback: ranges, `-x`, groups
//! and defaults from the config file, canonical duplicates, `--max-fail`, `--batch`,
//! `--retry`, `--failed-to`, `--output-dir`, `-N`, and `--group` blocks per exit status.

use std::os::unix::fs::PermissionsExt;

use crate::fleet::{closed_port, folded, lines_of, path_str, per_agent, summary, Fleet};
use crate::util::{ctl, scratch};

/// The port of a `127.0.0.1:PORT` target.
fn port(target: &str) -> &str {
    target.rsplit_once(':').expect("a port").1
}

#[test]
fn ranges_expand_and_exclusions_remove() {
    let fleet = Fleet::start(3);
    let (a, b, c) = (fleet.target(0), fleet.target(1), fleet.target(2));
    let range = format!("127.0.0.1:[{},{},{}]", port(&a), port(&b), port(&c));
    let run = fleet.exec(&["-H", &range, "-x", &b, "echo hi"]).run();
    run.expect_code(0);
    for t in [&a, &c] {
        assert_eq!(lines_of(&run.out(), &format!("{t}: ")), ["hi"], "{run}");
    }
    assert!(!run.out().contains(&b), "{run}");
    assert_eq!(
        summary(&run),
        "ctl: 2 targets: 2 ok, 0 failed, 0 unreachable",
        "{run}"
    );
}

#[test]
fn duplicates_are_the_same_host_and_port_however_spelled() {
    let fleet = Fleet::start(1);
    let p = port(&fleet.target(0)).to_owned();
    let run = fleet
        .exec(&[
            "-H",
            &format!("localhost:{p},LOCALHOST:{p},localhost.:{p}"),
            "--port",
            &p,
            "-H",
            "localhost",
            "echo once",
        ])
        .run();
    run.expect_code(0);
    assert_eq!(run.out(), format!("localhost:{p}: once\n"), "{run}");
}

#[test]
fn groups_and_defaults_come_from_the_config_file() {
    let fleet = Fleet::start(2);
    let (a, b) = (fleet.target(0), fleet.target(1));
    let home = scratch();
    let dir = home.path().join("rexec");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        format!(
            "port = {}\nkey_file = {:?}\nparallel = 1\nconnect_timeout = \"3s\"\n\
             [groups]\npair = \"{a},{b}\"\nfirst = \"127.0.0.1\"\nboth = \"@first,@pair\"\n",
            port(&a),
            path_str(&fleet.key_file)
        ),
    )
    .unwrap();
    let xdg = path_str(home.path());
    // No --key-file and no port: both from the config; @both names a twice (as the default
    // port's 127.0.0.1 and as itself), which runs once.
    let run = ctl(["exec", "-H", "@both", "echo in-group"])
        .env("XDG_CONFIG_HOME", &xdg)
        .run();
    run.expect_code(0);
    assert_eq!(lines_of(&run.out(), "127.0.0.1: "), ["in-group"], "{run}");
    assert_eq!(
        lines_of(&run.out(), &format!("{b}: ")),
        ["in-group"],
        "{run}"
    );
    assert_eq!(run.out().lines().count(), 2, "{run}");

    let run = ctl(["exec", "-H", "@nosuch", "true"])
        .env("XDG_CONFIG_HOME", &xdg)
        .run();
    run.expect_code(2);
    assert!(
        run.err().contains("unknown group @nosuch") && run.err().contains("@pair"),
        "{run}"
    );

    std::fs::write(dir.join("config.toml"), "prot = 1\n").unwrap();
    let run = ctl(["exec", "-H", &a, "true"])
        .env("XDG_CONFIG_HOME", &xdg)
        .run();
    run.expect_code(2);
    assert!(
        run.err().contains("config.toml") && run.err().contains("prot"),
        "{run}"
    );
}

#[test]
fn max_fail_starts_nothing_new_and_names_the_targets_never_started() {
    let fleet = Fleet::start(2);
    let (dead, a, b) = (closed_port(), fleet.target(0), fleet.target(1));
    let list = format!("{dead},{a},{b}");
    let run = fleet
        .exec(&["-P", "1", "--max-fail", "1", "-H", &list, "echo ran"])
        .run();
    run.expect_code(255);
    assert!(!run.out().contains("ran"), "{run}");
    assert_eq!(
        summary(&run),
        format!(
            "ctl: 3 targets: 0 ok, 0 failed, 1 unreachable ({dead}), 2 not started \
             (--max-fail reached after 1 failed: {})",
            folded(&[&a, &b])
        ),
        "{run}"
    );
    // Not started is not success, even when the failure itself exited 0 for ctl's purposes.
    let run = fleet
        .exec(&[
            "-P",
            "1",
            "--max-fail",
            "1",
            "-H",
            &format!("{a},{b}"),
            "exit 3",
        ])
        .run();
    run.expect_code(3);
    assert!(
        summary(&run).contains(&format!(
            "1 not started (--max-fail reached after 1 failed: {b})"
        )),
        "{run}"
    );
}

#[test]
fn batches_finish_before_the_next_starts() {
    let fleet = Fleet::start(2);
    let dir = scratch();
    let mark = dir.path().join("first-done");
    let mark = path_str(&mark);
    let cmd = per_agent(&[
        (&fleet.agents[0], &format!("sleep 1; echo done > {mark}")),
        (&fleet.agents[1], &format!("cat {mark}")),
    ]);
    let list = format!("{},{}", fleet.target(0), fleet.target(1));
    let run = fleet
        .exec(&["-P", "8", "--batch", "1", "-H", &list, &cmd])
        .run();
    run.expect_code(0);
    assert_eq!(
        lines_of(&run.out(), &format!("{}: ", fleet.target(1))),
        ["done"],
        "{run}"
    );
}

#[test]
fn retry_is_for_unreachable_targets_only() {
    let fleet = Fleet::start(1);
    let dir = scratch();
    let count = path_str(&dir.path().join("count"));
    // A command that ran and failed is never run again.
    let run = fleet
        .exec(&[
            "--retry",
            "3",
            "-H",
            &fleet.target(0),
            &format!("echo x >> {count}; exit 1"),
        ])
        .run();
    run.expect_code(1);
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "x\n", "{run}");
    // An unreachable one is tried again, and -v says so.
    let dead = closed_port();
    let run = fleet
        .exec(&["-v", "--retry", "2", "-H", &dead, "true"])
        .run();
    run.expect_code(255);
    assert_eq!(run.err().matches("retrying").count(), 2, "{run}");
    assert!(
        run.err()
            .contains(&format!("ctl: {dead}: connection refused")),
        "{run}"
    );
}

#[test]
fn failed_to_lists_what_did_not_succeed_ready_for_hosts_file() {
    let fleet = Fleet::start(2);
    let (a, b, dead) = (fleet.target(0), fleet.target(1), closed_port());
    let dir = scratch();
    let failed = dir.path().join("failed");
    let cmd = per_agent(&[(&fleet.agents[0], "exit 0"), (&fleet.agents[1], "exit 7")]);
    let run = fleet
        .exec(&[
            "--failed-to",
            &path_str(&failed),
            "-H",
            &format!("{a},{b},{dead}"),
            &cmd,
        ])
        .run();
    run.expect_code(255);
    let mut lines: Vec<String> = std::fs::read_to_string(&failed)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    let mut want = vec![b.clone(), dead.clone()];
    want.sort();
    assert_eq!(lines, want, "{run}");
    // The file works as a hosts file.
    let run = fleet
        .exec(&[
            "--hosts-file",
            &path_str(&failed),
            "-x",
            &dead,
            "echo again",
        ])
        .run();
    run.expect_code(0);
    assert_eq!(run.out(), format!("{b}: again\n"), "{run}");
}

#[test]
fn output_dir_holds_raw_per_target_streams_and_no_prefix_drops_the_prefix() {
    let fleet = Fleet::start(2);
    let (a, b) = (fleet.target(0), fleet.target(1));
    let dir = scratch();
    let out = dir.path().join("new").join("out");
    let run = fleet
        .exec(&[
            "-N",
            "--output-dir",
            &path_str(&out),
            "-H",
            &format!("{a},{b}"),
            r"printf 'one\ntwo\377'; printf 'err\n' >&2",
        ])
        .run();
    run.expect_code(0);
    for t in [&a, &b] {
        assert_eq!(
            std::fs::read(out.join(format!("{t}.out"))).unwrap(),
            b"one\ntwo\xff"
        );
        assert_eq!(
            std::fs::read(out.join(format!("{t}.err"))).unwrap(),
            b"err\n"
        );
    }
    // -N: the lines, whole, without `TARGET: `.
    let stdout = run.stdout.clone();
    assert_eq!(
        stdout
            .split(|&c| c == b'\n')
            .filter(|l| *l == b"one")
            .count(),
        2,
        "{run}"
    );
    assert!(!run.out().contains(&a), "{run}");
}

#[test]
fn group_blocks_keep_exit_statuses_apart() {
    let fleet = Fleet::start(2);
    let (a, b) = (fleet.target(0), fleet.target(1));
    let cmd = per_agent(&[
        (&fleet.agents[0], "echo same"),
        (&fleet.agents[1], "echo same; exit 3"),
    ]);
    let run = fleet
        .exec(&["--group", "-H", &format!("{a},{b}"), &cmd])
        .run();
    run.expect_code(3);
    let rule = "----------------";
    let out = run.out();
    assert!(
        out.contains(&format!("{rule}\n{a} (exit 0)\n{rule}\nsame\n")),
        "{run}"
    );
    assert!(
        out.contains(&format!("{rule}\n{b} (exit 3)\n{rule}\nsame\n")),
        "{run}"
    );
    // A silent failure still gets a block that says how it ended.
    let run = fleet.exec(&["--group", "-H", &a, "exit 5"]).run();
    run.expect_code(5);
    assert_eq!(
        run.out(),
        format!("{rule}\n{a} (exit 5)\n{rule}\n"),
        "{run}"
    );
}

#[test]
fn json_with_group_is_a_usage_error() {
    let fleet = Fleet::start(1);
    let run = fleet
        .exec(&["--json", "--group", "-H", &fleet.target(0), "true"])
        .run();
    run.expect_code(2);
    assert!(run.err().contains("--group"), "{run}");
}

#[test]
fn hosts_file_mistakes_are_found_before_anything_runs() {
    let fleet = Fleet::start(1);
    let dir = scratch();
    let hosts = dir.path().join("hosts");
    let marker = path_str(&dir.path().join("ran"));
    std::fs::write(
        &hosts,
        format!("{}\n127.0.0.6,127.0.0.7\n", fleet.target(0)),
    )
    .unwrap();
    let run = fleet
        .exec(&[
            "--hosts-file",
            &path_str(&hosts),
            &format!("touch {marker}"),
        ])
        .run();
    run.expect_code(2);
    assert!(
        run.err().contains("line 2") && run.err().contains("one target per line"),
        "{run}"
    );
    assert!(
        !std::path::Path::new(&marker).exists(),
        "ran before the file was checked"
    );
}

#[test]
fn parallel_beyond_the_open_file_limit_is_refused_clearly() {
    let fleet = Fleet::start(1);
    let key = path_str(&fleet.key_file);
    let ctl_bin = crate::util::bin("ctl");
    let script = format!(
        "ulimit -n 200 && exec {} exec --key-file {key} -P 1000 -H {} true",
        ctl_bin.display(),
        fleet.target(0)
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("-P 1000 needs about") && err.contains("ulimit -n"),
        "{err}"
    );
}

#[test]
fn keygen_creates_missing_parent_directories_private() {
    let dir = scratch();
    let path = dir.path().join("fresh").join("rexec").join("key");
    let run = ctl(["keygen", "-o", &path_str(&path)]).run();
    run.expect_code(0);
    for d in [
        path.parent().unwrap(),
        path.parent().unwrap().parent().unwrap(),
    ] {
        let mode = std::fs::metadata(d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    // Refusing to overwrite exits 1, as --help says.
    let run = ctl(["keygen", "-o", &path_str(&path)]).run();
    run.expect_code(1);
    assert!(run.err().contains("refusing to overwrite"), "{run}");
    let help = ctl(["keygen", "--help"]).run();
    assert!(help.out().contains("exit status 1 if it exists"), "{help}");
}
