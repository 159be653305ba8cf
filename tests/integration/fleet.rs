//! Many-target `ctl exec` (-H, --hosts-file) and `--json` against several real agents on
//! loopback: prefixed lines, --group folding, unreachable and wrong-key targets, JSON records,
//! scripts, -P bounding, cancellation.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::util::{
    ctl, eventually, key_line, marker, pids_matching, scratch, write_key_file, Agent, Ctl,
    KillOnDrop, Run,
};

/// Agents sharing one key, each in its own directory, plus the key file ctl uses.
pub struct Fleet {
    pub agents: Vec<Agent>,
    pub key_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Fleet {
    pub fn start(n: usize) -> Self {
        let dir = scratch();
        let key = key_line("fleet");
        let key_file = write_key_file(dir.path(), "key", &key);
        let agents = (0..n)
            .map(|_| {
                let own = scratch();
                let own_key = write_key_file(own.path(), "keys", &key);
                Agent::start_in(own, own_key, &[])
            })
            .collect();
        Self {
            agents,
            key_file,
            _dir: dir,
        }
    }

    /// `ctl exec --key-file KEY ARGS...`.
    pub fn exec<S: AsRef<str>>(&self, args: &[S]) -> Ctl {
        let mut all = vec![
            "exec".to_owned(),
            "--key-file".to_owned(),
            path_str(&self.key_file),
        ];
        all.extend(args.iter().map(|a| a.as_ref().to_owned()));
        ctl(all)
    }

    pub fn target(&self, i: usize) -> String {
        self.agents[i].target()
    }

    /// A second spelling of agent `i`, so one agent can stand for two targets.
    pub fn alias(&self, i: usize) -> String {
        format!("localhost:{}", self.agents[i].addr.port())
    }
}

pub fn path_str(path: &Path) -> String {
    path.to_str().expect("test paths are UTF-8").to_owned()
}

/// A loopback port with nothing listening on it.
pub fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    let addr = listener.local_addr().expect("probe address");
    drop(listener);
    addr.to_string()
}

/// Targets on 127.0.0.1 as ctl folds them in summaries and headings: `127.0.0.1:[P1,P2-P3]`
/// (one target alone: as it is).
pub fn folded(targets: &[&str]) -> String {
    let mut ports: Vec<u32> = targets
        .iter()
        .map(|t| {
            let port = t.strip_prefix("127.0.0.1:").expect("a 127.0.0.1 target");
            port.parse().expect("a port")
        })
        .collect();
    ports.sort_unstable();
    if ports.len() == 1 {
        return format!("127.0.0.1:{}", ports[0]);
    }
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for p in ports {
        match runs.last_mut() {
            Some((_, end)) if *end + 1 == p => *end = p,
            _ => runs.push((p, p)),
        }
    }
    let runs: Vec<String> = runs
        .iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    format!("127.0.0.1:[{}]", runs.join(","))
}

/// The lines of `text` that start with `prefix`, prefix removed.
pub fn lines_of<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix))
        .collect()
}

/// The summary line ctl ends a many-target run with.
pub fn summary(run: &Run) -> String {
    let err = run.err();
    let line = err
        .lines()
        .rev()
        .find(|l| l.starts_with("ctl: ") && l.contains(" ok, "));
    line.unwrap_or_else(|| panic!("no summary line\n{run}"))
        .to_owned()
}

/// A `case $PPID` script that gives each agent (the shell's parent) its own behaviour.
pub fn per_agent(arms: &[(&Agent, &str)]) -> String {
    let mut script = "case $PPID in ".to_owned();
    for (agent, body) in arms {
        script += &format!("{}) {body} ;; ", agent.pid());
    }
    script + "*) echo unexpected parent $PPID >&2; exit 99 ;; esac"
}

/// Parses every stdout line as JSON, keyed by target; fails if anything else is on stdout.
fn json_records(run: &Run) -> BTreeMap<String, Value> {
    let mut records = BTreeMap::new();
    for line in run.out().lines() {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}\n{run}"));
        let target = value["target"]
            .as_str()
            .unwrap_or_else(|| panic!("no target in {line}"))
            .to_owned();
        assert!(
            records.insert(target, value).is_none(),
            "two records for one target\n{run}"
        );
    }
    records
}

