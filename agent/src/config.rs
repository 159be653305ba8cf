//! Every limit and timeout of the agent, in one place.

use std::time::Duration;

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

/// Sizes and times inside one exec. The exec module takes them as constants from
/// [`ExecLimits::DEFAULT`] for now; none is a command-line option yet.
#[derive(Debug, Clone, Copy)]
pub struct ExecLimits {
    /// Bytes read from a command's pipe per frame.
    pub chunk: usize,
    /// After the command exits, stop draining its pipes once they stay quiet this long...
    pub drain_idle: Duration,
    /// ...or once this much time in all was spent waiting on them (time spent sending to a slow
    /// client does not count, so output the command wrote before it exited is never cut).
    pub drain_budget: Duration,
    /// How often a stalled stdin write checks whether the client is still there.
    pub liveness_probe: Duration,
}

impl ExecLimits {
    /// The defaults; a `const` so that the exec module can take its sizes from here.
    pub const DEFAULT: Self = Self {
        chunk: 256 * 1024,
        drain_idle: Duration::from_millis(100),
        drain_budget: Duration::from_secs(2),
        liveness_probe: Duration::from_secs(1),
    };
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
