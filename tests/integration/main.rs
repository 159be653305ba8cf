//! Integration tests: the real `agent` and `ctl` binaries on loopback.

mod util;

mod exec;
mod fleet;
mod hardening;
mod ops;