/// Standard base64 (padded) decoding, to check the JSON encoding independently of ctl's code.
fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    assert_eq!(
        text.len() % 4,
        0,
        "base64 is padded to a multiple of 4: {text:?}"
    );
    let mut out = Vec::new();
    for quad in text.as_bytes().chunks(4) {
        let mut acc = 0u32;
        let mut pads = 0;
        for &c in quad {
            let v = match c {
                b'=' => {
                    pads += 1;
                    0
                }
                _ => ALPHABET
                    .iter()
                    .position(|&a| a == c)
                    .unwrap_or_else(|| panic!("bad base64 {c}")) as u32,
            };
            acc = acc << 6 | v;
        }
        out.extend_from_slice(&acc.to_be_bytes()[1..4 - pads]);
    }
    out
}

#[test]
fn lines_are_prefixed_whole_and_a_last_partial_line_is_ended() {
    let fleet = Fleet::start(2);
    let (a, b) = (fleet.target(0), fleet.target(1));
    // The remote writes half lines with pauses between, on both streams.
    let cmd =
        "printf a; sleep 0.2; printf 'b\\nc'; printf 'e1\\ne' >&2; sleep 0.2; printf '2\\n' >&2";
    let run = fleet.exec(&["-H", &format!("{a},{b}"), cmd]).run();
    run.expect_code(0);
    let out = run.out();
    let err = run.err();
    for t in [&a, &b] {
        assert_eq!(lines_of(&out, &format!("{t}: ")), ["ab", "c"], "{run}");
        assert_eq!(lines_of(&err, &format!("{t}: ")), ["e1", "e2"], "{run}");
    }
    assert_eq!(out.lines().count(), 4, "{run}");
    assert!(out.ends_with('\n'), "{run}");
    assert_eq!(
        summary(&run),
        "ctl: 2 targets: 2 ok, 0 failed, 0 unreachable",
        "{run}"
    );
}

#[test]
fn concurrent_targets_never_mix_within_a_line() {
    let fleet = Fleet::start(3);
    let targets: Vec<String> = (0..3)
        .flat_map(|i| [fleet.target(i), fleet.alias(i)])
        .collect();
    let payload = "x".repeat(300);
    // Each line is written in three pieces, so the agent sends partial lines.
    let cmd = format!(
        "i=0; while [ $i -lt 400 ]; do printf 'L%s-' $i; printf '{payload}'; printf -- '-%s\\n' $i; i=$((i+1)); done"
    );
    let run = fleet.exec(&["-H", &targets.join(","), &cmd]).run();
    run.expect_code(0);
    let out = run.out();
    let mut seen: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for line in out.lines() {
        let (target, rest) = line
            .split_once(": ")
            .unwrap_or_else(|| panic!("unprefixed line {line:?}"));
        assert!(
            targets.iter().any(|t| t == target),
            "line from unknown target {line:?}"
        );
        let n: usize = rest
            .strip_prefix('L')
            .and_then(|r| r.split_once('-'))
            .and_then(|(n, _)| n.parse().ok())
            .unwrap_or_else(|| panic!("mixed line {line:?}"));
        assert_eq!(
            rest,
            format!("L{n}-{payload}-{n}"),
            "mixed line from {target}"
        );
        seen.entry(target).or_default().push(n);
    }
    assert_eq!(seen.len(), targets.len(), "{run}");
    for (target, numbers) in seen {
        assert_eq!(
            numbers,
            (0..400).collect::<Vec<_>>(),
            "{target}'s lines out of order or missing"
        );
    }
}

