//! Single-target `ctl exec` against a real agent.

use crate::util::{exec, Agent};

#[test]
fn ls_runs_end_to_end_with_streams_and_status() {
    let agent = Agent::start();
    let run = exec(&agent, "echo to-out; echo to-err >&2; exit 3").run();
    run.expect_code(3);
    assert_eq!(run.out(), "to-out\n", "{run}");
    assert_eq!(run.err(), "to-err\n", "{run}");
    let log = agent.wait_for_log("command finished", std::time::Duration::from_secs(5));
    assert!(log.contains("key_id=\"test\"") && log.contains("exit 3"), "{log}");
}
