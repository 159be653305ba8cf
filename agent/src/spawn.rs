//! Starting a command's leader without copying the agent. The child runs in the agent's memory
//! on a stack of its own (`CLONE_VM | CLONE_VFORK`, what `posix_spawn` does) and the calling
//! thread waits until it has exec'd. A fork, which any pre-exec step forces on
//! `std::process::Command`, copies the page tables of the multi-threaded agent and makes both
//! sides fault on each page written afterwards: that was half of what one remote `true` cost
//! over a ping (docs/benchmarks.md, section 9).
//!
//! Because the child shares the agent's memory, everything it uses is prepared before the
//! clone, and between clone and exec it makes plain system calls only: no allocation, no lock,
//! and no libc wrapper that acts on the whole process (glibc's `setuid` goes through its list
//! of the process's threads, so the privilege drop uses the raw calls, see
//! [`Switch::run_in_child`]). Signals are blocked around the clone and every handled one is
//! reset to its default in the child before it unblocks them, so no agent handler ever runs on
//! the child's stack.
//!
//! The child's steps, in order: signal dispositions; a new process group, or a session whose
//! controlling terminal is its stdin; stdin, stdout and stderr; the cgroup; the signal mask;
//! the user and the directory (see [`Switch::run_in_child`] for their order); exec. The first that fails ends the child with status 127 and
//! its errno is the spawn's error, so nothing runs half set up.

use std::ffi::{c_char, c_int, c_void, CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicI32, Ordering};

use crate::credentials::Switch;

/// The child's stack: its steps call a few libc wrappers and nothing deeper.
const STACK_SIZE: usize = 64 * 1024;

/// Where one of the child's standard streams comes from.
#[derive(Debug)]
pub enum Stdio {
    /// `/dev/null`.
    Null,
    /// A new pipe whose other end the caller gets in [`Spawned`].
    Piped,
    /// This descriptor (a terminal's slave, say).
    Fd(OwnedFd),
}

/// What to start: a program by absolute path, its arguments, environment, directory and
/// standard streams, leading a process group of its own or a session.
#[derive(Debug)]
pub struct Command {
    program: OsString,
    argv: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    cwd: Option<OsString>,
    stdio: [Stdio; 3],
    session: bool,
}

impl Command {
    /// A command running `program` (an absolute path: no `PATH` search, so that a client's
    /// environment cannot choose it) with `program` as `argv[0]`, the agent's environment, and
    /// every stream on `/dev/null`.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        let program = program.as_ref().to_owned();
        Self {
            argv: vec![program.clone()],
            program,
            env: Vec::new(),
            cwd: None,
            stdio: [Stdio::Null, Stdio::Null, Stdio::Null],
            session: false,
        }
    }

    /// The program's path.
    pub fn program(&self) -> &OsStr {
        &self.program
    }

    /// Sets `argv[0]`.
    pub fn arg0(&mut self, arg0: impl AsRef<OsStr>) -> &mut Self {
        self.argv[0] = arg0.as_ref().to_owned();
        self
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.argv.push(arg.as_ref().to_owned());
        self
    }

    /// Sets an environment variable on top of the agent's environment (a later one wins).
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The directory given with [`Command::current_dir`].
    pub fn dir(&self) -> Option<&OsStr> {
        self.cwd.as_deref()
    }

    /// The directory the command starts in (unless a [`Switch`] chooses it).
    pub fn current_dir(&mut self, dir: impl AsRef<OsStr>) -> &mut Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Where stdin comes from.
    pub fn stdin(&mut self, io: Stdio) -> &mut Self {
        self.stdio[0] = io;
        self
    }

    /// Where stdout goes.
    pub fn stdout(&mut self, io: Stdio) -> &mut Self {
        self.stdio[1] = io;
        self
    }

    /// Where stderr goes.
    pub fn stderr(&mut self, io: Stdio) -> &mut Self {
        self.stdio[2] = io;
        self
    }

    /// Makes the leader start a new session whose controlling terminal is its stdin, instead
    /// of a process group of its own.
    pub fn session_on_stdin(&mut self) -> &mut Self {
        self.session = true;
        self
    }

    /// The environment the command gets: the agent's, then this command's settings in order.
    fn environment(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
        for (key, value) in &self.env {
            env.retain(|(k, _)| k != key);
            env.push((key.clone(), value.clone()));
        }
        env
    }
}

