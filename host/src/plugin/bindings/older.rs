//! Conversions between an older version's types and the host's (the
//! newest version's), for what every older version has in the same shape.

/// `From` between two versions' copies of an enum without payloads.
macro_rules! same_cases {
    ($from:ident :: $ty:ident => $to:ident, $($case:ident),+) => {
        impl From<$from::$ty> for $to::$ty {
            fn from(v: $from::$ty) -> Self {
                match v {
                    $($from::$ty::$case => $to::$ty::$case),+
                }
            }
        }
    };
}
pub(super) use same_cases;

/// Expands, in a version's module with `old` (its types) and `new` (the
/// host's) in scope, the conversions of the types older versions share:
/// enums without payloads, backends, request facts, decisions (never
/// hedged: only newer versions can ask), probes, verdicts, outcomes and
/// breaker updates.
macro_rules! shared_conversions {
    () => {
        super::older::same_cases!(new::Method => old, Get, Head, Post, Put, Delete, Patch, Options, Connect, Trace, Other);
        super::older::same_cases!(new::ErrorKind => old, Connect, Timeout, Reset, RateLimited, ServerError);
        super::older::same_cases!(old::Health => new, Healthy, Degraded, Unhealthy);

        impl From<&new::BackendInfo> for old::BackendInfo {
            fn from(b: &new::BackendInfo) -> Self {
                old::BackendInfo {
                    id: b.id,
                    name: b.name.clone(),
                    address: b.address.clone(),
                    weight: b.weight,
                    labels: b.labels.clone(),
                }
            }
        }

        /// The backends in this version's shape.
        pub fn backends(list: &[new::BackendInfo]) -> Vec<old::BackendInfo> {
            list.iter().map(old::BackendInfo::from).collect()
        }

        impl From<new::Request> for old::Request {
            fn from(r: new::Request) -> Self {
                old::Request {
                    method: r.method.into(),
                    client_ip: match r.client_ip {
                        new::IpAddress::V4(a) => old::IpAddress::V4(a),
                        new::IpAddress::V6(a) => old::IpAddress::V6(a),
                    },
                }
            }
        }

        impl From<old::Choice> for new::Choice {
            fn from(c: old::Choice) -> Self {
                match c {
                    old::Choice::Forward(ids) => new::Choice::Forward(ids),
                    old::Choice::Detailed => new::Choice::Detailed,
                }
            }
        }

        impl From<old::Decision> for new::Decision {
            fn from(d: old::Decision) -> Self {
                match d {
                    old::Decision::Forward(f) => new::Decision::Forward(new::Forward {
                        candidates: f.candidates,
                        add_headers: f
                            .add_headers
                            .into_iter()
                            .map(|h| new::Header {
                                name: h.name,
                                value: h.value,
                            })
                            .collect(),
                        hedge_after_us: None,
                    }),
                    old::Decision::Reject(r) => new::Decision::Reject(new::Reject {
                        status: r.status,
                        body: r.body,
                    }),
                }
            }
        }

        impl From<&new::ProbeResult> for old::ProbeResult {
            fn from(p: &new::ProbeResult) -> Self {
                old::ProbeResult {
                    backend: p.backend,
                    status: p.status,
                    latency_us: p.latency_us,
                    body: p.body.clone(),
                }
            }
        }

        impl From<old::Verdict> for new::Verdict {
            fn from(v: old::Verdict) -> Self {
                new::Verdict {
                    health: v.health.into(),
                    load_score: v.load_score,
                }
            }
        }

        impl From<new::Outcome> for old::Outcome {
            fn from(o: new::Outcome) -> Self {
                old::Outcome {
                    backend: o.backend,
                    status: o.status,
                    latency_us: o.latency_us,
                    ttfb_us: o.ttfb_us,
                    error: o.error.map(Into::into),
                    retry_after_ms: o.retry_after_ms,
                    prompt_tokens: o.prompt_tokens,
                    completion_tokens: o.completion_tokens,
                }
            }
        }

        impl From<old::BreakerUpdate> for new::BreakerUpdate {
            fn from(u: old::BreakerUpdate) -> Self {
                match u {
                    old::BreakerUpdate::Closed => new::BreakerUpdate::Closed,
                    old::BreakerUpdate::Open(ms) => new::BreakerUpdate::Open(ms),
                    old::BreakerUpdate::HalfOpen(n) => new::BreakerUpdate::HalfOpen(n),
                }
            }
        }

        #[cfg(test)]
        mod layout_tests {
            use super::*;

            /// The load words are the same in every version: the host
            /// writes one layout for every plugin.
            #[test]
            fn load_words_match_the_newest_version() {
                assert_eq!(
                    old::LoadWord::QuotaResetMs as usize,
                    new::LoadWord::QuotaResetMs as usize
                );
                assert_eq!(old::LoadWord::InFlight as usize, new::LoadWord::InFlight as usize);
                assert_eq!(old::LoadWord::Health as usize, new::LoadWord::Health as usize);
            }
        }
    };
}
pub(super) use shared_conversions;
