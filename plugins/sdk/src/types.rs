//! The interface's types, re-exported with helpers for plugin code and tests.

use alloc::string::String;
use alloc::vec::Vec;

use crate::bindings::switchyard::policy::types::LoadWord;
pub use crate::bindings::switchyard::policy::types::{
    Attribute, AttributeValue, BackendInfo, BreakerState, Header, Health, IpAddress, Method,
    PrefixBlocks,
};
pub use crate::candidates::Candidates;

/// Words per backend in the host's packed loads: one per `load-word` case.
pub const LOAD_WORDS: usize = LoadWord::QuotaResetMs as usize + 1;
/// Marks a missing value in a `u64` word pair.
const UNKNOWN: u64 = u64::MAX;

/// A routing decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Send the request to the first usable candidate; the host tries the
    /// next ones when an earlier one fails before the response starts.
    /// Built with [`Decision::forward`] or [`Decision::forward_to`] and
    /// the `with_*` methods, so a field a later interface adds (as 0.3.0
    /// added the hedge) does not break plugin code.
    #[non_exhaustive]
    Forward {
        candidates: Candidates,
        /// Headers added to the upstream request.
        add_headers: Vec<Header>,
        /// Hedge the first candidate with the next after this many
        /// microseconds without response headers; see [`Decision::hedged`].
        hedge_after_us: Option<u32>,
    },
    /// Answer directly with `status` and `body`, without an upstream.
    Reject { status: u16, body: String },
}

// === impl Decision ===

impl Decision {
    /// Forward to `candidates`, in order of preference.
    pub fn forward(candidates: impl IntoIterator<Item = u32>) -> Self {
        Decision::Forward {
            candidates: candidates.into_iter().collect(),
            add_headers: Vec::new(),
            hedge_after_us: None,
        }
    }

    /// Forward to candidates already gathered (no copy).
    pub fn forward_to(candidates: Candidates) -> Self {
        Decision::Forward {
            candidates,
            add_headers: Vec::new(),
            hedge_after_us: None,
        }
    }

    /// Answer directly with `status` and `body`.
    pub fn reject(status: u16, body: impl Into<String>) -> Self {
        Decision::Reject {
            status,
            body: body.into(),
        }
    }

    /// Adds a header to the upstream request of a forward decision.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        if let Decision::Forward { add_headers, .. } = &mut self {
            add_headers.push(Header {
                name: name.into(),
                value: value.into(),
            });
        }
        self
    }

    /// Asks the host to hedge a forward decision: when the first candidate
    /// has sent no response headers `after_us` microseconds after the
    /// request went out, the host sends the same request to the next usable
    /// candidate too and keeps whichever answers first. The host hedges only
    /// requests it holds whole, once per request, within the route's retry
    /// budget; a request with side effects should not be hedged.
    pub fn hedged(mut self, after_us: u32) -> Self {
        if let Decision::Forward { hedge_after_us, .. } = &mut self {
            *hedge_after_us = Some(after_us);
        }
        self
    }

    /// The hedge delay of a forward decision, if it asks for one.
    pub fn hedge_after_us(&self) -> Option<u32> {
        match self {
            Decision::Forward { hedge_after_us, .. } => *hedge_after_us,
            Decision::Reject { .. } => None,
        }
    }

    /// The candidates of a forward decision, or `None` for a reject.
    pub fn candidates(&self) -> Option<&[u32]> {
        match self {
            Decision::Forward { candidates, .. } => Some(candidates.as_slice()),
            Decision::Reject { .. } => None,
        }
    }
}

/// Live state of one backend at the moment of a decision.
///
/// Laid out word for word as the interface's `load-word` enum says, so the
/// host's packed list is read in place, without copying.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct BackendLoad {
    /// The backend's id, its index in [`Router::set_backends`](crate::Router::set_backends).
    pub id: u32,
    /// Requests in flight to this backend across the whole proxy.
    pub in_flight: u32,
    /// Moving average of the response time, microseconds; 0 before the first.
    pub ewma_latency_us: u32,
    /// Moving average of the time to first byte, microseconds.
    pub ewma_ttfb_us: u32,
    /// Failed share of recent requests, per mille.
    pub error_rate: u32,
    health: u32,
    breaker: u32,
    /// 0 (idle) ..= 1000 (saturated), from the health check.
    pub load_score: u32,
    remaining_requests: [u32; 2],
    remaining_tokens: [u32; 2],
    /// Milliseconds until the reported quota resets; 0 when unknown.
    pub quota_reset_ms: u32,
}

