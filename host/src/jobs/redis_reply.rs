//! Reading Redis stream replies (`XRANGE`, `XREAD`) into job events:
//! fields `type` and `data`, a worker's unchecked type read as `progress`.

use super::{Event, EventId};
use redis::Value;

/// The entries of an `XRANGE` answer (or of one stream of an `XREAD`).
pub(super) fn entries(value: &Value) -> Vec<Event> {
    let Value::Array(items) = value else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| {
            let Value::Array(pair) = item else {
                return None;
            };
            let id = EventId::parse(&text(pair.first()?)?)?;
            let mut kind = super::kind::PROGRESS.to_string();
            let mut data = String::new();
            if let Some(Value::Array(fields)) = pair.get(1) {
                for kv in fields.chunks(2) {
                    match (
                        kv.first().and_then(text).as_deref(),
                        kv.get(1).and_then(text),
                    ) {
                        (Some("type"), Some(v)) if super::is_event_type(&v) => kind = v,
                        (Some("data"), Some(v)) => data = v,
                        _ => {}
                    }
                }
            }
            Some(Event { id, kind, data })
        })
        .collect()
}

/// The streams of an `XREAD` answer: RESP2 arrays of `[key, entries]`, or
/// a RESP3 map.
pub(super) fn streams_of(value: &Value) -> Vec<(String, Vec<Event>)> {
    match value {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|s| match s {
                Value::Array(kv) if kv.len() == 2 => Some((text(&kv[0])?, entries(&kv[1]))),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams
            .iter()
            .filter_map(|(k, v)| Some((text(k)?, entries(v))))
            .collect(),
        _ => Vec::new(),
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}