/// A started leader: its pid and the caller's ends of the pipes asked for.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// Everything the child reads, prepared in the parent: pointers into data that outlives the
/// clone (the parent is suspended until the child has exec'd or exited).
struct Plan {
    program: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    stdio: [RawFd; 3],
    session: bool,
    cgroup: Option<RawFd>,
    user: Option<*const Switch>,
    cwd: Option<*const c_char>,
    /// Set by the child when a step failed.
    errno: AtomicI32,
}

/// Starts `cmd`, moved into the cgroup whose `cgroup.procs` is `cgroup` and running as `user`
/// when given. Blocks the calling thread until the child has exec'd (or failed to).
pub fn spawn(
    cmd: Command,
    cgroup: Option<BorrowedFd<'_>>,
    user: Option<&Switch>,
) -> io::Result<Spawned> {
    let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_owned());
    let c = |s: &OsStr, what: &str| {
        CString::new(s.as_bytes()).map_err(|_| invalid(&format!("{what} contains a NUL byte")))
    };
    if !cmd.program.as_bytes().starts_with(b"/") {
        return Err(invalid("the program must be given by absolute path"));
    }
    let program = c(&cmd.program, "the program's path")?;
    let argv = cmd
        .argv
        .iter()
        .map(|a| c(a, "an argument"))
        .collect::<io::Result<Vec<_>>>()?;
    let env = cmd
        .environment()
        .into_iter()
        .map(|(k, v)| {
            let mut entry = k;
            entry.push("=");
            entry.push(v);
            c(&entry, "an environment variable")
        })
        .collect::<io::Result<Vec<_>>>()?;
    let cwd = cmd
        .cwd
        .as_deref()
        .map(|d| c(d, "the directory"))
        .transpose()?;
    let argv_ptrs = pointers(&argv);
    let env_ptrs = pointers(&env);

    // The child's ends stay open here until the clone returned; the parent's are returned.
    let mut child_ends = Vec::with_capacity(3);
    let mut parent_ends: [Option<OwnedFd>; 3] = [None, None, None];
    for (i, io) in cmd.stdio.into_iter().enumerate() {
        let child_end = match io {
            Stdio::Null => open_dev_null(i != 0)?,
            Stdio::Piped => {
                let (read, write) = pipe()?;
                let (child, parent) = if i == 0 { (read, write) } else { (write, read) };
                parent_ends[i] = Some(parent);
                child
            }
            Stdio::Fd(fd) => fd,
        };
        child_ends.push(child_end);
    }
    let [stdin_fd, stdout_fd, stderr_fd] =
        [0, 1, 2].map(|i| child_ends.get(i).map_or(-1, |fd: &OwnedFd| fd.as_raw_fd()));

    let plan = Plan {
        program: program.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: env_ptrs.as_ptr(),
        stdio: [stdin_fd, stdout_fd, stderr_fd],
        session: cmd.session,
        cgroup: cgroup.map(|fd| fd.as_raw_fd()),
        user: user.map(|u| u as *const Switch),
        cwd: cwd.as_ref().map(|d| d.as_ptr()),
        errno: AtomicI32::new(0),
    };
    let stack = Stack::new(STACK_SIZE)?;

    // Every signal, glibc's own two included (its wrappers leave those open): the raw call.
    let previous = set_mask(u64::MAX);
    // SAFETY: `child` only reads `plan` (alive until the clone returns, which with CLONE_VFORK
    // is after the child exec'd or exited) and makes async-signal-safe system calls on its own
    // stack, the top of a mapping that outlives it.
    let pid = unsafe {
        libc::clone(
            child,
            stack.top(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            std::ptr::addr_of!(plan) as *mut c_void,
        )
    };
    let clone_error = io::Error::last_os_error();
    set_mask(previous);
    drop(child_ends);
    drop(stack);
    if pid < 0 {
        return Err(clone_error);
    }
    let errno = plan.errno.load(Ordering::Relaxed);
    if errno != 0 {
        // It has exited already (status 127): reap it.
        let _ = wait_blocking(pid);
        return Err(io::Error::from_raw_os_error(errno));
    }
    let [stdin, stdout, stderr] = parent_ends;
    Ok(Spawned {
        pid,
        stdin,
        stdout,
        stderr,
    })
}

