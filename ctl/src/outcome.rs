//! How one target's job ended. An enum, so that contradictions (an exit code *and* a
//! connection failure, a timeout with an exit code) cannot be built.

use std::fmt;
use std::time::Duration;

use rexec_shared::message::ExitStatus;

use crate::exit;

/// Why a target did not deliver a complete, authenticated result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Could not resolve, reach or connect in time.
    Connect(String),
    /// The handshake failed: wrong key, not an agent, refused.
    Auth(String),
    /// The stream was cut, altered, or the agent misbehaved after authenticating.
    Stream(String),
    /// The agent could not carry out the request (bad directory, cannot start the shell).
    Agent(String),
}

impl Failure {
    /// The short name of the failure's class, for scripts that branch on it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Auth(_) => "auth",
            Self::Stream(_) => "stream",
            Self::Agent(_) => "agent",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(t) | Self::Auth(t) | Self::Stream(t) | Self::Agent(t) => f.write_str(t),
        }
    }
}

/// How a command on one target ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The command exited by itself with this code.
    Exited(i32),
    /// The command was killed by this signal (not by `--timeout`).
    Killed(i32),
    /// The agent killed the command when `--timeout` ran out, with this signal if it said.
    TimedOut(Option<i32>),
    /// The agent ended the command with signal `by` because the agent was shutting down;
    /// `code` or `signal` says how the command then ended (one that caught the signal may
    /// have exited 0: it still did not finish its work).
    AgentShutdown {
        /// The signal the agent used: SIGTERM, or SIGKILL after its grace.
        by: i32,
        /// The command's exit code, if it exited.
        code: Option<i32>,
        /// The signal that killed it, if one did.
        signal: Option<i32>,
    },
    /// `--timeout` and its slack passed with no word from the agent: ctl gave up waiting and
    /// cannot know what happened there.
    Unanswered,
    /// No complete, authenticated result.
    Failed(Failure),
}

impl Ending {
    /// The ending an exit report from the agent describes.
    pub fn from_status(status: ExitStatus) -> Self {
        match status {
            ExitStatus {
                shutdown_signal: Some(by),
                code,
                signal,
                ..
            } => Self::AgentShutdown { by, code, signal },
            ExitStatus {
                timed_out: true,
                signal,
                ..
            } => Self::TimedOut(signal),
            ExitStatus {
                code: Some(code), ..
            } => Self::Exited(code),
            ExitStatus {
                signal: Some(sig), ..
            } => Self::Killed(sig),
            ExitStatus { .. } => Self::Failed(Failure::Stream(
                "protocol error: the agent reported neither an exit code nor a signal".into(),
            )),
        }
    }

    /// Whether the command ran and exited 0.
    pub fn succeeded(&self) -> bool {
        *self == Self::Exited(0)
    }

    /// ctl's exit status for this ending, as the contract defines it.
    pub fn exit_code(&self) -> u8 {
        match self {
            // Exit codes are 0-255 on Unix; a shell reports the low byte, and so do we.
            Self::Exited(code) => (code & 0xff) as u8,
            Self::Killed(sig) | Self::AgentShutdown { by: sig, .. } => exit::signalled(*sig),
            Self::TimedOut(_) | Self::Unanswered => exit::TIMED_OUT,
            Self::Failed(_) => exit::UNREACHABLE,
        }
    }
}

/// Input that never reached a command: the exchange ended (the command exited, or was
/// ended) while its stdin was still open and ctl had sent, or read to send, more than the
/// agent had written to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLost {
    /// Bytes ctl had read for the command that the agent did not write to its stdin.
    pub bytes: u64,
    /// Whether ctl had reached the end of the input (if not, more may have followed).
    pub ended: bool,
}

/// The result of one exec on one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// How it ended.
    pub ending: Ending,
    /// Wall time from the start of the connection.
    pub duration: Duration,
    /// Input that was dropped when the exchange ended, if any was.
    pub input_lost: Option<InputLost>,
}

impl Outcome {
    /// ctl's exit status for this outcome.
    pub fn exit_code(&self) -> u8 {
        self.ending.exit_code()
    }

    /// The failure, if the target gave no complete result.
    pub fn failure(&self) -> Option<&Failure> {
        match &self.ending {
            Ending::Failed(f) => Some(f),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: Option<i32>, signal: Option<i32>, timed_out: bool) -> Ending {
        Ending::from_status(ExitStatus {
            code,
            signal,
            timed_out,
            shutdown_signal: None,
            stdin_cut: None,
        })
    }

    #[test]
    fn exit_reports_map_to_endings_and_statuses() {
        assert_eq!(status(Some(0), None, false), Ending::Exited(0));
        assert_eq!(status(Some(3), None, false).exit_code(), 3);
        assert_eq!(status(None, Some(9), false), Ending::Killed(9));
        assert_eq!(status(None, Some(9), false).exit_code(), 137);
        assert_eq!(status(None, Some(9), true), Ending::TimedOut(Some(9)));
        assert_eq!(status(None, Some(9), true).exit_code(), 124);
        assert_eq!(Ending::Unanswered.exit_code(), 124);
        assert!(matches!(status(None, None, false), Ending::Failed(_)));
        assert_eq!(status(None, None, false).exit_code(), 255);
    }

    #[test]
    fn a_command_the_agents_shutdown_ended_is_not_a_success() {
        let shutdown = |code, signal, by| {
            Ending::from_status(ExitStatus {
                code,
                signal,
                timed_out: false,
                shutdown_signal: Some(by),
                stdin_cut: None,
            })
        };
        // It caught SIGTERM and exited 0: still 128+15, never 0.
        let caught = shutdown(Some(0), None, 15);
        assert_eq!(
            caught,
            Ending::AgentShutdown {
                by: 15,
                code: Some(0),
                signal: None
            }
        );
        assert!(!caught.succeeded());
        assert_eq!(caught.exit_code(), 143);
        assert_eq!(shutdown(None, Some(15), 15).exit_code(), 143);
        assert_eq!(shutdown(None, Some(9), 9).exit_code(), 137);
        assert_eq!(shutdown(Some(3), None, 9).exit_code(), 137);
    }
}
