//! What it takes to front a real provider: the proxy's own credentials
//! injected and rotated, client keys, DNS discovery, quota dialects.

use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use switchyard::route::auth::key_digest;
use switchyard_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_key_replaces_the_clients_and_rotates_with_its_file() {
    let b = mock("provider");
    let open = mock("open");
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("provider-key");
    std::fs::write(&key_file, "sk-pool-first\n").unwrap();
    let config = format!(
        "[pools.keyed]\nset_headers = {{ authorization = {{ file = \"{}\", prefix = \"Bearer \" }}, \"openai-organization\" = \"org-1\" }}\n\
         remove_headers = [\"x-internal\"]\nbackends = [{}]\n\n\
         [pools.open]\nbackends = [{}]\n\n\
         [[routes]]\nname = \"keyed\"\nmatch = {{ path_prefix = \"/keyed\" }}\nstrip_prefix = true\npool = \"keyed\"\n\n\
         [[routes]]\nname = \"open\"\npool = \"open\"\n",
        key_file.display(),
        backend_entry(&b, ""),
        backend_entry(&open, ""),
    );
    let proxy = TestProxy::start(&config);
    let client_headers = [
        ("authorization", "Bearer sk-client-own"),
        ("x-api-key", "sk-client-own"),
        ("api-key", "sk-client-own"),
        ("x-internal", "1"),
    ];
    let seen = get(&proxy.url("/keyed/echo"), &client_headers).await.json();
    let h = &seen["headers"];
    assert_eq!(h["authorization"], "Bearer sk-pool-first", "{seen}");
    assert_eq!(h["openai-organization"], "org-1");
    for gone in ["x-api-key", "api-key", "x-internal"] {
        assert!(h.get(gone).is_none(), "{gone} reached the backend: {seen}");
    }
    // A body too large to hold streams upstream, with the same rules.
    let posted = send(
        "POST",
        &proxy.url("/keyed/echo"),
        &[("authorization", "Bearer sk-client-own")],
        Bytes::from(vec![b'x'; 200_000]),
    )
    .await
    .json();
    assert_eq!(posted["headers"]["authorization"], "Bearer sk-pool-first");
    assert_eq!(posted["body_len"], 200_000);

    // A pool without credentials passes the client's through.
    let seen = get(&proxy.url("/echo"), &client_headers).await.json();
    assert_eq!(seen["headers"]["authorization"], "Bearer sk-client-own");

    // Kubernetes-style rotation: a new file renamed over the old one.
    let next = dir.path().join("provider-key.new");
    std::fs::write(&next, "sk-pool-second").unwrap();
    std::fs::rename(&next, &key_file).unwrap();
    eventually(Duration::from_secs(8), "the rotated key", || async {
        get(&proxy.url("/keyed/echo"), &[]).await.json()["headers"]["authorization"]
            == "Bearer sk-pool-second"
    })
    .await;
}

