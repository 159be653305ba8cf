//! Integration tests: the real `agent` and `ctl` binaries on loopback.

// Test code: a failed expectation is a failed test, so unwrap, expect and panic are the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod proxy;
mod pty_util;
mod rawclient;
mod util;

mod agent_shutdown;
mod deploy;
mod exec;
mod exec_big;
mod exec_cli;
mod exec_drain;
mod exec_input;
mod exec_keys;
mod exec_signals;
mod exec_startup;
mod files;
mod fleet;
mod fleet_group;
mod fleet_input;
mod fleet_select;
mod hardening;
mod hardening_faults;
mod hardening_mitm;
mod host_keys;
mod liveness;
mod manpages;
mod ops;
mod output_safety;
mod policy;
mod process_tree;
mod pty;
mod rough_edges;
