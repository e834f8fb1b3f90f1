//! The admin views of a route's shadow, canary and record:
//! `/shadow/<route>`, and their entries in `/status` and `/plugins`.

use crate::route::{Route, RouteTable};
use serde_json::json;

/// `/shadow/<route>`: agreement, traffic shift, failures, call cost and
/// recent disagreements; `None` when the route has no shadow.
pub fn shadow_json(table: &RouteTable, route: &str) -> Option<serde_json::Value> {
    let r = table.routes.iter().find(|r| r.name == route)?;
    let s = r.shadow.as_ref()?;
    let mut out = s.stats.to_json(&s.plugin, s.sample);
    out["live"] = json!(r.router.as_ref().map(|p| p.name()));
    Some(out)
}

/// The route's shadow (without its disagreements), canary and record, for
/// `/status`.
pub fn route_status(r: &Route) -> serde_json::Value {
    let shadow = r.shadow.as_ref().map(|s| {
        let mut v = s.stats.to_json(&s.plugin, s.sample);
        if let Some(o) = v.as_object_mut() {
            o.remove("recent_disagreements");
        }
        v
    });
    json!({
        "shadow": shadow,
        "canary": r.canary.as_ref().map(|c| c.to_json()),
        "record": r.record.as_ref().map(|x| x.to_json()),
    })
}
