//! Test harness: builds and finds the real binaries, starts agents on 127.0.0.1:0, runs ctl
//! with a time bound, and prints everything useful when an assertion fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Default bound on one ctl run.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(60);

/// Path of a workspace binary (`agent`, `ctl` or `xtask`), built once per test process.
///
/// The tests live in their own package, so Cargo does not build the binaries for them; they are
/// built here with the profile the tests were built with.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps layout");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build", "--quiet", "-p", "agent", "-p", "ctl", "-p", "xtask",
        ]);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for the binaries");
        assert!(
            status.success(),
            "cargo build -p agent -p ctl -p xtask failed"
        );
        profile_dir.to_owned()
    });
    dir.join(name)
}

/// A scratch directory that is removed when dropped.
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("create a temporary directory")
}

/// Writes a key file with mode 0600 holding `lines`, and returns its path.
pub fn write_key_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write key file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .expect("chmod key file");
    path
}

/// The agent name the tests' agents are enrolled for: what ctl expects of `127.0.0.1:PORT`.
pub const AGENT_NAME: &str = "127.0.0.1";

/// [`AGENT_NAME`] as an agent name.
pub fn agent_name() -> rexec_shared::name::AgentName {
    rexec_shared::name::AgentName::parse(AGENT_NAME).expect("a valid agent name")
}

/// The agent key-file lines (`ctl enroll` format) for every key line of `client`
/// (`<key-id> <secret> [options]`: a client key line, with the options the agent's line is to
/// carry), enrolled for `name`; comments and blank lines are dropped.
pub fn enrolled(client: &str, name: &str) -> String {
    let name = rexec_shared::name::AgentName::parse(name).expect("a valid agent name");
    let mut out = String::new();
    for line in client.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.splitn(3, char::is_whitespace);
        let (id, secret) = (words.next().unwrap(), words.next().expect("a secret"));
        let options = words.next().unwrap_or("").trim();
        let ring = rexec_shared::keyfile::KeyRing::parse(
            &format!("{id} {secret}\n"),
            Path::new("client key"),
        )
        .expect("a valid client key line");
        let entry = ring.first().expect("one key");
        out.push_str(&rexec_shared::keyfile::enroll_line(entry, &name));
        if !options.is_empty() {
            out.push(' ');
            out.push_str(options);
        }
        out.push('\n');
    }
    out
}

/// Writes a fresh client key `id` to `dir/client-key` and the agent's key file enrolled for
/// [`AGENT_NAME`] to `dir/agent-keys`; returns (client key file, agent key file).
pub fn enrolled_pair(dir: &Path, id: &str) -> (PathBuf, PathBuf) {
    let client = key_line(id);
    let client_file = write_key_file(dir, "client-key", &client);
    let agent_file = write_key_file(
        dir,
        "agent-keys",
        &(enrolled(&client, AGENT_NAME) + &enrolled(&client, "localhost")),
    );
    (client_file, agent_file)
}

/// A fresh client key line `<id> <64 hex>`.
pub fn key_line(id: &str) -> String {
    let text = rexec_shared::keyfile::generate(id);
    text.lines()
        .find(|l| !l.starts_with('#'))
        .expect("key line")
        .to_owned()
        + "\n"
}

/// A running agent, stopped (by its pid) when dropped.
pub struct Agent {
    child: Option<Child>,
    /// Address it is listening on.
    pub addr: SocketAddr,
    /// The client key file whose keys the agent is enrolled for (what ctl uses).
    pub key_file: PathBuf,
    /// The agent's own key file (`ctl enroll` lines for [`AGENT_NAME`], or the listen host).
    pub agent_key_file: PathBuf,
    log: Arc<Mutex<String>>,
    /// Keeps the key directory alive.
    pub dir: tempfile::TempDir,
}

impl Agent {
    /// An agent with a fresh key, on 127.0.0.1:0.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// An agent with a fresh key and extra arguments.
    pub fn start_with(args: &[&str]) -> Self {
        let dir = scratch();
        let (key_file, agent_key_file) = enrolled_pair(dir.path(), "test");
        Self::start_enrolled(&[], "127.0.0.1:0", dir, key_file, agent_key_file, args)
    }

