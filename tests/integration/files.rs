//! `ctl push` and `ctl pull` against real agents on loopback: single files and trees, one
//! target and many, modes and times, and every bad input the contract names (missing and
//! unreadable sources, a missing destination, a full disk, a file size limit, a hostile tree
//! on the agent, a cut or tampered transfer) leaving nothing partial behind.

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

use crate::proxy::{Dir, Fault, Proxy};
use crate::util::{ctl, key_line, scratch, write_key_file, Agent, Ctl};

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 test path")
}

/// `ctl push|pull --key-file KEY ARGS...` against `agent`'s key.
fn copy(verb: &str, agent: &Agent, args: &[&str]) -> Ctl {
    let mut all = vec![verb, "--key-file", s(&agent.key_file)];
    all.extend_from_slice(args);
    ctl(all)
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A file of `len` bytes that are not all alike.
fn patterned(path: &Path, len: usize) -> Vec<u8> {
    let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(path, &bytes).unwrap();
    bytes
}

/// Agents sharing one key, and that key for ctl.
fn fleet(n: usize) -> (Vec<Agent>, PathBuf, tempfile::TempDir) {
    let dir = scratch();
    let key = key_line("files");
    let key_file = write_key_file(dir.path(), "key", &key);
    let agents = (0..n)
        .map(|_| {
            let own = scratch();
            let own_key = write_key_file(own.path(), "keys", &key);
            Agent::start_in(own, own_key, &[])
        })
        .collect();
    (agents, key_file, dir)
}

#[test]
fn push_writes_a_file_at_its_new_path_with_its_mode_and_times_with_p() {
    let agent = Agent::start();
    let dir = scratch();
    let src = dir.path().join("app.conf");
    let content = patterned(&src, 300_000);
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mtime = filetime(&src, 1_234_567_890);
    let dest = dir.path().join("remote");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("renamed.conf"), b"old").unwrap();

    let run = copy(
        "push",
        &agent,
        &[&agent.target(), s(&src), s(&dest.join("renamed.conf"))],
    )
    .run();
    run.expect_code(0);
    assert_eq!(
        run.out(),
        format!("{}: copied 1 file, 300000 bytes\n", agent.target())
    );
    let meta = std::fs::metadata(dest.join("renamed.conf")).unwrap();
    assert_eq!(std::fs::read(dest.join("renamed.conf")).unwrap(), content);
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_ne!(meta.mtime(), mtime, "times are kept only with -p");
    assert_eq!(names(&dest), ["renamed.conf"], "no temporary file left");

    // Into an existing directory, keeping the name, and with -p the time.
    copy("push", &agent, &["-p", &agent.target(), s(&src), s(&dest)])
        .run()
        .expect_code(0);
    let meta = std::fs::metadata(dest.join("app.conf")).unwrap();
    assert_eq!(meta.mtime(), mtime);
    assert_eq!(names(&dest), ["app.conf", "renamed.conf"]);
    assert!(agent.log().contains("transfer finished"), "{}", agent.log());
}

/// Sets `path`'s modification time to `secs`; returns it.
fn filetime(path: &Path, secs: i64) -> i64 {
    let status = Command::new("touch")
        .args(["-m", "-d", &format!("@{secs}")])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
    secs
}

