//! ctl's exit statuses, defined once: they are part of the contract (`ctl --help`, README).

/// A usage error, or an unusable key or config file.
pub const USAGE: u8 = 2;
/// `--timeout` ran out and the remote process tree was killed.
pub const TIMED_OUT: u8 = 124;
/// A target could not be reached, authenticated, or its stream kept intact to the end.
pub const UNREACHABLE: u8 = 255;
/// A local failure that is none of the above (a key file that cannot be written).
pub const FAILURE: u8 = 1;

/// The status for something ended by signal `signal`: 128+N, as shells report it.
pub fn signalled(signal: i32) -> u8 {
    u8::try_from(128 + signal.clamp(0, 127)).unwrap_or(UNREACHABLE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_map_to_128_plus_n() {
        assert_eq!(signalled(libc::SIGINT), 130);
        assert_eq!(signalled(libc::SIGTERM), 143);
        assert_eq!(signalled(9), 137);
        assert_eq!(signalled(127), 255);
        assert_eq!(signalled(-3), 128);
    }
}
