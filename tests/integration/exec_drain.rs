//! After the command exits, the output its background processes keep writing is forwarded only
//! for a bounded time and number of bytes: ctl returns, for a fast reader and a slow one alike.

use std::io::Read;
use std::time::Duration;

use crate::exec::WAIT;
use crate::util::{eventually, exec, marker, pids_matching, Agent, KillOnDrop};

/// The agent's drain cap (1 MiB) plus what may be in flight around it: a frame per stream, the
/// pipes' content. Without a bound, `yes` delivers gigabytes.
const MOST_AFTER_EXIT: usize = 8 << 20;

/// Kills the `yes` of a test when dropped, whatever happened.
struct KillMatching(String);

impl Drop for KillMatching {
    fn drop(&mut self) {
        for pid in pids_matching(&self.0) {
            // SAFETY: kill on a pid this test's command started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn endless_background_writer(agent: &Agent, slow: bool) {
    let tag = marker(if slow { "drain-slow" } else { "drain-fast" });
    let _cleanup = KillMatching(tag.clone());
    let mut child = KillOnDrop(exec(agent, &format!("yes {tag} & exit 0")).spawn());
    drop(child.stdin.take());
    let mut stdout = child.stdout.take().expect("ctl stdout");
    let reader = std::thread::spawn(move || {
        let mut total = 0usize;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
            if slow {
                // About 6 MB/s: slower than the agent can send.
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    });
    let status = child.wait_within(WAIT, "ctl after `yes & exit 0`");
    assert_eq!(status.code(), Some(0), "the command's own status");
    let total = reader.join().unwrap();
    assert!(total > 0, "some of the background output is delivered");
    assert!(
        total <= MOST_AFTER_EXIT,
        "{total} bytes delivered after the command exited"
    );
    // Once the agent stopped reading, the writer got SIGPIPE.
    assert!(
        eventually(WAIT, || pids_matching(&tag).is_empty()),
        "the background writer is still running"
    );
}

#[test]
fn output_after_exit_is_bounded_for_a_fast_reader() {
    endless_background_writer(&Agent::start(), false);
}

#[test]
fn output_after_exit_is_bounded_for_a_slow_reader() {
    endless_background_writer(&Agent::start(), true);
}