#[test]
fn push_r_sends_a_tree_to_many_targets_with_links_as_links() {
    let (agents, key_file, dir) = fleet(2);
    let src = dir.path().join("site");
    std::fs::create_dir_all(src.join("css")).unwrap();
    let big = patterned(&src.join("css/big.bin"), 3 << 20);
    std::fs::write(src.join("index.html"), b"<html>").unwrap();
    std::os::unix::fs::symlink("index.html", src.join("home.html")).unwrap();
    std::fs::set_permissions(src.join("css"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let dests: Vec<PathBuf> = (0..2)
        .map(|i| dir.path().join(format!("dest{i}")))
        .collect();
    let hosts = agents
        .iter()
        .map(Agent::target)
        .collect::<Vec<_>>()
        .join(",");
    for d in &dests {
        std::fs::create_dir(d).unwrap();
    }
    // One remote DEST path for both agents: each agent writes to its own dir via a link.
    let shared = dir.path().join("www");
    std::fs::create_dir(&shared).unwrap();
    let run = ctl([
        "push",
        "--key-file",
        s(&key_file),
        "-r",
        "-H",
        &hosts,
        s(&src),
        s(&shared),
    ])
    .run();
    run.expect_code(0);
    for agent in &agents {
        assert!(
            run.out().contains(&format!(
                "{}: copied 3 files, {} bytes\n",
                agent.target(),
                big.len() + 6
            )),
            "{run}"
        );
    }
    assert!(run.err().contains("2 targets: 2 ok, 0 failed"), "{run}");
    let got = shared.join("site");
    assert_eq!(std::fs::read(got.join("css/big.bin")).unwrap(), big);
    assert_eq!(
        std::fs::read_link(got.join("home.html")).unwrap(),
        Path::new("index.html")
    );
    assert_eq!(
        std::fs::metadata(got.join("css")).unwrap().mode() & 0o7777,
        0o750
    );
    for agent in &agents {
        assert!(agent.log().contains("request=\"push\""), "{}", agent.log());
    }
}

#[test]
fn several_sources_need_an_existing_directory_and_missing_ones_are_named() {
    let agent = Agent::start();
    let dir = scratch();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&a, b"A").unwrap();
    std::fs::write(&b, b"B").unwrap();
    let missing = dir.path().join("no-such-dir");
    let run = copy(
        "push",
        &agent,
        &[&agent.target(), s(&a), s(&b), s(&missing)],
    )
    .run();
    run.expect_code(1);
    assert!(run.err().contains("does not exist"), "{run}");
    assert!(run.err().contains(s(&missing)), "{run}");
    assert!(!missing.exists());

    // A new path for one file needs its directory.
    let deep = dir.path().join("x/y/z");
    let run = copy("push", &agent, &[&agent.target(), s(&a), s(&deep)]).run();
    run.expect_code(1);
    assert!(run.err().contains("does not exist"), "{run}");

    // A missing local source is named; the others are still copied.
    let dest = dir.path().join("d");
    std::fs::create_dir(&dest).unwrap();
    let gone = dir.path().join("gone");
    let run = copy(
        "push",
        &agent,
        &[&agent.target(), s(&a), s(&gone), s(&dest)],
    )
    .run();
    run.expect_code(1);
    assert!(
        run.err().contains(&format!("cannot read {}", s(&gone))),
        "{run}"
    );
    assert_eq!(names(&dest), ["a"]);
    // Only missing sources: nothing to connect for.
    let run = copy("push", &agent, &[&agent.target(), s(&gone), s(&dest)]).run();
    run.expect_code(1);
    // A directory without -r.
    let run = copy(
        "push",
        &agent,
        &[&agent.target(), s(&dest), s(&dir.path().join("e"))],
    )
    .run();
    run.expect_code(1);
    assert!(run.err().contains("is a directory (use -r"), "{run}");
}

#[test]
fn pull_lands_in_local_dir_or_one_directory_per_target() {
    let (agents, key_file, dir) = fleet(2);
    let remote = dir.path().join("logs");
    std::fs::create_dir(&remote).unwrap();
    let content = patterned(&remote.join("app.log"), 1 << 20);
    std::fs::write(remote.join("name\nwith newline \u{e9}"), b"x").unwrap();

    let local = dir.path().join("one");
    std::fs::create_dir(&local).unwrap();
    let run = ctl([
        "pull",
        "--key-file",
        s(&key_file),
        &agents[0].target(),
        s(&remote.join("app.log")),
        s(&local),
    ])
    .run();
    run.expect_code(0);
    assert_eq!(std::fs::read(local.join("app.log")).unwrap(), content);

    let many = dir.path().join("many");
    std::fs::create_dir(&many).unwrap();
    let hosts = agents
        .iter()
        .map(Agent::target)
        .collect::<Vec<_>>()
        .join(",");
    let run = ctl([
        "pull",
        "--key-file",
        s(&key_file),
        "--json",
        "-r",
        "-H",
        &hosts,
        s(&remote),
        s(&many),
    ])
    .run();
    run.expect_code(0);
    let records: Vec<Value> = run
        .out()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2, "{run}");
    for agent in &agents {
        let got = many.join(agent.target()).join("logs");
        assert_eq!(std::fs::read(got.join("app.log")).unwrap(), content);
        assert_eq!(
            std::fs::read(got.join("name\nwith newline \u{e9}")).unwrap(),
            b"x"
        );
        let record = records
            .iter()
            .find(|r| r["target"] == agent.target())
            .unwrap();
        assert_eq!(record["status"], 0);
        assert_eq!(record["files"], 2);
        assert_eq!(record["bytes"], (1 << 20) + 1);
    }
    assert_eq!(names(&many).len(), 2);
}

