//! Faults around a running command: clients killed, interrupted, timed out, vanished or not
//! reading; the agent stopped; a flood of output to a slow reader; hundreds of execs at once.
//! Nothing of a command may survive in /proc unless it was meant to, no zombie may pile up, no
//! descriptor may leak, memory stays bounded, and the agent keeps serving.

use std::io::Read;
use std::process::Child;
use std::time::{Duration, Instant};

use rexec_shared::message::ExecRequest;

use crate::rawclient::{authenticate, first_key, request, ClientMsg, OwnedServerMsg};
use crate::util::{
    ctl, eventually, exec, group_members, marker, pids_matching, Agent, KillGroupOnDrop,
    KillOnDrop, LineReader,
};

/// Generous bound for the agent to react on a loaded machine.
const REACT: Duration = Duration::from_secs(30);

/// A command that starts a background child in its group, prints its group id, and sleeps.
fn sleeper(tag: &str) -> String {
    format!("sleep 300 & echo $$; sleep 300; : {tag}")
}

/// `(state, ppid)` of a process, from /proc/PID/stat.
fn state_and_parent(pid: i32) -> Option<(char, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Zombie children of `pid`.
fn zombies_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some(('Z', parent)) = state_and_parent(child) {
            if parent == pid {
                out.push(child);
            }
        }
    }
    out
}

/// Open file descriptors of `pid`.
fn fd_count(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[track_caller]
fn assert_group_gone(pgid: i32, what: &str) {
    assert!(
        eventually(REACT, || group_members(pgid).is_empty()),
        "{what}: processes of group {pgid} survive: {:?}",
        group_members(pgid)
    );
}

#[track_caller]
fn assert_no_zombies(agent: &Agent) {
    assert!(
        eventually(REACT, || zombies_of(agent.pid()).is_empty()),
        "zombie children of the agent: {:?}",
        zombies_of(agent.pid())
    );
}

#[track_caller]
fn still_serves(agent: &Agent) {
    let run = exec(agent, "echo still-serving").run();
    run.expect_code(0);
    assert_eq!(run.out(), "still-serving\n", "{run}");
}

/// A ctl running `command` on `agent` with `options`, its first stdout line (the group id) read.
struct Running {
    child: KillOnDrop,
    pgid: i32,
    _group: KillGroupOnDrop,
}

impl Running {
    fn start(agent: &Agent, options: &[&str], command: &str) -> Self {
        let key = agent.key_file.to_str().expect("utf-8 path").to_owned();
        let target = agent.target();
        let mut args = vec!["exec", "--key-file", &key];
        args.extend_from_slice(options);
        args.extend_from_slice(&[&target, command]);
        let mut child = KillOnDrop(ctl(args).spawn());
        let out = LineReader::new(child.stdout.take().expect("stdout"));
        let line = out.next(REACT).expect("the command printed its group id");
        let pgid: i32 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("not a group id: {line:?}"));
        assert!(
            eventually(REACT, || group_members(pgid).len() >= 3),
            "the shell and both sleeps of group {pgid} did not show up"
        );
        Self {
            child,
            pgid,
            _group: KillGroupOnDrop(pgid),
        }
    }

    fn code_within(&mut self, what: &str) -> Option<i32> {
        self.child.wait_within(REACT, what).code()
    }
}

/// The group id a raw exec's command printed first.
fn first_stdout_line(authed: &mut crate::rawclient::Authed) -> i32 {
    let mut out = Vec::new();
    while !out.contains(&b'\n') {
        match authed.recv() {
            Ok(Some(OwnedServerMsg::Stdout(data))) => out.extend(data),
            other => panic!("expected stdout, got {other:?}"),
        }
    }
    String::from_utf8_lossy(&out)
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .expect("group id")
}

