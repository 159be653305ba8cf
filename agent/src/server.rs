//! The accept loop, with every limit and the shutdown signal in one place.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::Rng;
use rexec_shared::keyfile::KeyRing;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::connection;

/// Every limit and timeout of the agent.
#[derive(Debug, Clone)]
pub struct Config {
    /// Connections held at once, authenticated or not. At the limit a handshake in progress is
    /// dropped to admit a new connection; when all are authenticated, new ones wait.
    pub max_connections: usize,
    /// Connections still in the handshake; beyond it, one is dropped to make room: the oldest of
    /// the source (IPv4 address or IPv6 /64) that holds the most.
    pub max_unauthenticated: usize,
    /// Handshakes in progress from one source (IPv4 address or IPv6 /64); beyond it, new ones
    /// are closed at once.
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
/// Sources are keyed by [`source_of`].
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
        let mut pending = self
            .shared
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner());
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
    /// Registers a new unauthenticated connection from `ip`; `None` if its source already holds
    /// its share. At the limit, one pending handshake is dropped to make room: the oldest one of
    /// the source holding the most (at random among equals). A flood from one place thus only
    /// ever displaces its own connections, never a client from elsewhere mid-handshake.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<(PendingGuard, oneshot::Receiver<()>)> {
        let source = source_of(ip);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let held = pending.per_source.get(&source).copied().unwrap_or(0);
        if self
            .config
            .max_unauthenticated_per_source
            .is_some_and(|max| held >= max)
        {
            return None;
        }
        if pending.by_age.len() >= self.config.max_unauthenticated {
            pending.evict_one(source);
        }
        let id = pending.next_id;
        pending.next_id += 1;
        let (tx, rx) = oneshot::channel();
        pending.by_age.insert(id, (source, tx));
        *pending.per_source.entry(source).or_default() += 1;
        Some((
            PendingGuard {
                shared: self.clone(),
                id,
                ip: source,
            },
            rx,
        ))
    }
}

impl Shared {
    /// Drops one handshake in progress, if there is any, to free a connection slot for a new
    /// connection from `ip`; the victim is chosen as at the unauthenticated limit.
    fn make_room(&self, ip: IpAddr) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if !pending.by_age.is_empty() {
            pending.evict_one(source_of(ip));
        }
    }
}

impl Pending {
    /// Drops the oldest handshake of the busiest source; `arriving` counts as holding one more.
    fn evict_one(&mut self, arriving: IpAddr) {
        let count = |src: &IpAddr, n: usize| n + usize::from(*src == arriving);
        let most = self
            .per_source
            .iter()
            .map(|(src, n)| count(src, *n))
            .max()
            .unwrap_or(0);
        let busiest: Vec<IpAddr> = self
            .per_source
            .iter()
            .filter(|(src, n)| count(src, **n) == most)
            .map(|(src, _)| *src)
            .collect();
        let pick = busiest
            .get(rand::thread_rng().gen_range(0..busiest.len().max(1)))
            .copied();
        // Counts drop when the evicted task ends, so a source may have no entry left here yet:
        // fall back to the oldest overall.
        let victim = pick
            .and_then(|src| {
                self.by_age
                    .iter()
                    .find(|(_, (s, _))| *s == src)
                    .map(|(id, _)| *id)
            })
            .or_else(|| self.by_age.keys().next().copied());
        if let Some((_, evict)) = victim.and_then(|id| self.by_age.remove(&id)) {
            let _ = evict.send(());
        }
    }
}

/// The unit the unauthenticated limits count by: an IPv4 address, or an IPv6 /64 (one host can
/// hold a whole /64, so counting single IPv6 addresses would count nothing).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

/// Serves connections from `listener` until `shutdown` resolves, then stops running commands
/// and returns once every connection has ended (or the shutdown grace ran out).
pub async fn run(
    listener: TcpListener,
    keys: Arc<KeyStore>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) {
    let shared = Arc::new(Shared {
        config,
        keys,
        pending: Mutex::default(),
    });
    let limit = Arc::new(Semaphore::new(shared.config.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a clone; recv() returns None once all of them have ended.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);

    loop {
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
        // Every slot taken: if handshakes in progress hold some, one gives way (chosen as at the
        // unauthenticated limit), so idle handshakes never keep out a client that would
        // authenticate. Only when authenticated clients hold them all does the new one wait.
        let permit = match limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                shared.make_room(peer.ip());
                tokio::select! {
                    p = limit.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let Some((guard, evicted)) = shared.admit(peer.ip()) else {
            // Rate-limited like every other pre-authentication line: a flood must not flood the log.
            connection::log_unauthenticated_close(
                peer,
                "too many unauthenticated connections from this address",
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn shared(max_unauthenticated: usize, per_source: Option<usize>) -> Arc<Shared> {
        let ring = KeyRing::parse(
            &rexec_shared::keyfile::generate("t"),
            std::path::Path::new("k"),
        )
        .unwrap();
        let config = Config {
            max_unauthenticated,
            max_unauthenticated_per_source: per_source,
            ..Config::default()
        };
        Arc::new(Shared {
            config,
            keys: Arc::new(KeyStore::new(ring)),
            pending: Mutex::default(),
        })
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_flood_from_one_source_evicts_only_its_own_handshakes() {
        let shared = shared(4, None);
        let (_honest, mut honest_evicted) = shared.admit(ip("192.0.2.7")).unwrap();
        let mut flood = Vec::new();
        for _ in 0..50 {
            flood.push(shared.admit(ip("198.51.100.1")).unwrap());
        }
        assert!(
            honest_evicted.try_recv().is_err(),
            "the honest handshake was dropped"
        );
        let dropped = flood
            .iter_mut()
            .filter_map(|(_, rx)| rx.try_recv().ok())
            .count();
        assert_eq!(
            dropped,
            50 - 3,
            "the flood keeps three slots, the honest client one"
        );
    }

    #[test]
    fn oldest_of_the_same_source_goes_first() {
        let shared = shared(2, None);
        let (_a, mut a) = shared.admit(ip("192.0.2.1")).unwrap();
        let (_b, mut b) = shared.admit(ip("192.0.2.1")).unwrap();
        let (_c, mut c) = shared.admit(ip("192.0.2.1")).unwrap();
        assert!(a.try_recv().is_ok());
        assert!(b.try_recv().is_err() && c.try_recv().is_err());
    }

    #[test]
    fn per_source_limit_counts_an_ipv6_64_as_one_source() {
        let shared = shared(64, Some(2));
        let _a = shared.admit(ip("2001:db8::1")).unwrap();
        let _b = shared.admit(ip("2001:db8::ffff:2")).unwrap();
        assert!(shared.admit(ip("2001:db8::3")).is_none());
        assert!(shared.admit(ip("2001:db8:0:1::3")).is_some());
        drop(_a);
        assert!(
            shared.admit(ip("2001:db8::4")).is_some(),
            "a finished handshake frees its slot"
        );
    }
}