    /// An agent enrolled for every key of the client key file `key_file` (inside `dir`) under
    /// [`AGENT_NAME`], with extra arguments.
    pub fn start_in(dir: tempfile::TempDir, key_file: PathBuf, args: &[&str]) -> Self {
        Self::start_on("127.0.0.1:0", dir, key_file, args)
    }

    /// An agent listening on `listen` (a loopback address, e.g. `[::1]:0`), enrolled for every
    /// key of the client key file `key_file` (inside `dir`) under the listen host as its name.
    pub fn start_on(
        listen: &str,
        dir: tempfile::TempDir,
        key_file: PathBuf,
        args: &[&str],
    ) -> Self {
        Self::start_wrapped(&[], listen, dir, key_file, args)
    }

    /// An agent started through `wrapper` (a command that ends by running its arguments, e.g.
    /// `sh -c 'ulimit -f 64; exec "$@"' sh`), otherwise as [`Agent::start_on`].
    pub fn start_wrapped(
        wrapper: &[&str],
        listen: &str,
        dir: tempfile::TempDir,
        key_file: PathBuf,
        args: &[&str],
    ) -> Self {
        let host = listen
            .rsplit_once(':')
            .map_or(listen, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let client = std::fs::read_to_string(&key_file).expect("read the client key file");
        let name = format!(
            "{}.agent",
            key_file
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("keys")
        );
        // A loopback agent is reached under any of its loopback names (tests connect to an
        // IPv4-mapped listener as 127.0.0.1): one enrolled line per name.
        let loopback = host
            .parse::<std::net::IpAddr>()
            .map(|ip| ip.to_canonical().is_loopback())
            .unwrap_or(false);
        let lines = if loopback {
            let mut names =
                vec![rexec_shared::name::AgentName::parse(host).expect("a valid agent name")];
            for alias in ["127.0.0.1", "::1", "localhost"] {
                let alias = rexec_shared::name::AgentName::parse(alias).expect("a valid name");
                if !names.contains(&alias) {
                    names.push(alias);
                }
            }
            names
                .iter()
                .map(|n| enrolled(&client, n.as_str()))
                .collect()
        } else {
            enrolled(&client, host)
        };
        let agent_key_file = write_key_file(dir.path(), &name, &lines);
        // Owned as the client file is, for agents that run as another user.
        let meta = std::fs::metadata(&key_file).expect("stat the client key file");
        std::os::unix::fs::chown(&agent_key_file, Some(meta.uid()), Some(meta.gid()))
            .expect("chown the agent key file");
        Self::start_enrolled(wrapper, listen, dir, key_file, agent_key_file, args)
    }

    /// An agent on `listen` with its own key file `agent_key_file` exactly as given;
    /// `key_file` is the client key file ctl is to use with it.
    pub fn start_enrolled(
        wrapper: &[&str],
        listen: &str,
        dir: tempfile::TempDir,
        key_file: PathBuf,
        agent_key_file: PathBuf,
        args: &[&str],
    ) -> Self {
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(bin("agent"));
                cmd
            }
            None => Command::new(bin("agent")),
        };
        let mut child = cmd
            .arg("--key-file")
            .arg(&agent_key_file)
            .args(["--listen", listen])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn agent");
        let stderr = child.stderr.take().expect("agent stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line.clone());
                    }
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let mut agent = Self {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            key_file,
            agent_key_file,
            log,
            dir,
        };
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => agent.addr = parse_listening(&line),
            Err(_) => panic!(
                "agent did not print a listening line; log:\n{}",
                agent.log()
            ),
        }
        agent
    }

    /// `127.0.0.1:PORT`, as a ctl target.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// The agent's pid.
    pub fn pid(&self) -> i32 {
        self.child
            .as_ref()
            .map(|c| c.id() as i32)
            .expect("agent running")
    }

    /// Everything the agent wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until the log contains `needle`, up to `timeout`; returns the log.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < end,
                "agent log never contained {needle:?}; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the agent.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Sends SIGTERM and waits (bounded) for the agent to exit; returns its status.
    pub fn stop(mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("agent running");
        wait_bounded(&mut child, Duration::from_secs(30)).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "agent did not exit within 30s of SIGTERM; log:\n{}",
                self.log()
            )
        })
    }

    /// Memory the agent holds right now (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn parse_listening(line: &str) -> SocketAddr {
    // JSON punctuation separates words too, so `--log-format json` lines parse as well.
    line.split(|c: char| c.is_whitespace() || matches!(c, '"' | ',' | '{' | '}'))
        .filter_map(|word| word.parse().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no ADDR:PORT in listening line {line:?}"))
}

