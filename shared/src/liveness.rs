//! Liveness: how each side of a session proves it is still there, and when it gives up on a
//! peer that has stopped answering.
//!
//! TCP notices neither a network that vanished without a FIN or RST (for over two hours with
//! the kernel's keepalive) nor a frozen process (its kernel goes on acknowledging), so the
//! session carries its own heartbeat. Each side sends a Heartbeat frame when it has sent
//! nothing else for a while, and gives up when it has *waited to read* for its alive timeout
//! without receiving any frame. A command that is merely quiet still has the heartbeats of the
//! side running it, so it is never cut.
//!
//! The two sides may have different timeouts, so each heartbeat carries its sender's: the
//! receiver then sends its own often enough for that timeout (a quarter of it). Until a side
//! knows its peer's timeout, and until it has told its own, it sends one after a quarter second
//! of silence (a quarter of the smallest timeout allowed), so an exchange that is over sooner,
//! like most commands, carries no heartbeat at all.
//!
//! This module is pure (no I/O, no clock of its own): the heartbeat body and the schedule.
//! [`crate::transport`] applies them to the sockets.

use std::time::Duration;

use crate::codec::{put_u32, Reader};
use crate::error::ProtocolError;

/// The alive timeout when none is given (`--alive-timeout`, both programs).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How often to send heartbeats to a peer whose timeout is not known yet: a quarter of the
/// smallest timeout the programs accept (1 s). It applies for one round trip at most, until
/// the peer's first heartbeat arrives.
pub const UNTIL_KNOWN: Duration = Duration::from_millis(250);

/// Never send heartbeats more often than this, whatever timeout a peer announces: a peer
/// cannot make this side flood the connection.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Largest alive timeout that fits the heartbeat's field, in milliseconds.
pub const MAX_TIMEOUT_MS: u32 = u32::MAX;

/// A heartbeat's body: the sender's alive timeout in milliseconds, 0 when it never gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// The sender's alive timeout, if it has one.
    pub timeout_ms: u32,
}

impl Heartbeat {
    /// The heartbeat of a side whose alive timeout is `timeout` (`None`: it never gives up).
    pub fn new(timeout: Option<Duration>) -> Self {
        let timeout_ms = timeout.map_or(0, |t| {
            u32::try_from(t.as_millis())
                .unwrap_or(MAX_TIMEOUT_MS)
                .max(1)
        });
        Self { timeout_ms }
    }

    /// Appends the body (4 bytes) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.timeout_ms);
    }

    /// Reads a heartbeat body: exactly 4 bytes.
    pub fn decode(body: &[u8]) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body);
        let timeout_ms = r.u32()?;
        r.expect_empty()?;
        Ok(Self { timeout_ms })
    }

    /// How long the sender of this heartbeat may go without hearing from us before it gives
    /// up; `None` if it never does.
    pub fn peer_timeout(&self) -> Option<Duration> {
        (self.timeout_ms != 0).then(|| Duration::from_millis(u64::from(self.timeout_ms)))
    }
}

/// What this side knows of its peer's alive timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerTimeout {
    /// No heartbeat from the peer yet.
    Unknown,
    /// The peer never gives up.
    Never,
    /// The peer gives up after this long without a frame from us.
    After(Duration),
}

/// How long this side may stay silent before it must send a heartbeat; `None`: never again
/// (the peer never gives up and already knows our timeout).
pub fn interval(peer: PeerTimeout) -> Option<Duration> {
    match peer {
        PeerTimeout::Unknown => Some(UNTIL_KNOWN),
        PeerTimeout::Never => None,
        // A quarter: three heartbeats may be late or lost before the peer gives up.
        PeerTimeout::After(t) => Some((t / 4).max(MIN_INTERVAL)),
    }
}

/// How long from now until the next heartbeat is due, this side having sent nothing for
/// `silent_for`; `None` when none is due ever. Until this side has `announced` its timeout in a
/// heartbeat, one is due after [`UNTIL_KNOWN`] of silence whatever the peer said, so that the
/// peer learns it; an exchange that ends sooner carries none.
pub fn next_due(announced: bool, silent_for: Duration, peer: PeerTimeout) -> Option<Duration> {
    let every = if announced {
        interval(peer)?
    } else {
        interval(peer).map_or(UNTIL_KNOWN, |every| every.min(UNTIL_KNOWN))
    };
    Some(every.saturating_sub(silent_for))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_round_trips_and_refuses_any_other_length() {
        for timeout in [
            None,
            Some(Duration::from_secs(30)),
            Some(Duration::from_millis(1)),
        ] {
            let beat = Heartbeat::new(timeout);
            let mut body = Vec::new();
            beat.encode(&mut body);
            assert_eq!(body.len(), 4);
            assert_eq!(Heartbeat::decode(&body).unwrap(), beat);
            assert_eq!(beat.peer_timeout(), timeout);
        }
        assert!(Heartbeat::decode(&[0, 0, 0]).is_err());
        assert!(Heartbeat::decode(&[0, 0, 0, 1, 0]).is_err());
        assert_eq!(
            Heartbeat::new(Some(Duration::from_secs(30)))
                .timeout_ms
                .to_be_bytes(),
            [0x00, 0x00, 0x75, 0x30]
        );
    }

    #[test]
    fn a_timeout_too_small_or_too_large_for_the_field_is_kept_meaningful() {
        // Below a millisecond would read as "never"; above u32::MAX ms would wrap.
        assert_eq!(
            Heartbeat::new(Some(Duration::from_micros(10))).timeout_ms,
            1
        );
        assert_eq!(
            Heartbeat::new(Some(Duration::from_secs(u64::MAX / 2))).timeout_ms,
            MAX_TIMEOUT_MS
        );
    }

    #[test]
    fn heartbeats_come_four_times_per_peer_timeout_and_never_too_often() {
        let after = |s| PeerTimeout::After(Duration::from_secs(s));
        assert_eq!(interval(after(30)), Some(Duration::from_millis(7500)));
        assert_eq!(interval(PeerTimeout::Unknown), Some(UNTIL_KNOWN));
        assert_eq!(interval(PeerTimeout::Never), None);
        assert_eq!(
            interval(PeerTimeout::After(Duration::from_millis(1))),
            Some(MIN_INTERVAL)
        );
    }

    #[test]
    fn the_first_heartbeat_is_due_after_a_quarter_second_and_later_ones_at_the_peers_pace() {
        let peer = PeerTimeout::After(Duration::from_secs(4));
        let ms = Duration::from_millis;
        // Not yet announced: due after a quarter second of silence, even to a peer that
        // never gives up, which needs to learn this side's timeout.
        assert_eq!(next_due(false, ms(0), peer), Some(UNTIL_KNOWN));
        assert_eq!(next_due(false, ms(100), PeerTimeout::Never), Some(ms(150)));
        assert_eq!(
            next_due(false, ms(300), PeerTimeout::Unknown),
            Some(Duration::ZERO)
        );
        assert_eq!(next_due(true, ms(400), peer), Some(ms(600)));
        assert_eq!(next_due(true, ms(5000), peer), Some(Duration::ZERO));
        assert_eq!(
            next_due(true, ms(0), PeerTimeout::Never),
            None,
            "a peer that never gives up gets no heartbeat after the first"
        );
    }
}
