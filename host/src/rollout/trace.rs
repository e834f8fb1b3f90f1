//! The trace format, version 1: JSON lines. A header line describes the
//! route as the records after it saw it (its backends, the attributes
//! recorded and the order of the load words); each record line is one
//! request: its facts, attributes, every backend's load words, the
//! decision, and the outcome. A file may hold several headers (after a
//! reload changed the pool, or when routes share a file); a record belongs
//! to the header above it. docs/replay.md describes each field.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The format version this host writes and reads.
pub const FORMAT: u32 = 1;

/// The load words in the order a backend's words are written, as the
/// interface's `load-word` enum lists them.
pub const LOAD_WORD_NAMES: [&str; 13] = [
    "id",
    "in-flight",
    "ewma-latency-us",
    "ewma-ttfb-us",
    "error-rate",
    "health",
    "breaker",
    "load-score",
    "remaining-requests-low",
    "remaining-requests-high",
    "remaining-tokens-low",
    "remaining-tokens-high",
    "quota-reset-ms",
];

/// A header line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// The format version; a header is told from a record by this field.
    pub switchyard_trace: u32,
    pub route: String,
    /// The live router's file and version (content hash), if it has one.
    pub router: Option<String>,
    pub router_version: Option<String>,
    /// The attributes each record's `attrs` holds, in order.
    pub attributes: Vec<String>,
    pub load_words: Vec<String>,
    pub backends: Vec<TraceBackend>,
}

/// A backend as the router's `set-backends` saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceBackend {
    pub id: u32,
    pub name: String,
    pub address: String,
    pub weight: u32,
    pub labels: BTreeMap<String, String>,
}

/// A record line: one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// When the request ended, Unix milliseconds.
    pub t: u64,
    pub method: String,
    pub client_ip: String,
    /// One per header attribute: a string, `null` when the request did not
    /// have it, `false` when it was not seen (past the body bytes read).
    pub attrs: Vec<serde_json::Value>,
    /// `load_words.len()` words per backend, backends in id order.
    pub loads: Vec<u32>,
    pub decision: super::Decided,
    /// Why the router gave no decision of its own, if it failed (the
    /// failure policy decided `decision`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub router_failure: Option<String>,
    /// On a canary route, the version that decided: `new` or `previous`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub outcome: TraceOutcome,
}

/// How a recorded request ended.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TraceOutcome {
    /// The backend that answered, by name (a fallback pool's backend too).
    pub backend: Option<String>,
    pub status: u16,
    pub latency_us: u32,
    pub ttfb_us: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// `connect`, `timeout`, `reset`, `client_gone` or `local`.
    pub error: Option<String>,
}

/// One line of a trace.
#[derive(Debug)]
pub enum Line {
    Header(Header),
    Record(Box<Record>),
}

/// Parses one line; the error says what is wrong with it.
pub fn parse_line(line: &str) -> Result<Line, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if let Some(v) = value.get("switchyard_trace") {
        let header: Header = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
        if header.switchyard_trace != FORMAT {
            return Err(format!(
                "trace format {v}; this version of switchyard reads format {FORMAT}"
            ));
        }
        return Ok(Line::Header(header));
    }
    serde_json::from_value(value)
        .map(|r| Line::Record(Box::new(r)))
        .map_err(|e| e.to_string())
}

/// An attribute value as a record writes it.
pub fn attr_json(value: &crate::plugin::wit::AttributeValue) -> serde_json::Value {
    use crate::plugin::wit::AttributeValue as A;
    match value {
        A::Value(v) => serde_json::Value::String(v.clone()),
        A::Absent => serde_json::Value::Null,
        A::NotSeen => serde_json::Value::Bool(false),
    }
}

/// The attribute value [`attr_json`] wrote.
pub fn attr_value(value: &serde_json::Value) -> crate::plugin::wit::AttributeValue {
    use crate::plugin::wit::AttributeValue as A;
    match value {
        serde_json::Value::String(s) => A::Value(s.clone()),
        serde_json::Value::Null => A::Absent,
        _ => A::NotSeen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_and_the_plugin_host_agree_on_attribute_names() {
        for name in [
            "header:x-a",
            "cookie:sid",
            "json-body:model",
            "path",
            "query",
            "host",
            "body-size",
            "prompt-prefix:256:8192",
            "prompt-prefix:16:16",
            "prompt-prefix:8:64",
            "prompt-prefix:100:1000",
            "prompt-prefix:256:100",
            "prompt-prefix:256",
            "prompt-prefix:256:2000000",
            "header:",
            "header:bad name",
            "cookie:",
            "json-body:",
            "other",
            "model",
            "x:y",
        ] {
            let parsed = crate::plugin::Interest::parse(name);
            assert_eq!(
                parsed.is_some(),
                crate::config::is_attribute_name(name),
                "{name}"
            );
            if let Some(i) = parsed {
                assert_eq!(i.name(), name);
            }
        }
    }

    #[test]
    fn load_word_names_follow_the_interface() {
        assert_eq!(LOAD_WORD_NAMES.len(), crate::plugin::LOAD_WORDS);
    }

    #[test]
    fn lines_round_trip_and_a_future_format_is_refused() {
        let header = Header {
            switchyard_trace: FORMAT,
            route: "r".into(),
            router: None,
            router_version: None,
            attributes: vec!["header:x-thread-id".into()],
            load_words: LOAD_WORD_NAMES.iter().map(|s| s.to_string()).collect(),
            backends: vec![],
        };
        let text = serde_json::to_string(&header).unwrap_or_default();
        assert!(matches!(parse_line(&text), Ok(Line::Header(h)) if h == header));
        let future = text.replace("\"switchyard_trace\":1", "\"switchyard_trace\":2");
        assert!(parse_line(&future).is_err_and(|e| e.contains("format 2")));
        let record = Record {
            t: 1,
            method: "post".into(),
            client_ip: "127.0.0.1".into(),
            attrs: vec![serde_json::Value::Null],
            loads: vec![0; 13],
            decision: crate::rollout::Decided::Forward(vec![0, 1]),
            router_failure: None,
            version: None,
            outcome: TraceOutcome::default(),
        };
        let text = serde_json::to_string(&record).unwrap_or_default();
        assert!(matches!(parse_line(&text), Ok(Line::Record(r)) if *r == record));
        assert!(parse_line("{\"t\":").is_err());
    }
}