/// Waits for child `pid` to exit, blocking the thread; its exit status as `waitpid` gives it.
pub fn wait_blocking(pid: i32) -> io::Result<c_int> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid writes the status into a local.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            return Ok(status);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// The child: the steps of the module's documentation. Never returns: it execs or exits 127.
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's `Plan`, which outlives this function (see `spawn`); every
    // call below is a plain system call on data prepared before the clone, and none allocates,
    // takes a lock or acts on other threads.
    unsafe {
        let plan = &*(arg as *const Plan);
        let fail = |errno: c_int| -> c_int {
            plan.errno.store(errno.max(1), Ordering::Relaxed);
            libc::_exit(127)
        };
        let errno = || {
            io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL)
        };

        // No agent handler may run here, in the agent's memory, once signals are unblocked.
        // SIGPIPE too: Rust ignores it, a shell command expects the default.
        let mut default = std::mem::zeroed::<libc::sigaction>();
        default.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=64 {
            let mut old = std::mem::zeroed::<libc::sigaction>();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            let handled = !matches!(old.sa_sigaction, libc::SIG_IGN | libc::SIG_DFL);
            if sig == libc::SIGPIPE || handled {
                libc::sigaction(sig, &default, std::ptr::null_mut());
            }
        }
        if plan.session {
            if libc::setsid() < 0 {
                return fail(errno());
            }
        } else if libc::setpgid(0, 0) != 0 {
            return fail(errno());
        }
        for (target, &source) in (0..).zip(plan.stdio.iter()) {
            let done = if source == target {
                libc::fcntl(source, libc::F_SETFD, 0)
            } else {
                libc::dup2(source, target)
            };
            if done < 0 {
                return fail(errno());
            }
        }
        if plan.session && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
            return fail(errno());
        }
        // Writing "0" moves the writing process.
        if let Some(procs) = plan.cgroup {
            if libc::write(procs, b"0".as_ptr().cast(), 1) != 1 {
                return fail(errno());
            }
        }
        // Every handled signal is at its default by now. Unblocked before the drop, so that the
        // exec follows the change of uid at once.
        let empty: u64 = 0;
        if libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            8,
        ) != 0
        {
            return fail(errno());
        }
        // The drop is the last step that changes rights: every one before needs the agent's.
        if let Some(user) = plan.user {
            if let Err(e) = (*user).run_in_child() {
                return fail(e.raw_os_error().unwrap_or(libc::EPERM));
            }
        } else if let Some(dir) = plan.cwd {
            if libc::chdir(dir) != 0 {
                return fail(errno());
            }
        }
        libc::execve(plan.program, plan.argv, plan.envp);
        fail(errno())
    }
}

/// Sets this thread's signal mask (signals 1 to 64 as bits) with the raw call; returns the
/// previous one.
fn set_mask(mask: u64) -> u64 {
    let mut previous: u64 = 0;
    // SAFETY: rt_sigprocmask reads and writes 8-byte masks in locals.
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &mask as *const u64,
            &mut previous as *mut u64,
            8,
        )
    };
    previous
}

/// A NULL-terminated array of pointers to `strings`, which must outlive it.
fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn open_dev_null(write: bool) -> io::Result<OwnedFd> {
    // std opens with O_CLOEXEC.
    let file = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .open("/dev/null")?;
    Ok(OwnedFd::from(file))
}

/// A pipe, both ends close-on-exec (the child's end is dup'ed onto its stream, which clears
/// the flag there alone): (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two descriptors just made, owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// An anonymous mapping for the child's stack, with a guard page below it.
struct Stack {
    base: *mut c_void,
    len: usize,
}

