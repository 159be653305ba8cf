//! A command's whole process tree dies with it when it is killed (`--timeout`, cancel, client
//! gone), also the processes that left its process group (`setsid`, `set -m`, `setpgid`), under
//! both containments: a cgroup per command and the subreaper fallback. A command that exits by
//! itself keeps its background processes.

use std::path::PathBuf;

use crate::exec::{assert_serving, audit_line, exec_with, Running, WAIT};
use crate::util::{eventually, exec, Agent};

/// Live processes whose `comm` is `comm` and whose command line holds `needle`.
fn procs(comm: &str, needle: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let zombie = stat
            .rsplit_once(") ")
            .is_none_or(|(_, rest)| rest.starts_with('Z'));
        if name.trim() == comm && cmdline.contains(needle) && !zombie {
            pids.push(pid);
        }
    }
    pids
}

/// Field `n` (1-based, as in proc(5)) of /proc/PID/stat.
fn stat_field(pid: i32, n: usize) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(n - 3)?.parse().ok()
}

/// Three ways out of the command's process group, each sleeping a distinct time.
struct Escapes {
    /// `setsid sleep S`: a new session.
    setsid: String,
    /// `bash -c 'set -m; sleep S & wait'`: job control puts the sleep in a group of its own.
    job: String,
    /// `perl -e 'setpgrp(0,0); sleep S'`: its own setpgid(0,0).
    setpgid: String,
}

impl Escapes {
    /// Durations from `base` (distinct per test, so parallel tests never see each other's).
    fn new(base: u32) -> Self {
        Self {
            setsid: format!("sleep {}", base + 1),
            job: format!("sleep {}", base + 2),
            setpgid: format!("sleep {}", base + 3),
        }
    }

    /// The command: starts all three, says so, and waits.
    fn command(&self) -> String {
        format!(
            "setsid {} & bash -c 'set -m; {} & wait' & perl -e 'setpgrp(0,0); {}' & echo started; wait",
            self.setsid, self.job, self.setpgid
        )
    }

    /// The escaped processes, once all three have left the command's group (bounded wait).
    #[track_caller]
    fn wait_started(&self) {
        let ready = eventually(WAIT, || {
            let setsid = procs("sleep", &self.setsid);
            let job = procs("sleep", &self.job);
            let perl = procs("perl", &self.setpgid);
            setsid.iter().any(|&p| stat_field(p, 6) == Some(p))
                && job.iter().any(|&p| stat_field(p, 5) == Some(p))
                && perl.iter().any(|&p| stat_field(p, 5) == Some(p))
        });
        assert!(ready, "the escaping processes did not start");
    }

    fn survivors(&self) -> Vec<i32> {
        let mut pids = procs("sleep", &self.setsid);
        pids.extend(procs("sleep", &self.job));
        pids.extend(procs("bash", &self.job));
        pids.extend(procs("perl", &self.setpgid));
        pids
    }

    /// Asserts (waiting, bounded) that none of them is left.
    #[track_caller]
    fn assert_all_dead(&self, agent: &Agent) {
        let dead = eventually(WAIT, || self.survivors().is_empty());
        assert!(
            dead,
            "processes that left the command's group survived: {:?}; agent log:\n{}",
            self.survivors(),
            agent.log()
        );
    }
}

impl Drop for Escapes {
    fn drop(&mut self) {
        for pid in self.survivors() {
            // SAFETY: kill on a pid this test's command started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The cgroup v2 directory this test process is in, if the machine lets it make cgroups there.
fn cgroups_usable() -> Option<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?.to_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let point = mounts.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut f = left.split_whitespace();
        (right.starts_with("cgroup2 ") && f.nth(3)? == "/").then(|| f.next().map(str::to_owned))?
    })?;
    let dir = PathBuf::from(point).join(path.trim_start_matches('/'));
    let probe = dir.join(format!("rexec-test-probe-{}", std::process::id()));
    std::fs::create_dir(&probe).ok()?;
    let kill = probe.join("cgroup.kill").exists();
    let _ = std::fs::remove_dir(&probe);
    kill.then_some(dir)
}

