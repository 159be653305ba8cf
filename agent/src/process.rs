//! Process control in one place: starting a command's process tree, signalling every process
//! in it, checking that it is gone, and the TERM-then-KILL grace.
//!
//! Callers build a `std::process::Command` (program, arguments, environment, stdio: pipes or a
//! terminal) and hand it to [`spawn`], which adds the agent's own pre-exec steps and returns the
//! leader as a `tokio::process::Child` plus a [`Tree`] handle that reaches everything the
//! command starts. The exec loop and the interactive-session loop share it.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::credentials::Switch;

/// How often a tree being killed is checked for survivors.
const GONE_POLL: Duration = Duration::from_millis(20);
/// How long SIGKILL is given to take effect before a kill is reported as done anyway.
const KILL_WAIT: Duration = Duration::from_secs(1);

/// Starts `cmd` and returns its leader with the handle on its tree; with `user`, the command
/// runs as that user (see [`Switch`]).
///
/// `cmd` must make the leader lead a new process group: `process_group(0)` for a command on
/// pipes, `setsid()` in a pre-exec step for one on a terminal.
pub fn spawn(mut cmd: Command, user: Option<Switch>) -> io::Result<(tokio::process::Child, Tree)> {
    // Pre-exec steps run in the forked child, so they use only async-signal-safe calls.
    // Privilege dropping is the last one, after every step that needs the agent's own rights.
    // (Not with CommandExt::uid/gid: std applies those before any pre-exec step, and sets no
    // supplementary groups.)
    if let Some(switch) = user {
        // SAFETY: run_in_child allocates nothing and makes only async-signal-safe calls.
        unsafe {
            cmd.pre_exec(move || switch.run_in_child());
        }
    }
    let child = tokio::process::Command::from(cmd).spawn()?;
    let leader = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| io::Error::other("the command exited before its id was read"))?;
    Ok((child, Tree { leader }))
}

/// Everything a command started: its process group.
#[derive(Debug, Clone)]
pub struct Tree {
    leader: i32,
}

impl Tree {
    /// The pid of the command's leader, which is also its process group id.
    pub fn leader(&self) -> i32 {
        self.leader
    }

    /// Sends `signal` to every process of the tree.
    pub fn signal(&self, signal: i32) {
        // SAFETY: killpg has no memory-safety preconditions; a vanished group only yields ESRCH.
        unsafe {
            libc::killpg(self.leader, signal);
        }
    }

    /// Whether no process of the tree is left (zombies waiting to be reaped aside).
    pub fn is_gone(&self) -> bool {
        // SAFETY: as above; signal 0 only checks that the group exists.
        let rc = unsafe { libc::killpg(self.leader, 0) };
        !(rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
    }

    /// Ends the tree: `first` to every process, then SIGKILL to whatever is left after `grace`.
    /// Returns once the tree is gone, or a short while after SIGKILL if something lingers.
    pub async fn terminate(&self, first: i32, grace: Duration) {
        self.signal(first);
        if !self.gone_within(grace).await {
            self.signal(libc::SIGKILL);
            self.gone_within(KILL_WAIT).await;
        }
    }

    async fn gone_within(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        loop {
            if self.is_gone() {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(GONE_POLL).await;
        }
    }
}
