//! The accept loop, with every limit and the shutdown signal in one place.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rexec_shared::keyfile::KeyRing;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::connection;

/// Every limit and timeout of the agent.
#[derive(Debug, Clone)]
pub struct Config {
    /// Connections held at once, authenticated or not; beyond it, new ones wait in the backlog.
    pub max_connections: usize,
    /// Connections still in the handshake; beyond it, the oldest is dropped to make room.
    pub max_unauthenticated: usize,
    /// Handshakes in progress from one IP address; beyond it, new ones are closed at once.
    pub max_unauthenticated_per_source: Option<usize>,
    /// Time a client has from connecting to sending its request.
    pub handshake_timeout: Duration,
    /// Time between SIGTERM and SIGKILL when a process group is killed.
    pub kill_grace: Duration,
    /// Time running commands get to end and report after the agent is told to stop.
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_unauthenticated: 64,
            max_unauthenticated_per_source: None,
            handshake_timeout: Duration::from_secs(10),
            kill_grace: Duration::from_secs(2),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// The keys clients may authenticate with; replaced whole on reload.
#[derive(Debug)]
pub struct KeyStore(RwLock<Arc<KeyRing>>);

impl KeyStore {
    /// A store holding `ring`.
    pub fn new(ring: KeyRing) -> Self {
        Self(RwLock::new(Arc::new(ring)))
    }

    /// The keys in force now.
    pub fn current(&self) -> Arc<KeyRing> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `ring` in force for handshakes that start from now on.
    pub fn replace(&self, ring: KeyRing) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
    }
}

/// What every connection task shares.
pub struct Shared {
    /// Limits and timeouts.
    pub config: Config,
    /// Keys in force.
    pub keys: Arc<KeyStore>,
    pending: Mutex<Pending>,
}

/// Connections still in their handshake, oldest first, and how many each source holds.
#[derive(Default)]
struct Pending {
    next_id: u64,
    by_age: BTreeMap<u64, (IpAddr, oneshot::Sender<()>)>,
    per_source: HashMap<IpAddr, usize>,
}

/// Counts a connection as unauthenticated until dropped.
pub struct PendingGuard {
    shared: Arc<Shared>,
    id: u64,
    ip: IpAddr,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut pending = self.shared.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.by_age.remove(&self.id);
        if let Some(count) = pending.per_source.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                pending.per_source.remove(&self.ip);
            }
        }
    }
}

impl Shared {
    /// Registers a new unauthenticated connection from `ip`, dropping the oldest one if the
    /// limit is reached; `None` if `ip` already holds its share.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<(PendingGuard, oneshot::Receiver<()>)> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let from_ip = pending.per_source.get(&ip).copied().unwrap_or(0);
        if self.config.max_unauthenticated_per_source.is_some_and(|max| from_ip >= max) {
            return None;
        }
        if pending.by_age.len() >= self.config.max_unauthenticated {
            if let Some((_, (_, evict))) = pending.by_age.pop_first() {
                // Its guard still decrements the per-source count when the task ends.
                let _ = evict.send(());
            }
        }
        let id = pending.next_id;
        pending.next_id += 1;
        let (tx, rx) = oneshot::channel();
        pending.by_age.insert(id, (ip, tx));
        *pending.per_source.entry(ip).or_default() += 1;
        Some((PendingGuard { shared: self.clone(), id, ip }, rx))
    }
}

/// Serves connections from `listener` until `shutdown` resolves, then stops running commands
/// and returns once every connection has ended (or the shutdown grace ran out).
pub async fn run(listener: TcpListener, keys: Arc<KeyStore>, config: Config, shutdown: impl Future<Output = ()>) {
    let shared = Arc::new(Shared { config, keys, pending: Mutex::default() });
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a clone; recv() returns None once all of them have ended.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);

    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before accept: back off.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some((guard, evicted)) = shared.admit(peer.ip()) else {
            tracing::warn!(%peer, "refused: too many unauthenticated connections from this address");
            continue;
        };
        let shared = shared.clone();
        let stop = stop_rx.clone();
        let alive = alive_tx.clone();
        tokio::spawn(async move {
            connection::serve(stream, peer, shared, guard, evicted, stop).await;
            drop(permit);
            drop(alive);
        });
    }

    drop(listener);
    tracing::info!("shutting down: no new connections; stopping running commands");
    let _ = stop_tx.send(true);
    drop(alive_tx);
    let grace = shared.config.kill_grace + shared.config.shutdown_grace;
    if tokio::time::timeout(grace, alive_rx.recv()).await.is_err() {
        tracing::warn!("some connections did not end within {grace:?}; exiting anyway");
    }
}
