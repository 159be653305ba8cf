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
    /// Time between SIGTERM and SIGKILL when a command's process tree is killed.
    pub kill_grace: Duration,
    /// Time a client may send no frame while the agent waits for one; `None`: no limit.
    pub alive_timeout: Option<Duration>,
    /// Bounds on forwarding a command's output after it exited.
    pub drain: Drain,
    /// Time running commands get to end and report after the agent is told to stop.
    pub shutdown_grace: Duration,
}

/// How long output is still forwarded after the command exited (from background processes
/// holding its pipes, or left in the pipes): until the pipes close or one of these is reached.
/// Then the exit status is sent, and the pipes are closed.
#[derive(Debug, Clone, Copy)]
pub struct Drain {
    /// The pipes stayed quiet this long.
    pub idle: Duration,
    /// This much time passed since the exit, waiting and sending alike (a frame being sent
    /// is finished).
    pub time: Duration,
    /// This many bytes were forwarded since the exit.
    pub max_bytes: u64,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            idle: Duration::from_millis(100),
            time: Duration::from_secs(2),
            max_bytes: 1 << 20,
        }
    }
}

/// Sizes and times inside one exec. The exec module takes them as constants from
/// [`ExecLimits::DEFAULT`] for now; none is a command-line option yet.
#[derive(Debug, Clone, Copy)]
pub struct ExecLimits {
    /// Bytes read from a command's pipe per frame.
    pub chunk: usize,
    /// How often a stalled stdin write checks whether the client is still there.
    pub liveness_probe: Duration,
}

impl ExecLimits {
    /// The defaults; a `const` so that the exec module can take its sizes from here.
    pub const DEFAULT: Self = Self {
        chunk: 256 * 1024,
        liveness_probe: Duration::from_secs(1),
    };
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_connections: crate::cli::DEFAULT_MAX_CONNECTIONS,
            max_unauthenticated: crate::cli::DEFAULT_MAX_UNAUTHENTICATED,
            max_unauthenticated_per_source: None,
            handshake_timeout: Duration::from_secs(10),
            kill_grace: Duration::from_secs(2),
            alive_timeout: Some(rexec_shared::liveness::DEFAULT_TIMEOUT),
            drain: Drain::default(),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}
