//! Shipping a router safely. A route may run a **shadow** router that
//! decides on a share of requests without acting ([`Shadow`]), roll a new
//! router out as a **canary** that takes a growing share and rolls back by
//! itself ([`Canary`]), and **record** what its router saw and what
//! happened ([`Recorder`]) for `switchyard replay` ([`replay`]).
//!
//! A request that is canaried or recorded carries a [`Watch`] from its
//! decision to its end, where [`Watch::finish`] learns the outcome.

mod canary;
mod record;
pub mod replay;
mod shadow;
pub mod trace;

pub use canary::{Arm, Canary};
pub use record::Recorder;
pub use shadow::Shadow;

use crate::plugin::wit;
use std::cell::Cell;

/// What a route decided, as compared and recorded: candidate ids, or a
/// direct answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decided {
    Forward(Vec<u32>),
    Reject(u16),
}

impl Decided {
    /// Whether both send the request to the same backend first (or answer
    /// with the same status).
    pub fn same_primary(&self, other: &Decided) -> bool {
        match (self, other) {
            (Decided::Forward(a), Decided::Forward(b)) => a.first() == b.first(),
            (a, b) => a == b,
        }
    }

    /// The first candidate, if the request is forwarded.
    pub fn primary(&self) -> Option<u32> {
        match self {
            Decided::Forward(ids) => ids.first().copied(),
            Decided::Reject(_) => None,
        }
    }
}

impl Decided {
    /// What `choice` does, as shadows compare and traces record it.
    pub fn of(choice: &crate::plugin::Choice) -> Decided {
        match choice {
            crate::plugin::Choice::Forward { candidates, .. } => {
                Decided::Forward(candidates.as_slice().to_vec())
            }
            crate::plugin::Choice::Reply { status, .. } => Decided::Reject(*status),
        }
    }
}

/// A sampled request's inputs to its router, kept for its trace record.
pub struct Capture {
    pub facts: wit::Request,
    pub attributes: Vec<wit::AttributeValue>,
    pub loads: Vec<u32>,
    pub decided: Option<Decided>,
    /// Why the router gave no decision of its own (the failure policy
    /// decided), if it failed.
    pub failure: Option<&'static str>,
}

/// How a watched request ended.
#[derive(Debug, Clone, Default)]
pub struct Ending {
    /// The backend that answered, by name, if one did.
    pub backend: Option<String>,
    pub status: u16,
    pub latency_us: u32,
    pub ttfb_us: u32,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// `connect`, `timeout`, `reset`, `client_gone` or `local` (answered
    /// by the proxy), when the exchange did not end with a whole response.
    pub error: Option<&'static str>,
}

impl Ending {
    /// Whether the request failed, as a canary counts it.
    pub fn failed(&self) -> bool {
        self.status >= 500 || matches!(self.error, Some("connect" | "timeout" | "reset"))
    }
}

/// A request being followed to its end for a canary or a record.
pub struct Watch {
    pub started: std::time::Instant,
    /// The canary version that decides this request.
    pub arm: Option<(Arm, std::sync::Arc<Canary>)>,
    /// Filled by the decision when the request is recorded.
    pub capture: Option<(Capture, std::sync::Arc<Recorder>)>,
}

impl Watch {
    /// The proxy answered itself (a router's reject, no usable backend, a
    /// fallback reply): `status` is the request's outcome.
    pub fn finish_local(self, status: u16) {
        let latency_us = self.started.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        self.finish(Ending {
            status,
            latency_us,
            ttfb_us: latency_us,
            error: Some("local"),
            ..Ending::default()
        });
    }

    /// Reports the outcome to the canary and writes the trace record.
    pub fn finish(self, ending: Ending) {
        if let Some((arm, canary)) = &self.arm {
            canary.observe(*arm, ending.failed(), ending.latency_us);
        }
        if let Some((capture, recorder)) = self.capture {
            recorder.write(capture, self.arm.map(|(a, _)| a), ending);
        }
    }
}

