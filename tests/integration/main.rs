//! Integration tests: the real `agent` and `ctl` binaries on loopback.

mod util;

mod exec;