const _: () = assert!(core::mem::size_of::<BackendLoad>() == LOAD_WORDS * 4);

/// Each field sits at the word its `load-word` case names, so the host's
/// list is read in place whatever order the cases are declared in.
macro_rules! at_word {
    ($($field:ident => $case:ident),+ $(,)?) => {
        $(const _: () = assert!(
            core::mem::offset_of!(BackendLoad, $field) == LoadWord::$case as usize * 4
        );)+
    };
}

at_word!(
    id => Id,
    in_flight => InFlight,
    ewma_latency_us => EwmaLatencyUs,
    ewma_ttfb_us => EwmaTtfbUs,
    error_rate => ErrorRate,
    health => Health,
    breaker => Breaker,
    load_score => LoadScore,
    remaining_requests => RemainingRequestsLow,
    remaining_tokens => RemainingTokensLow,
    quota_reset_ms => QuotaResetMs,
);
const _: () = assert!(
    LoadWord::RemainingRequestsHigh as usize == LoadWord::RemainingRequestsLow as usize + 1
);
const _: () =
    assert!(LoadWord::RemainingTokensHigh as usize == LoadWord::RemainingTokensLow as usize + 1);

fn split(value: Option<u64>) -> [u32; 2] {
    let v = value.unwrap_or(UNKNOWN);
    [v as u32, (v >> 32) as u32]
}

fn join(words: [u32; 2]) -> Option<u64> {
    let v = u64::from(words[0]) | (u64::from(words[1]) << 32);
    (v != UNKNOWN).then_some(v)
}

// === impl BackendLoad ===

impl BackendLoad {
    /// An idle, healthy backend with no history; a starting point for tests.
    pub fn idle(id: u32) -> Self {
        BackendLoad {
            id,
            in_flight: 0,
            ewma_latency_us: 0,
            ewma_ttfb_us: 0,
            error_rate: 0,
            health: Health::Healthy as u32,
            breaker: BreakerState::Closed as u32,
            load_score: 0,
            remaining_requests: split(None),
            remaining_tokens: split(None),
            quota_reset_ms: 0,
        }
    }

    /// Views the host's packed words as backends, in place. Trailing words
    /// that do not make a whole backend are ignored.
    pub fn from_words(words: &[u32]) -> &[BackendLoad] {
        let whole = words.len() - words.len() % LOAD_WORDS;
        bytemuck::cast_slice(&words[..whole])
    }

    /// The backend's health.
    pub fn health(&self) -> Health {
        match self.health {
            0 => Health::Healthy,
            1 => Health::Degraded,
            _ => Health::Unhealthy,
        }
    }

    pub fn set_health(&mut self, health: Health) {
        self.health = health as u32;
    }

    /// The backend's circuit-breaker state.
    pub fn breaker(&self) -> BreakerState {
        match self.breaker {
            0 => BreakerState::Closed,
            1 => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    pub fn set_breaker(&mut self, breaker: BreakerState) {
        self.breaker = breaker as u32;
    }

    /// Remaining requests the upstream reported, if it did.
    pub fn remaining_requests(&self) -> Option<u64> {
        join(self.remaining_requests)
    }

    pub fn set_remaining_requests(&mut self, value: Option<u64>) {
        self.remaining_requests = split(value);
    }

    /// Remaining tokens the upstream reported, if it did.
    pub fn remaining_tokens(&self) -> Option<u64> {
        join(self.remaining_tokens)
    }

    pub fn set_remaining_tokens(&mut self, value: Option<u64>) {
        self.remaining_tokens = split(value);
    }

    /// Whether the host would send traffic here: not unhealthy, breaker not open.
    pub fn is_usable(&self) -> bool {
        self.health() != Health::Unhealthy && self.breaker() != BreakerState::Open
    }
}

// === impl BackendInfo ===

impl BackendInfo {
    /// A backend with weight 1 and the given labels; a starting point for tests.
    pub fn new(id: u32, name: &str, labels: &[(&str, &str)]) -> Self {
        BackendInfo {
            id,
            name: name.into(),
            address: String::new(),
            weight: 1,
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        }
    }

    /// The value of label `key`, if set.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Facts about one request: method and client address, plus the
/// attributes the router declared in [`Router::interest`](crate::Router::interest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub client_ip: IpAddress,
    /// Natively (in tests) the attribute values; in a plugin, read from the
    /// host on demand.
    #[cfg(not(target_arch = "wasm32"))]
    attributes: Vec<AttributeValue>,
}

/// A declared attribute's place in the router's interest, handed out by
/// [`Interest::add`]: read the value with [`Request::get`], so the order of
/// declarations never matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AttributeKey(u32);

/// The attributes a router asks for, built in [`Router::init`] and returned
/// from [`Router::interest`](crate::Router::interest).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Interest {
    list: Vec<Attribute>,
}

// === impl Interest ===

impl Interest {
    pub fn new() -> Self {
        Interest::default()
    }