#[test]
fn group_folds_identical_outputs_into_one_block() {
    let fleet = Fleet::start(2);
    let (a, a2, b) = (fleet.target(0), fleet.alias(0), fleet.target(1));
    // Two spellings of one agent print the same; the other agent prints something else.
    let run = fleet
        .exec(&[
            "--group",
            "-H",
            &format!("{a},{b},{a2}"),
            "echo parent $PPID; printf shared",
        ])
        .run();
    run.expect_code(0);
    let (pa, pb) = (fleet.agents[0].pid(), fleet.agents[1].pid());
    let rule = "----------------";
    let expected = format!(
        "{rule}\n{a},{a2} (exit 0)\n{rule}\nparent {pa}\nshared\n{rule}\n{b} (exit 0)\n{rule}\nparent {pb}\nshared\n"
    );
    assert_eq!(run.out(), expected, "{run}");
    assert_eq!(
        summary(&run),
        "ctl: 3 targets: 3 ok, 0 failed, 0 unreachable",
        "{run}"
    );
}

#[test]
fn group_keeps_stderr_on_stderr_and_folds_it_too() {
    let fleet = Fleet::start(2);
    let (a, b) = (fleet.target(0), fleet.target(1));
    let run = fleet
        .exec(&[
            "--group",
            "-H",
            &format!("{a},{b}"),
            "echo problem >&2; exit 4",
        ])
        .run();
    run.expect_code(4);
    assert_eq!(run.out(), "", "{run}");
    let rule = "----------------";
    assert!(
        run.err().contains(&format!(
            "{rule}\n{} (stderr, exit 4)\n{rule}\nproblem\n",
            folded(&[&a, &b])
        )),
        "{run}"
    );
    assert_eq!(
        summary(&run),
        format!(
            "ctl: 2 targets: 0 ok, 2 failed (exit 4: {}), 0 unreachable",
            folded(&[&a, &b])
        )
    );
}

#[test]
fn unreachable_target_is_reported_and_the_others_run() {
    let fleet = Fleet::start(2);
    let (a, b, dead) = (fleet.target(0), fleet.target(1), closed_port());
    let run = fleet
        .exec(&[
            "-H",
            &format!("{a},{dead},{b}"),
            "echo hello; echo note >&2",
        ])
        .run();
    run.expect_code(255);
    let out = run.out();
    for t in [&a, &b] {
        assert_eq!(lines_of(&out, &format!("{t}: ")), ["hello"], "{run}");
        assert_eq!(lines_of(&run.err(), &format!("{t}: ")), ["note"], "{run}");
    }
    assert!(!out.contains(&dead), "{run}");
    let err = run.err();
    assert!(
        err.lines()
            .any(|l| l.starts_with(&format!("ctl: {dead}: connection refused"))),
        "{run}"
    );
    assert_eq!(
        summary(&run),
        format!("ctl: 3 targets: 2 ok, 0 failed, 1 unreachable ({dead})"),
        "{run}"
    );
}

#[test]
fn silent_target_times_out_without_stalling_the_others() {
    let fleet = Fleet::start(1);
    // Accepts connections (the kernel does) but never answers.
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind a silent listener");
    let silent_addr = silent.local_addr().expect("silent address").to_string();
    let a = fleet.target(0);
    let run = fleet
        .exec(&[
            "--connect-timeout",
            "1",
            "-H",
            &format!("{silent_addr},{a}"),
            "echo fine",
        ])
        .run();
    run.expect_code(255);
    assert_eq!(run.out(), format!("{a}: fine\n"), "{run}");
    assert!(
        run.err()
            .contains(&format!("ctl: {silent_addr}: timed out")),
        "{run}"
    );
    assert!(
        summary(&run).ends_with(&format!("1 unreachable ({silent_addr})")),
        "{run}"
    );
}

#[test]
fn wrong_key_target_is_unreachable_with_an_auth_error() {
    let fleet = Fleet::start(1);
    let stranger = Agent::start(); // its own, different key
    let (a, s) = (fleet.target(0), stranger.target());
    let run = fleet.exec(&["-H", &format!("{a},{s}"), "echo in"]).run();
    run.expect_code(255);
    assert_eq!(run.out(), format!("{a}: in\n"), "{run}");
    assert!(
        run.err()
            .contains(&format!("ctl: {s}: authentication failed")),
        "{run}"
    );
    assert!(
        summary(&run).ends_with(&format!("1 unreachable ({s})")),
        "{run}"
    );
    let log = stranger.wait_for_log("before authentication", Duration::from_secs(10));
    assert!(
        !log.contains("command finished"),
        "the stranger ran a command:\n{log}"
    );
}

