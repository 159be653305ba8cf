//! Single-target `ctl exec` moving tens of MiB: output and input must be binary-safe and
//! arrive whole, on stdout, on stderr and on stdin.

use std::time::Duration;

use crate::exec::assert_serving;
use crate::util::{exec, scratch, Agent};

/// Size of the big outputs: tens of MiB, many frames.
const BIG: usize = 40 << 20;
/// Bound on one big transfer (debug build, loaded 2-core machine).
const BIG_TIMEOUT: Duration = Duration::from_secs(240);

/// Asserts `got == want` without printing megabytes when they differ.
#[track_caller]
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let first = got
            .iter()
            .zip(want)
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(want.len()));
        panic!(
            "{what}: got {} bytes, want {}; first difference at offset {first}",
            got.len(),
            want.len()
        );
    }
}

/// Deterministic bytes covering every byte value (xorshift), so failures are reproducible.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Has the remote side save [`BIG`] random bytes to a file and print them on `stream`
/// ("stdout" or "stderr"), and checks that ctl passed on exactly the saved bytes.
fn big_output(stream: &str) {
    let agent = Agent::start();
    let dir = scratch();
    let saved = dir.path().join("saved");
    let redirect = if stream == "stdout" { "" } else { " >&2" };
    // Random bytes saved on the "remote" side, then printed; every byte value occurs.
    let command = format!(
        "head -c {BIG} /dev/urandom > {path} && cat {path}{redirect}",
        path = saved.display()
    );
    let run = exec(&agent, &command).timeout(BIG_TIMEOUT).run();
    run.expect_code(0);
    let want = std::fs::read(&saved).expect("read the remote side's copy");
    assert_eq!(want.len(), BIG);
    let mut seen = [false; 256];
    want.iter().for_each(|&b| seen[b as usize] = true);
    assert!(
        seen.iter().all(|&s| s),
        "the data should hold every byte value"
    );
    let (got, other) = if stream == "stdout" {
        (&run.stdout, &run.stderr)
    } else {
        (&run.stderr, &run.stdout)
    };
    assert_same_bytes(got, &want, stream);
    assert!(
        other.is_empty(),
        "nothing on the other stream, got {} bytes",
        other.len()
    );
    assert_serving(&agent);
}

#[test]
fn forty_mib_of_binary_stdout_arrive_intact() {
    big_output("stdout");
}

#[test]
fn forty_mib_of_binary_stderr_arrive_intact() {
    big_output("stderr");
}

#[test]
fn both_streams_at_once_stay_separate_and_intact() {
    let agent = Agent::start();
    let dir = scratch();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let size = 8 << 20;
    let command = format!(
        "head -c {size} /dev/urandom > {o} && head -c {size} /dev/urandom > {e} && \
         {{ cat {e} >&2 & cat {o}; wait; }}",
        o = out.display(),
        e = err.display()
    );
    let run = exec(&agent, &command).timeout(BIG_TIMEOUT).run();
    run.expect_code(0);
    assert_same_bytes(&run.stdout, &std::fs::read(&out).unwrap(), "stdout");
    assert_same_bytes(&run.stderr, &std::fs::read(&err).unwrap(), "stderr");
}

#[test]
fn several_mib_of_binary_stdin_arrive_intact() {
    let agent = Agent::start();
    let dir = scratch();
    let saved = dir.path().join("stdin");
    let input = pattern(6 << 20, 0x5eed);
    // Saved remotely and echoed back: both copies must equal what ctl was given.
    let command = format!("tee {} ; echo end-of-input >&2", saved.display());
    let run = exec(&agent, &command)
        .stdin(input.clone())
        .timeout(BIG_TIMEOUT)
        .run();
    run.expect_code(0);
    assert_eq!(run.err(), "end-of-input\n", "{run}");
    assert_same_bytes(
        &std::fs::read(&saved).unwrap(),
        &input,
        "remote copy of stdin",
    );
    assert_same_bytes(&run.stdout, &input, "stdin echoed back");
}

#[test]
fn big_stdin_to_a_command_that_reads_none_of_it_still_ends() {
    let agent = Agent::start();
    let run = exec(&agent, "echo not reading")
        .stdin(pattern(8 << 20, 7))
        .timeout(BIG_TIMEOUT)
        .run();
    run.expect_code(0);
    assert_eq!(run.out(), "not reading\n", "{run}");
    assert_serving(&agent);
}
