use super::*;
use std::time::Duration;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("test.toml"), ".".into())
}

const GOOD: &str = r#"
[server]
listen = "127.0.0.1:0"

[pools.models]
backends = [
  { name = "fast", address = "127.0.0.1:9001", labels = { tier = "fast", cost = 3 } },
  { name = "cheap", address = "127.0.0.1:9002" },
]

[[routes]]
name = "research"
match = { path_prefix = "/graphs/research", headers = { "x-graph" = "research" } }
pool = "models"
strip_prefix = true
timeouts = { first_byte = "10m", connect = 250 }
router = { plugin = "priority-router.wasm", config = { high = ["high", "urgent"], graphs = { a = "fast" } } }
"#;

#[test]
fn good_config_parses_with_defaults() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.routes.len(), 1);
    let r = c.routes[0].get_ref();
    assert_eq!(r.timeouts.first_byte, Duration::from_secs(600));
    assert_eq!(r.timeouts.connect, Duration::from_millis(250));
    assert_eq!(r.retries.attempts, 3);
    let router = r.router.as_ref().unwrap();
    assert_eq!(router.on_failure, FailurePolicy::FailOpen);
    assert_eq!(
        flatten_table(&router.config),
        [
            ("graphs.a".to_string(), "fast".to_string()),
            ("high".to_string(), "high,urgent".to_string())
        ]
    );
    assert_eq!(
        scalar_text(&c.pools["models"].backends[0].labels["cost"]),
        "3"
    );
}

#[test]
fn unknown_pool_names_the_line() {
    let text = GOOD.replace("pool = \"models\"", "pool = \"modls\"");
    let e = parse(&text).unwrap_err();
    assert_eq!(e.line(), Some(14), "{e}");
    assert!(
        e.to_string()
            .starts_with("test.toml:14: route `research` names pool `modls`"),
        "{e}"
    );
}

#[test]
fn an_address_without_a_port_names_its_own_line() {
    let text = "[server]\nlisten = \"127.0.0.1:8080\"\n\n[pools.p]\nbackends = [\n  { name = \"a\", address = \"127.0.0.1:9\" },\n  { name = \"b\", address = \"127.0.0.1\" },\n]\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.line(), Some(7), "{e}");
    assert!(e.to_string().contains("not host:port"), "{e}");
}

#[test]
fn syntax_errors_and_unknown_keys_name_the_line() {
    let e = parse("[server]\nlisten = \n").unwrap_err();
    assert_eq!(e.line(), Some(2), "{e}");
    let e = parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err();
    assert_eq!(e.line(), Some(3), "{e}");
    assert!(e.to_string().contains("lisen"), "{e}");
    assert!(e.to_string().contains("did you mean `listen`?"), "{e}");
    // In a pool, a typo names the key it resembles.
    let e = parse(
        "[pools.p]
fial_timeout = \"2s\"\nbackends = [{ name = \"a\", address = \"127.0.0.1:9\" }]\n",
    )
    .unwrap_err();
    assert!(
        matches!(&e, ConfigError::UnknownKey { suggestion: Some(s), .. } if s == "fail_timeout"),
        "{e}"
    );
    assert_eq!(e.line(), Some(2), "{e}");
}

#[test]
fn the_second_of_two_equal_values_is_reported_at_its_own_line() {
    // Both routes name the same undefined fallback pool; the second route
    // is the one with a bad plugin name, and its line is the one named.
    let text = "[pools.p]\nbackends = [{ name = \"a\", address = \"127.0.0.1:9\" }]\n\n\
                [[routes]]\nname = \"one\"\npool = \"p\"\nrouter = { plugin = \"x.wasm\" }\n\n\
                [[routes]]\nname = \"two\"\npool = \"p\"\nrouter = { plugin = \"x.wasmm\" }\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.line(), Some(12), "{e}");
    // Two backends share an address; the second's name is the duplicate.
    let text = "[pools.p]\nbackends = [\n  { name = \"a\", address = \"127.0.0.1:9\" },\n  { name = \"a\", address = \"127.0.0.1:9\" },\n]\n";
    let e = parse(text).unwrap_err();
    assert_eq!(e.line(), Some(4), "{e}");
}