fn keys_file(keys: &[(&str, &str, &str)]) -> String {
    keys.iter()
        .map(|(name, key, team)| {
            format!("[[keys]]\nname = \"{name}\"\nsha256 = \"{}\"\nlabels = {{ team = \"{team}\" }}\n\n", key_digest(key))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keys_gate_a_route_name_the_caller_and_reload_live() {
    let b = mock("model");
    let proxy_dir = tempfile::tempdir().unwrap();
    let keys = proxy_dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        keys_file(&[("alice", "sk-alice", "research"), ("bob", "sk-bob", "ops")]),
    )
    .unwrap();
    let config = format!(
        "[pools.p]\nbackends = [{}]\n\n\
         [[routes]]\nname = \"guarded\"\nmatch = {{ path_prefix = \"/v1/\" }}\npool = \"p\"\nauth = {{ keys_file = \"{}\" }}\n\n\
         [[routes]]\nname = \"open\"\npool = \"p\"\n",
        backend_entry(&b, ""),
        keys.display()
    );
    let proxy = TestProxy::start(&config);
    let url = proxy.url("/v1/echo");

    let missing = get(&url, &[]).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["error"]["code"], "invalid_api_key");
    assert_eq!(missing.headers["content-type"], "application/json");
    assert!(missing.headers.contains_key("www-authenticate"));
    let wrong = get(&url, &[("authorization", "Bearer sk-mallory")]).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(b.served(), 0, "refused requests never reach a backend");

    for (header, value) in [
        ("authorization", "Bearer sk-alice"),
        ("x-api-key", "sk-alice"),
        ("api-key", "sk-alice"),
    ] {
        let r = get(&url, &[(header, value), ("x-switchyard-client", "root")]).await;
        assert_eq!(r.status, 200, "{header}");
        let h = &r.json()["headers"];
        assert_eq!(h["x-switchyard-client"], "alice");
        assert_eq!(h["x-switchyard-client-team"], "research");
        assert!(
            h.get(header).is_none(),
            "the proxy's key went upstream: {h}"
        );
    }
    // Nobody claims an identity on a route without keys either.
    let spoofed = get(
        &proxy.url("/echo"),
        &[
            ("x-switchyard-client", "alice"),
            ("x-switchyard-client-team", "x"),
        ],
    )
    .await;
    let h = &spoofed.json()["headers"];
    assert!(
        h.get("x-switchyard-client").is_none() && h.get("x-switchyard-client-team").is_none(),
        "{h}"
    );

    // Tokens are counted per caller.
    let chat = send(
        "POST",
        &proxy.url("/v1/chat/completions"),
        &[
            ("authorization", "Bearer sk-bob"),
            ("content-type", "application/json"),
        ],
        Bytes::from_static(br#"{"model":"m","messages":[]}"#),
    )
    .await;
    assert_eq!(chat.status, 200);
    let admin = proxy.proxy().admin_addr.unwrap();
    eventually(
        Duration::from_secs(5),
        "tokens labelled with the caller",
        || async {
            get(&format!("http://{admin}/metrics"), &[])
                .await
                .text()
                .lines()
                .any(|l| {
                    l.starts_with("switchyard_tokens_total{")
                        && l.contains("client=\"bob\"")
                        && l.contains("route=\"guarded\"")
                })
        },
    )
    .await;

    // Alice's key is withdrawn: refused once the file is re-read.
    std::fs::write(&keys, keys_file(&[("bob", "sk-bob", "ops")])).unwrap();
    eventually(Duration::from_secs(8), "alice refused", || async {
        get(&url, &[("authorization", "Bearer sk-alice")])
            .await
            .status
            == 401
    })
    .await;
    assert_eq!(
        get(&url, &[("authorization", "Bearer sk-bob")])
            .await
            .status,
        200
    );
}

/// A resolver whose answer the test sets.
struct Answers(Mutex<Result<Vec<SocketAddr>, String>>);

impl switchyard::discovery::Resolve for Answers {
    fn resolve(&self, name: &str) -> std::io::Result<Vec<SocketAddr>> {
        assert_eq!(name, "agents.default.svc.cluster.local:8000");
        self.0
            .lock()
            .expect("answers lock")
            .clone()
            .map_err(std::io::Error::other)
    }
}

impl Answers {
    fn set(&self, answer: Result<Vec<SocketAddr>, String>) {
        *self.0.lock().expect("answers lock") = answer;
    }
}

fn backend_names(proxy: &TestProxy) -> Vec<String> {
    let table = proxy.proxy().proxy.shared.table.load();
    let mut names: Vec<String> = table.pools[0]
        .backends
        .iter()
        .map(|b| b.name.clone())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovered_backends_come_and_go_under_load_without_a_failed_request() {
    let (a, b, c) = (mock("a"), mock("b"), mock("c"));
    let answers = Arc::new(Answers(Mutex::new(Ok(vec![a.addr, b.addr]))));
    let config = "[pools.agents]\ndiscover = { dns = \"agents.default.svc.cluster.local:8000\", every = \"100ms\", labels = { tier = \"worker\" } }\n\n\
         [[routes]]\nname = \"agents\"\npool = \"agents\"\nrouter = { plugin = \"round-robin.wasm\" }\n";
    let proxy = TestProxy::start_full(config, "", Some(answers.clone()));
    let mut want = vec![a.addr.to_string(), b.addr.to_string()];
    want.sort();
    assert_eq!(backend_names(&proxy), want);
    let state_of_b = {
        let table = proxy.proxy().proxy.shared.table.load();
        let backend = table.pools[0]
            .backends
            .iter()
            .find(|x| x.name == b.addr.to_string())
            .unwrap();
        assert_eq!(
            backend.labels,
            vec![("tier".to_string(), "worker".to_string())]
        );
        backend.state.clone()
    };

    let load = Load::start(proxy.url("/ok"), &[], 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    answers.set(Ok(vec![a.addr, b.addr, c.addr]));
    eventually(Duration::from_secs(5), "c to take traffic", || async {
        c.served() > 20
    })
    .await;
    // A failing resolver keeps the last good set.
    answers.set(Err("SERVFAIL".into()));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(backend_names(&proxy).len(), 3);
    answers.set(Ok(vec![b.addr, c.addr]));
    eventually(Duration::from_secs(5), "a to leave the pool", || async {
        backend_names(&proxy).len() == 2
    })
    .await;
    let a_done = a.served();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let stats = load.stop().await;
    assert_eq!(stats.failed, 0, "first failure: {:?}", stats.first_failure);
    assert!(stats.ok > 200, "{stats:?}");
    assert_eq!(a.served(), a_done, "a removed backend gets no new requests");
    let table = proxy.proxy().proxy.shared.table.load();
    let kept = table.pools[0]
        .backends
        .iter()
        .find(|x| x.name == b.addr.to_string())
        .unwrap();
    assert!(
        Arc::ptr_eq(&kept.state, &state_of_b),
        "b kept its live state across the changes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresolvable_backend_name_is_a_connect_error_that_names_it() {
    // `.invalid` never resolves (RFC 6761).
    let config = "[pools.p]\nbackends = [{ name = \"nowhere\", address = \"https://no-such-backend.invalid\" }]\n\n\
                  [[routes]]\nname = \"r\"\npool = \"p\"\n";
    let proxy = TestProxy::start(config);
    let r = get(&proxy.url("/v1/models"), &[]).await;
    assert_eq!(r.status, 502);
    assert!(
        r.text().contains("cannot resolve no-such-backend.invalid"),
        "{}",
        r.text()
    );
}
