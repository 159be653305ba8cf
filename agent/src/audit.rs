//! The audit record: one log line per command when it starts, and one when it ends.

use std::net::SocketAddr;

use rexec_shared::handshake::Principal;

use rexec_shared::message::ScriptInfo;

use crate::logging::AUDIT;
use crate::policy::Refusal;
use crate::request::exec::{KillReason, Outcome};
use crate::request::push::Outcome as TransferOutcome;

/// Logs that a command is about to start (before anything is spawned): peer, key id, command.
pub fn started(peer: SocketAddr, key_id: &str, command: &[u8]) {
    let command = String::from_utf8_lossy(command);
    tracing::info!(target: AUDIT, %peer, key_id, command = &*command, "command started");
}

/// Logs the end of one command: peer, key id, command, the script it ran (`ctl exec
/// --script`: its name and SHA-256), status, duration, bytes sent.
pub fn command(
    peer: SocketAddr,
    principal: &Principal,
    command: &[u8],
    script: Option<&ScriptInfo>,
    outcome: &Outcome,
) {
    // Not escaped here: the text format quotes string fields with Rust escapes and the JSON
    // format with JSON escapes, so a command with newlines still makes one line either way.
    let command = String::from_utf8_lossy(command);
    let status = describe(outcome);
    let duration_ms = outcome.duration.as_millis() as u64;
    let script_name = script.map(|s| String::from_utf8_lossy(&s.name).into_owned());
    let script_sha256 = script.map(|s| {
        s.digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    });
    tracing::info!(
        target: AUDIT,
        %peer,
        key_id = principal.key_id,
        agent_name = principal.agent_name.as_str(),
        command = &*command,
        script = script_name.as_deref(),
        script_sha256 = script_sha256.as_deref(),
        status,
        exit_code = outcome.status.and_then(|s| s.code),
        signal = outcome.status.and_then(|s| s.signal),
        timed_out = outcome.status.is_some_and(|s| s.timed_out),
        shutdown_signal = outcome.status.and_then(|s| s.shutdown_signal),
        duration_ms,
        bytes_out = outcome.bytes_out,
        "command finished"
    );
}

fn describe(outcome: &Outcome) -> String {
    let mut text = match outcome.status {
        Some(s) if s.timed_out => format!("timed out (signal {})", s.signal.unwrap_or(0)),
        Some(s) => match (s.code, s.signal) {
            (Some(code), _) => format!("exit {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            (None, None) => "unknown".into(),
        },
        None => "not run".into(),
    };
    match outcome.killed {
        Some(KillReason::Cancel(sig)) => {
            text.push_str(&format!(", cancelled by client (signal {sig})"))
        }
        Some(KillReason::ClientGone) => text.push_str(", client went away"),
        Some(KillReason::ClientSilent(after)) => text.push_str(&format!(
            ", client silent for {}s (frozen, or the network to it is gone)",
            after.as_secs_f64()
        )),
        Some(KillReason::Shutdown) => {
            text.push_str(", agent shutting down");
            if let Some(sig) = outcome.status.and_then(|s| s.shutdown_signal) {
                text.push_str(&format!(" (ended with signal {sig})"));
            }
        }
        Some(KillReason::Timeout) | None => {}
    }
    if let Some(error) = &outcome.error {
        text.push_str(&format!(", error: {error}"));
    }
    text
}

/// Logs a request that the key's policy refused (nothing was run): peer, key id, what was
/// asked, the rule and why.
pub fn refused(peer: SocketAddr, principal: &Principal, asked: &str, refusal: &Refusal) {
    tracing::warn!(
        target: AUDIT,
        %peer,
        key_id = principal.key_id,
        agent_name = principal.agent_name.as_str(),
        command = asked,
        status = "refused by policy",
        rule = refusal.rule,
        reason = &*refusal.reason,
        "request refused"
    );
}

/// Logs the end of one file transfer: peer, key id, direction, paths, counts, duration.
pub fn transfer(
    peer: SocketAddr,
    principal: &Principal,
    direction: &str,
    paths: &[Vec<u8>],
    outcome: &TransferOutcome,
) {
    let paths = paths
        .iter()
        .map(|p| String::from_utf8_lossy(p))
        .collect::<Vec<_>>()
        .join(" ");
    let status = match (&outcome.error, outcome.failed) {
        (Some(error), _) => format!("not finished: {error}"),
        (None, 0) => "ok".to_owned(),
        (None, n) => format!("{n} failed"),
    };
    tracing::info!(
        target: AUDIT,
        %peer,
        key_id = principal.key_id,
        agent_name = principal.agent_name.as_str(),
        request = direction,
        paths = &*paths,
        status,
        files = outcome.files,
        bytes = outcome.bytes,
        failed = outcome.failed,
        duration_ms = outcome.duration.as_millis() as u64,
        "transfer finished"
    );
}