#[test]
fn every_way_a_client_can_leave_kills_the_group_and_loses_nothing() {
    let agent = Agent::start_with(&["--kill-grace", "1"]);
    let key = first_key(&agent.key_file);
    still_serves(&agent);
    let fds_before = fd_count(agent.pid());

    // ctl killed outright.
    let mut run = Running::start(&agent, &[], &sleeper(&marker("sigkill")));
    run.child.signal(libc::SIGKILL);
    run.child.wait_within(REACT, "ctl after SIGKILL");
    assert_group_gone(run.pgid, "ctl killed");

    // ctl interrupted: it forwards the cancel and exits 130.
    let mut run = Running::start(&agent, &[], &sleeper(&marker("sigint")));
    run.child.signal(libc::SIGINT);
    assert_eq!(run.code_within("ctl after SIGINT"), Some(130));
    assert_group_gone(run.pgid, "ctl interrupted");

    // The timeout runs out: 124, background child included in the kill.
    let mut run = Running::start(&agent, &["--timeout", "2"], &sleeper(&marker("timeout")));
    assert_eq!(run.code_within("ctl after its timeout"), Some(124));
    assert_group_gone(run.pgid, "timed out");

    // A client that vanishes with a reset, not a clean close.
    let mut authed = authenticate(agent.addr, &key).expect("authenticate");
    authed
        .send(&ClientMsg::Exec(request(&sleeper(&marker("reset")))))
        .expect("send");
    let pgid = first_stdout_line(&mut authed);
    let _group = KillGroupOnDrop(pgid);
    socket2::SockRef::from(&authed.conn.stream)
        .set_linger(Some(Duration::ZERO))
        .expect("linger 0");
    drop(authed);
    assert_group_gone(pgid, "client reset");

    // A client that stops reading a flood of output, then goes away.
    let mut authed = authenticate(agent.addr, &key).expect("authenticate");
    authed
        .send(&ClientMsg::Exec(request("echo $$; exec yes flood")))
        .expect("send");
    let pgid = first_stdout_line(&mut authed);
    let _group = KillGroupOnDrop(pgid);
    // Let the socket buffers fill so the agent is blocked writing to this client.
    assert!(
        eventually(REACT, || {
            let stat = std::fs::read_to_string(format!("/proc/{pgid}/wchan")).unwrap_or_default();
            stat.contains("pipe")
        }),
        "the flooding command never blocked on its pipe"
    );
    drop(authed);
    assert_group_gone(pgid, "client not reading, then gone");

    // A client that cancels over the protocol, with a signal of its choosing.
    let mut authed = authenticate(agent.addr, &key).expect("authenticate");
    let req = ExecRequest {
        stdin: true,
        ..request(&sleeper(&marker("cancel")))
    };
    authed.send(&ClientMsg::Exec(req)).expect("send");
    let pgid = first_stdout_line(&mut authed);
    let _group = KillGroupOnDrop(pgid);
    authed
        .send(&ClientMsg::Cancel {
            signal: libc::SIGUSR1 as u8,
        })
        .expect("send cancel");
    let result = authed.collect().expect("an exit status");
    assert_eq!(
        result.status.and_then(|s| s.signal),
        Some(libc::SIGUSR1),
        "{result:?}"
    );
    assert_group_gone(pgid, "cancelled");

    assert_no_zombies(&agent);
    assert!(
        eventually(REACT, || fd_count(agent.pid()) <= fds_before + 2),
        "descriptors leaked: {fds_before} before, {} after",
        fd_count(agent.pid())
    );
    still_serves(&agent);
}

#[test]
fn sigterm_to_the_agent_ends_every_command_and_it_exits_0() {
    let agent = Agent::start_with(&["--kill-grace", "1"]);
    let mut runs: Vec<Running> = (0..3)
        .map(|i| Running::start(&agent, &[], &sleeper(&marker(&format!("stop{i}")))))
        .collect();
    let status = agent.stop();
    assert_eq!(status.code(), Some(0), "agent exit status after SIGTERM");
    for run in &mut runs {
        // The clients are told the signal that ended their command.
        assert_eq!(run.code_within("ctl after the agent stopped"), Some(143));
        assert_group_gone(run.pgid, "agent stopped");
    }
}

#[test]
fn a_background_child_holding_stdout_neither_holds_ctl_nor_dies_with_it() {
    let agent = Agent::start();
    let tag = marker("background");
    // The background shell inherits stdout and stderr and holds them for 300 s.
    let started = Instant::now();
    let run = exec(
        &agent,
        &format!("echo $$; sh -c 'sleep 300; : {tag}' & echo started"),
    )
    .timeout(Duration::from_secs(120))
    .run();
    run.expect_code(0);
    let took = started.elapsed();
    let mut lines = run.out().lines().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!(lines.pop().as_deref(), Some("started"), "{run}");
    let pgid: i32 = lines[0].parse().expect("group id");
    let _cleanup = KillGroupOnDrop(pgid);
    assert!(
        took < Duration::from_secs(100),
        "ctl waited {took:?} for a background child"
    );
    // The command exited by itself, so its group is left alone, even after more traffic.
    still_serves(&agent);
    let alive = pids_matching(&tag);
    assert!(!alive.is_empty(), "the background child was killed");
    assert!(
        group_members(pgid).iter().any(|p| alive.contains(p)),
        "the background child left its group"
    );
    assert_no_zombies(&agent);
}

