//! One worker thread's context: its view of the route table, its upstream
//! connections, and its router plugin instances. Nothing here is shared
//! with other threads, so the request path takes no locks.

use super::Shared;
use super::upstream::UpstreamPool;
use crate::config::FailurePolicy;
use crate::plugin::{
    CallFailure, Candidates, Choice, Interest, LOAD_WORDS, RouterInstance, RouterPlugin, ask, wit,
};
use crate::pool::{Pool, least_outstanding, push_load_words};
use crate::rollout::{Arm, Decided, Watch};
use crate::route::{Route, RouteTable, request_host};
use http::{Method, Request};
use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;

/// A worker thread's private state.
pub struct Worker {
    shared: Arc<Shared>,
    /// The table behind a thread-local `Rc`: requests clone the `Rc`, never
    /// the `Arc`, so workers do not contend on one shared reference count.
    #[allow(clippy::redundant_allocation)]
    table: RefCell<Rc<Arc<RouteTable>>>,
    pub upstream: Rc<UpstreamPool>,
    /// Router instances by [`RouterPlugin::id`].
    instances: RefCell<HashMap<u64, RouterInstance>>,
    /// Reused buffer of packed backend loads handed to plugins.
    loads: RefCell<Vec<u32>>,
}

// === impl Worker ===

impl Worker {
    pub fn new(shared: Arc<Shared>) -> Worker {
        let table = Rc::new(shared.table.load_full());
        let worker = Worker {
            shared,
            table: RefCell::new(table),
            upstream: Rc::default(),
            instances: RefCell::default(),
            loads: RefCell::default(),
        };
        worker.warm();
        worker
    }

    /// The current route table. A reload swaps the shared table; the worker
    /// notices here, drops instances of plugins that are gone, and requests
    /// already running keep the table they started with.
    #[allow(clippy::redundant_allocation)]
    pub fn table(&self) -> Rc<Arc<RouteTable>> {
        let current = self.shared.table.load();
        let mut cached = self.table.borrow_mut();
        if !Arc::ptr_eq(&cached, &current) {
            *cached = Rc::new(arc_swap::Guard::into_inner(current));
            drop(cached);
            self.warm();
            return self.table.borrow().clone();
        }
        cached.clone()
    }

    /// Takes ready instances for the table's plugins (made and initialised
    /// on the loading thread) so the first request does not wait, and drops
    /// instances of plugins no longer in use.
    fn warm(&self) {
        let table = self.table.borrow().clone();
        let mut instances = self.instances.borrow_mut();
        instances.retain(|id, _| {
            table
                .routes
                .iter()
                .any(|r| r.routers().any(|p| p.id == *id))
        });
        for plugin in table.routes.iter().flat_map(Route::routers) {
            if let std::collections::hash_map::Entry::Vacant(slot) = instances.entry(plugin.id)
                && let Some(instance) = plugin.take_instance()
            {
                slot.insert(instance);
            }
        }
    }

    /// Decides where a request goes: the route's plugin (or, on a canary,
    /// the version `watch` was given), or the built-in router when there is
    /// none or the plugin fails under `fail-open`. `body` is the start of a
    /// JSON request body, read for routers that route on one of its fields.
    /// A sampled request also feeds the route's shadow and its record.
    pub fn decide<B>(
        &self,
        route: &Route,
        req: &Request<B>,
        body: Option<BodyView<'_>>,
        client: IpAddr,
        watch: Option<&mut Watch>,
    ) -> Choice {
        let (arm, capture) = match watch {
            Some(Watch { arm, capture, .. }) => (arm.as_ref(), capture.as_mut()),
            None => (None, None),
        };
        let plugin = match arm {
            Some((Arm::Previous, canary)) => Some(&canary.previous),
            _ => route.router.as_ref(),
        };
        let shadow = route.shadow.as_ref().filter(|s| s.sampled());
        let capture = capture.map(|(c, r)| (c, &**r));
        if shadow.is_none() && capture.is_none() {
            let Some(plugin) = plugin else {
                return builtin(&route.pool);
            };
            let mut loads = self.loads.borrow_mut();
            fill_loads(&mut loads, &route.pool);
            let attributes = plugin
                .interest
                .iter()
                .map(|i| attribute(i, req, body))
                .collect();
            return self
                .ask(route, plugin, facts(req, client), &loads, attributes)
                .0;
        }
        // A sampled request: the inputs are kept for the shadow and the
        // record, off the fast path above.
        let facts = facts(req, client);
        let mut loads = Vec::new();
        fill_loads(&mut loads, &route.pool);
        let (choice, failure) = match plugin {
            None => (builtin(&route.pool), None),
            Some(plugin) => {
                let attributes = plugin
                    .interest
                    .iter()
                    .map(|i| attribute(i, req, body))
                    .collect();
                self.ask(route, plugin, facts, &loads, attributes)
            }
        };
        let decided = Decided::of(&choice);
        if let Some(shadow) = shadow {
            let attributes = shadow
                .plugin
                .interest
                .iter()
                .map(|i| attribute(i, req, body))
                .collect();
            shadow.run(
                facts,
                loads.clone(),
                attributes,
                decided.clone(),
                route.pool.backends.len(),
            );
        }
        if let Some((capture, recorder)) = capture {
            capture.facts = facts;
            capture.attributes = recorder
                .interest
                .iter()
                .map(|i| attribute(i, req, body))
                .collect();
            capture.loads = loads;
            capture.decided = Some(decided);
            capture.failure = failure;
        }
        choice
    }

