//! hardening tests (in progress).
