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
