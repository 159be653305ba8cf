//! fleet tests (in progress).