#[test]
fn a_gib_of_output_to_a_slow_reader_keeps_agent_memory_bounded() {
    const LIMIT_KIB: u64 = 64 * 1024;
    let agent = Agent::start_with(&["--kill-grace", "1"]);
    let mut child =
        KillOnDrop(exec(&agent, "echo $$ >&2; exec head -c 1073741824 /dev/zero").spawn());
    drop(child.stdin.take());
    let err = LineReader::new(child.stderr.take().expect("stderr"));
    let mut out = child.stdout.take().expect("stdout");
    let pgid: i32 = err
        .next(REACT)
        .and_then(|l| l.trim().parse().ok())
        .expect("group id on stderr");
    let _group = KillGroupOnDrop(pgid);

    let mut peak_agent = 0;
    let mut peak_ctl = 0;
    let mut read = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    // Slowly for a while (64 KiB every 5 ms), then as fast as the pipe gives, up to 256 MiB: the
    // rest is never read.
    for (phase, pause) in [
        (Duration::from_secs(4), Duration::from_millis(5)),
        (Duration::from_secs(3), Duration::ZERO),
    ] {
        let end = Instant::now() + phase;
        let mut last_sample = Instant::now() - Duration::from_secs(1);
        while Instant::now() < end && read < 256 * 1024 * 1024 {
            let n = out.read(&mut buf).expect("read ctl stdout");
            assert!(n > 0, "output ended early after {read} bytes");
            read += n as u64;
            if last_sample.elapsed() >= Duration::from_millis(100) {
                peak_agent = peak_agent.max(agent.rss_kib());
                peak_ctl = peak_ctl.max(crate::util::rss_kib(child.id() as i32));
                last_sample = Instant::now();
            }
            std::thread::sleep(pause);
        }
    }
    println!("read {read} bytes; peak RSS: agent {peak_agent} KiB, ctl {peak_ctl} KiB");
    assert!(read > 16 * 1024 * 1024, "only {read} bytes arrived");
    assert!(
        peak_agent < LIMIT_KIB,
        "agent RSS peaked at {peak_agent} KiB"
    );
    assert!(peak_ctl < LIMIT_KIB, "ctl RSS peaked at {peak_ctl} KiB");

    // The reader goes away: the command is killed, the agent carries on.
    child.signal(libc::SIGKILL);
    child.wait_within(REACT, "ctl after SIGKILL");
    drop(out);
    assert_group_gone(pgid, "reader gone");
    assert_no_zombies(&agent);
    still_serves(&agent);
}

#[test]
fn two_hundred_concurrent_execs_are_all_correct() {
    const N: usize = 200;
    let agent = Agent::start();
    let children: Vec<(usize, Child)> = (0..N)
        .map(|i| {
            let command = format!("echo out-{i}; echo err-{i} >&2; exit {}", i % 100);
            let mut child = exec(&agent, &command).spawn();
            drop(child.stdin.take());
            (i, child)
        })
        .collect();
    let mut failures = Vec::new();
    for (i, mut child) in children {
        let out = crate::util::reader(child.stdout.take().expect("stdout"));
        let err = crate::util::reader(child.stderr.take().expect("stderr"));
        let status = crate::util::wait_bounded(&mut child, Duration::from_secs(120));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let (out, err) = (out.join().unwrap(), err.join().unwrap());
        let expected = (
            Some((i % 100) as i32),
            format!("out-{i}\n"),
            format!("err-{i}\n"),
        );
        let got = (
            status.and_then(|s| s.code()),
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        );
        if got != expected {
            failures.push(format!("exec {i}: expected {expected:?}, got {got:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {N} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let finished = agent
        .log()
        .lines()
        .filter(|l| l.contains("command finished"))
        .count();
    assert_eq!(finished, N, "audit lines");
    assert_no_zombies(&agent);
}
