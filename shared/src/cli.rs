//! Command-line value parsing that `agent` and `ctl` share, so both read options alike.

use std::time::Duration;

/// Parses a duration: a number of seconds (fractions allowed), or a number with an `s`, `m`
/// or `h` suffix (`90s`, `1.5m`, `2h`); more than 0 and at most a year.
pub fn parse_secs(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.trim().strip_suffix(['s', 'm', 'h']) {
        Some(number) => (number, &text.trim()[number.len()..]),
        None => (text.trim(), "s"),
    };
    let scale = match unit {
        "m" => 60.0,
        "h" => 3600.0,
        _ => 1.0,
    };
    let secs: f64 = number.parse::<f64>().map(|n| n * scale).map_err(|_| {
        format!("{text:?} is not a duration (seconds, or a number with s, m or h: 30, 90s, 5m, 2h)")
    })?;
    if !(secs > 0.0 && secs <= 86_400.0 * 365.0) {
        return Err(format!(
            "{text} is out of range (more than 0, at most a year)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// An `--alive-timeout`: how long a side waits for a frame from its peer before it gives up;
/// `None` never. (A type of its own: clap reads a bare `Option` as "flag may be absent".)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AliveTimeout(pub Option<Duration>);

/// Parses an `--alive-timeout`: a duration as [`parse_secs`] reads it, at least 1 s (heartbeats
/// come four times as often), or `0` / `off` for a side that never gives up on its peer.
pub fn parse_alive_timeout(text: &str) -> Result<AliveTimeout, String> {
    if matches!(text.trim(), "0" | "off") {
        return Ok(AliveTimeout(None));
    }
    let timeout = parse_secs(text)?;
    if timeout < Duration::from_secs(1) {
        return Err(format!(
            "{text} is too short for an alive timeout (at least 1 s; 0 or off to never give up)"
        ));
    }
    Ok(AliveTimeout(Some(timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_timeouts_are_at_least_a_second_or_off() {
        let after = |s| Ok(AliveTimeout(Some(Duration::from_secs(s))));
        assert_eq!(parse_alive_timeout("30"), after(30));
        assert_eq!(parse_alive_timeout("2m"), after(120));
        assert_eq!(parse_alive_timeout("0"), Ok(AliveTimeout(None)));
        assert_eq!(parse_alive_timeout("off"), Ok(AliveTimeout(None)));
        assert!(parse_alive_timeout("0.5")
            .unwrap_err()
            .contains("at least 1 s"));
        assert!(parse_alive_timeout("-3").is_err());
    }

    #[test]
    fn seconds_in_range_parse_and_others_say_why() {
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_secs("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_secs("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_secs("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_secs("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_secs("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_secs("1d").is_err() && parse_secs("m").is_err());
        for bad in ["0", "-1", "NaN", "inf", "1e99", "soon", "", "0m", "9000h"] {
            assert!(parse_secs(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_secs("soon").unwrap_err().contains("not a duration"));
        assert!(parse_secs("0").unwrap_err().contains("out of range"));
    }
}