#[test]
fn json_records_success_failure_timeout_and_unreachable() {
    let fleet = Fleet::start(3);
    let (ok, bad, slow, dead) = (
        fleet.target(0),
        fleet.target(1),
        fleet.target(2),
        closed_port(),
    );
    let cmd = per_agent(&[
        (&fleet.agents[0], "echo out; echo err >&2"),
        (&fleet.agents[1], "echo bad >&2; exit 3"),
        (&fleet.agents[2], "sleep 30"),
    ]);
    let run = fleet
        .exec(&[
            "--json",
            "--timeout",
            "1",
            "-H",
            &format!("{ok},{bad},{slow},{dead}"),
            &cmd,
        ])
        .run();
    run.expect_code(255);
    let records = json_records(&run);
    assert_eq!(records.len(), 4, "{run}");
    for record in records.values() {
        for field in [
            "target",
            "exit_code",
            "signal",
            "timed_out",
            "stdout",
            "stderr",
            "duration_ms",
            "error",
        ] {
            assert!(record.get(field).is_some(), "no {field} in {record}");
        }
        assert!(record["duration_ms"].is_u64(), "{record}");
    }

    let r = &records[&ok];
    assert_eq!(
        (r["status"].as_u64(), r["exit_code"].as_i64()),
        (Some(0), Some(0)),
        "{r}"
    );
    assert_eq!(
        (r["stdout"].as_str(), r["stderr"].as_str()),
        (Some("out\n"), Some("err\n")),
        "{r}"
    );
    assert_eq!(
        (r["stdout_encoding"].as_str(), r["timed_out"].as_bool()),
        (Some("utf-8"), Some(false)),
        "{r}"
    );
    assert!(r["signal"].is_null() && r["error"].is_null(), "{r}");

    let r = &records[&bad];
    assert_eq!(
        (r["status"].as_u64(), r["exit_code"].as_i64()),
        (Some(3), Some(3)),
        "{r}"
    );
    assert_eq!(r["stderr"], "bad\n", "{r}");
    assert!(r["error"].is_null(), "{r}");

    let r = &records[&slow];
    assert_eq!(
        (r["status"].as_u64(), r["timed_out"].as_bool()),
        (Some(124), Some(true)),
        "{r}"
    );
    assert!(r["exit_code"].is_null() && r["error"].is_null(), "{r}");

    let r = &records[&dead];
    assert_eq!(r["status"].as_u64(), Some(255), "{r}");
    assert!(r["exit_code"].is_null() && r["signal"].is_null(), "{r}");
    assert_eq!(r["timed_out"], false, "{r}");
    assert!(
        r["error"]
            .as_str()
            .is_some_and(|e| e.contains("connection refused")),
        "{r}"
    );
    assert_eq!(r["error_kind"], "connect", "{r}");

    // Stdout stays pure JSON; the summary goes to stderr.
    assert!(summary(&run).contains("4 targets: 1 ok, 2 failed"), "{run}");
}

#[test]
fn json_carries_non_utf8_output_losslessly() {
    let fleet = Fleet::start(1);
    let a = fleet.target(0);
    // Every byte value, in an order that is not valid UTF-8.
    let all_bytes =
        "i=255; while [ $i -ge 0 ]; do printf \"\\\\$(printf %o $i)\"; i=$((i-1)); done";
    let run = fleet
        .exec(&[
            "--json",
            &a,
            &format!("{all_bytes}; echo plain >&2; exit 7"),
        ])
        .run();
    run.expect_code(7);
    let records = json_records(&run);
    let r = &records[&a];
    assert_eq!(r["stdout_encoding"], "base64", "{r}");
    let expected: Vec<u8> = (0..=255u8).rev().collect();
    assert_eq!(
        base64_decode(r["stdout"].as_str().expect("stdout text")),
        expected
    );
    assert_eq!(
        (r["stderr"].as_str(), r["stderr_encoding"].as_str()),
        (Some("plain\n"), Some("utf-8")),
        "{r}"
    );
    assert_eq!(
        (r["status"].as_u64(), r["exit_code"].as_i64()),
        (Some(7), Some(7)),
        "{r}"
    );
    // One target without -H is not a fleet run: no summary line.
    assert!(!run.err().contains(" ok, "), "{run}");
}