/// VmRSS of process `pid` in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Waits for `child` for at most `timeout`.
pub fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A finished ctl run.
pub struct Run {
    /// The command line, for failure messages.
    pub cmdline: String,
    /// Exit status.
    pub status: ExitStatus,
    /// Captured stdout.
    pub stdout: Vec<u8>,
    /// Captured stderr.
    pub stderr: Vec<u8>,
}

impl Run {
    /// Exit code (panics with the run's details if killed by a signal).
    pub fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("ctl killed by a signal\n{self}"))
    }

    /// Stdout as text.
    pub fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as text.
    pub fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Asserts the exit code, printing the run on failure.
    #[track_caller]
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "unexpected exit status\n{self}"
        );
        self
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let clip = |b: &[u8]| {
            let s = String::from_utf8_lossy(&b[..b.len().min(4000)]).into_owned();
            if b.len() > 4000 {
                s + "...(cut)"
            } else {
                s
            }
        };
        write!(
            f,
            "command: {}\nstatus: {:?}\nstdout:\n{}\nstderr:\n{}",
            self.cmdline,
            self.status,
            clip(&self.stdout),
            clip(&self.stderr)
        )
    }
}

/// Builds a ctl invocation.
pub struct Ctl {
    cmd: Command,
    stdin: Option<Vec<u8>>,
    timeout: Duration,
    cmdline: String,
}

/// `ctl ARGS...`, with `CTL_KEY_FILE` unset so only what the test passes counts.
pub fn ctl<I, S>(args: I) -> Ctl
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut cmd = Command::new(bin("ctl"));
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let cmdline = std::iter::once("ctl".to_owned())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    cmd.args(&args)
        .env_remove("CTL_KEY_FILE")
        .env_remove("CTL_PORT");
    Ctl {
        cmd,
        stdin: None,
        timeout: CTL_TIMEOUT,
        cmdline,
    }
}

/// `ctl exec --key-file KEY TARGET COMMAND` against `agent`.
pub fn exec(agent: &Agent, command: &str) -> Ctl {
    ctl([
        "exec".as_ref(),
        "--key-file".as_ref(),
        agent.key_file.as_os_str(),
        agent.target().as_ref(),
        command.as_ref(),
    ])
}

impl Ctl {
    /// Feeds `bytes` to ctl's stdin (otherwise stdin is empty).
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Sets an environment variable for ctl.
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// Bounds the run (default [`CTL_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Starts ctl with piped stdio and returns the child (the caller must stop it).
    pub fn spawn(mut self) -> Child {
        self.cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.cmd.spawn().expect("spawn ctl")
    }

    /// Runs ctl to completion within the time bound.
    pub fn run(mut self) -> Run {
        self.cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.cmd.spawn().expect("spawn ctl");
        let mut stdin = child.stdin.take().expect("stdin");
        let input = self.stdin.take().unwrap_or_default();
        let feeder = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = reader(child.stdout.take().expect("stdout"));
        let err = reader(child.stderr.take().expect("stderr"));
        let status = match wait_bounded(&mut child, self.timeout) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not finish within {:?}", self.cmdline, self.timeout);
            }
        };
        let _ = feeder.join();
        Run {
            cmdline: self.cmdline,
            status,
            stdout: out.join().unwrap(),
            stderr: err.join().unwrap(),
        }
    }
}