#[test]
fn bad_values_are_refused() {
    let server = |line: &str| {
        GOOD.replace(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:0\"\n{line}"),
        )
    };
    for (bad, needle) in [
        (GOOD.replace("127.0.0.1:9002", "nowhere"), "not host:port"),
        (
            GOOD.replace("priority-router.wasm", "../x.wasm"),
            "file name",
        ),
        (
            GOOD.replace("\"10m\"", "\"ten minutes\""),
            "invalid duration",
        ),
        (
            GOOD.replace("name = \"cheap\"", "name = \"fast\""),
            "two backends",
        ),
        (
            GOOD.replace("listen = \"127.0.0.1:0\"", "listen = \"localhost\""),
            "server.listen",
        ),
        (
            GOOD.replace(
                "listen = \"127.0.0.1:0\"",
                "listen = \"127.0.0.1:0\"\nworkers = 9999999999",
            ),
            "above 1024",
        ),
        (
            server("cpu_affinity = \"sometimes\""),
            "expected \"auto\", \"off\" or a list of CPU numbers",
        ),
        (server("cpu_affinity = []"), "write \"off\""),
        (
            server("cpu_affinity = [0, 4096]"),
            "CPU 4096 is above the highest, 1023",
        ),
        (server("cpu_affinity = 3"), "a list of CPU numbers"),
        (
            server("http1 = \"nginx\""),
            "test.toml:4: unknown variant `nginx`, expected `lean` or `hyper`",
        ),
        (
            GOOD.replace("connect = 250", "connect = \"99999999999999999999h\""),
            "longer than ten years",
        ),
        (GOOD.replace("connect = 250", "connect = \"10\""), "no unit"),
    ] {
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains(needle), "{e} lacks {needle}");
    }
}

/// A small deterministic generator (xorshift) for configs full of edge
/// values: no config, however odd, may panic the parser, the validation or
/// the table build; each is accepted or refused with a message.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const DURATIONS: &[&str] = &[
    "0",
    "\"10\"",
    "\"99999999999999999999h\"",
    "18446744073709551615",
    "\"18446744073709551615s\"",
    "\"1e400s\"",
    "-1",
    "\"-5s\"",
    "\"1.5s\"",
    "\"nan s\"",
    "\"inf\"",
    "\"5m\"",
    "\"\"",
    "1.5",
    "true",
    "[]",
    "{}",
    "\"87600h\"",
    "\"87601h\"",
    "\"1ms\"",
    "9223372036854775807",
];
const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "4294967296",
    "18446744073709551615",
    "1e308",
    "nan",
    "inf",
    "\"3\"",
    "65535",
    "9999999999",
    "0.5",
];
const STRINGS: &[&str] = &[
    "\"\"",
    "\"x\"",
    "\"\\u0000\"",
    "\"a\\nb\"",
    "\"💥\"",
    "\"/\"",
    "\"127.0.0.1:0\"",
    "\"[::1]:65536\"",
    "\"https://\"",
    "\"http://x:0\"",
    "\"https://h\"",
    "\"h:1\"",
    "\"round-robin.wasm\"",
    "\"../x.wasm\"",
    "\"redis://\"",
    "\"memory\"",
    "\"h2c\"",
    "\"auto\"",
    "\"x-api-key\"",
    "\"bad header\"",
];
const SIZES: &[&str] = &[
    "\"64KiB\"",
    "\"99999999999999999999MiB\"",
    "18446744073709551615",
    "\"-1\"",
    "\"1.5MiB\"",
    "0",
];

/// A value that suits `key`, so that about half of the configs are valid.
fn sane(key: &str) -> &'static str {
    match key {
        "workers"
        | "max_connections"
        | "max_fails"
        | "max_in_flight"
        | "weight"
        | "attempts"
        | "queue"
        | "budget_min_per_second"
        | "memory_mb" => "2",
        "status" => "503",
        "budget_ratio" => "0.2",
        "protocol" => "\"http1\"",
        "on_failure" => "\"fail-closed\"",
        "plugin" => "\"round-robin.wasm\"",
        "buffer_body" | "body_peek" => "\"64KiB\"",
        "pass_client_auth"
        | "strip_prefix"
        | "preserve_host"
        | "on_429"
        | "ca_only"
        | "insecure_skip_verify" => "false",
        "remove_headers" => "[\"x-a\"]",
        "address" => "\"127.0.0.1:11\"",
        "name" => "\"n\"",
        "listen" => "\"127.0.0.1:0\"",
        "server_name" => "\"localhost\"",
        "dns" => "\"localhost:80\"",
        _ => "\"5s\"",
    }
}

fn value_for(g: &mut Gen, key: &str) -> String {
    if g.chance(60) {
        sane(key).into()
    } else {
        value(g)
    }
}

fn value(g: &mut Gen) -> String {
    match g.next() % 5 {
        0 => g.pick(DURATIONS).into(),
        1 => g.pick(NUMBERS).into(),
        2 => g.pick(STRINGS).into(),
        3 => g.pick(SIZES).into(),
        _ => format!(
            "{{ {} = {} }}",
            g.pick(&["env", "file", "x", "dns", "every"]),
            g.pick(STRINGS)
        ),
    }
}

