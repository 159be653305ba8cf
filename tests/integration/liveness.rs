//! Liveness (`--alive-timeout`): a frozen agent, a frozen ctl and a network partition are each
//! noticed within the timeout; a command that is merely quiet is never cut.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::util::*;

/// Far more than any timeout below plus its heartbeat slack: only a hang exceeds it.
const BOUND: Duration = Duration::from_secs(30);

/// A command whose tree includes a process that left its group, named by `mark`, so its end
/// shows the whole tree was ended; prints `ready` once it is running.
fn escaping_command(mark: &str) -> String {
    format!("setsid sh -c 'sleep 600; : {mark}' & echo ready; wait")
}

#[test]
fn a_quiet_command_is_never_cut_by_the_alive_timeout() {
    // Both sides at the shortest timeout, the command silent for five of them.
    let agent = Agent::start_with(&["--alive-timeout", "1"]);
    let run = ctl([
        "exec",
        "--alive-timeout",
        "1",
        "--key-file",
        agent.key_file.to_str().unwrap(),
        &agent.target(),
        "sleep 5; echo done",
    ])
    .run();
    run.expect_code(0);
    assert_eq!(run.out(), "done\n", "{run}");
    assert!(
        !agent.log().contains("silent"),
        "the agent gave up on a live client:\n{}",
        agent.log()
    );
}