/// Reads a pipe to its end on a thread.
pub fn reader(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Pids of live processes whose command line contains `needle` (zombies excluded).
pub fn pids_matching(needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
            .unwrap_or(true);
        if cmdline.contains(needle) && !zombie && pid != std::process::id() as i32 {
            pids.push(pid);
        }
    }
    pids
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A unique marker for commands, so /proc searches find only this test's processes.
pub fn marker(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "rexec-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `agent ARGS...` run to completion within the time bound, for starts that must fail (a
/// usable agent is started with [`Agent::start`]).
pub fn agent_cmd<I, S>(args: I) -> Ctl
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let cmdline = std::iter::once("agent".to_owned())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let mut cmd = Command::new(bin("agent"));
    cmd.args(&args);
    Ctl {
        cmd,
        stdin: None,
        timeout: CTL_TIMEOUT,
        cmdline,
    }
}

/// A spawned child that is killed (by its pid) and reaped when dropped, so a failing test
/// leaves nothing behind.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    /// Sends `signal` to the child.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill on our own child's pid; it is not reaped before we drop it.
        unsafe { libc::kill(self.0.id() as i32, signal) };
    }

    /// Waits for the child for at most `timeout`, panicking with `what` if it does not exit.
    #[track_caller]
    pub fn wait_within(&mut self, timeout: Duration, what: &str) -> ExitStatus {
        wait_bounded(&mut self.0, timeout)
            .unwrap_or_else(|| panic!("{what}: did not exit within {timeout:?}"))
    }
}

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Lines of a pipe, read on a thread, so a test can wait for the next one with a bound.
pub struct LineReader {
    rx: mpsc::Receiver<String>,
}

impl LineReader {
    /// Starts reading `pipe` line by line (lossy UTF-8, newline kept).
    pub fn new(pipe: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut pipe = BufReader::new(pipe);
            loop {
                let mut line = Vec::new();
                match pipe.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx
                            .send(String::from_utf8_lossy(&line).into_owned())
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        });
        Self { rx }
    }

    /// The next line, or `None` if none came within `timeout` or the pipe ended.
    pub fn next(&self, timeout: Duration) -> Option<String> {
        self.rx.recv_timeout(timeout).ok()
    }

    /// Everything still to come, until the pipe ends (bounded by `timeout`).
    pub fn rest(&self, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        let mut text = String::new();
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(line) => text.push_str(&line),
                Err(_) => break,
            }
        }
        text
    }
}

/// Live (not zombie) processes whose process group is `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the command name: state, ppid, pgrp, ...
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("Z");
        let pgrp = fields.nth(1).and_then(|f| f.parse::<i32>().ok());
        if state != "Z" && pgrp == Some(pgid) {
            pids.push(pid);
        }
    }
    pids
}

/// Kills process group `pgid` with SIGKILL when dropped: for tests that leave a remote
/// command's background children running on purpose.
pub struct KillGroupOnDrop(pub i32);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if self.0 > 1 {
            // SAFETY: killpg has no memory-safety preconditions; the group was made by our agent.
            unsafe { libc::killpg(self.0, libc::SIGKILL) };
        }
    }
}

/// Runs `program ARGS...` with no stdin, bounded by `timeout`; kills it if it overruns.
pub fn run_bounded<S: AsRef<std::ffi::OsStr>>(
    program: impl AsRef<std::ffi::OsStr>,
    args: &[S],
    timeout: Duration,
) -> std::process::Output {
    let program = program.as_ref().to_owned();
    let args: Vec<_> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    let mut child = Command::new(&program)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program:?}: {e}"));
    let out = reader(child.stdout.take().expect("stdout"));
    let err = reader(child.stderr.take().expect("stderr"));
    let status = wait_bounded(&mut child, timeout).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{program:?} {args:?} did not finish within {timeout:?}")
    });
    std::process::Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Whether `program` is on the PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// A private sshd on 127.0.0.1, with its own host key, client key, authorized_keys and
