//! Process control in one place: starting a command's process tree, signalling every process
//! in it, checking that it is gone, and the TERM-then-KILL grace.
//!
//! Callers build a [`spawn::Command`] (program, arguments, environment, stdio: pipes or a
//! terminal) and hand it to [`spawn()`], which starts it in the containment in force (see
//! [`crate::containment`]) and returns the leader as a [`Child`] plus a [`Tree`] handle that
//! reaches everything the command starts, whichever process group or session it moves to.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use crate::containment::{self, Containment, LEADERS};
use crate::credentials::Switch;
use crate::spawn::{self, Command};

/// How often a tree being killed is checked for survivors.
const GONE_POLL: Duration = Duration::from_millis(20);
/// How long SIGKILL is given to take effect before a kill is reported as done anyway.
const KILL_WAIT: Duration = Duration::from_secs(2);
/// How often an emptied cgroup of a command that left background processes is retried.
const CGROUP_REMOVE_RETRY: Duration = Duration::from_secs(1);
/// Commands being started at once.
const SPAWNS_AT_ONCE: usize = 4;
/// How often a leader's exit is looked for where the kernel has no pidfd (before Linux 5.3).
const EXIT_POLL: Duration = Duration::from_millis(10);
/// The environment variable that marks a command's processes under the subreaper.
pub const TREE_MARKER: &str = "REXEC_TREE";

/// The command's leader and the agent's ends of its pipes; while it is held, the orphan reaper
/// leaves its status to it. Dropped before it was waited for, it is reaped in the background.
pub struct Child {
    pid: i32,
    /// Readable once the leader has exited; `None` where the kernel has no pidfd.
    exited: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
    /// The background reaper's own copy, which must not hand itself on again when dropped.
    detached: bool,
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

impl Child {
    /// The leader's pid.
    #[cfg(test)]
    pub fn id(&self) -> i32 {
        self.pid
    }

    /// Waits for the leader to exit and reaps it. Cancel-safe.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            match &self.exited {
                Some(fd) => fd.readable().await?.clear_ready(),
                None => tokio::time::sleep(EXIT_POLL).await,
            }
        }
    }

    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        let mut raw = 0;
        // SAFETY: waitpid writes the status into a local; the pid is this Child's own, which
        // nothing else reaps while it is held.
        match unsafe { libc::waitpid(self.pid, &mut raw, libc::WNOHANG) } {
            0 => Ok(None),
            pid if pid == self.pid => {
                let status = ExitStatus::from_raw(raw);
                self.status = Some(status);
                Ok(Some(status))
            }
            _ => {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    Ok(None)
                } else {
                    Err(err)
                }
            }
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let running = self.status.is_none() && matches!(self.try_wait(), Ok(None));
        if running && !self.detached {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let mut rest = Child {
                    pid: self.pid,
                    exited: self.exited.take(),
                    status: None,
                    detached: true,
                    stdin: None,
                    stdout: None,
                    stderr: None,
                };
                // `rest` takes the pid out of LEADERS once it has reaped it (or, should the
                // runtime be shutting down, at once).
                rt.spawn(async move {
                    let _ = rest.wait().await;
                });
                return;
            }
        }
        release_leader(self.pid);
    }
}

/// Takes `pid` out of LEADERS. The lock is held across a spawn, which a user's FUSE mount can
/// hold up: never wait for it on an async worker.
fn release_leader(pid: i32) {
    let remove = move |leaders: &mut Option<HashSet<i32>>| {
        if let Some(set) = leaders.as_mut() {
            set.remove(&pid);
        }
    };
    match LEADERS.try_lock() {
        Ok(mut leaders) => remove(&mut leaders),
        Err(std::sync::TryLockError::Poisoned(e)) => remove(&mut e.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn_blocking(move || {
                    remove(&mut LEADERS.lock().unwrap_or_else(|e| e.into_inner()));
                });
            }
            Err(_) => remove(&mut LEADERS.lock().unwrap_or_else(|e| e.into_inner())),
        },
    }
}