#[test]
fn pull_of_a_missing_or_unreadable_remote_path_says_which() {
    let dir = scratch();
    // An agent running as nobody, so that a mode-000 file is really unreadable to it.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let key_file = write_key_file(dir.path(), "keys", &key_line("nobody"));
    let chown = Command::new("chown")
        .args(["nobody", s(&key_file)])
        .status()
        .unwrap();
    assert!(chown.success());
    let agent = Agent::start_wrapped(
        &[
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
        ],
        "127.0.0.1:0",
        dir,
        key_file.clone(),
        &[],
    );
    let ctl_keys = scratch();
    let ctl_key = ctl_keys.path().join("key");
    std::fs::copy(&key_file, &ctl_key).unwrap();
    let remote = scratch();
    std::fs::set_permissions(remote.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let secret = remote.path().join("secret");
    std::fs::write(&secret, b"s").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    let ok = remote.path().join("ok");
    std::fs::write(&ok, b"fine").unwrap();
    std::fs::set_permissions(&ok, std::fs::Permissions::from_mode(0o644)).unwrap();
    let local = scratch();
    let missing = remote.path().join("missing");
    let run = ctl([
        "pull",
        "--key-file",
        s(&ctl_key),
        &agent.target(),
        s(&missing),
        s(&secret),
        s(&ok),
        s(local.path()),
    ])
    .run();
    run.expect_code(1);
    assert!(
        run.err().contains(&format!(
            "cannot read {}: no such file or directory",
            s(&missing)
        )),
        "{run}"
    );
    assert!(
        run.err()
            .contains(&format!("cannot read {}: permission denied", s(&secret))),
        "{run}"
    );
    assert!(
        run.err().contains("copied 1 file, 4 bytes; 2 failed"),
        "{run}"
    );
    assert_eq!(names(local.path()), ["ok"]);
}

#[test]
fn a_hostile_tree_on_the_agent_writes_nothing_outside_local_dir() {
    let agent = Agent::start();
    let dir = scratch();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"keep me").unwrap();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    std::fs::write(tree.join("..evil"), b"1").unwrap();
    std::fs::write(tree.join("..."), b"2").unwrap();
    std::os::unix::fs::symlink("/etc", tree.join("abs")).unwrap();
    std::os::unix::fs::symlink("../../../outside", tree.join("sub/up")).unwrap();
    std::os::unix::fs::symlink(&outside, tree.join("out")).unwrap();
    std::os::unix::fs::symlink("../...", tree.join("sub/inside")).unwrap();
    let local = dir.path().join("local");
    std::fs::create_dir(&local).unwrap();
    let run = copy(
        "pull",
        &agent,
        &["-r", "-H", &agent.target(), s(&tree), s(&local)],
    )
    .run();
    run.expect_code(1);
    let root = local.join(agent.target()).join("tree");
    assert_eq!(names(&root), ["...", "..evil", "sub"], "{run}");
    assert_eq!(names(&root.join("sub")), ["inside"]);
    assert_eq!(std::fs::read(root.join("sub/inside")).unwrap(), b"2");
    for refused in ["abs", "sub/up", "out"] {
        assert!(
            run.err().contains(&format!("tree/{refused}: symlink to")),
            "{refused}: {run}"
        );
    }
    assert!(run.err().contains("3 failed"), "{run}");
    // The agent sent links as links: the outside directory's file never travelled.
    assert!(!run.err().contains("victim"), "{run}");
    assert_eq!(names(&outside), ["victim"]);
    assert_eq!(names(&local), [agent.target()]);
}

