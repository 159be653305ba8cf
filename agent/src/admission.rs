//! Admission of connections before they authenticate: how many handshakes may be in progress,
//! in all and per source, which one gives way when a new connection needs room, and the
//! rate-limited log of connections closed before authentication.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::oneshot;

/// The handshakes in progress and the limits on them.
pub struct Admission {
    max_unauthenticated: usize,
    max_unauthenticated_per_source: Option<usize>,
    pending: Mutex<Pending>,
}

/// An admitted, not yet authenticated connection: it counts against the limits until
/// `pending` is dropped, and `evicted` fires if it must give way to a newer one.
pub struct Ticket {
    /// Counts the connection as unauthenticated until dropped.
    pub pending: PendingGuard,
    /// Resolves when the connection is dropped to make room.
    pub evicted: oneshot::Receiver<()>,
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
    admission: Arc<Admission>,
    id: u64,
    ip: IpAddr,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut pending = self
            .admission
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

impl Admission {
    /// No handshakes in progress yet; at most `max_unauthenticated` at once, and at most
    /// `per_source` from one source when given.
    pub fn new(max_unauthenticated: usize, per_source: Option<usize>) -> Arc<Self> {
        Arc::new(Self {
            max_unauthenticated,
            max_unauthenticated_per_source: per_source,
            pending: Mutex::default(),
        })
    }

    /// Registers a new unauthenticated connection from `ip`; `None` if its source already holds
    /// its share. At the limit, one pending handshake is dropped to make room: the oldest one of
    /// the source holding the most (at random among equals). A flood from one place thus only
    /// ever displaces its own connections, never a client from elsewhere mid-handshake.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Ticket> {
        let source = source_of(ip);
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let held = pending.per_source.get(&source).copied().unwrap_or(0);
        if self
            .max_unauthenticated_per_source
            .is_some_and(|max| held >= max)
        {
            return None;
        }
        if pending.by_age.len() >= self.max_unauthenticated {
            pending.evict_one(source);
        }
        let id = pending.next_id;
        pending.next_id += 1;
        let (tx, rx) = oneshot::channel();
        pending.by_age.insert(id, (source, tx));
        *pending.per_source.entry(source).or_default() += 1;
        Some(Ticket {
            pending: PendingGuard {
                admission: self.clone(),
                id,
                ip: source,
            },
            evicted: rx,
        })
    }

    /// Drops one handshake in progress, if there is any, to free a connection slot for a new
    /// connection from `ip`; the victim is chosen as at the unauthenticated limit.
    pub fn make_room(&self, ip: IpAddr) {
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

/// Lines per second about connections closed before authentication. Anyone who can reach the
/// port can cause them, so beyond this they are counted instead of written.
const UNAUTHENTICATED_LOG_PER_SEC: u32 = 20;

/// Logs why a connection ended before authentication, at most [`UNAUTHENTICATED_LOG_PER_SEC`]
/// lines a second; the others are counted and their number logged once the second is over.
pub fn log_unauthenticated_close(peer: SocketAddr, reason: &str) {
    struct Window {
        start: Instant,
        written: u32,
        suppressed: u64,
    }
    static WINDOW: Mutex<Option<Window>> = Mutex::new(None);
    let mut guard = WINDOW.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let window = guard.get_or_insert(Window {
        start: now,
        written: 0,
        suppressed: 0,
    });
    if now.duration_since(window.start) >= Duration::from_secs(1) {
        if window.suppressed > 0 {
            tracing::warn!(
                "{} more connections closed before authentication were not logged (over {UNAUTHENTICATED_LOG_PER_SEC}/s)",
                window.suppressed
            );
        }
        *window = Window {
            start: now,
            written: 0,
            suppressed: 0,
        };
    }
    if window.written < UNAUTHENTICATED_LOG_PER_SEC {
        window.written += 1;
        tracing::warn!(%peer, "connection closed before authentication: {reason}");
    } else {
        window.suppressed += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_unauthenticated: usize, per_source: Option<usize>) -> Arc<Admission> {
        Admission::new(max_unauthenticated, per_source)
    }

    fn split(ticket: Ticket) -> (PendingGuard, oneshot::Receiver<()>) {
        (ticket.pending, ticket.evicted)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_flood_from_one_source_evicts_only_its_own_handshakes() {
        let shared = admission(4, None);
        let (_honest, mut honest_evicted) = split(shared.admit(ip("192.0.2.7")).unwrap());
        let mut flood = Vec::new();
        for _ in 0..50 {
            flood.push(split(shared.admit(ip("198.51.100.1")).unwrap()));
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
        let shared = admission(2, None);
        let (_a, mut a) = split(shared.admit(ip("192.0.2.1")).unwrap());
        let (_b, mut b) = split(shared.admit(ip("192.0.2.1")).unwrap());
        let (_c, mut c) = split(shared.admit(ip("192.0.2.1")).unwrap());
        assert!(a.try_recv().is_ok());
        assert!(b.try_recv().is_err() && c.try_recv().is_err());
    }

    #[test]
    fn per_source_limit_counts_an_ipv6_64_as_one_source() {
        let shared = admission(64, Some(2));
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