/// config in a scratch directory; stopped (by its pid) when dropped. `ssh -F` with
/// [`Sshd::ssh_config`] logs in to it as the current user with no prompt.
pub struct Sshd {
    child: KillOnDrop,
    /// The client config: `Host *` goes to this sshd; `Host dead` to a closed port.
    pub ssh_config: PathBuf,
    /// Keeps the keys and configs alive.
    _dir: tempfile::TempDir,
}

impl Sshd {
    /// Starts one, or says why this machine cannot (no sshd, no ssh-keygen).
    pub fn start() -> Result<Self, String> {
        let sshd = Path::new("/usr/sbin/sshd");
        if !sshd.is_file() || !have("ssh") || !have("ssh-keygen") {
            return Err(
                "sshd, ssh or ssh-keygen is not installed (apt-get install openssh-server)".into(),
            );
        }
        let dir = scratch();
        let d = dir.path();
        for name in ["host_key", "id"] {
            let out = run_bounded(
                "ssh-keygen",
                &[
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-f",
                    &d.join(name).to_string_lossy(),
                ],
                Duration::from_secs(30),
            );
            if !out.status.success() {
                return Err(format!(
                    "ssh-keygen failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        std::fs::copy(d.join("id.pub"), d.join("authorized_keys")).expect("authorized_keys");
        // sshd's privilege separation needs this directory; the distribution's unit makes it.
        std::fs::create_dir_all("/run/sshd")
            .map_err(|e| format!("cannot create /run/sshd: {e}"))?;
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).expect("host key");
        let mut last = String::new();
        // The port is picked by binding 0 and letting go: another process may take it first.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let config = d.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\n\
                     PidFile {pid}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                     LogLevel INFO\nSetEnv SHLVL=1\n",
                    hk = d.join("host_key").display(),
                    ak = d.join("authorized_keys").display(),
                    pid = d.join("sshd.pid").display(),
                ),
            )
            .expect("sshd_config");
            let mut child = KillOnDrop(
                Command::new(sshd)
                    .args(["-D", "-e", "-f"])
                    .arg(&config)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("cannot start sshd: {e}"))?,
            );
            let lines = LineReader::new(child.stderr.take().expect("sshd stderr"));
            let mut log = String::new();
            while let Some(line) = lines.next(Duration::from_secs(20)) {
                log.push_str(&line);
                if line.contains("Server listening") {
                    break;
                }
            }
            if !log.contains("Server listening") {
                last = format!("sshd did not start listening: {log}");
                continue;
            }
            // Keep draining its log so it never blocks on a full pipe.
            std::thread::spawn(move || while lines.next(Duration::from_secs(3600)).is_some() {});
            std::fs::write(
                d.join("known_hosts"),
                format!("[127.0.0.1]:{port} {host_pub}"),
            )
            .expect("known_hosts");
            let ssh_config = d.join("ssh_config");
            std::fs::write(
                &ssh_config,
                format!(
                    "Host dead\n  HostName 127.0.0.1\n  Port 1\n\
                     Host *\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {id}\n\
                     IdentitiesOnly yes\n  UserKnownHostsFile {kh}\n  GlobalKnownHostsFile /dev/null\n\
                     StrictHostKeyChecking yes\n  LogLevel ERROR\n",
                    user = String::from_utf8_lossy(
                        &run_bounded("id", &["-un"], Duration::from_secs(10)).stdout
                    )
                    .trim(),
                    id = d.join("id").display(),
                    kh = d.join("known_hosts").display(),
                ),
            )
            .expect("ssh_config");
            return Ok(Self {
                child,
                ssh_config,
                _dir: dir,
            });
        }
        Err(last)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // SIGTERM first so sshd closes its sessions; KillOnDrop then reaps (or kills) it.
        self.child.signal(libc::SIGTERM);
        let _ = wait_bounded(&mut self.child, Duration::from_secs(10));
    }
}