impl Stack {
    fn new(size: usize) -> io::Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .ok()
            .filter(|p| p.is_power_of_two())
            .unwrap_or(4096);
        let len = size.div_ceil(page) * page + page;
        // SAFETY: a fresh private anonymous mapping, unmapped in Drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Self { base, len };
        // SAFETY: the lowest page of the mapping just made.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// The stack's top (it grows down), 16-byte aligned as the mapping is page-aligned.
    fn top(&self) -> *mut c_void {
        // SAFETY: one past the end of the mapping, which is where a downward stack starts.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, no longer used (the child has exec'd or exited).
        unsafe { libc::munmap(self.base, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn output(mut cmd: Command) -> (String, c_int) {
        cmd.stdout(Stdio::Piped);
        let spawned = spawn(cmd, None, None).unwrap();
        let mut text = String::new();
        std::fs::File::from(spawned.stdout.unwrap())
            .read_to_string(&mut text)
            .unwrap();
        let status = wait_blocking(spawned.pid).unwrap();
        (text, libc::WEXITSTATUS(status))
    }

    #[test]
    fn runs_with_its_arguments_environment_directory_and_own_process_group() {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg0("sh")
            .arg("-c")
            .arg(r#"echo "$0 $1 $REXEC_SPAWN_TEST $(pwd)"; ps -o pgid= -p $$; echo $$"#)
            .arg("zero")
            .arg("one")
            .env("REXEC_SPAWN_TEST", "first")
            .env("REXEC_SPAWN_TEST", "second")
            .current_dir("/");
        let (text, code) = output(cmd);
        assert_eq!(code, 0, "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "zero one second /");
        assert_eq!(
            lines[1].trim(),
            lines[2].trim(),
            "not a group leader: {text}"
        );
    }

    #[test]
    fn the_child_gets_default_signals_an_empty_mask_and_no_agent_descriptors() {
        // Rust ignores SIGPIPE; a command must not inherit that, nor a blocked mask.
        let (text, _) = output({
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c")
                .arg("grep -E '^(SigBlk|SigIgn)' /proc/self/status; ls /proc/self/fd");
            cmd
        });
        assert!(text.contains("SigBlk:\t0000000000000000"), "{text}");
        let ignored = text
            .lines()
            .find_map(|l| l.strip_prefix("SigIgn:\t"))
            .unwrap();
        let ignored = u64::from_str_radix(ignored, 16).unwrap();
        assert_eq!(ignored & (1 << (libc::SIGPIPE - 1)), 0, "{text}");
        // 0, 1, 2, the one ls opens to list them, and what the test runner left open on exec.
        let inherited: Vec<String> = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|fd| {
                let fd: RawFd = fd.parse().unwrap();
                // SAFETY: F_GETFD only reads a descriptor's flags.
                let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
                flags >= 0 && flags & libc::FD_CLOEXEC == 0
            })
            .collect();
        let leaked: Vec<&str> = text
            .lines()
            .skip(2)
            .filter(|fd| !inherited.iter().any(|i| i == fd))
            .collect();
        assert!(
            leaked.len() <= 1,
            "descriptors leaked into the child: {leaked:?}"
        );
    }

    #[test]
    fn the_user_drop_takes_in_the_child_alone_and_the_agents_threads_stay_root() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: dropping privileges needs root");
            return;
        }
        let Ok(nobody) = crate::credentials::Credentials::lookup("nobody") else {
            eprintln!("skipped: this host has no user nobody");
            return;
        };
        // Another agent thread, alive across the spawn: the drop must not reach it.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        // SAFETY: as above.
        let other = std::thread::spawn(move || {
            let _ = wait.recv();
            unsafe { (libc::geteuid(), libc::getegid()) }
        });
        let switch = nobody.switch(Some(std::path::Path::new("/"))).unwrap();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg("id -u; id -g; id -G; pwd")
            .stdout(Stdio::Piped);
        let spawned = spawn(cmd, None, Some(&switch)).unwrap();
        let mut text = String::new();
        std::fs::File::from(spawned.stdout.unwrap())
            .read_to_string(&mut text)
            .unwrap();
        wait_blocking(spawned.pid).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], nobody.uid.to_string(), "{text}");
        assert_eq!(lines[1], nobody.gid.to_string(), "{text}");
        assert!(
            !lines[2].split(' ').any(|g| g == "0"),
            "kept root's group: {text}"
        );
        assert_eq!(lines[3], "/");
        // SAFETY: as above.
        assert_eq!(unsafe { (libc::geteuid(), libc::getegid()) }, (0, 0));
        go.send(()).unwrap();
        assert_eq!(other.join().unwrap(), (0, 0), "an agent thread lost root");

        // A directory the user may not enter fails the spawn (the drop is done by then).
        let private = tempfile_dir();
        let switch = nobody.switch(Some(&private)).unwrap();
        let err = spawn(Command::new("/bin/true"), None, Some(&switch)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
        let _ = std::fs::remove_dir(&private);
    }

    /// A directory only root may enter.
    fn tempfile_dir() -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("rexec-spawn-test-{}", std::process::id()));
        let _ = std::fs::create_dir(&dir);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    #[test]
    fn a_failed_step_is_the_spawns_error_and_nothing_runs() {
        let mut cmd = Command::new("/bin/sh");
        cmd.current_dir("/nonexistent-rexec-dir");
        let err = spawn(cmd, None, None).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");

        let err = spawn(Command::new("/nonexistent-rexec-program"), None, None).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");

        let err = spawn(Command::new("sh"), None, None).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
    }
}