#[test]
fn a_full_disk_or_a_file_size_limit_fails_the_file_and_keeps_the_old_one() {
    let dir = scratch();
    let src = dir.path().join("big");
    patterned(&src, 3 << 20);

    // A file size limit on the agent (1 MiB: ulimit -f counts 1024-byte blocks).
    let agent_dir = scratch();
    let key = write_key_file(agent_dir.path(), "keys", &key_line("limit"));
    let agent = Agent::start_wrapped(
        &["sh", "-c", "ulimit -f 1024; exec \"$@\"", "sh"],
        "127.0.0.1:0",
        agent_dir,
        key,
        &[],
    );
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("big"), b"old").unwrap();
    let run = copy("push", &agent, &[&agent.target(), s(&src), s(&dest)]).run();
    run.expect_code(1);
    assert!(run.err().contains("file too large"), "{run}");
    assert_eq!(std::fs::read(dest.join("big")).unwrap(), b"old");
    assert_eq!(names(&dest), ["big"]);
    // The agent is still there and serves the next request.
    std::fs::write(dir.path().join("small"), b"s").unwrap();
    copy(
        "push",
        &agent,
        &[&agent.target(), s(&dir.path().join("small")), s(&dest)],
    )
    .run()
    .expect_code(0);

    // A full file system: a 1 MiB tmpfs this test mounts and unmounts.
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs", s(&mnt)])
        .status()
        .is_ok_and(|st| st.success());
    if !mounted {
        eprintln!("SKIP full-disk half: cannot mount a tmpfs here (the size-limit half ran)");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mnt.clone());
    std::fs::write(mnt.join("big"), b"old").unwrap();
    let agent = Agent::start();
    let run = copy("push", &agent, &[&agent.target(), s(&src), s(&mnt)]).run();
    run.expect_code(1);
    assert!(run.err().contains("no space left on the device"), "{run}");
    assert_eq!(std::fs::read(mnt.join("big")).unwrap(), b"old");
    assert_eq!(names(&mnt), ["big"]);
}

#[test]
fn a_cut_or_tampered_push_leaves_the_old_file() {
    let dir = scratch();
    let src = dir.path().join("f");
    patterned(&src, 4 << 20);
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("f"), b"old").unwrap();
    let agent = Agent::start();
    let faults = [
        Fault::Cut {
            dir: Dir::ToAgent,
            offset: 2 << 20,
        },
        Fault::Flip {
            dir: Dir::ToAgent,
            offset: 3 << 20,
            mask: 0x01,
        },
    ];
    for fault in faults {
        let proxy = Proxy::start(agent.addr, fault);
        let target = proxy.addr.to_string();
        let run = copy("push", &agent, &[&target, s(&src), s(&dest)]).run();
        run.expect_code(255);
        assert!(run.err().contains("not copied"), "{fault:?}: {run}");
        drop(proxy.finish());
        assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"old", "{fault:?}");
        // The agent removes its temporary file once it sees the connection end.
        assert!(
            crate::util::eventually(std::time::Duration::from_secs(10), || names(&dest) == ["f"]),
            "{fault:?}: {:?}",
            names(&dest)
        );
    }
}

#[test]
fn a_non_utf8_source_name_is_copied_as_is() {
    let agent = Agent::start();
    let dir = scratch();
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let src = dir.path().join(name);
    std::fs::write(&src, b"bytes").unwrap();
    let dest = dir.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    let run = ctl([
        "push".as_ref(),
        "--key-file".as_ref(),
        agent.key_file.as_os_str(),
        agent.target().as_ref(),
        src.as_os_str(),
        dest.as_os_str(),
    ])
    .run();
    run.expect_code(0);
    assert_eq!(std::fs::read(dest.join(name)).unwrap(), b"bytes");
}

