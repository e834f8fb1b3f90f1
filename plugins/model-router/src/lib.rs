//! Model router: reads the `model` field of an OpenAI-style JSON request
//! body and sends the request to the backends that serve that model, least
//! outstanding first. A backend serves the models listed in its `models`
//! label (comma-separated); the config's `aliases` map public names to the
//! names backends list (`aliases.fast = "gpt-4o-mini"`).
//!
//! A request whose body names no model is refused with 400 `model_missing`
//! under `reject`; one whose body runs past the route's `body_peek`, so the
//! proxy could not read the field, with 400 `model_not_seen`, which says to
//! raise `body_peek`. A request for a model no usable backend serves gets
//! `unknown`:
//! `reject` (the default) answers 404 with an OpenAI-style error, `any`
//! sends it to the least outstanding backend of the pool. The body reaches
//! the backend unchanged; the host reads only its first `body_peek` bytes.
#![cfg_attr(not(test), no_std)]

use switchyard_sdk::prelude::*;

pub struct ModelRouter {
    field: String,
    interest: Interest,
    model: AttributeKey,
    aliases: BTreeMap<String, String>,
    reject_unknown: bool,
    /// For each backend id, the models it serves.
    serves: Vec<Vec<String>>,
    turn: usize,
}

impl ModelRouter {
    fn serves(&self, id: u32, model: &str) -> bool {
        self.serves
            .get(id as usize)
            .is_some_and(|models| models.iter().any(|m| m == model || m == "*"))
    }
}

impl Router for ModelRouter {
    fn init(_route: &str, config: &Config) -> Result<Self, String> {
        let reject_unknown = match config.get_or("unknown", "reject") {
            "reject" => true,
            "any" => false,
            other => return Err(format!("unknown {other:?}: expected \"reject\" or \"any\"")),
        };
        let field = config.get_or("field", "model").to_string();
        let mut interest = Interest::new();
        let model = interest.add(Attribute::JsonBody(field.clone()));
        Ok(ModelRouter {
            field,
            interest,
            model,
            aliases: config
                .table("aliases")
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            reject_unknown,
            serves: Vec::new(),
            turn: host::random() as usize,
        })
    }

    fn interest(&self) -> Vec<Attribute> {
        self.interest.to_list()
    }

    fn set_backends(&mut self, backends: &[BackendInfo]) {
        self.serves = backends
            .iter()
            .map(|b| {
                b.label("models")
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect()
            })
            .collect();
    }

    fn route(&mut self, request: &Request, backends: &[BackendLoad]) -> Decision {
        self.turn = self.turn.wrapping_add(1);
        let (n, turn) = (backends.len(), self.turn);
        let rotated = move || (0..n).map(move |i| &backends[(i + turn) % n]);
        let value = request.value(self.model);
        let model = match &value {
            AttributeValue::Value(m) => Some(m.as_str()),
            AttributeValue::Absent | AttributeValue::NotSeen => None,
        };
        let wanted = model.map(|m| self.aliases.get(m).map_or(m, String::as_str));
        let least = |b: &BackendLoad| (b.in_flight, b.ewma_latency_us);
        if let Some(wanted) = wanted {
            let matching = rotated().filter(|b| b.is_usable() && self.serves(b.id, wanted));
            let candidates = Candidates::lowest_by_key(matching, 4, least);
            if !candidates.is_empty() {
                return Decision::forward_to(candidates);
            }
        }
        if self.reject_unknown && value == AttributeValue::NotSeen {
            return Decision::reject(
                400,
                format!(
                    "{{\"error\":{{\"message\":\"the request body is larger than the proxy reads to find `{}` (the route's body_peek); raise body_peek to route bodies this large\",\"type\":\"invalid_request_error\",\"code\":\"model_not_seen\"}}}}",
                    self.field
                ),
            );
        }
        if self.reject_unknown && value == AttributeValue::Absent {
            return Decision::reject(
                400,
                format!(
                    "{{\"error\":{{\"message\":\"the request body names no model: it needs a top-level `{}` field\",\"type\":\"invalid_request_error\",\"code\":\"model_missing\"}}}}",
                    self.field
                ),
            );
        }
        if self.reject_unknown {
            // Quoted for a JSON string: backslashes and quotes escaped,
            // control characters dropped.
            let mut what = String::new();
            for c in model.unwrap_or("(none)").chars() {
                if c == '"' || c == '\\' {
                    what.push('\\');
                }
                if !c.is_control() {
                    what.push(c);
                }
            }
            return Decision::reject(
                404,
                format!(
                    "{{\"error\":{{\"message\":\"no backend serves model '{what}'\",\"type\":\"invalid_request_error\",\"code\":\"model_not_found\"}}}}"
                ),
            );
        }
        let any = rotated().filter(|b| b.is_usable());
        Decision::forward_to(Candidates::lowest_by_key(any, 4, least))
    }
}

