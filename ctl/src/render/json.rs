//! The `--json` record: one JSON object per target, one line each (JSON Lines).
//!
//! `stdout` and `stderr` are the text itself when it is valid UTF-8 (`*_encoding: "utf-8"`);
//! otherwise they are base64 (standard alphabet, padded) and `*_encoding` is `"base64"`, so
//! any bytes survive the trip.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::Serialize;

use crate::outcome::{Ending, Outcome};

/// The captured output of one stream, and whether it was cut at the capture limit.
#[derive(Debug, Clone, Copy)]
pub struct Stream<'a> {
    /// The bytes kept.
    pub bytes: &'a [u8],
    /// Whether more came than was kept.
    pub truncated: bool,
}

/// One target's result as written to stdout.
#[derive(Debug, Serialize)]
struct Record<'a> {
    target: &'a str,
    /// ctl's exit status for this target alone.
    status: u8,
    exit_code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    /// Whether the agent ended the command because it was shutting down.
    agent_shutdown: bool,
    /// The signal it did that with, when it did.
    shutdown_signal: Option<i32>,
    /// Bytes of input ctl had for the command that never reached it (its stdin closed when
    /// the command ended), when there were any.
    stdin_dropped: Option<u64>,
    stdout: String,
    stdout_encoding: &'static str,
    stdout_truncated: bool,
    stderr: String,
    stderr_encoding: &'static str,
    stderr_truncated: bool,
    duration_ms: u64,
    error: Option<String>,
    /// `connect`, `auth`, `stream` or `agent` when `error` is set.
    error_kind: Option<&'static str>,
}

/// Text when `bytes` are valid UTF-8, else base64; with the encoding's name.
fn encode(bytes: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_owned(), "utf-8"),
        Err(_) => (BASE64.encode(bytes), "base64"),
    }
}

/// The JSON line (with its newline) for `target`'s `outcome` and captured output.
pub fn line(target: &str, outcome: &Outcome, stdout: Stream<'_>, stderr: Stream<'_>) -> Vec<u8> {
    let (exit_code, signal, timed_out) = match &outcome.ending {
        Ending::Exited(code) => (Some(*code), None, false),
        Ending::Killed(sig) => (None, Some(*sig), false),
        Ending::AgentShutdown { code, signal, .. } => (*code, *signal, false),
        Ending::TimedOut(sig) => (None, *sig, true),
        Ending::Unanswered => (None, None, true),
        Ending::Failed(_) => (None, None, false),
    };
    let shutdown_signal = match &outcome.ending {
        Ending::AgentShutdown { by, .. } => Some(*by),
        _ => None,
    };
    let (stdout_text, stdout_encoding) = encode(stdout.bytes);
    let (stderr_text, stderr_encoding) = encode(stderr.bytes);
    let record = Record {
        target,
        status: outcome.exit_code(),
        exit_code,
        signal,
        timed_out,
        agent_shutdown: shutdown_signal.is_some(),
        shutdown_signal,
        stdin_dropped: outcome.input_lost.map(|lost| lost.bytes),
        stdout: stdout_text,
        stdout_encoding,
        stdout_truncated: stdout.truncated,
        stderr: stderr_text,
        stderr_encoding,
        stderr_truncated: stderr.truncated,
        duration_ms: u64::try_from(outcome.duration.as_millis()).unwrap_or(u64::MAX),
        error: outcome.failure().map(ToString::to_string),
        error_kind: outcome.failure().map(|f| f.kind()),
    };
    // Serializing plain strings, numbers and options into memory cannot fail; fall back to a
    // record that says so rather than panic.
    let mut out = serde_json::to_vec(&record).unwrap_or_else(|e| {
        let error = format!("cannot encode the result: {e}");
        serde_json::json!({ "target": target, "status": 255, "error": error })
            .to_string()
            .into_bytes()
    });
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::outcome::Failure;

    fn outcome(ending: Ending) -> Outcome {
        Outcome {
            ending,
            duration: Duration::from_millis(1234),
            input_lost: None,
        }
    }

    fn parse(line: &[u8]) -> serde_json::Value {
        assert_eq!(line.last(), Some(&b'\n'));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
        serde_json::from_slice(line).unwrap()
    }

    #[test]
    fn success_carries_text_and_status() {
        let done = outcome(Ending::Exited(0));
        let out = Stream {
            bytes: b"hi\n\"q\"",
            truncated: false,
        };
        let err = Stream {
            bytes: b"",
            truncated: false,
        };
        let v = parse(&line("web1:2", &done, out, err));
        assert_eq!(v["target"], "web1:2");
        assert_eq!(v["status"], 0);
        assert_eq!(v["exit_code"], 0);
        assert!(v["signal"].is_null());
        assert_eq!(v["timed_out"], false);
        assert_eq!(v["agent_shutdown"], false);
        assert!(v["shutdown_signal"].is_null());
        assert!(v["stdin_dropped"].is_null());
        assert_eq!(v["stdout"], "hi\n\"q\"");
        assert_eq!(v["stdout_encoding"], "utf-8");
        assert_eq!(v["stderr"], "");
        assert_eq!(v["duration_ms"], 1234);
        assert!(v["error"].is_null() && v["error_kind"].is_null());
    }

    #[test]
    fn non_utf8_is_base64_and_round_trips() {
        let done = outcome(Ending::TimedOut(Some(9)));
        let raw = [0xff, 0x00, b'a', 0xc3];
        let v = parse(&line(
            "t",
            &done,
            Stream {
                bytes: &raw,
                truncated: true,
            },
            Stream {
                bytes: b"ok",
                truncated: false,
            },
        ));
        assert_eq!(v["stdout_encoding"], "base64");
        assert_eq!(BASE64.decode(v["stdout"].as_str().unwrap()).unwrap(), raw);
        assert_eq!(v["stdout_truncated"], true);
        assert_eq!(v["stderr_encoding"], "utf-8");
        assert!(v["exit_code"].is_null());
        assert_eq!(v["signal"], 9);
        assert_eq!(v["timed_out"], true);
        assert_eq!(v["status"], 124);
    }

    #[test]
    fn an_agent_shutdown_is_flagged_with_its_signal_and_status() {
        // The command caught SIGTERM and exited 0: its own code is kept, ctl's status is 143.
        let ended = outcome(Ending::AgentShutdown {
            by: 15,
            code: Some(0),
            signal: None,
        });
        let empty = Stream {
            bytes: b"",
            truncated: false,
        };
        let v = parse(&line("t", &ended, empty, empty));
        assert_eq!(v["status"], 143);
        assert_eq!(v["agent_shutdown"], true);
        assert_eq!(v["shutdown_signal"], 15);
        assert_eq!(v["exit_code"], 0);
        assert!(v["signal"].is_null());
        assert_eq!(v["timed_out"], false);
        assert!(v["error"].is_null());
    }

    #[test]
    fn failure_has_error_and_kind() {
        let failed = outcome(Ending::Failed(Failure::Connect(
            "connection refused by 127.0.0.1:9".into(),
        )));
        let empty = Stream {
            bytes: b"",
            truncated: false,
        };
        let v = parse(&line("t", &failed, empty, empty));
        assert_eq!(v["status"], 255);
        assert_eq!(v["error"], "connection refused by 127.0.0.1:9");
        assert_eq!(v["error_kind"], "connect");
        assert!(v["exit_code"].is_null());
    }
}
