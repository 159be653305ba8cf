//! How the agent holds on to everything a command starts, chosen once at start-up.
//!
//! A process group is not enough: `setsid`, `set -m` and `setpgid(0,0)` leave it. So each
//! command gets either
//!
//! - **a cgroup v2 of its own** (`containment=cgroup`), under the agent's own cgroup or
//!   `--cgroup-parent`: the leader joins it before exec, every descendant stays in it whatever
//!   it does, `cgroup.kill` kills them all at once and `cgroup.events` says when none is left;
//!   the cgroup is removed once it is empty. Under systemd this needs `Delegate=yes`.
//! - or, where no cgroup can be made, **the agent as a child subreaper**
//!   (`containment=subreaper`): orphaned descendants are re-parented to the agent instead of
//!   init, and each command's environment carries a marker (`REXEC_TREE`), so the tree is what
//!   descends from the leader plus what carries its marker (and what descends from that). A
//!   process that both leaves its parent and clears its environment escapes this one.

use std::collections::HashSet;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

pub use crate::cli::ContainmentMode as Mode;

/// The containment in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Containment {
    /// A cgroup per command, made under this directory.
    Cgroup {
        /// The cgroup the commands' cgroups are made in.
        parent: PathBuf,
    },
    /// The agent as subreaper; commands marked in their environment.
    Subreaper,
}

static IN_FORCE: OnceLock<Containment> = OnceLock::new();

/// Pids of command leaders whose `Child` is still held, so the orphan reaper leaves them to
/// their owner. Locked across each spawn, so a leader that dies at once is already listed.
pub(crate) static LEADERS: Mutex<Option<HashSet<i32>>> = Mutex::new(None);

/// The containment in force: as chosen by [`init`], else (in unit tests) the marker alone.
pub fn current() -> &'static Containment {
    IN_FORCE.get_or_init(|| Containment::Subreaper)
}

/// Chooses the containment for `mode` and puts it in force; returns it with, when the cgroup
/// was asked for in `auto` mode but cannot be had, the reason. Must run inside the runtime.
pub fn init(mode: Mode, parent: Option<&Path>) -> Result<(Containment, Option<String>), String> {
    let chosen = match mode {
        Mode::Subreaper => (Containment::Subreaper, None),
        Mode::Cgroup => (
            Containment::Cgroup {
                parent: cgroup_parent(parent)?,
            },
            None,
        ),
        Mode::Auto => match cgroup_parent(parent) {
            Ok(parent) => (Containment::Cgroup { parent }, None),
            Err(why) => (Containment::Subreaper, Some(why)),
        },
    };
    if chosen.0 == Containment::Subreaper {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            return Err(format!(
                "cannot become a child subreaper: {}",
                io::Error::last_os_error()
            ));
        }
        tokio::spawn(reap_orphans());
    }
    let _ = IN_FORCE.set(chosen.0.clone());
    Ok(chosen)
}

/// Finds the parent cgroup and checks that a command can be started in a cgroup made there.
fn cgroup_parent(asked: Option<&Path>) -> Result<PathBuf, String> {
    let parent = match asked {
        Some(p) => p.to_owned(),
        None => own_cgroup()?,
    };
    remove_stale(&parent);
    let probe = parent.join(format!("rexec-{}-probe", std::process::id()));
    std::fs::create_dir(&probe)
        .map_err(|e| format!("cannot create a cgroup in {}: {e}", parent.display()))?;
    let checked = check_probe(&probe);
    let _ = std::fs::remove_dir(&probe);
    checked.map(|()| parent)
}

fn check_probe(probe: &Path) -> Result<(), String> {
    if !probe.join("cgroup.kill").exists() {
        return Err(format!(
            "{} has no cgroup.kill (Linux 5.14 or newer is needed)",
            probe.display()
        ));
    }
    // Through the agent's own spawn, so the probe tries the very path commands take.
    let mut cmd = crate::spawn::Command::new("/bin/sh");
    cmd.arg0("sh").arg("-c").arg(":");
    let procs =
        procs_of(probe).map_err(|e| format!("cannot use cgroup {}: {e}", probe.display()))?;
    let started = crate::spawn::spawn(cmd, Some(procs.as_fd()), None)
        .map_err(|e| format!("cannot start a process in cgroup {}: {e}", probe.display()))?;
    let status = crate::spawn::wait_blocking(started.pid).map_err(|e| {
        format!(
            "cannot wait for a process in cgroup {}: {e}",
            probe.display()
        )
    })?;
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err(format!(
            "a process started in cgroup {} failed: wait status {status}",
            probe.display()
        ));
    }
    Ok(())
}

/// The cgroup `dir`'s `cgroup.procs`, open for the child to write itself into: it must stay
/// open until the spawn returned.
pub(crate) fn procs_of(dir: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("cgroup.procs"))
}

/// The agent's own cgroup v2 directory, from /proc/self/cgroup and the cgroup2 mount.
fn own_cgroup() -> Result<PathBuf, String> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
    let path = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("no cgroup v2 entry in /proc/self/cgroup")?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    for line in mounts.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let mut fields = left.split_whitespace();
        let (Some(root), Some(point)) = (fields.nth(3), fields.next()) else {
            continue;
        };
        let relative = if root == "/" {
            Some(path)
        } else {
            path.strip_prefix(root)
        };
        if let Some(relative) = relative {
            return Ok(Path::new(point).join(relative.trim_start_matches('/')));
        }
    }
    Err("no cgroup v2 file system is mounted".into())
}

/// Removes empty cgroups left by agents that are no longer running (`rexec-PID-N`).
fn remove_stale(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("rexec-"))
            .and_then(|n| n.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only asks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = remove_cgroup(&entry.path());
        }
    }
}

/// Removes cgroup `dir` and any cgroups a command made inside it; fails while one is populated.
pub(crate) fn remove_cgroup(dir: &Path) -> io::Result<()> {
    // The common case: an emptied cgroup with none of its own goes with one rmdir.
    match std::fs::remove_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(_) => {}
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&entry.path())?;
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// As subreaper the agent inherits every orphaned descendant of every command and must reap
/// them; leaders still held by their `Child` are left to it.
async fn reap_orphans() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sigchld = signal(SignalKind::child()).ok();
    let me = std::process::id() as i32;
    loop {
        match sigchld.as_mut() {
            Some(s) => {
                // A signal may coalesce with one tokio handled for a leader: check now and then
                // anyway.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), s.recv()).await;
            }
            None => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
        }
        // Held across each spawn, which a user's FUSE mount can hold up: try again later
        // rather than stall a worker.
        let leaders = match LEADERS.try_lock() {
            Ok(leaders) => leaders,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => continue,
        };
        for (pid, stat) in crate::process::scan() {
            let held = leaders.as_ref().is_some_and(|l| l.contains(&pid));
            if stat.ppid == me && stat.zombie && !held {
                let mut status = 0;
                // SAFETY: reaps one zombie child of ours that nobody else waits for.
                unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            }
        }
    }
}