/// Starts `cmd` in the containment in force and returns its leader with the handle on its tree;
/// with `user`, the command runs as that user (see [`Switch`]).
///
/// The leader leads a process group of its own, or, for a command on a terminal
/// ([`Command::session_on_stdin`]), a session. The work (a cgroup made, the spawn, which waits
/// for the exec, and for a directory that may be slow to enter) runs on the blocking pool, so
/// that commands starting do not stall handshakes. (Run on the workers instead, 200 commands
/// starting at once kept handshakes waiting past their deadline.) A lone command in a cgroup,
/// with no directory to enter and no user to become, starts on the calling worker where
/// there are others: the spawn holds up that one worker until the exec, and the hand-over to
/// the pool and back is a measurable part of a short command's time (docs/benchmarks.md,
/// section 9).
pub async fn spawn(cmd: Command, user: Option<Switch>) -> io::Result<(Child, Tree)> {
    // A few at a time: hundreds of spawns at once would take the CPU from the handshakes and
    // output of everything else.
    static STARTING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(SPAWNS_AT_ONCE);
    let turn = STARTING.acquire().await.map_err(io::Error::other)?;
    let alone = STARTING.available_permits() == SPAWNS_AT_ONCE - 1;
    // Under the subreaper the spawn takes the LEADERS lock, which the orphan reaper holds
    // across a scan of /proc.
    let cgroup = matches!(containment::current(), Containment::Cgroup { .. });
    let others = tokio::runtime::Handle::current().metrics().num_workers() > 1;
    if alone && cgroup && others && user.is_none() && cmd.dir().is_none() {
        return spawn_now(cmd, None);
    }
    // The turn goes with the work: a spawn whose caller went away still counts.
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        spawn_now(cmd, user)
    })
    .await
    .map_err(io::Error::other)?
}

fn spawn_now(mut cmd: Command, user: Option<Switch>) -> io::Result<(Child, Tree)> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let id = format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let (kind, procs) = match containment::current() {
        Containment::Cgroup { parent } => {
            let dir = parent.join(format!("rexec-{id}"));
            std::fs::create_dir(&dir).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot create cgroup {}: {e}", dir.display()),
                )
            })?;
            match containment::procs_of(&dir) {
                Ok(procs) => (Kind::Cgroup(dir), Some(procs)),
                Err(e) => {
                    let _ = std::fs::remove_dir(&dir);
                    return Err(e);
                }
            }
        }
        Containment::Subreaper => {
            cmd.env(TREE_MARKER, &id);
            (
                Kind::Marked(format!("{TREE_MARKER}={id}").into_bytes()),
                None,
            )
        }
    };
    let cgroup = procs.as_ref().map(|f| f.as_fd());
    let spawned = if procs.is_some() {
        // No orphan reaper runs with a cgroup: nothing to tell it.
        spawn::spawn(cmd, cgroup, user.as_ref())
    } else {
        let mut leaders = LEADERS.lock().unwrap_or_else(|e| e.into_inner());
        let spawned = spawn::spawn(cmd, cgroup, user.as_ref());
        if let Ok(s) = &spawned {
            leaders.get_or_insert_with(HashSet::new).insert(s.pid);
        }
        spawned
    };
    let spawned = match spawned {
        Ok(spawned) => spawned,
        Err(e) => {
            if let Kind::Cgroup(dir) = &kind {
                let _ = std::fs::remove_dir(dir);
            }
            return Err(e);
        }
    };
    drop(procs);
    let pid = spawned.pid;
    // Made before anything else can happen to the pid: it stays the leader's (a zombie at
    // worst) until this Child reaps it.
    let mut child = Child {
        pid,
        exited: pidfd(pid),
        status: None,
        detached: false,
        stdin: None,
        stdout: None,
        stderr: None,
    };
    let tree = Tree(Arc::new(Inner { leader: pid, kind }));
    let pipes = (|| {
        child.stdin = spawned.stdin.map(pipe::Sender::from_owned_fd).transpose()?;
        child.stdout = spawned
            .stdout
            .map(pipe::Receiver::from_owned_fd)
            .transpose()?;
        child.stderr = spawned
            .stderr
            .map(pipe::Receiver::from_owned_fd)
            .transpose()?;
        io::Result::Ok(())
    })();
    if let Err(e) = pipes {
        // Started, but not to be had: nothing of it may keep running. Dropping the Child
        // reaps the leader, dropping the Tree removes its cgroup.
        tree.signal(libc::SIGKILL);
        return Err(e);
    }
    Ok((child, tree))
}

/// A pidfd for `pid`, registered with the runtime; `None` where the kernel has none.
fn pidfd(pid: i32) -> Option<AsyncFd<OwnedFd>> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::O_NONBLOCK) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: a descriptor just made, owned by nothing else; the AsyncFd owns it from here
    // until it is dropped.
    unsafe { AsyncFd::register(OwnedFd::from_raw_fd(fd)) }.ok()
}

/// Everything a command started, however it moved.
#[derive(Debug, Clone)]
pub struct Tree(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    leader: i32,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// The command's cgroup directory.
    Cgroup(PathBuf),
    /// The `REXEC_TREE=...` entry its processes carry in their environment.
    Marked(Vec<u8>),
}