#[test]
fn a_frozen_agent_makes_ctl_exit_255_naming_the_target_and_the_silence() {
    let agent = Agent::start();
    let mark = marker("frozen-agent");
    let mut child = KillOnDrop(
        ctl([
            "exec",
            "--alive-timeout",
            "2",
            "--key-file",
            agent.key_file.to_str().unwrap(),
            &agent.target(),
            &escaping_command(&mark),
        ])
        .spawn(),
    );
    let out = LineReader::new(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    assert_eq!(out.next(BOUND).as_deref(), Some("ready\n"));
    agent.signal(libc::SIGSTOP);
    let status = child.wait_within(BOUND, "ctl facing a frozen agent");
    let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    agent.signal(libc::SIGCONT);
    assert_eq!(status.code(), Some(255), "{stderr}");
    assert!(
        stderr.contains(&agent.target())
            && stderr.contains("no sign of life from the agent for 2s"),
        "ctl must name the target and how long it was silent: {stderr}"
    );
    // Once thawed, the agent finds its client gone and ends the whole tree.
    assert!(
        eventually(BOUND, || pids_matching(&mark).is_empty()),
        "the command outlived its client; agent log:\n{}",
        agent.log()
    );
}

#[test]
fn a_frozen_ctl_makes_the_agent_end_the_command_tree_and_audit_it() {
    let agent = Agent::start_with(&["--alive-timeout", "2"]);
    let mark = marker("frozen-ctl");
    let mut child = KillOnDrop(
        ctl([
            "exec",
            "--key-file",
            agent.key_file.to_str().unwrap(),
            &agent.target(),
            &escaping_command(&mark),
        ])
        .spawn(),
    );
    let out = LineReader::new(child.stdout.take().unwrap());
    assert_eq!(out.next(BOUND).as_deref(), Some("ready\n"));
    // ctl's own command line holds the mark too.
    let ctl_pid = child.id() as i32;
    let tree = || -> Vec<i32> {
        pids_matching(&mark)
            .into_iter()
            .filter(|&p| p != ctl_pid)
            .collect()
    };
    assert!(!tree().is_empty(), "the command is running");
    child.signal(libc::SIGSTOP);
    let gone = eventually(BOUND, || tree().is_empty());
    child.signal(libc::SIGCONT);
    assert!(
        gone,
        "the agent kept the command of a frozen client; log:\n{}",
        agent.log()
    );
    let log = agent.wait_for_log("client silent for 2s", BOUND);
    assert!(
        log.lines()
            .any(|l| l.contains("command finished") && l.contains("client silent for 2s")),
        "the end record says why the command was ended:\n{log}"
    );
}

#[test]
fn a_frozen_ctl_with_output_backed_up_still_gets_its_command_ended_and_audited() {
    // `yes` fills the frozen ctl's window, so the agent's send stalls for good: it must be cut
    // short when the silence is noticed, or the exchange never ends and never is audited.
    let agent = Agent::start_with(&["--alive-timeout", "2"]);
    let mut child = KillOnDrop(
        ctl([
            "exec",
            "--key-file",
            agent.key_file.to_str().unwrap(),
            &agent.target(),
            "yes",
        ])
        .spawn(),
    );
    let out = LineReader::new(child.stdout.take().unwrap());
    assert_eq!(out.next(BOUND).as_deref(), Some("y\n"));
    child.signal(libc::SIGSTOP);
    let log = agent.wait_for_log("command finished", BOUND);
    child.signal(libc::SIGCONT);
    assert!(
        log.lines()
            .any(|l| l.contains("command finished") && l.contains("client silent for 2s")),
        "{log}"
    );
}

#[test]
fn without_an_alive_timeout_ctl_waits_for_a_frozen_agent() {
    // `--alive-timeout 0`: the user asked never to give up; the agent thawed, ctl goes on.
    let agent = Agent::start();
    let mut child = KillOnDrop(
        ctl([
            "exec",
            "--alive-timeout",
            "0",
            "--key-file",
            agent.key_file.to_str().unwrap(),
            &agent.target(),
            "echo ready; sleep 3; echo after",
        ])
        .spawn(),
    );
    let out = LineReader::new(child.stdout.take().unwrap());
    assert_eq!(out.next(BOUND).as_deref(), Some("ready\n"));
    agent.signal(libc::SIGSTOP);
    // Longer than the 1 s minimum timeout would allow, so a limit in force would have shown.
    std::thread::sleep(Duration::from_secs(4));
    agent.signal(libc::SIGCONT);
    let status = child.wait_within(BOUND, "ctl without an alive timeout");
    assert_eq!(status.code(), Some(0));
    assert_eq!(out.next(BOUND).as_deref(), Some("after\n"));
}

#[test]
fn alive_timeouts_below_a_second_or_not_durations_are_usage_errors() {
    let run = ctl(["exec", "--alive-timeout", "0.5", "127.0.0.1:1", "true"]).run();
    run.expect_code(2);
    assert!(run.err().contains("at least 1 s"), "{run}");
    let run = agent_cmd(["--key-file", "/nonexistent", "--alive-timeout", "soon"]).run();
    run.expect_code(2);
    assert!(run.err().contains("not a duration"), "{run}");
}

/// Two network namespaces joined by a veth pair, removed (with the pair) when dropped. The
/// namespace addresses are the only non-loopback ones the tests use.
struct Partitionable {
    agent_ns: String,
    client_ns: String,
    client_link: String,
}

const AGENT_ADDR: &str = "10.213.0.1";
const CLIENT_ADDR: &str = "10.213.0.2";

impl Partitionable {
    fn create() -> Result<Self, String> {
        let tag = std::process::id() % 100_000;
        let this = Self {
            agent_ns: format!("rexec-a{tag}"),
            client_ns: format!("rexec-c{tag}"),
            client_link: format!("rxc{tag}"),
        };
        let agent_link = format!("rxa{tag}");
        let steps: [&[&str]; 8] = [
            &["netns", "add", &this.agent_ns],
            &["netns", "add", &this.client_ns],
            &[
                "link",
                "add",
                &agent_link,
                "netns",
                &this.agent_ns,
                "type",
                "veth",
                "peer",
                "name",
                &this.client_link,
                "netns",
                &this.client_ns,
            ],
            &[
                "-n",
                &this.agent_ns,
                "addr",
                "add",
                &format!("{AGENT_ADDR}/24"),
                "dev",
                &agent_link,
            ],
            &[
                "-n",
                &this.client_ns,
                "addr",
                "add",
                &format!("{CLIENT_ADDR}/24"),
                "dev",
                &this.client_link,
            ],
            &["-n", &this.agent_ns, "link", "set", &agent_link, "up"],
            &[
                "-n",
                &this.client_ns,
                "link",
                "set",
                &this.client_link,
                "up",
            ],
            &["-n", &this.agent_ns, "link", "set", "lo", "up"],
        ];
        for step in steps {
            ip(step)?;
        }
        Ok(this)
    }

    /// Cuts the link from the client's side: no FIN, no RST, packets just stop.
    fn cut(&self) {
        ip(&[
            "-n",
            &self.client_ns,
            "link",
            "set",
            &self.client_link,
            "down",
        ])
        .expect("take the client's link down");
    }
}

impl Drop for Partitionable {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it, and so the pair.
        let _ = ip(&["netns", "del", &self.client_ns]);
        let _ = ip(&["netns", "del", &self.agent_ns]);
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[test]
fn a_partition_is_noticed_on_both_sides_and_the_command_tree_ended() {
    if !have("ip") {
        eprintln!("SKIP: `ip` (iproute2) is not installed; .ci/run installs it");
        return;
    }
    let net = match Partitionable::create() {
        Ok(net) => net,
        Err(e) => {
            // Creating namespaces needs root (CAP_SYS_ADMIN); CI runs as root.
            eprintln!("SKIP: cannot create network namespaces here: {e}");
            return;
        }
    };
    let dir = scratch();
    let (key_file, _) = enrolled_pair(dir.path(), "part");
    let agent = Agent::start_wrapped(
        &["ip", "netns", "exec", &net.agent_ns],
        &format!("{AGENT_ADDR}:0"),
        dir,
        key_file,
        &["--alive-timeout", "2"],
    );
    let mark = marker("partition");
    let mut child = KillOnDrop(
        Command::new("ip")
            .args(["netns", "exec", &net.client_ns])
            .arg(bin("ctl"))
            .args(["exec", "--alive-timeout", "2", "--key-file"])
            .arg(&agent.key_file)
            .arg(agent.target())
            .arg(escaping_command(&mark))
            .env_remove("CTL_KEY_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ctl in the client's namespace"),
    );
    let out = LineReader::new(child.stdout.take().unwrap());
    let err = reader(child.stderr.take().unwrap());
    assert_eq!(
        out.next(BOUND).as_deref(),
        Some("ready\n"),
        "the command ran across the veth pair; agent log:\n{}",
        agent.log()
    );
    net.cut();
    let status = child.wait_within(BOUND, "ctl across a partition");
    let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    assert_eq!(status.code(), Some(255), "{stderr}");
    assert!(
        stderr.contains(&agent.target()) && stderr.contains("no sign of life"),
        "{stderr}"
    );
    assert!(
        eventually(BOUND, || pids_matching(&mark).is_empty()),
        "the command outlived the partition; agent log:\n{}",
        agent.log()
    );
    agent.wait_for_log("client silent for 2s", BOUND);
    drop(agent);
    drop(net);
}

/// Runs `ctl ARGS` with its stdout into a pipe nobody reads for `pause`, then counted; returns
/// ctl's status and the count.
fn behind_a_paused_reader(args: &[&str], pause: Duration) -> (std::process::ExitStatus, String) {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "{ctl} {args} | (sleep {secs}; wc -c); exit ${{PIPESTATUS:-0}}",
        ctl = bin("ctl").display(),
        args = quoted.join(" "),
        secs = pause.as_secs(),
    );
    let mut child = KillOnDrop(
        Command::new("bash")
            .args(["-c", &format!("set -o pipefail; {script}")])
            .env_remove("CTL_KEY_FILE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the pipeline"),
    );
    let out = reader(child.stdout.take().unwrap());
    let status = child.wait_within(BOUND + pause, "ctl behind a paused reader");
    let count = String::from_utf8_lossy(&out.join().unwrap())
        .trim()
        .to_owned();
    (status, count)
}

#[test]
fn a_paused_reader_of_ctls_output_is_not_silence() {
    // `ctl ... | less`, and the user reads for a while: ctl is stuck writing to its stdout,
    // yet its heartbeats go on, so the agent keeps the command.
    let agent = Agent::start_with(&["--alive-timeout", "1"]);
    let key = agent.key_file.to_str().unwrap().to_owned();
    let target = agent.target();
    let bytes = "head -c 20000000 /dev/zero";
    let (status, count) = behind_a_paused_reader(
        &["exec", "--key-file", &key, &target, bytes],
        Duration::from_secs(5),
    );
    assert!(status.success(), "{status:?}; agent log:\n{}", agent.log());
    assert_eq!(count, "20000000");
    // Many targets share one console lock; a stalled writer holds it.
    let other = format!("localhost:{}", agent.addr.port());
    let (status, count) = behind_a_paused_reader(
        &[
            "exec",
            "--key-file",
            &key,
            "-H",
            &format!("{target},{other}"),
            bytes,
        ],
        Duration::from_secs(5),
    );
    assert!(status.success(), "{status:?}; agent log:\n{}", agent.log());
    // Prefixed lines of NULs: each target's 20 MB are one line, plus its prefix.
    let count: usize = count.parse().unwrap();
    assert!(count > 40_000_000, "{count}");
    assert!(
        !agent.log().contains("client silent"),
        "the agent gave up on a live client:\n{}",
        agent.log()
    );
}