#[test]
fn single_target_json_forwards_stdin() {
    let fleet = Fleet::start(1);
    let a = fleet.target(0);
    let run = fleet
        .exec(&["--json", &a, "tr a-z A-Z"])
        .stdin("shout\n")
        .run();
    run.expect_code(0);
    assert_eq!(json_records(&run)[&a]["stdout"], "SHOUT\n", "{run}");
}

#[test]
fn fleet_mode_does_not_forward_stdin() {
    let fleet = Fleet::start(1);
    let a = fleet.target(0);
    let run = fleet
        .exec(&["-H", &a, "cat; echo done"])
        .stdin("must not arrive\n")
        .run();
    run.expect_code(0);
    assert_eq!(run.out(), format!("{a}: done\n"), "{run}");
}

#[test]
fn hosts_file_skips_comments_and_blank_lines_and_duplicates_run_once() {
    let fleet = Fleet::start(2);
    let (a, b) = (fleet.target(0), fleet.target(1));
    let dir = scratch();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        format!("# the fleet\n\n{a}\n   # indented comment\n\t\n{b}\n{a}\n"),
    )
    .unwrap();
    let run = fleet
        .exec(&["--hosts-file", &path_str(&hosts), "-H", &b, "echo once"])
        .run();
    run.expect_code(0);
    let out = run.out();
    assert_eq!(lines_of(&out, &format!("{a}: ")), ["once"], "{run}");
    assert_eq!(lines_of(&out, &format!("{b}: ")), ["once"], "{run}");
    assert_eq!(out.lines().count(), 2, "{run}");
    assert_eq!(
        summary(&run),
        "ctl: 2 targets: 2 ok, 0 failed, 0 unreachable",
        "{run}"
    );
}

#[test]
fn hosts_file_errors_name_the_file_and_line() {
    let dir = scratch();
    let key_file = write_key_file(dir.path(), "key", &key_line("k"));
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, "# ok\nweb1\nweb2:notaport\n").unwrap();
    let run = ctl([
        "exec",
        "--key-file",
        &path_str(&key_file),
        "--hosts-file",
        &path_str(&hosts),
        "true",
    ])
    .run();
    run.expect_code(2);
    assert!(
        run.err()
            .contains(&format!("hosts file {}, line 3", hosts.display())),
        "{run}"
    );

    let missing = dir.path().join("nope");
    let run = ctl([
        "exec",
        "--key-file",
        &path_str(&key_file),
        "--hosts-file",
        &path_str(&missing),
        "true",
    ])
    .run();
    run.expect_code(2);
    assert!(run.err().contains(&missing.display().to_string()), "{run}");
}

#[test]
fn script_runs_on_every_target_with_its_arguments() {
    let fleet = Fleet::start(2);
    let (a, b) = (fleet.target(0), fleet.target(1));
    let dir = scratch();
    let script = dir.path().join("check.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\necho \"n=$# first=$1 second=$2\"\necho \"line 2 of 2\"\nexit 0\n",
    )
    .unwrap();
    let run = fleet
        .exec(&[
            "-H",
            &format!("{a},{b}"),
            "--script",
            &path_str(&script),
            "hello world",
            "it's",
        ])
        .stdin("ignored\n")
        .run();
    run.expect_code(0);
    let out = run.out();
    for t in [&a, &b] {
        let expected = ["n=2 first=hello world second=it's", "line 2 of 2"];
        assert_eq!(lines_of(&out, &format!("{t}: ")), expected, "{run}");
    }
}

