//! `--group` holds output in a temporary file, not in memory: MiBs from several targets come
//! out exactly as they went in, ctl's peak memory stays well under what they sent, and a
//! temporary directory that cannot hold the file fails the run loudly, losing nothing.

use std::io::Read;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use crate::fleet::{path_str, Fleet};
use crate::util::{reader, scratch, Ctl, KillOnDrop, Run};

const WAIT: Duration = Duration::from_secs(120);
const RULE: &str = "----------------";

/// The peak RSS (VmHWM) of live process `pid` in KiB, 0 if it is gone.
fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs a `ctl exec --group`, returning the run and ctl's peak RSS in KiB once every target's
/// output is held. (Not from wait4: a child's ru_maxrss also counts the memory of the test
/// process it was spawned from.)
fn run_measured(ctl: Ctl, what: &str) -> (Run, u64) {
    let mut child = KillOnDrop(ctl.spawn());
    let mut stdout = child.stdout.take().expect("ctl stdout");
    let err = reader(child.stderr.take().expect("ctl stderr"));
    // Nothing reaches stdout in --group mode before every target is done, so its first byte
    // means that all the output is held. The rest then waits in the pipe (ctl blocks writing
    // it, alive) while ctl's peak so far is read.
    let (first_tx, first_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let out = std::thread::spawn(move || {
        let mut all = vec![0; 1];
        let n = stdout.read(&mut all).unwrap_or(0);
        all.truncate(n);
        let _ = first_tx.send(());
        let _ = go_rx.recv();
        let _ = stdout.read_to_end(&mut all);
        all
    });
    first_rx
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("{what}: no output within {WAIT:?}"));
    let peak_kib = vm_hwm_kib(child.id());
    let _ = go_tx.send(());
    let status = child.wait_within(WAIT, what);
    let run = Run {
        cmdline: what.to_owned(),
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    };
    assert!(
        peak_kib > 0,
        "ctl's VmHWM could not be read while it ran\n{run}"
    );
    (run, peak_kib)
}

/// The lines `yes "TEXT" | head -n COUNT` prints.
fn lines(text: &str, count: usize) -> String {
    format!("{text}\n").repeat(count)
}

#[test]
fn megabytes_per_target_come_out_exact_while_ctl_stays_small() {
    // Four agents, each answering for two spellings: four distinct outputs, each of them
    // twice. Each target sends about 6 MiB of stdout and 1 MiB of stderr.
    let fleet = Fleet::start(4);
    let (out_lines, err_lines) = (500_000, 90_000);
    let command = format!(
        "yes \"out $PPID\" | head -n {out_lines}; yes \"err $PPID\" | head -n {err_lines} >&2"
    );
    let mut targets: Vec<String> = (0..4).map(|i| fleet.target(i)).collect();
    targets.extend((0..4).map(|i| fleet.alias(i)));
    let (run, peak_kib) = run_measured(
        fleet.exec(&["--group", "-P", "8", "-H", &targets.join(","), &command]),
        "ctl exec --group over 8 targets",
    );
    run.expect_code(0);

    let (mut want_out, mut want_err, mut sent) = (String::new(), String::new(), 0);
    for i in 0..4 {
        let names = format!("{},{}", targets[i], targets[i + 4]);
        let pid = fleet.agents[i].pid();
        let out = lines(&format!("out {pid}"), out_lines);
        let err = lines(&format!("err {pid}"), err_lines);
        sent += 2 * (out.len() + err.len());
        want_out += &format!("{RULE}\n{names} (exit 0)\n{RULE}\n{out}");
        want_err += &format!("{RULE}\n{names} (stderr, exit 0)\n{RULE}\n{err}");
    }
    want_err += "ctl: 8 targets: 8 ok, 0 failed, 0 unreachable\n";
    // Compared without printing megabytes on a failure.
    assert!(
        run.stdout == want_out.as_bytes(),
        "stdout differs ({} bytes, expected {})",
        run.stdout.len(),
        want_out.len()
    );
    assert!(
        run.stderr == want_err.as_bytes(),
        "stderr differs ({} bytes, expected {}); its end: {:?}",
        run.stderr.len(),
        want_err.len(),
        &run.err()[run.err().len().saturating_sub(300)..]
    );

    // Holding the four distinct outputs in memory takes more than half of what was sent (and
    // all eight were running at once); a loose bound, not a measurement (that is
    // bench/group_memory.sh).
    let bound_kib = (sent / 2 / 1024) as u64;
    println!("ctl peak RSS {peak_kib} KiB for {sent} bytes sent");
    assert!(
        peak_kib < bound_kib,
        "ctl peaked at {peak_kib} KiB for {} KiB of output (bound {bound_kib} KiB)",
        sent / 1024
    );
}

#[test]
fn a_tmpdir_that_cannot_hold_the_output_fails_the_run_before_anything_runs() {
    let fleet = Fleet::start(1);
    let dir = scratch();
    let ran = dir.path().join("ran");
    let missing = dir.path().join("no-such-dir");
    let run = fleet
        .exec(&[
            "--group",
            "-H",
            &fleet.target(0),
            &format!("touch {}", path_str(&ran)),
        ])
        .env("TMPDIR", &missing)
        .run();
    run.expect_code(1);
    assert!(
        run.err().contains(&path_str(&missing)),
        "names the directory: {run}"
    );
    assert!(run.err().contains("TMPDIR"), "says what to do: {run}");
    assert!(!ran.exists(), "nothing ran: {run}");
}

/// A tmpfs of `size` mounted on `dir` for the test, unmounted when dropped.
struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    fn mount(dir: &'a Path, size: &str) -> Result<Self, String> {
        let status = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if status.success() {
            Ok(Self(dir))
        } else {
            Err(format!("mount -t tmpfs failed: {status}"))
        }
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn a_full_tmpdir_mid_run_loses_nothing_and_fails_the_run() {
    let fleet = Fleet::start(2);
    let dir = scratch();
    let small = dir.path().join("small");
    std::fs::create_dir(&small).expect("mount point");
    // 256 KiB of room for 2 x 2 MiB of output: the spool fills up mid-run.
    let _mounted = match Tmpfs::mount(&small, "256k") {
        Ok(m) => m,
        Err(why) => {
            println!("SKIP a_full_tmpdir_mid_run_loses_nothing_and_fails_the_run: {why}");
            return;
        }
    };
    let count = 200_000;
    let targets = format!("{},{}", fleet.target(0), fleet.target(1));
    let run = fleet
        .exec(&[
            "--group",
            "-H",
            &targets,
            &format!("yes \"x $PPID\" | head -n {count}"),
        ])
        .env("TMPDIR", &small)
        .run();
    run.expect_code(1);
    let mut want = String::new();
    let mut blocks: Vec<(String, i32)> = (0..2)
        .map(|i| (fleet.target(i), fleet.agents[i].pid()))
        .collect();
    blocks.sort_by_key(|(t, _)| targets.find(t.as_str()));
    for (target, pid) in blocks {
        want += &format!(
            "{RULE}\n{target} (exit 0)\n{RULE}\n{}",
            lines(&format!("x {pid}"), count)
        );
    }
    assert!(
        run.stdout == want.as_bytes(),
        "stdout differs ({} bytes, expected {})",
        run.stdout.len(),
        want.len()
    );
    let err = run.err();
    assert!(
        err.contains(&format!(
            "cannot write --group output to the temporary file in {}",
            small.display()
        )),
        "{err}"
    );
    assert!(err.contains("kept in memory instead"), "{err}");
}
