//! A man in the middle alters a real ctl-agent exchange: one flipped bit at each byte offset, and
//! a cut at each offset, in each direction. No tampered request may run, ctl may never exit 0,
//! never print altered output, and must say what went wrong in specific words.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rexec_shared::frame::{self, MAX_FRAME_LEN};
use rexec_shared::handshake::kind as hs;
use rexec_shared::message::kind as msg;

use crate::proxy::{Dir, Fault, Proxy, Recorded};
use crate::util::{ctl, scratch, Agent, Run};

/// Concurrent ctl runs; each has its own proxy and port.
const WORKERS: usize = 12;

/// Where in the exchange a byte lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    Handshake,
    Session,
}

/// The layout of an unmodified exchange.
struct Layout {
    /// Bytes from the client before its first sealed frame (its hello).
    client_handshake: usize,
    client_total: usize,
    /// Bytes from the agent before its first sealed frame (hello and proof).
    agent_handshake: usize,
    agent_total: usize,
}

impl Layout {
    fn region(&self, dir: Dir, offset: usize) -> Region {
        let handshake = match dir {
            Dir::ToAgent => self.client_handshake,
            Dir::ToClient => self.agent_handshake,
        };
        if offset < handshake {
            Region::Handshake
        } else {
            Region::Session
        }
    }
}

/// Frame kinds in a recorded byte stream.
fn kinds(bytes: &[u8]) -> Vec<(u8, usize)> {
    let mut rest = bytes;
    let mut out = Vec::new();
    while let Ok(Some((f, used))) = frame::parse(rest, MAX_FRAME_LEN) {
        out.push((f.kind, used));
        rest = &rest[used..];
    }
    assert!(rest.is_empty(), "recorded stream ends inside a frame");
    out
}

fn command(dir: &Path, n: usize) -> String {
    format!("touch {}/ran-{n:04} && echo out-{n:04}", dir.display())
}

fn run_case(agent: &Agent, dir: &Path, n: usize, fault: Fault) -> (Run, Recorded) {
    let proxy = Proxy::start(agent.addr, fault);
    let run = ctl([
        "exec",
        "-n",
        "--connect-timeout",
        "20",
        "--key-file",
        agent.key_file.to_str().expect("utf-8 path"),
        &proxy.addr.to_string(),
        &command(dir, n),
    ])
    .timeout(Duration::from_secs(60))
    .run();
    let recorded = proxy.finish();
    (run, recorded)
}

/// Checks one tampered run; returns what was wrong with it, if anything.
fn check(layout: &Layout, dir: &Path, n: usize, fault: Fault, run: &Run) -> Option<String> {
    let (fault_dir, offset) = match fault {
        Fault::Flip { dir, offset, .. } | Fault::Cut { dir, offset } => (dir, offset),
        Fault::None => unreachable!("only tampered runs are checked"),
    };
    let region = layout.region(fault_dir, offset);
    let err = run.err().to_lowercase();
    let expected_out = format!("out-{n:04}\n");
    let ran = dir.join(format!("ran-{n:04}")).exists();
    let mut problems = Vec::new();
    if run.status.code() != Some(255) {
        problems.push("exit status is not 255".to_owned());
    }
    if !run.stdout.is_empty() && run.out() != expected_out {
        problems.push("stdout holds altered bytes".to_owned());
    }
    if fault_dir == Dir::ToAgent && ran {
        problems.push("the tampered request ran".to_owned());
    }
    let words: &[&str] = match region {
        Region::Handshake => &["authenticat", "handshake", "refused"],
        Region::Session => &["integrity", "truncated"],
    };
    if !words.iter().any(|w| err.contains(w)) {
        problems.push(format!("stderr names none of {words:?}"));
    }
    (!problems.is_empty())
        .then(|| format!("{fault:?} ({region:?}): {}\n{run}", problems.join("; ")))
}

/// Runs every fault against `agent` on `WORKERS` threads; returns the failures.
fn run_all(agent: &Agent, dir: &Path, layout: &Layout, faults: &[Fault]) -> Vec<String> {
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&fault) = faults.get(i) else { break };
                let (run, _) = run_case(agent, dir, i, fault);
                if let Some(problem) = check(layout, dir, i, fault, &run) {
                    failures.lock().unwrap().push(problem);
                }
            });
        }
    });
    failures.into_inner().unwrap()
}

/// Captures one unmodified exchange and works out where the handshake ends in each direction.
fn baseline(agent: &Agent, dir: &Path) -> Layout {
    let (run, recorded) = run_case(agent, dir, 9999, Fault::None);
    run.expect_code(0);
    assert_eq!(run.out(), "out-9999\n", "{run}");
    assert!(
        dir.join("ran-9999").exists(),
        "the untampered command did not run"
    );

    let to_agent = kinds(&recorded.to_agent);
    let to_client = kinds(&recorded.to_client);
    let names = |k: &[(u8, usize)]| k.iter().map(|(kind, _)| *kind).collect::<Vec<_>>();
    assert_eq!(
        names(&to_agent),
        [hs::CLIENT_HELLO, msg::EXEC],
        "client frames"
    );
    assert_eq!(
        names(&to_client),
        [hs::SERVER_HELLO, hs::SERVER_PROOF, msg::STDOUT, msg::EXIT],
        "agent frames"
    );
    Layout {
        client_handshake: to_agent[0].1,
        client_total: recorded.to_agent.len(),
        agent_handshake: to_client[0].1 + to_client[1].1,
        agent_total: recorded.to_client.len(),
    }
}

fn tampering_agent() -> Agent {
    // A short handshake timeout bounds the runs where a flipped length makes a side wait for
    // bytes that never come.
    Agent::start_with(&["--handshake-timeout", "4"])
}

#[test]
fn one_flipped_bit_at_any_offset_is_caught_and_runs_nothing() {
    let agent = tampering_agent();
    let dir = scratch();
    let layout = baseline(&agent, dir.path());
    let mut faults = Vec::new();
    for (dir, len) in [
        (Dir::ToAgent, layout.client_total),
        (Dir::ToClient, layout.agent_total),
    ] {
        for offset in 0..len {
            faults.push(Fault::Flip {
                dir,
                offset,
                mask: 1 << (offset % 8),
            });
        }
    }
    let failures = run_all(&agent, dir.path(), &layout, &faults);
    assert!(
        failures.is_empty(),
        "{} of {} flips were mishandled; first ones:\n{}",
        failures.len(),
        faults.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n")
    );
    // The agent still serves after hundreds of tampered connections.
    let run = crate::util::exec(&agent, "echo still-serving").run();
    run.expect_code(0);
    assert_eq!(run.out(), "still-serving\n");
}

#[test]
fn a_cut_at_any_offset_is_reported_as_truncation_and_runs_nothing() {
    let agent = tampering_agent();
    let dir = scratch();
    let layout = baseline(&agent, dir.path());
    let mut faults = Vec::new();
    for (dir, len) in [
        (Dir::ToAgent, layout.client_total),
        (Dir::ToClient, layout.agent_total),
    ] {
        for offset in 0..len {
            faults.push(Fault::Cut { dir, offset });
        }
    }
    let failures = run_all(&agent, dir.path(), &layout, &faults);
    assert!(
        failures.is_empty(),
        "{} of {} cuts were mishandled; first ones:\n{}",
        failures.len(),
        faults.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n")
    );
    let run = crate::util::exec(&agent, "echo still-serving").run();
    run.expect_code(0);
    assert_eq!(run.out(), "still-serving\n");
}
