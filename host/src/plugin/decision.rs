//! A router's decision as the host acts on it: asking a plugin on a
//! thread's instance, and checking its answer (candidate ids inside the
//! pool, a valid reject status and body, only headers a router may set)
//! before the proxy, a shadow or a replay uses it.

use super::{Answer, CallFailure, RouterInstance, RouterPlugin, wit};
use http::{HeaderName, HeaderValue};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Backend ids to try in order; a short list stays off the heap.
pub enum Candidates {
    Few([u32; 4], u8),
    Many(Vec<u32>),
}

impl Candidates {
    pub fn as_slice(&self) -> &[u32] {
        match self {
            Candidates::Few(ids, len) => &ids[..usize::from(*len).min(4)],
            Candidates::Many(ids) => ids,
        }
    }
}

/// What a route decided for one request.
pub enum Choice {
    /// Backend ids to try in order, headers to add upstream, and when to
    /// hedge the first candidate with the next.
    Forward {
        candidates: Candidates,
        add_headers: Vec<(HeaderName, HeaderValue)>,
        hedge: Option<Duration>,
    },
    /// Answer directly.
    Reply { status: u16, body: String },
}

/// Calls `plugin` on its instance in `instances` (taking a ready one when
/// there is none), checks the answer against a pool of `pool_size`, and
/// records success or failure. A trapped instance is dropped: the next
/// call gets a fresh one. A quarantined plugin is not called.
pub fn ask(
    instances: &mut HashMap<u64, RouterInstance>,
    plugin: &Arc<RouterPlugin>,
    facts: wit::Request,
    loads: &[u32],
    attributes: Vec<wit::AttributeValue>,
    pool_size: usize,
) -> Result<Choice, CallFailure> {
    if plugin.is_quarantined() {
        return Err(CallFailure::Quarantined);
    }
    let instance = match instances.entry(plugin.id) {
        std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
        // Instances are made and initialised off this thread; until one is
        // ready (just after a trap), the caller decides.
        std::collections::hash_map::Entry::Vacant(e) => match plugin.take_instance() {
            Some(instance) => e.insert(instance),
            None => return Err(CallFailure::NotReady),
        },
    };
    let timer = plugin.stats.start();
    let answer = instance.route(facts, loads, attributes);
    plugin.stats.finish(timer);
    let failure = match answer {
        Ok(decision) => match check(decision, pool_size) {
            Ok(choice) => {
                plugin.record_success();
                return Ok(choice);
            }
            Err(failure) => failure,
        },
        Err(failure) => {
            instances.remove(&plugin.id);
            failure
        }
    };
    plugin.record_failure(&failure);
    Err(failure)
}

/// The hedge delay a router asked for; a delay of 0 hedges at once.
fn hedge(after_us: Option<u32>) -> Option<Duration> {
    after_us.map(|us| Duration::from_micros(u64::from(us)))
}

/// Headers a router may add, at most.
pub const MAX_ADDED_HEADERS: usize = 32;
/// Bytes of added header names and values, at most.
pub const MAX_ADDED_BYTES: usize = 16 * 1024;
/// Bytes of a reject body, at most.
pub const MAX_REJECT_BODY: usize = 64 * 1024;

/// Whether a router may set header `name`: not the ones that frame or
/// route the message (a router-added `content-length` would desync the
/// upstream connection), and not the proxy's own.
fn may_add(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "content-length"
            | "transfer-encoding"
            | "connection"
            | "upgrade"
            | "host"
            | "te"
            | "trailer"
            | "keep-alive"
            | "proxy-connection"
            | "expect"
    ) && !name.as_str().starts_with("x-switchyard-")
}

/// Turns a plugin's decision into a choice, refusing empty candidate
/// lists, ids outside the pool, bad statuses, oversized bodies, and
/// malformed, forbidden or too many headers.
pub fn check(answer: Answer, pool_size: usize) -> Result<Choice, CallFailure> {
    let decision = match answer {
        Answer::Few(_, 0, _) => {
            return Err(CallFailure::Invalid(
                "no candidates (to refuse a request, reject it)".into(),
            ));
        }
        Answer::Few(ids, len, hedge_after_us) => {
            let candidates = Candidates::Few(ids, len);
            if let Some(bad) = candidates
                .as_slice()
                .iter()
                .find(|&&id| id as usize >= pool_size)
            {
                return Err(CallFailure::Invalid(format!(
                    "candidate {bad} is not a backend id (pool has {pool_size})"
                )));
            }
            return Ok(Choice::Forward {
                candidates,
                add_headers: Vec::new(),
                hedge: hedge(hedge_after_us),
            });
        }
        Answer::Full(decision) => decision,
    };
    match decision {
        wit::Decision::Forward(f) => {
            if f.candidates.is_empty() {
                return Err(CallFailure::Invalid(
                    "no candidates (to refuse a request, reject it)".into(),
                ));
            }
            if let Some(bad) = f.candidates.iter().find(|&&id| id as usize >= pool_size) {
                return Err(CallFailure::Invalid(format!(
                    "candidate {bad} is not a backend id (pool has {pool_size})"
                )));
            }
            let bytes: usize = f
                .add_headers
                .iter()
                .map(|h| h.name.len() + h.value.len())
                .sum();
            if f.add_headers.len() > MAX_ADDED_HEADERS || bytes > MAX_ADDED_BYTES {
                return Err(CallFailure::Invalid(format!(
                    "{} added headers of {bytes} bytes (at most {MAX_ADDED_HEADERS} and {MAX_ADDED_BYTES})",
                    f.add_headers.len()
                )));
            }
            let add_headers = f
                .add_headers
                .into_iter()
                .map(|h| {
                    let name: String = h.name.chars().take(64).collect();
                    match (
                        HeaderName::from_bytes(h.name.as_bytes()),
                        HeaderValue::from_str(&h.value),
                    ) {
                        (Ok(n), Ok(v)) if may_add(&n) => Ok((n, v)),
                        (Ok(_), Ok(_)) => Err(CallFailure::Invalid(format!(
                            "header {name:?} may not be set by a router"
                        ))),
                        _ => Err(CallFailure::Invalid(format!("invalid header {name:?}"))),
                    }
                })
                .collect::<Result<_, _>>()?;
            Ok(Choice::Forward {
                candidates: Candidates::Many(f.candidates),
                add_headers,
                hedge: hedge(f.hedge_after_us),
            })
        }
        wit::Decision::Reject(r) if r.body.len() > MAX_REJECT_BODY => {
            Err(CallFailure::Invalid(format!(
                "reject body of {} bytes (at most {MAX_REJECT_BODY})",
                r.body.len()
            )))
        }
        wit::Decision::Reject(r) if (200..=599).contains(&r.status) => Ok(Choice::Reply {
            status: r.status,
            body: r.body,
        }),
        wit::Decision::Reject(r) => {
            Err(CallFailure::Invalid(format!("reject status {}", r.status)))
        }
    }
}