    /// Asks `plugin` for a decision on this thread's instance of it, and
    /// applies the failure policy when it gives none. Also says why it
    /// failed, if it did.
    fn ask(
        &self,
        route: &Route,
        plugin: &Arc<RouterPlugin>,
        facts: wit::Request,
        loads: &[u32],
        attributes: Vec<wit::AttributeValue>,
    ) -> (Choice, Option<&'static str>) {
        let mut instances = self.instances.borrow_mut();
        match ask(
            &mut instances,
            plugin,
            facts,
            loads,
            attributes,
            route.pool.backends.len(),
        ) {
            Ok(choice) => (choice, None),
            Err(CallFailure::NotReady) => {
                metrics::counter!("switchyard_plugin_instance_waits_total",
                    "plugin" => plugin.name().to_string(), "route" => route.name.clone())
                .increment(1);
                (on_failure(plugin, &route.pool), Some("not_ready"))
            }
            Err(failure) => (on_failure(plugin, &route.pool), Some(failure.kind())),
        }
    }
}

/// The request's facts as a router gets them.
fn facts<B>(req: &Request<B>, client: IpAddr) -> wit::Request {
    wit::Request {
        method: method(req.method()),
        client_ip: ip(client),
    }
}

/// Replaces `loads` with the pool's live load words. Their time-based
/// words (decayed averages, quota reset) are as of the clock's last tick,
/// which is precise enough for them and cheaper to read per request.
fn fill_loads(loads: &mut Vec<u32>, pool: &Pool) {
    loads.clear();
    loads.reserve(pool.backends.len() * LOAD_WORDS);
    let now = crate::clock::coarse_millis();
    for b in &pool.backends {
        push_load_words(loads, b.id, &b.state.snapshot_at(now));
    }
}

fn builtin(pool: &Pool) -> Choice {
    let (ids, len) = least_outstanding(pool);
    Choice::Forward {
        candidates: Candidates::Few(ids, len),
        add_headers: Vec::new(),
        hedge: None,
    }
}

fn on_failure(plugin: &RouterPlugin, pool: &Pool) -> Choice {
    match plugin.spec.on_failure {
        FailurePolicy::FailOpen => builtin(pool),
        FailurePolicy::FailClosed => Choice::Reply {
            status: 503,
            body: format!(
                "routing plugin {} failed; the route is fail-closed\n",
                plugin.name()
            ),
        },
    }
}

fn method(m: &Method) -> wit::Method {
    match *m {
        Method::GET => wit::Method::Get,
        Method::HEAD => wit::Method::Head,
        Method::POST => wit::Method::Post,
        Method::PUT => wit::Method::Put,
        Method::DELETE => wit::Method::Delete,
        Method::PATCH => wit::Method::Patch,
        Method::OPTIONS => wit::Method::Options,
        Method::CONNECT => wit::Method::Connect,
        Method::TRACE => wit::Method::Trace,
        _ => wit::Method::Other,
    }
}

fn ip(addr: IpAddr) -> wit::IpAddress {
    match addr.to_canonical() {
        IpAddr::V4(v4) => wit::IpAddress::V4(u32::from(v4)),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            wit::IpAddress::V6(((bits >> 64) as u64, bits as u64))
        }
    }
}

/// What the proxy read of a request body for a router: its first bytes,
/// and whether they are all of it.
#[derive(Debug, Clone, Copy)]
pub struct BodyView<'a> {
    pub prefix: &'a [u8],
    pub whole: bool,
}

/// The value of one declared attribute in `req`; `body` is what was read
/// of its body, if the router asked for a body field.
pub fn attribute<B>(
    interest: &Interest,
    req: &Request<B>,
    body: Option<BodyView<'_>>,
) -> wit::AttributeValue {
    use wit::AttributeValue::{Absent, NotSeen, Value};
    let text = |v: Option<&str>| v.map_or(Absent, |v| Value(v.to_string()));
    match interest {
        Interest::JsonBody(field) => {
            let Some(body) = body else { return Absent };
            match super::json_field::find_field(body.prefix, field) {
                super::json_field::Field::Value(v) => Value(v),
                super::json_field::Field::Absent => Absent,
                super::json_field::Field::Cut if body.whole => Absent,
                super::json_field::Field::Cut => NotSeen,
            }
        }
        Interest::PromptPrefix { block, max_bytes } => {
            let Some(body) = body else { return Absent };
            use super::prompt_prefix::{Prefix, prefix_hashes};
            match prefix_hashes(
                body.prefix,
                body.whole,
                *block as usize,
                *max_bytes as usize,
            ) {
                Prefix::Hashes(h) => Value(h),
                Prefix::Absent => Absent,
                Prefix::NotSeen => NotSeen,
            }
        }
        Interest::BodySize => {
            let declared = req
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            match (declared, body) {
                (Some(n), _) => Value(n.to_string()),
                (None, Some(b)) if b.whole => Value(b.prefix.len().to_string()),
                (None, _) => NotSeen,
            }
        }
        Interest::Header(name) => text(req.headers().get(name).and_then(|v| v.to_str().ok())),
        Interest::Path => Value(req.uri().path().to_string()),
        Interest::Query => text(req.uri().query()),
        Interest::Host => text(request_host(req)),
        Interest::Cookie(name) => text(
            req.headers()
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| v),
        ),
    }
}

#[cfg(test)]
mod tests;
