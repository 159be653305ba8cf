//! The end of a command is the end of its stdin: input that a process still reading it (a
//! background child) never got is reported, never dropped in silence; input delivered before
//! the end, or that nobody could read any more, is not.

use std::path::Path;

use crate::exec::WAIT;
use crate::fleet::path_str;
use crate::util::{eventually, exec, marker, pids_matching, scratch, Agent};

/// A command that leaves a background child holding its stdin (as fd 3: an asynchronous
/// list's own stdin is /dev/null), which reads it to `out` only once `go` exists.
fn background_reader(go: &Path, out: &Path, tag: &str) -> String {
    format!(
        "exec 3<&0; (while [ ! -e {go} ]; do sleep 0.05; done; cat <&3 > {out}; : {tag}) \
         >/dev/null 2>&1 &",
        go = path_str(go),
        out = path_str(out),
    )
}

/// Lets the background child read, waits until it is done, and returns what it got.
fn release(go: &Path, out: &Path, tag: &str) -> Vec<u8> {
    std::fs::write(go, "").expect("create the go file");
    assert!(
        eventually(WAIT, || pids_matching(tag).is_empty()),
        "the background reader did not finish"
    );
    std::fs::read(out).expect("the background reader's output")
}

#[test]
fn input_a_background_reader_never_got_is_reported() {
    let agent = Agent::start();
    let dir = scratch();
    let (go, out, tag) = (
        dir.path().join("go"),
        dir.path().join("out"),
        marker("stdin-cut"),
    );
    // Far more than a pipe holds: the rest is still on its way when the command ends.
    let total = 1 << 20;
    let run = exec(&agent, &background_reader(&go, &out, &tag))
        .stdin(vec![b'x'; total])
        .run();
    run.expect_code(0);
    let got = release(&go, &out, &tag);
    assert!(got.len() < total, "the child got all of it: {run}");
    let err = run.err();
    let said = format!(
        "ctl: {}: the command's stdin closed when it ended: ",
        agent.target()
    );
    let rest = err
        .strip_prefix(&said)
        .unwrap_or_else(|| panic!("expected {said:?}...\n{run}"));
    let lost: usize = rest
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count\n{run}"));
    // What ctl had read and the agent had not written: all the rest, unless ctl had not read
    // all of its stdin yet (and then says so).
    assert!(
        lost > 0 && lost <= total - got.len(),
        "{lost} lost, {} got\n{run}",
        got.len()
    );
    if lost < total - got.len() {
        assert!(
            err.contains("ctl had not reached the end of its stdin"),
            "{run}"
        );
    }
    assert!(
        err.contains("a process still reading it got an early end of input"),
        "{run}"
    );
}

#[test]
fn input_delivered_before_the_end_reaches_a_background_reader_without_a_word() {
    let agent = Agent::start();
    let dir = scratch();
    let (go, out, tag) = (
        dir.path().join("go"),
        dir.path().join("out"),
        marker("stdin-all"),
    );
    // The command exits only after reading its first line, so by then all of the input (one
    // small write, one frame) is in the pipe.
    let command = format!("read first; {}", background_reader(&go, &out, &tag));
    let run = exec(&agent, &command).stdin("ready\ndata\n").run();
    run.expect_code(0);
    assert_eq!(release(&go, &out, &tag), b"data\n");
    assert_eq!(run.err(), "", "{run}");
}

#[test]
fn input_nobody_was_left_to_read_is_not_reported() {
    // As with a local pipeline: the command stopped reading and exited; nothing was lost to
    // anyone still reading.
    let agent = Agent::start();
    let run = exec(&agent, "head -c 10 >/dev/null")
        .stdin(vec![b'y'; 1 << 20])
        .run();
    run.expect_code(0);
    assert_eq!(run.err(), "", "{run}");
}