/// `value` of attribute `interest` as a trace or an admin view may show
/// it: a credential header (`authorization`, `x-api-key`, `api-key`,
/// `proxy-authorization`, `cookie`) becomes `sha256:` and the first 16 hex
/// digits of its digest, so a router keyed on it still sees one stable
/// value per caller, and the credential itself is never written.
pub fn shown_value(
    interest: &crate::plugin::Interest,
    value: &wit::AttributeValue,
) -> wit::AttributeValue {
    use sha2::Digest;
    match (interest, value) {
        (crate::plugin::Interest::Header(h), wit::AttributeValue::Value(v))
            if crate::config::CLIENT_AUTH_HEADERS.contains(&h.as_str())
                || matches!(h.as_str(), "proxy-authorization" | "cookie") =>
        {
            let digest = sha2::Sha256::digest(v.as_bytes());
            let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            wit::AttributeValue::Value(format!("sha256:{hex}"))
        }
        _ => value.clone(),
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let here = &t as *const u64 as u64;
    (t ^ here.rotate_left(32)) | 1
}

/// A share 0..=1 as a threshold for [`sampled`].
pub fn threshold(share: f64) -> u64 {
    if share >= 1.0 {
        u64::MAX
    } else {
        (share.max(0.0) * 18_446_744_073_709_551_616.0) as u64
    }
}

/// Whether this request falls in the share `threshold` stands for; a
/// per-thread xorshift, so sampling takes no lock and no syscall.
pub fn sampled(threshold: u64) -> bool {
    match threshold {
        0 => false,
        u64::MAX => true,
        t => RNG.with(|rng| {
            let mut x = rng.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            rng.set(x);
            x < t
        }),
    }
}

/// `get`, `post`, ... as traces write a method.
pub fn method_name(m: wit::Method) -> &'static str {
    match m {
        wit::Method::Get => "get",
        wit::Method::Head => "head",
        wit::Method::Post => "post",
        wit::Method::Put => "put",
        wit::Method::Delete => "delete",
        wit::Method::Patch => "patch",
        wit::Method::Options => "options",
        wit::Method::Connect => "connect",
        wit::Method::Trace => "trace",
        wit::Method::Other => "other",
    }
}

/// The method [`method_name`] wrote.
pub fn method_of(name: &str) -> wit::Method {
    match name {
        "get" => wit::Method::Get,
        "head" => wit::Method::Head,
        "post" => wit::Method::Post,
        "put" => wit::Method::Put,
        "delete" => wit::Method::Delete,
        "patch" => wit::Method::Patch,
        "options" => wit::Method::Options,
        "connect" => wit::Method::Connect,
        "trace" => wit::Method::Trace,
        _ => wit::Method::Other,
    }
}

/// An address as the interface carries it, back to text.
pub fn ip_text(ip: wit::IpAddress) -> String {
    match ip {
        wit::IpAddress::V4(v4) => std::net::Ipv4Addr::from(v4).to_string(),
        wit::IpAddress::V6((hi, lo)) => {
            std::net::Ipv6Addr::from((u128::from(hi) << 64) | u128::from(lo)).to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_takes_the_share_asked_for() {
        let t = threshold(0.1);
        let hits = (0..100_000).filter(|_| sampled(t)).count();
        assert!((9_000..11_000).contains(&hits), "{hits}");
        assert!(!(0..1000).any(|_| sampled(threshold(0.0))));
        assert!((0..1000).all(|_| sampled(threshold(1.0))));
    }

    #[test]
    fn credentials_are_never_shown() {
        let key = wit::AttributeValue::Value("Bearer sk-live-secret".into());
        for header in [
            "authorization",
            "x-api-key",
            "api-key",
            "proxy-authorization",
            "cookie",
        ] {
            let i = crate::plugin::Interest::Header(http::HeaderName::from_static(header));
            let shown = shown_value(&i, &key);
            assert!(
                matches!(&shown, wit::AttributeValue::Value(v) if v.starts_with("sha256:") && !v.contains("secret")),
                "{header}: {shown:?}"
            );
            assert_eq!(shown, shown_value(&i, &key), "stable per caller");
        }
        let other = crate::plugin::Interest::Header(http::HeaderName::from_static("x-thread-id"));
        assert_eq!(shown_value(&other, &key), key);
    }

    #[test]
    fn a_primary_is_the_first_candidate() {
        let a = Decided::Forward(vec![1, 2]);
        assert!(a.same_primary(&Decided::Forward(vec![1, 0])));
        assert!(!a.same_primary(&Decided::Forward(vec![2, 1])));
        assert!(!a.same_primary(&Decided::Reject(503)));
        assert!(Decided::Reject(429).same_primary(&Decided::Reject(429)));
    }
}
