//! The interface's types, re-exported with helpers for plugin code and tests.

use alloc::string::String;
use alloc::vec::Vec;

pub use crate::bindings::switchyard::policy::types::{
    Attribute, BackendInfo, BackendLoad, BreakerState, Decision, Forward, Header, Health,
    IpAddress, Method, Reject, Request,
};

// === impl Decision ===

impl Decision {
    /// Forward to `candidates`, in order of preference, adding no headers.
    pub fn forward(candidates: Vec<u32>) -> Self {
        Decision::Forward(Forward {
            candidates,
            add_headers: Vec::new(),
        })
    }

    /// Answer directly with `status` and `body`.
    pub fn reject(status: u16, body: impl Into<String>) -> Self {
        Decision::Reject(Reject {
            status,
            body: body.into(),
        })
    }

    /// The candidates of a forward decision, or `None` for a reject.
    pub fn candidates(&self) -> Option<&[u32]> {
        match self {
            Decision::Forward(f) => Some(&f.candidates),
            Decision::Reject(_) => None,
        }
    }
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
            health: Health::Healthy,
            breaker: BreakerState::Closed,
            load_score: 0,
            remaining_requests: None,
            remaining_tokens: None,
            quota_reset_ms: 0,
        }
    }

    /// Whether the host would send traffic here: not unhealthy, breaker not open.
    pub fn is_usable(&self) -> bool {
        self.health != Health::Unhealthy && self.breaker != BreakerState::Open
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

// === impl Request ===

impl Request {
    /// A GET from 127.0.0.1 carrying `attributes`; a starting point for tests.
    pub fn new(attributes: &[Option<&str>]) -> Self {
        Request {
            method: Method::Get,
            client_ip: IpAddress::V4(0x7f00_0001),
            attributes: attributes.iter().map(|a| a.map(Into::into)).collect(),
        }
    }

    /// The value of the `index`-th declared attribute, if the request has it.
    pub fn attribute(&self, index: usize) -> Option<&str> {
        self.attributes.get(index).and_then(|a| a.as_deref())
    }
}