fn table(g: &mut Gen, keys: &[&str]) -> String {
    let n = 1 + g.next() % 4;
    (0..n)
        .map(|_| {
            let key = g.pick(keys);
            (key, value_for(g, key))
        })
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .map(|(k, v)| (k, format!("{k} = {v}")))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_values()
        .collect::<Vec<_>>()
        .join(", ")
}

fn generated(g: &mut Gen) -> String {
    let server = [
        "workers",
        "header_read_timeout",
        "body_read_timeout",
        "drain_timeout",
        "idle_timeout",
        "max_connections",
        "listen",
    ];
    let pool = [
        "max_fails",
        "fail_timeout",
        "max_in_flight",
        "protocol",
        "pass_client_auth",
        "remove_headers",
    ];
    let backend = ["weight", "address", "protocol", "name"];
    let route = ["strip_prefix", "preserve_host", "name"];
    let timeouts = ["connect", "first_byte", "idle", "total"];
    let retries = [
        "attempts",
        "buffer_body",
        "budget_ratio",
        "budget_min_per_second",
        "on_429",
    ];
    let limits = [
        "max_in_flight",
        "queue",
        "queue_timeout",
        "status",
        "retry_after",
    ];
    let router = ["plugin", "deadline", "memory_mb", "body_peek", "on_failure"];
    let mut text = String::from("[server]\nlisten = \"127.0.0.1:0\"\n");
    if g.chance(50) {
        let key = g.pick(&server);
        text.push_str(&format!("{key} = {}\n", value_for(g, key)));
    }
    text.push_str("\n[pools.p]\n");
    if g.chance(60) {
        let key = g.pick(&pool);
        text.push_str(&format!("{key} = {}\n", value_for(g, key)));
    }
    if g.chance(20) {
        text.push_str(&format!(
            "discover = {{ {} }}\n",
            table(g, &["dns", "every", "weight"])
        ));
    }
    if g.chance(20) {
        text.push_str(&format!(
            "tls = {{ {} }}\n",
            table(
                g,
                &["ca_file", "server_name", "insecure_skip_verify", "ca_only"]
            )
        ));
    }
    text.push_str(&format!(
        "backends = [{{ name = \"b\", address = \"127.0.0.1:9\" }}, {{ name = \"c\", address = \"127.0.0.1:10\"{} }}]\n",
        if g.chance(50) { format!(", {}", table(g, &backend)) } else { String::new() }
    ));
    text.push_str("\n[[routes]]\nname = \"r\"\npool = \"p\"\n");
    for (key, keys) in [
        ("timeouts", &timeouts[..]),
        ("retries", &retries[..]),
        ("limits", &limits[..]),
        ("router", &router[..]),
    ] {
        if g.chance(40) {
            text.push_str(&format!("{key} = {{ {} }}\n", table(g, keys)));
        }
    }
    if g.chance(30) {
        let key = g.pick(&route);
        text.push_str(&format!("{key} = {}\n", value_for(g, key)));
    }
    text
}

#[test]
fn generated_configs_are_accepted_or_refused_never_a_panic() {
    let runtime = crate::plugin::PluginRuntime::new(None).unwrap();
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..10_000 {
        let text = generated(&mut g);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let config = parse(&text)?;
            assert!(config.worker_count() <= 1024, "{text}");
            crate::build::route_table(&config, &runtime, &mut Default::default(), None)
                .map(|_| ())
                .map_err(|e| ConfigError::Invalid {
                    file: "test.toml".into(),
                    line: None,
                    message: e.to_string(),
                })
        }));
        match outcome {
            Ok(Ok(())) => accepted += 1,
            Ok(Err(e)) => {
                // More than the location: the error says what is wrong.
                let located = format!("test.toml:{}: ", e.line().unwrap_or(0));
                let said = e.to_string();
                let what = said
                    .strip_prefix(&located)
                    .or_else(|| said.strip_prefix("test.toml: "))
                    .unwrap_or(&said);
                assert!(
                    !what.trim().is_empty(),
                    "case {i}: an empty error for\n{text}"
                );
                refused += 1;
            }
            Err(_) => panic!("case {i} panicked:\n{text}"),
        }
    }
    eprintln!("{accepted} generated configs accepted, {refused} refused");
    // The generator must reach both sides, or it tests nothing.
    assert!(
        accepted > 100 && refused > 100,
        "{accepted} accepted, {refused} refused"
    );
}
