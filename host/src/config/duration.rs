//! Durations in the config: a number of milliseconds, or a string with
//! units such as `"250ms"`, `"5s"`, `"10m"`, `"1h"`, `"1m30s"`.
//!
//! Every duration is at most [`MAX`]: larger ones are refused with a
//! message, never overflow (the same parser reads backends' rate-limit
//! reset headers, so it must not panic on any input).

use serde::{Deserialize, Deserializer, de::Error};
use std::time::Duration;

/// The longest duration accepted: ten years.
pub const MAX: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses `"1m30s"`-style text. A string must carry units: `"10"` is
/// refused as ambiguous (a bare TOML integer means milliseconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let bad = || format!("invalid duration {text:?} (use e.g. \"250ms\", \"5s\", \"10m\")");
    if text.parse::<f64>().is_ok() {
        return Err(format!(
            "duration {text:?} has no unit (write \"{text}ms\" or \"{text}s\")"
        ));
    }
    let too_long = || format!("duration {text:?} is longer than ten years");
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(digits);
        let value: f64 = number.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let seconds = match unit {
            "ms" => value / 1000.0,
            "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            _ => return Err(bad()),
        };
        let part = Duration::try_from_secs_f64(seconds).map_err(|_| too_long())?;
        total = total
            .checked_add(part)
            .filter(|t| *t <= MAX)
            .ok_or_else(too_long)?;
        rest = tail;
    }
    Ok(total)
}

/// `ms` milliseconds, if within [`MAX`].
fn from_millis(ms: u64) -> Result<Duration, String> {
    Some(Duration::from_millis(ms))
        .filter(|d| *d <= MAX)
        .ok_or_else(|| format!("duration of {ms} ms is longer than ten years"))
}

/// Serde adapter: `#[serde(with = "duration")]`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Millis(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Millis(ms) => from_millis(ms).map_err(D::Error::custom),
        Raw::Text(t) => parse_duration(&t).map_err(D::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_compounds() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0.5s"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn no_input_panics_or_overflows() {
        for text in [
            "99999999999999999999h",
            "18446744073709551615s",
            "1e400s",
            "9999999999999999999999999999999999ms",
            "87600h1s",
            "nan s",
            "-5s",
            "1..5s",
            ".s",
            "s",
        ] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
        assert_eq!(parse_duration("87600h"), Ok(MAX));
        assert!(from_millis(u64::MAX).is_err());
        let err = parse_duration("10").unwrap_err();
        assert!(err.contains("no unit"), "{err}");
    }
}
