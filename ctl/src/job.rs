//! The jobs the engine runs on each target: an exec, an interactive session, a ping.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rexec_shared::keyfile::KeyEntry;
use rexec_shared::message::{ExecRequest, PtyRequest};
use tokio::sync::watch;

use crate::engine::Job;
use crate::outcome::{Failure, Outcome};
use crate::output::Output;
use crate::remote::{self, Pong};
use crate::stdin::{self, StdinChunks};
use crate::target::Target;

/// What the commands read on stdin.
pub enum Input {
    /// Nothing: an empty stdin.
    Empty,
    /// The same bytes for every target (`--script`).
    Fixed(Arc<[u8]>),
    /// ctl's own stdin, for the one target of a single-target run.
    Forward(Mutex<Option<StdinChunks>>),
    /// ctl's own stdin, the same bytes to every target (`--stdin` with many targets).
    Replay(Arc<stdin::Replayable>),
}

impl Input {
    /// ctl's own stdin.
    pub fn forward() -> Self {
        Self::Forward(Mutex::new(Some(stdin::forward())))
    }

    /// Whether the command gets a stdin at all (else an empty one).
    pub fn sends(&self) -> bool {
        !matches!(self, Self::Empty)
    }

    fn take(&self) -> Option<StdinChunks> {
        match self {
            Self::Empty => None,
            Self::Fixed(bytes) => Some(stdin::fixed(bytes.clone())),
            Self::Replay(replay) => Some(replay.chunks()),
            // A lock poisoned by a panic still holds a valid Option.
            Self::Forward(rx) => rx.lock().unwrap_or_else(|e| e.into_inner()).take(),
        }
    }
}

/// Runs one command on each target.
pub struct Exec {
    /// The key to authenticate with.
    pub key: KeyEntry,
    /// The command, as sent to every target.
    pub request: ExecRequest,
    /// The commands' stdin.
    pub input: Input,
    /// Bound on connecting and authenticating, per target.
    pub connect_timeout: Duration,
    /// More tries for a target that could not be reached.
    pub retries: u32,
}

impl Job for Exec {
    type Done = Outcome;

    async fn run<S: Output + Send>(
        &self,
        target: &Target,
        sink: &mut S,
        stop: watch::Receiver<Option<i32>>,
    ) -> Outcome {
        let request = ExecRequest {
            stdin: self.input.sends(),
            ..self.request.clone()
        };
        let stdin = self.input.take();
        let mut outcome = remote::exec(
            target,
            &self.key,
            request,
            self.connect_timeout,
            self.retries,
            stdin,
            stop,
            sink,
        )
        .await;
        // A --script is the interpreter's input, which it may leave unread at its `exit`.
        if matches!(self.input, Input::Fixed(_)) {
            outcome.input_lost = None;
        }
        outcome
    }

    fn failed(done: &Outcome) -> bool {
        !done.ending.succeeded()
    }
}

/// Runs one interactive session (`exec -t`) on its one target.
pub struct Session {
    /// The key to authenticate with.
    pub key: KeyEntry,
    /// The session's command and terminal.
    pub request: PtyRequest,
    /// Bound on connecting and authenticating.
    pub connect_timeout: Duration,
}

impl Job for Session {
    type Done = Outcome;

    async fn run<S: Output + Send>(
        &self,
        target: &Target,
        sink: &mut S,
        stop: watch::Receiver<Option<i32>>,
    ) -> Outcome {
        crate::interactive::run(
            target,
            &self.key,
            self.request.clone(),
            self.connect_timeout,
            stop,
            sink,
        )
        .await
    }

    fn failed(done: &Outcome) -> bool {
        !done.ending.succeeded()
    }
}

/// Connects, authenticates and asks each target for its version.
pub struct Ping {
    /// The key to authenticate with.
    pub key: KeyEntry,
    /// Bound on connecting, authenticating and the answer.
    pub timeout: Duration,
    /// More tries for a target that could not be reached.
    pub retries: u32,
}

impl Job for Ping {
    type Done = Result<Pong, Failure>;

    async fn run<S: Output + Send>(
        &self,
        target: &Target,
        _sink: &mut S,
        stop: watch::Receiver<Option<i32>>,
    ) -> Self::Done {
        remote::ping(target, &self.key, self.timeout, self.retries, stop).await
    }

    fn failed(done: &Self::Done) -> bool {
        done.is_err()
    }
}
