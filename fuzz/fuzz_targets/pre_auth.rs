//! Fuzz target: arbitrary bytes from an unauthenticated peer, on the agent's side and on ctl's.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rexec_fuzz::pre_auth(data);
});
