//! Fuzz target: sealed frames (and raw injected bytes) after a real handshake, in either
//! direction, through the session opener and the message decoders.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rexec_fuzz::session(data);
});