/// An agent in `mode`: `cgroup` is what it picks by itself here, `subreaper` is forced.
/// `None` (with the reason printed) where the machine cannot.
fn agent_with(mode: &str) -> Option<Agent> {
    if mode == "cgroup" && cgroups_usable().is_none() {
        eprintln!("skipped: no usable cgroup v2 here (cannot make a cgroup with cgroup.kill)");
        return None;
    }
    Some(match mode {
        "cgroup" => Agent::start(),
        _ => Agent::start_with(&["--containment", mode]),
    })
}

/// Asserts that the agent's start-up log names `mode` as the containment in force.
#[track_caller]
fn assert_containment(agent: &Agent, mode: &str) {
    let log = agent.log();
    assert!(
        log.contains(&format!("containment=\"{mode}\""))
            || log.contains(&format!("containment={mode}")),
        "the start-up log says which containment is in force:\n{log}"
    );
}

/// The commands' cgroups this agent still has.
fn cgroups_of(agent: &Agent) -> Vec<PathBuf> {
    let Some(dir) = cgroups_usable() else {
        return Vec::new();
    };
    let prefix = format!("rexec-{}-", agent.pid());
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect()
}

fn timeout_kills_the_whole_tree(mode: &str, base: u32) {
    let Some(agent) = agent_with(mode) else {
        return;
    };
    let escapes = Escapes::new(base);
    let mut run = Running::start(exec_with(&agent, &["--timeout", "5"], &escapes.command()));
    assert_eq!(run.line(), "started\n");
    escapes.wait_started();
    assert_eq!(run.code(), 124);
    escapes.assert_all_dead(&agent);
    assert!(audit_line(&agent, &escapes.setsid).contains("timed out"));
    if mode == "cgroup" {
        assert!(
            eventually(WAIT, || cgroups_of(&agent).is_empty()),
            "the command's cgroup is removed once it is empty: {:?}",
            cgroups_of(&agent)
        );
    }
    assert_containment(&agent, mode);
    assert_serving(&agent);
}

fn cancel_kills_the_whole_tree(mode: &str, base: u32) {
    let Some(agent) = agent_with(mode) else {
        return;
    };
    let escapes = Escapes::new(base);
    let mut run = Running::start(exec(&agent, &escapes.command()));
    assert_eq!(run.line(), "started\n");
    escapes.wait_started();
    run.child.signal(libc::SIGINT);
    assert_eq!(run.code(), 130);
    escapes.assert_all_dead(&agent);
    assert_containment(&agent, mode);
    assert_serving(&agent);
}

fn disconnect_kills_the_whole_tree(mode: &str, base: u32) {
    let Some(agent) = agent_with(mode) else {
        return;
    };
    let escapes = Escapes::new(base);
    let mut run = Running::start(exec(&agent, &escapes.command()));
    assert_eq!(run.line(), "started\n");
    escapes.wait_started();
    run.child.signal(libc::SIGKILL);
    run.child.wait_within(WAIT, "ctl after SIGKILL");
    escapes.assert_all_dead(&agent);
    assert!(audit_line(&agent, &escapes.setsid).contains("client went away"));
    assert_containment(&agent, mode);
    assert_serving(&agent);
}

fn agent_stop_kills_the_whole_tree(mode: &str, base: u32) {
    let Some(agent) = agent_with(mode) else {
        return;
    };
    let escapes = Escapes::new(base);
    let mut run = Running::start(exec(&agent, &escapes.command()));
    assert_eq!(run.line(), "started\n");
    escapes.wait_started();
    agent.signal(libc::SIGTERM);
    assert_eq!(run.code(), 143);
    escapes.assert_all_dead(&agent);
    assert_containment(&agent, mode);
    assert_eq!(agent.stop().code(), Some(0));
}

#[test]
fn cgroup_timeout_kills_processes_that_left_the_group() {
    timeout_kills_the_whole_tree("cgroup", 31300);
}

#[test]
fn cgroup_cancel_kills_processes_that_left_the_group() {
    cancel_kills_the_whole_tree("cgroup", 31310);
}

#[test]
fn cgroup_disconnect_kills_processes_that_left_the_group() {
    disconnect_kills_the_whole_tree("cgroup", 31320);
}

#[test]
fn cgroup_agent_stop_kills_processes_that_left_the_group() {
    agent_stop_kills_the_whole_tree("cgroup", 31330);
}

