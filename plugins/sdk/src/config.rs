//! A route's plugin config as seen by the plugin.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::str::FromStr;

/// The route's plugin config table, flattened to key/value strings.
///
/// Nested tables become dotted keys (`graphs.research = "fast"`), arrays
/// become comma-joined values (`order = "a,b,c"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    /// Wraps flattened entries as the host passes them.
    pub fn new(entries: Vec<(String, String)>) -> Self {
        Config { entries }
    }

    /// Builds a config from literal pairs; handy in tests.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Config::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        )
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or `default` when unset.
    pub fn get_or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.get(key).unwrap_or(default)
    }

    /// Parses `key` as `T`; `Ok(None)` when unset, `Err` naming the key when
    /// the value does not parse.
    pub fn parse<T: FromStr>(&self, key: &str) -> Result<Option<T>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("config key `{key}`: cannot parse {v:?}")),
        }
    }

    /// `key` as a duration in milliseconds: `"250ms"`, `"5s"`, `"2m"`, or a
    /// bare number of milliseconds; `Ok(None)` when unset.
    pub fn millis(&self, key: &str) -> Result<Option<u64>, String> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let v = v.trim();
        let bad = || format!("config key `{key}`: {v:?} is not a duration such as \"5s\"");
        let split = v
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(v.len());
        let (number, unit) = v.split_at(split);
        let n: f64 = number.parse().map_err(|_| bad())?;
        let factor = match unit {
            "" | "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            "h" => 3_600_000.0,
            _ => return Err(bad()),
        };
        Ok(Some((n * factor) as u64))
    }

    /// The comma-separated items of `key`, trimmed; empty when unset.
    pub fn list(&self, key: &str) -> impl Iterator<Item = &str> {
        self.get(key)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }

    /// Entries whose key starts with `prefix.`, with the prefix removed.
    pub fn table<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.entries.iter().filter_map(move |(k, v)| {
            k.strip_prefix(prefix)
                .and_then(|rest| rest.strip_prefix('.'))
                .map(|rest| (rest, v.as_str()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_values_lists_and_tables() {
        let c = Config::from_pairs(&[
            ("header", "x-priority"),
            ("high", "high, urgent"),
            ("graphs.research", "fast"),
            ("graphs.chat", "cheap"),
            ("n", "3"),
        ]);
        assert_eq!(c.get("header"), Some("x-priority"));
        assert_eq!(c.get_or("missing", "d"), "d");
        assert_eq!(c.list("high").collect::<Vec<_>>(), ["high", "urgent"]);
        assert_eq!(
            c.table("graphs").collect::<Vec<_>>(),
            [("research", "fast"), ("chat", "cheap")]
        );
        assert_eq!(c.parse::<u32>("n"), Ok(Some(3)));
        assert_eq!(c.parse::<u32>("missing"), Ok(None));
        assert!(c.parse::<u32>("header").unwrap_err().contains("header"));
    }

    #[test]
    fn reads_durations() {
        let c = Config::from_pairs(&[
            ("a", "5s"),
            ("b", "250ms"),
            ("c", "1.5m"),
            ("d", "40"),
            ("e", "soon"),
        ]);
        assert_eq!(c.millis("a"), Ok(Some(5000)));
        assert_eq!(c.millis("b"), Ok(Some(250)));
        assert_eq!(c.millis("c"), Ok(Some(90_000)));
        assert_eq!(c.millis("d"), Ok(Some(40)));
        assert_eq!(c.millis("x"), Ok(None));
        assert!(c.millis("e").is_err());
    }
}