export_router!(ModelRouter);

#[cfg(test)]
mod tests {
    use super::*;

    fn router(pairs: &[(&str, &str)]) -> ModelRouter {
        let mut r = ModelRouter::init("chat", &Config::from_pairs(pairs)).unwrap();
        r.set_backends(&[
            BackendInfo::new(0, "fast-a", &[("models", "gpt-4o-mini, gpt-4o")]),
            BackendInfo::new(1, "cheap", &[("models", "llama-3-8b")]),
            BackendInfo::new(2, "fast-b", &[("models", "gpt-4o-mini")]),
        ]);
        r
    }

    #[test]
    fn routes_to_the_backends_serving_the_model() {
        let mut r = router(&[("aliases.fast", "gpt-4o-mini")]);
        let mut loads: Vec<BackendLoad> = (0..3).map(BackendLoad::idle).collect();
        loads[0].in_flight = 3;
        let d = r.route(&Request::new(&[Some("gpt-4o-mini")]), &loads);
        assert_eq!(d.candidates().unwrap(), [2, 0]);
        let d = r.route(&Request::new(&[Some("fast")]), &loads);
        assert_eq!(d.candidates().unwrap(), [2, 0]);
        let d = r.route(&Request::new(&[Some("llama-3-8b")]), &loads);
        assert_eq!(d.candidates().unwrap(), [1]);
        assert_eq!(r.interest(), vec![Attribute::JsonBody("model".into())]);
    }

    #[test]
    fn unknown_models_are_rejected_or_sent_anywhere() {
        let loads: Vec<BackendLoad> = (0..3).map(BackendLoad::idle).collect();
        let mut strict = router(&[]);
        let d = strict.route(&Request::new(&[Some("gpt-5")]), &loads);
        assert!(
            matches!(d, Decision::Reject { status: 404, ref body } if body.contains("'gpt-5'"))
        );
        let d = strict.route(&Request::new(&[Some("a\"b")]), &loads);
        assert!(matches!(d, Decision::Reject { ref body, .. } if body.contains(r#"'a\"b'"#)));
        let d = strict.route(&Request::new(&[None]), &loads);
        assert!(
            matches!(d, Decision::Reject { status: 400, ref body } if body.contains("model_missing"))
        );
        let cut = Request::with_values(vec![AttributeValue::NotSeen]);
        let d = strict.route(&cut, &loads);
        assert!(
            matches!(d, Decision::Reject { status: 400, ref body } if body.contains("model_not_seen") && body.contains("body_peek"))
        );
        let mut any = router(&[("unknown", "any")]);
        let d = any.route(&Request::new(&[Some("gpt-5")]), &loads);
        assert_eq!(d.candidates().unwrap().len(), 3);
    }

    #[test]
    fn an_unusable_backend_is_skipped() {
        let mut r = router(&[]);
        let mut loads: Vec<BackendLoad> = (0..3).map(BackendLoad::idle).collect();
        loads[2].set_health(Health::Unhealthy);
        let d = r.route(&Request::new(&[Some("gpt-4o-mini")]), &loads);
        assert_eq!(d.candidates().unwrap(), [0]);
    }
}