impl Tree {
    /// The pid of the command's leader.
    pub fn leader(&self) -> i32 {
        self.0.leader
    }

    /// Sends `signal` to every process of the tree.
    pub fn signal(&self, signal: i32) {
        if signal == libc::SIGKILL {
            if let Kind::Cgroup(dir) = &self.0.kind {
                // All at once, so nothing can fork its way out between reads.
                if std::fs::write(dir.join("cgroup.kill"), "1").is_ok() {
                    return;
                }
            }
        }
        for pid in self.members() {
            // SAFETY: kill has no memory-safety preconditions; a pid that just died is ESRCH.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// Whether no process of the tree is left (zombies waiting to be reaped aside).
    pub fn is_gone(&self) -> bool {
        match &self.0.kind {
            Kind::Cgroup(dir) => match std::fs::read_to_string(dir.join("cgroup.events")) {
                Ok(events) => events.lines().any(|l| l == "populated 0"),
                Err(e) => e.kind() == io::ErrorKind::NotFound,
            },
            Kind::Marked(_) => self.members().is_empty(),
        }
    }

    /// Ends the tree: `first` to every process, then SIGKILL to whatever is left after `grace`.
    /// Returns once the tree is gone, or [`KILL_WAIT`] after SIGKILL if something lingers.
    pub async fn terminate(&self, first: i32, grace: Duration) {
        self.signal(first);
        let end = Instant::now() + grace;
        while !self.is_gone() {
            if Instant::now() >= end {
                break;
            }
            tokio::time::sleep(GONE_POLL).await;
        }
        // Again for a tree that was seen in pieces (processes forked between two scans).
        let end = Instant::now() + KILL_WAIT;
        while !self.is_gone() && Instant::now() < end {
            self.signal(libc::SIGKILL);
            tokio::time::sleep(GONE_POLL).await;
        }
    }

    /// Pids of the live processes of the tree.
    fn members(&self) -> Vec<i32> {
        match &self.0.kind {
            Kind::Cgroup(dir) => cgroup_members(dir),
            Kind::Marked(marker) => marked_members(self.0.leader, marker),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let Kind::Cgroup(dir) = &self.kind else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            let _ = containment::remove_cgroup(dir);
            return;
        };
        // Off the async workers (cgroup removal can take the kernel a while), and retried while
        // background processes the command left running on purpose still live in it.
        let dir = dir.clone();
        rt.spawn(async move {
            loop {
                let attempt = dir.clone();
                let removed =
                    tokio::task::spawn_blocking(move || containment::remove_cgroup(&attempt)).await;
                if !matches!(removed, Ok(Err(_))) {
                    return;
                }
                tokio::time::sleep(CGROUP_REMOVE_RETRY).await;
            }
        });
    }
}

fn cgroup_members(dir: &std::path::Path) -> Vec<i32> {
    let mut pids: Vec<i32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(cgroup_members(&entry.path()));
            }
        }
    }
    pids
}

/// The leader, what carries `marker`, and every live descendant of either.
fn marked_members(leader: i32, marker: &[u8]) -> Vec<i32> {
    let me = std::process::id() as i32;
    let procs = scan();
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    let mut roots = vec![leader];
    for (&pid, stat) in &procs {
        children.entry(stat.ppid).or_default().push(pid);
        if pid != me && !stat.zombie && carries(pid, marker) {
            roots.push(pid);
        }
    }
    let mut seen = HashSet::new();
    while let Some(pid) = roots.pop() {
        if pid <= 1 || pid == me || !seen.insert(pid) {
            continue;
        }
        roots.extend(children.get(&pid).into_iter().flatten());
    }
    seen.into_iter()
        .filter(|pid| procs.get(pid).is_some_and(|s| !s.zombie))
        .collect()
}

fn carries(pid: i32, marker: &[u8]) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|&b| b == 0).any(|entry| entry == marker))
        .unwrap_or(false)
}

/// What the tree walk needs of one process.
pub(crate) struct Stat {
    pub(crate) ppid: i32,
    pub(crate) zombie: bool,
}

/// Every process in /proc with its parent and whether it is a zombie.
pub(crate) fn scan() -> HashMap<i32, Stat> {
    let mut procs = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return procs;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name may hold spaces and parentheses: the fields follow the last ')'.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        procs.insert(
            pid,
            Stat {
                ppid,
                zombie: state == "Z" || state == "X",
            },
        );
    }
    procs
}