    /// Declares `attribute`; the key reads its value for each request. The
    /// same attribute declared twice gets the same key.
    pub fn add(&mut self, attribute: Attribute) -> AttributeKey {
        let at = match self.list.iter().position(|a| *a == attribute) {
            Some(at) => at,
            None => {
                self.list.push(attribute);
                self.list.len() - 1
            }
        };
        AttributeKey(at as u32)
    }

    /// The declared attributes, for [`Router::interest`](crate::Router::interest).
    pub fn to_list(&self) -> Vec<Attribute> {
        self.list.clone()
    }
}

// === impl Request ===

impl Request {
    /// A GET from 127.0.0.1 carrying `attributes` (in the order they were
    /// declared, `None` for absent ones); a starting point for tests.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new(attributes: &[Option<&str>]) -> Self {
        Request::with_values(
            attributes
                .iter()
                .map(|a| a.map_or(AttributeValue::Absent, |v| AttributeValue::Value(v.into())))
                .collect(),
        )
    }

    /// A GET from 127.0.0.1 whose declared attributes have these values, for
    /// tests of `not-seen` handling.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn with_values(attributes: Vec<AttributeValue>) -> Self {
        Request {
            method: Method::Get,
            client_ip: IpAddress::V4(0x7f00_0001),
            attributes,
        }
    }

    /// Wraps the host's request facts.
    #[cfg(target_arch = "wasm32")]
    pub(crate) fn from_host(facts: crate::bindings::switchyard::policy::types::Request) -> Self {
        Request {
            method: facts.method,
            client_ip: facts.client_ip,
        }
    }

    /// The value of a declared attribute, if the request has it and the
    /// host saw it. In a plugin each call asks the host, so read once.
    pub fn get(&self, key: AttributeKey) -> Option<String> {
        match self.value(key) {
            AttributeValue::Value(v) => Some(v),
            AttributeValue::Absent | AttributeValue::NotSeen => None,
        }
    }

    /// A declared attribute's value, telling one the request lacks
    /// (`Absent`) from one the host could not see (`NotSeen`: a body field
    /// past the route's `body_peek`).
    pub fn value(&self, key: AttributeKey) -> AttributeValue {
        self.value_at(key.0 as usize)
    }

    /// The value of the `index`-th declared attribute, if the request has
    /// it. Prefer [`Request::get`] with the key [`Interest::add`] gave.
    pub fn attribute(&self, index: usize) -> Option<String> {
        self.get(AttributeKey(index as u32))
    }

    fn value_at(&self, index: usize) -> AttributeValue {
        #[cfg(target_arch = "wasm32")]
        {
            crate::bindings::switchyard::policy::host::attribute(index as u32)
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            self.attributes
                .get(index)
                .cloned()
                .unwrap_or(AttributeValue::Absent)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn attribute_keys_read_what_was_declared_whatever_the_order() {
        let mut interest = Interest::new();
        let graph = interest.add(Attribute::Header("x-graph".into()));
        let model = interest.add(Attribute::JsonBody("model".into()));
        assert_eq!(interest.add(Attribute::Header("x-graph".into())), graph);
        assert_eq!(
            interest.to_list(),
            vec![
                Attribute::Header("x-graph".into()),
                Attribute::JsonBody("model".into())
            ]
        );
        let request = Request::with_values(vec![
            AttributeValue::Value("planner".into()),
            AttributeValue::NotSeen,
        ]);
        assert_eq!(request.get(graph).as_deref(), Some("planner"));
        assert_eq!(request.get(model), None);
        assert_eq!(request.value(model), AttributeValue::NotSeen);
        assert_eq!(Request::new(&[None]).value(graph), AttributeValue::Absent);
    }
}
