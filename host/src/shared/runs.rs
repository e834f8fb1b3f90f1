//! Cost per run: the tokens and estimated cost of every request that names
//! a run (`x-run-id`, a LangGraph thread or run id), summed in the shared
//! store so every replica adds to one total, which the admin API shows at
//! `/runs/<id>` and any plugin can read with `counter-get`.
//!
//! Keys (under the store's prefix): `run:<id>:requests`,
//! `run:<id>:prompt_tokens`, `run:<id>:completion_tokens`,
//! `run:<id>:cost_microdollars`. Counting never waits on Redis: it goes
//! through the same local copy routers use.

use super::{Access, SharedError, SharedStore};
use http::{HeaderMap, HeaderName};
use std::sync::Arc;
use std::time::Duration;

/// Longest run id counted; longer ones (and ones with other characters than
/// letters, digits and `-_.:`) are not.
const MAX_RUN_ID: usize = 128;

/// The counters of one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunTotals {
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_microdollars: i64,
}

/// Where runs are counted, and the header that names them.
pub struct RunLedger {
    pub header: HeaderName,
    ttl_ms: u32,
    store: Arc<SharedStore>,
}

impl RunLedger {
    pub fn new(header: HeaderName, ttl: Duration, store: Arc<SharedStore>) -> RunLedger {
        RunLedger {
            header,
            ttl_ms: ttl.as_millis().min(u128::from(u32::MAX)) as u32,
            store,
        }
    }

    /// The run a request names, if it names a valid one.
    pub fn run_id(&self, headers: &HeaderMap) -> Option<Arc<str>> {
        let v = headers.get(&self.header)?.to_str().ok()?.trim();
        is_run_id(v).then(|| v.into())
    }

    /// Adds one answered request's usage to `run`.
    pub fn add(&self, run: &str, prompt: u64, completion: u64, microdollars: u64) {
        let clamp = |n: u64| n.min(i64::MAX as u64) as i64;
        for (field, delta) in [
            ("requests", 1),
            ("prompt_tokens", clamp(prompt)),
            ("completion_tokens", clamp(completion)),
            ("cost_microdollars", clamp(microdollars)),
        ] {
            if delta == 0 && field != "requests" {
                continue;
            }
            // Failures are counted by the store; usage is best effort.
            let _ = self
                .store
                .counter_add(Access::NoWait, &key(run, field), delta, self.ttl_ms);
        }
    }

    /// The run's totals, as the store has them (a round trip on Redis).
    pub fn totals(&self, run: &str) -> Result<RunTotals, SharedError> {
        let get = |field| self.store.counter_get(Access::Wait, &key(run, field));
        Ok(RunTotals {
            requests: get("requests")?,
            prompt_tokens: get("prompt_tokens")?,
            completion_tokens: get("completion_tokens")?,
            cost_microdollars: get("cost_microdollars")?,
        })
    }
}

/// Whether `id` may name a run.
pub fn is_run_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_RUN_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

fn key(run: &str, field: &str) -> String {
    format!("run:{run}:{field}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_add_up_and_odd_ids_are_not_counted() {
        let ledger = RunLedger::new(
            HeaderName::from_static("x-run-id"),
            Duration::from_secs(60),
            SharedStore::in_process(),
        );
        let mut h = HeaderMap::new();
        h.insert("x-run-id", "thread-7:run.3".parse().unwrap());
        let run = ledger.run_id(&h).expect("a run");
        ledger.add(&run, 12, 6, 90);
        ledger.add(&run, 10, 0, 40);
        assert_eq!(
            ledger.totals(&run).unwrap(),
            RunTotals {
                requests: 2,
                prompt_tokens: 22,
                completion_tokens: 6,
                cost_microdollars: 130
            }
        );
        for bad in ["", "a b", "x/../y", &"r".repeat(129), "run\u{e9}"] {
            assert!(!is_run_id(bad), "{bad:?}");
        }
        assert_eq!(ledger.totals("nobody").unwrap(), RunTotals::default());
    }
}
