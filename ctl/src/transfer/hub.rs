//! One read of the local sources, sent to every target that is ready for it.
//!
//! Targets connect at their own pace. A *pass* over the sources starts once every target that
//! has started connecting is either connected (and subscribed) or failed; it reads each file
//! once and hands every chunk to all its subscribers, so up to `-P` targets are fed from one
//! read. A target that connects while a pass is running waits for the next pass (one more read
//! of the sources, for the next group of targets). Each subscriber's queue is bounded, so the
//! slowest target sets the pace and memory stays a few chunks per target, whatever the size of
//! the files.

use std::sync::{Arc, Mutex};

use rexec_shared::files::source::{self, Event};
use tokio::sync::mpsc;

/// Events queued per target ahead of its connection.
const QUEUED: usize = 8;

/// Where local read failures are reported: once per run, not once per target.
pub type Report = Box<dyn Fn(&str) + Send + Sync>;

/// The shared reader of one push's sources.
pub struct Hub {
    paths: Vec<Vec<u8>>,
    recursive: bool,
    report: Report,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    connecting: usize,
    waiting: Vec<mpsc::Sender<Event>>,
    running: bool,
    passes: u64,
}

/// A target that has started connecting: it either subscribes with [`Ticket::ready`] or, when
/// dropped, stops holding the next pass back.
pub struct Ticket {
    hub: Arc<Hub>,
    done: bool,
}

impl Hub {
    /// A hub for `paths` (trees with `recursive`); local read failures go to `report`.
    pub fn new(paths: Vec<Vec<u8>>, recursive: bool, report: Report) -> Arc<Self> {
        Arc::new(Self {
            paths,
            recursive,
            report,
            state: Mutex::new(State::default()),
        })
    }

    /// Says that one more target is connecting.
    pub fn arrive(self: &Arc<Self>) -> Ticket {
        self.lock().connecting += 1;
        Ticket {
            hub: self.clone(),
            done: false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock still holds consistent counts: every update is a single statement.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn maybe_start(self: &Arc<Self>, state: &mut State) {
        if state.running || state.connecting > 0 || state.waiting.is_empty() {
            return;
        }
        state.running = true;
        let first = state.passes == 0;
        state.passes += 1;
        let subscribers = std::mem::take(&mut state.waiting);
        tokio::spawn(self.clone().pass(subscribers, first));
    }

    async fn pass(self: Arc<Self>, mut subscribers: Vec<mpsc::Sender<Event>>, first: bool) {
        match source::spawn(self.paths.clone(), self.recursive, None).await {
            Ok(mut events) => {
                while let Some(event) = events.recv().await {
                    if let (true, Event::Failed { message, .. }) = (first, &event) {
                        (self.report)(message);
                    }
                    let mut gone = Vec::new();
                    for (i, tx) in subscribers.iter().enumerate() {
                        if tx.send(event.clone()).await.is_err() {
                            gone.push(i);
                        }
                    }
                    for i in gone.into_iter().rev() {
                        subscribers.swap_remove(i);
                    }
                    if subscribers.is_empty() {
                        break;
                    }
                }
            }
            Err(message) => {
                (self.report)(&message);
                for tx in &subscribers {
                    let _ = tx
                        .send(Event::Failed {
                            path: Vec::new(),
                            message: message.clone(),
                        })
                        .await;
                }
            }
        }
        drop(subscribers);
        let mut state = self.lock();
        state.running = false;
        self.maybe_start(&mut state);
    }
}

impl Ticket {
    /// The target is connected: its events start with the next pass.
    pub fn ready(mut self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel(QUEUED);
        let hub = self.hub.clone();
        let mut state = hub.lock();
        state.connecting -= 1;
        state.waiting.push(tx);
        self.done = true;
        hub.maybe_start(&mut state);
        rx
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            let hub = self.hub.clone();
            let mut state = hub.lock();
            state.connecting -= 1;
            hub.maybe_start(&mut state);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    async fn drain(mut rx: mpsc::Receiver<Event>) -> (usize, bool) {
        let mut data = 0;
        let mut done = false;
        while let Some(e) = rx.recv().await {
            match e {
                Event::Data(d) => data += d.len(),
                Event::Done(_) => done = true,
                _ => {}
            }
        }
        (data, done)
    }

    #[tokio::test]
    async fn a_pass_waits_for_every_connecting_target_and_feeds_them_all() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, vec![1u8; 600_000]).unwrap();
        let reports = Arc::new(AtomicUsize::new(0));
        let counted = reports.clone();
        let hub = Hub::new(
            vec![
                file.as_os_str().as_encoded_bytes().to_vec(),
                b"/no/such/file".to_vec(),
            ],
            false,
            Box::new(move |_| {
                counted.fetch_add(1, Ordering::SeqCst);
            }),
        );
        let (a, b, c) = (hub.arrive(), hub.arrive(), hub.arrive());
        let rx_a = a.ready();
        // B is still connecting: no pass yet, so A has nothing.
        tokio::task::yield_now().await;
        assert_eq!(hub.lock().passes, 0);
        drop(c); // C failed to connect.
        let rx_b = b.ready();
        let (ra, rb) = tokio::join!(drain(rx_a), drain(rx_b));
        assert_eq!(ra, (600_000, true));
        assert_eq!(rb, (600_000, true));
        // A late target gets a pass of its own; the read failure was reported only once.
        let rx_d = hub.arrive().ready();
        assert_eq!(drain(rx_d).await, (600_000, true));
        assert_eq!(hub.lock().passes, 2);
        assert_eq!(reports.load(Ordering::SeqCst), 1);
    }
}
