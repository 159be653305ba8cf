//! One module per request the agent serves after authentication.

pub mod pull;
pub mod push;