#[test]
fn subreaper_timeout_kills_processes_that_left_the_group() {
    timeout_kills_the_whole_tree("subreaper", 31340);
}

#[test]
fn subreaper_cancel_kills_processes_that_left_the_group() {
    cancel_kills_the_whole_tree("subreaper", 31350);
}

#[test]
fn subreaper_disconnect_kills_processes_that_left_the_group() {
    disconnect_kills_the_whole_tree("subreaper", 31360);
}

#[test]
fn subreaper_agent_stop_kills_processes_that_left_the_group() {
    agent_stop_kills_the_whole_tree("subreaper", 31370);
}

#[test]
fn subreaper_kills_a_double_forked_daemon_through_its_marker() {
    // The subshell exits at once, so the sleep's parent is the agent: only the marker in its
    // environment ties it to the command.
    let Some(agent) = agent_with("subreaper") else {
        return;
    };
    let needle = "sleep 31381";
    let mut run = Running::start(exec_with(
        &agent,
        &["--timeout", "5"],
        &format!("(setsid {needle} &); echo started; sleep 60"),
    ));
    assert_eq!(run.line(), "started\n");
    assert!(eventually(WAIT, || procs("sleep", needle)
        .iter()
        .any(|&p| stat_field(p, 4) == Some(agent.pid()))));
    assert_eq!(run.code(), 124);
    let gone = eventually(WAIT, || procs("sleep", needle).is_empty());
    let left = procs("sleep", needle);
    for &pid in &left {
        // SAFETY: kill on a pid this test's command started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(gone, "the daemon survived: {left:?}");
}

/// A command that exits by itself leaves its background processes running, under either
/// containment; they are reaped when they end (no zombie under the subreaper).
fn background_processes_of_a_finished_command_live_on(mode: &str, needle: &str) {
    let Some(agent) = agent_with(mode) else {
        return;
    };
    let run = exec(&agent, &format!("setsid {needle} & echo started")).run();
    run.expect_code(0);
    assert_eq!(run.out(), "started\n", "{run}");
    assert!(
        eventually(WAIT, || !procs("sleep", needle).is_empty()),
        "the background process was killed with the command"
    );
    for pid in procs("sleep", needle) {
        // SAFETY: kill on a pid this test's command started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let zombies = || {
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
            .filter(|&p| {
                stat_field(p, 4) == Some(agent.pid())
                    && std::fs::read_to_string(format!("/proc/{p}/stat"))
                        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| r.starts_with('Z')))
            })
            .count()
    };
    assert!(
        eventually(WAIT, || zombies() == 0),
        "the agent left {} zombie children",
        zombies()
    );
    if mode == "cgroup" {
        assert!(
            eventually(WAIT, || cgroups_of(&agent).is_empty()),
            "the cgroup goes once its last process ended: {:?}",
            cgroups_of(&agent)
        );
    }
    assert_containment(&agent, mode);
    assert_serving(&agent);
}

#[test]
fn cgroup_background_processes_of_a_finished_command_live_on() {
    background_processes_of_a_finished_command_live_on("cgroup", "sleep 31391");
}

#[test]
fn subreaper_background_processes_of_a_finished_command_live_on() {
    background_processes_of_a_finished_command_live_on("subreaper", "sleep 31392");
}

#[test]
fn forcing_cgroup_where_none_can_be_made_refuses_to_start() {
    let dir = crate::util::scratch();
    let key = crate::util::write_key_file(
        dir.path(),
        "keys",
        &crate::util::enrolled(&crate::util::key_line("t"), crate::util::AGENT_NAME),
    );
    let not_a_cgroup = dir.path().to_string_lossy().into_owned();
    let run = crate::util::agent_cmd([
        "--key-file".as_ref(),
        key.as_os_str(),
        "--listen".as_ref(),
        "127.0.0.1:0".as_ref(),
        "--containment".as_ref(),
        "cgroup".as_ref(),
        "--cgroup-parent".as_ref(),
        not_a_cgroup.as_ref(),
    ])
    .run();
    run.expect_code(1);
    assert!(run.err().contains("containment"), "{run}");
    assert!(!run.err().contains("listening"), "{run}");
}