#[test]
fn timeout_bounds_a_target_that_stops_answering() {
    let agent = Agent::start();
    let dir = scratch();
    let src = dir.path().join("f");
    std::fs::write(&src, b"x").unwrap();
    // A stopped agent still completes TCP connections (the kernel does), then says nothing.
    agent.signal(libc::SIGSTOP);
    let run = copy(
        "push",
        &agent,
        &[
            "--connect-timeout",
            "60",
            "--timeout",
            "1",
            &agent.target(),
            s(&src),
            s(dir.path()),
        ],
    )
    .run();
    agent.signal(libc::SIGCONT);
    run.expect_code(124);
    assert!(run.err().contains("timed out"), "{run}");
}

/// A sparse file of `len` bytes: long to send, cheap to make.
fn sparse(path: &Path, len: u64) {
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

/// Entries of `dir` other than `keep`: what a cut transfer might have left behind.
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    names(dir)
        .into_iter()
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

#[test]
fn a_pull_from_an_agent_frozen_mid_transfer_ends_with_255_and_nothing_partial() {
    let agent = Agent::start_with(&["--log-level", "debug"]);
    let remote = scratch();
    let src = remote.path().join("big");
    sparse(&src, 1 << 30);
    let local = scratch();
    let mut child = crate::util::KillOnDrop(
        copy(
            "pull",
            &agent,
            &[
                "--alive-timeout",
                "2",
                &agent.target(),
                s(&src),
                s(local.path()),
            ],
        )
        .spawn(),
    );
    agent.wait_for_log("authenticated", crate::exec::WAIT);
    agent.signal(libc::SIGSTOP);
    let status = child.wait_within(crate::exec::WAIT, "ctl pulling from a frozen agent");
    agent.signal(libc::SIGCONT);
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(255), "{err}");
    assert!(
        err.contains("no sign of life from the agent for 2s"),
        "{err}"
    );
    assert_eq!(leftovers(local.path(), &[]), Vec::<String>::new(), "{err}");
}

#[test]
fn a_push_from_a_ctl_frozen_mid_transfer_is_ended_by_the_agent_and_leaves_nothing() {
    let agent = Agent::start_with(&["--log-level", "debug", "--alive-timeout", "2"]);
    let local = scratch();
    let src = local.path().join("big");
    sparse(&src, 1 << 30);
    let remote = scratch();
    std::fs::write(remote.path().join("keep"), b"old").unwrap();
    let child = crate::util::KillOnDrop(
        copy(
            "push",
            &agent,
            &[&agent.target(), s(&src), s(remote.path())],
        )
        .spawn(),
    );
    agent.wait_for_log("authenticated", crate::exec::WAIT);
    child.signal(libc::SIGSTOP);
    let log = agent.wait_for_log("transfer finished", crate::exec::WAIT);
    child.signal(libc::SIGCONT);
    let record = log
        .lines()
        .find(|l| l.contains("transfer finished"))
        .unwrap_or_default();
    assert!(
        record.contains("no sign of life"),
        "the audit says why the push ended: {record}"
    );
    assert_eq!(
        leftovers(remote.path(), &["keep"]),
        Vec::<String>::new(),
        "nothing half-written"
    );
}

#[test]
fn retry_applies_to_push_and_pull_of_an_unreachable_target() {
    let agent = Agent::start();
    let dir = scratch();
    let src = dir.path().join("f");
    std::fs::write(&src, b"x").unwrap();
    let dead = crate::fleet::closed_port();
    for (verb, args) in [
        ("push", [dead.as_str(), s(&src), "/tmp/never"]),
        ("pull", [dead.as_str(), "/etc/hostname", s(dir.path())]),
    ] {
        let mut all = vec!["-v", "--retry", "2"];
        all.extend_from_slice(&args);
        let run = copy(verb, &agent, &all).run();
        run.expect_code(255);
        assert_eq!(run.err().matches("retrying").count(), 2, "{verb}: {run}");
    }
}