#[test]
fn parallel_bounds_how_many_targets_run_at_once() {
    let fleet = Fleet::start(2);
    let targets = [
        fleet.target(0),
        fleet.alias(0),
        fleet.target(1),
        fleet.alias(1),
    ]
    .join(",");
    let dir = scratch();
    let d = path_str(dir.path());
    // Each command registers itself as running, records how many run now, waits (bounded)
    // until at least two run, records again, and unregisters before it exits.
    let count = format!("$(ls -d {d}/run.* 2>/dev/null | wc -l)");
    let cmd = format!(
        "mkdir {d}/run.$$; echo {count} >> {d}/counts; i=0; \
         while [ {count} -lt 2 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; \
         sleep 0.2; echo {count} >> {d}/counts; rmdir {d}/run.$$"
    );
    let run = fleet.exec(&["-P", "2", "-H", &targets, &cmd]).run();
    run.expect_code(0);
    let counts = std::fs::read_to_string(dir.path().join("counts")).expect("counts written");
    let counts: Vec<u32> = counts
        .split_whitespace()
        .map(|c| c.parse().expect("a count"))
        .collect();
    assert_eq!(
        counts.len(),
        8,
        "every target recorded twice: {counts:?}\n{run}"
    );
    assert_eq!(
        counts.iter().max(),
        Some(&2),
        "at most, and (at the barrier) exactly, 2 at once: {counts:?}"
    );
}

#[test]
fn exit_status_is_the_highest_of_the_targets() {
    let fleet = Fleet::start(3);
    let cmd = per_agent(&[
        (&fleet.agents[0], "exit 0"),
        (&fleet.agents[1], "exit 5"),
        (&fleet.agents[2], "exit 2"),
    ]);
    let all = [fleet.target(0), fleet.target(1), fleet.target(2)].join(",");
    let run = fleet.exec(&["-H", &all, &cmd]).run();
    run.expect_code(5);
    let (b, c) = (fleet.target(1), fleet.target(2));
    assert_eq!(
        summary(&run),
        format!("ctl: 3 targets: 1 ok, 2 failed (exit 2: {c}; exit 5: {b}), 0 unreachable")
    );
}

#[test]
fn sigint_stops_every_target_and_exits_130() {
    let fleet = Fleet::start(2);
    let tag = marker("fleet-int");
    let targets = format!("{},{}", fleet.target(0), fleet.target(1));
    let mut child = KillOnDrop(
        fleet
            .exec(&["-H", &targets, &format!("sleep 300; echo {tag}")])
            .spawn(),
    );
    assert!(
        eventually(Duration::from_secs(20), || pids_matching(&tag).len() >= 2),
        "both remote commands should start"
    );
    child.signal(libc::SIGINT);
    let status = child.wait_within(Duration::from_secs(30), "ctl after SIGINT");
    assert_eq!(status.code(), Some(130));
    assert!(
        eventually(Duration::from_secs(20), || pids_matching(&tag).is_empty()),
        "remote commands survived"
    );
}

#[test]
fn ping_takes_the_same_target_options() {
    let fleet = Fleet::start(2);
    let (a, b, dead) = (fleet.target(0), fleet.target(1), closed_port());
    let dir = scratch();
    let hosts = dir.path().join("hosts");
    std::fs::write(&hosts, format!("# agents\n{a}\n\n{b}\n")).unwrap();
    let key = path_str(&fleet.key_file);
    let run = ctl([
        "ping",
        "--key-file",
        &key,
        "--hosts-file",
        &path_str(&hosts),
        "-H",
        &dead,
        "-P",
        "1",
    ])
    .run();
    run.expect_code(255);
    for t in [&a, &b] {
        assert!(
            run.out()
                .lines()
                .any(|l| l.starts_with(&format!("{t}: ok"))),
            "{run}"
        );
    }
    assert!(run.err().contains(&format!("{dead}: ")), "{run}");
}
