//! The fan-out engine: every subcommand that talks to agents is a [`Job`] run on a stream of
//! targets, at most `parallel` at once, with a [`Renderer`] deciding what the user sees. A
//! single-target exec is this engine with one target and the pass-through renderer.
//!
//! Targets are pulled from their iterator only when a slot is free, and a finished target's
//! sink and result are handed to the renderer at once, so memory follows `parallel`, not the
//! number of targets.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::exit;
use crate::nodeset;
use crate::target::Target;

/// Time ctl waits after SIGINT/SIGTERM for the running targets to confirm the cancel.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

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

    /// Whether `done` counts as a failure (for `--max-fail`).
    fn failed(done: &Self::Done) -> bool;
}

/// Why some targets were never started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unstarted {
    /// A stop (signal, closed stdout) came first.
    Stopped,
    /// `--max-fail` failures came first.
    MaxFail(usize),
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

    /// Every target is done; `skipped` were never started, for the reason given. Returns
    /// ctl's exit status.
    fn end(&mut self, skipped: Vec<Target>, why: Unstarted) -> u8;
}

/// The stop signal every running target watches: the user's SIGINT/SIGTERM, or a renderer
/// that can no longer write (a closed stdout stops everything with SIGPIPE).
#[derive(Clone)]
pub struct Stop {
    sender: Arc<watch::Sender<Option<i32>>>,
    /// The targets running now, to name those that do not confirm a cancel.
    running: Arc<Mutex<BTreeSet<String>>>,
}

impl Stop {
    /// A stop that fires when `cancel` (the user's signal) does. If the running targets
    /// have not confirmed within [`CANCEL_WAIT`], ctl names them and exits 128+N.
    pub fn following(mut cancel: watch::Receiver<Option<i32>>) -> Self {
        let stop = Self {
            sender: Arc::new(watch::Sender::new(None)),
            running: Arc::default(),
        };
        let (weak, running) = (Arc::downgrade(&stop.sender), stop.running.clone());
        tokio::spawn(async move {
            let Ok(sig) = cancel.wait_for(Option::is_some).await.map(|sig| *sig) else {
                return;
            };
            let sig = sig.unwrap_or(libc::SIGTERM);
            if let Some(sender) = weak.upgrade() {
                Self {
                    sender,
                    running: running.clone(),
                }
                .request(sig);
            }
            tokio::time::sleep(CANCEL_WAIT).await;
            let names: Vec<String> = running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect();
            eprintln!(
                "ctl: {} did not confirm the cancel within {CANCEL_WAIT:?}; exiting",
                nodeset::fold(&names)
            );
            crate::terminal::restore();
            std::process::exit(i32::from(exit::signalled(sig)));
        });
        stop
    }

    fn running(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // A panic while holding the lock leaves a set that is still valid.
        self.running.lock().unwrap_or_else(|e| e.into_inner())
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
    /// Start nothing new once this many have failed.
    pub max_fail: Option<usize>,
    /// Run in batches of this many, each finished before the next starts.
    pub batch: Option<usize>,
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
    let (mut failures, mut in_batch) = (0usize, 0usize);
    let failed_out = |failures: usize| limits.max_fail.is_some_and(|n| failures >= n);
    loop {
        if tasks.is_empty() {
            in_batch = 0;
        }
        while tasks.len() < limits.parallel.max(1)
            && !stop.requested()
            && !failed_out(failures)
            && limits.batch.is_none_or(|b| in_batch < b)
        {
            let Some(target) = pending.next() else {
                break;
            };
            in_batch += 1;
            let mut sink = renderer.start(&target, &stop);
            stop.running().insert(target.spelling.clone());
            let (job, watch) = (job.clone(), stop.subscribe());
            tasks.spawn(async move {
                let done = job.run(&target, &mut sink, watch).await;
                (target, done, sink)
            });
        }
        match tasks.join_next().await {
            None => break,
            Some(Ok((target, done, sink))) => {
                stop.running().remove(&target.spelling);
                failures += usize::from(J::failed(&done));
                renderer.finish(target, done, sink);
            }
            Some(Err(e)) => {
                failures += 1;
                renderer.lost(format!("internal error in a target's task: {e}"));
            }
        }
    }
    let why = match stop.requested() {
        true => Unstarted::Stopped,
        false => Unstarted::MaxFail(failures),
    };
    renderer.end(pending.collect(), why)
}
