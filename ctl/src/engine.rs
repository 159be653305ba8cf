//! The fan-out engine: every subcommand that talks to agents is a [`Job`] run on a stream of
//! targets, at most `parallel` at once, with a [`Renderer`] deciding what the user sees. A
//! single-target exec is this engine with one target and the pass-through renderer.
//!
//! Targets are pulled from their iterator only when a slot is free, and a finished target's
//! sink and result are handed to the renderer at once, so memory follows `parallel`, not the
//! number of targets.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::target::Target;

/// Work done on one target: connect, do something, report.
pub trait Job: Send + Sync + 'static {
    /// What one target's run produced.
    type Done: Send + 'static;

    /// Runs on `target`, writing any output to `sink`; `stop` says when to cancel.
    fn run<S: crate::output::Output + Send>(
        &self,
        target: &Target,
        sink: &mut S,
        stop: watch::Receiver<Option<i32>>,
    ) -> impl Future<Output = Self::Done> + Send;
}

/// What the user sees of a run.
pub trait Renderer<D> {
    /// Where one target's output goes while it runs.
    type Sink: crate::output::Output + Send + 'static;

    /// A target is starting; returns the sink for its output.
    fn start(&mut self, target: &Target, stop: &Stop) -> Self::Sink;

    /// A target finished with `done`; `sink` is the one [`Renderer::start`] gave it.
    fn finish(&mut self, target: Target, done: D, sink: Self::Sink);

    /// A target's task died inside ctl (a bug); the run goes on.
    fn lost(&mut self, why: String);

    /// Every target is done; `skipped` were never started (a stop came first). Returns
    /// ctl's exit status.
    fn end(&mut self, skipped: Vec<Target>) -> u8;
}

/// The stop signal every running target watches: the user's SIGINT/SIGTERM, or a renderer
/// that can no longer write (a closed stdout stops everything with SIGPIPE).
#[derive(Clone)]
pub struct Stop {
    sender: Arc<watch::Sender<Option<i32>>>,
}

impl Stop {
    /// A stop that fires when `cancel` does.
    pub fn following(mut cancel: watch::Receiver<Option<i32>>) -> Self {
        let stop = Self {
            sender: Arc::new(watch::Sender::new(None)),
        };
        let weak = Arc::downgrade(&stop.sender);
        tokio::spawn(async move {
            if let Ok(sig) = cancel.wait_for(Option::is_some).await.map(|sig| *sig) {
                if let Some(sender) = weak.upgrade() {
                    Self { sender }.request(sig.unwrap_or(libc::SIGTERM));
                }
            }
        });
        stop
    }

    /// Asks every target to stop with `signal`, unless a stop was already asked for.
    pub fn request(&self, signal: i32) {
        self.sender.send_if_modified(|current| {
            let first = current.is_none();
            if first {
                *current = Some(signal);
            }
            first
        });
    }

    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        self.sender.borrow().is_some()
    }

    fn subscribe(&self) -> watch::Receiver<Option<i32>> {
        self.sender.subscribe()
    }
}

/// How targets are started.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most targets running at once.
    pub parallel: usize,
}

/// Runs `job` on every target, pulling them from `targets` as slots free up; returns the
/// renderer's exit status.
pub async fn run<J, R, I>(
    job: Arc<J>,
    targets: I,
    limits: Limits,
    stop: Stop,
    renderer: &mut R,
) -> u8
where
    J: Job,
    R: Renderer<J::Done>,
    I: IntoIterator<Item = Target>,
{
    let mut pending = targets.into_iter();
    let mut tasks = JoinSet::new();
    loop {
        while tasks.len() < limits.parallel.max(1) && !stop.requested() {
            let Some(target) = pending.next() else {
                break;
            };
            let mut sink = renderer.start(&target, &stop);
            let (job, watch) = (job.clone(), stop.subscribe());
            tasks.spawn(async move {
                let done = job.run(&target, &mut sink, watch).await;
                (target, done, sink)
            });
        }
        match tasks.join_next().await {
            None => break,
            Some(Ok((target, done, sink))) => renderer.finish(target, done, sink),
            Some(Err(e)) => renderer.lost(format!("internal error in a target's task: {e}")),
        }
    }
    renderer.end(pending.collect())
}
