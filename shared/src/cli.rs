//! Command-line value parsing that `agent` and `ctl` share, so both read options alike.

use std::time::Duration;

/// Parses a number of seconds (fractions allowed), more than 0 and at most a year.
pub fn parse_secs(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 86_400.0 * 365.0) {
        return Err(format!(
            "{text} is out of range (more than 0, at most a year)"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_in_range_parse_and_others_say_why() {
        assert_eq!(parse_secs("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_secs("10"), Ok(Duration::from_secs(10)));
        for bad in ["0", "-1", "NaN", "inf", "1e99", "soon", ""] {
            assert!(parse_secs(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_secs("soon")
            .unwrap_err()
            .contains("not a number of seconds"));
        assert!(parse_secs("0").unwrap_err().contains("out of range"));
    }
}
