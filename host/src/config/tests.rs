use super::*;

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
    assert_eq!(e.line, Some(14), "{e}");
    assert!(
        e.to_string()
            .starts_with("test.toml:14: route `research` names pool `modls`"),
        "{e}"
    );
}

#[test]
fn syntax_errors_and_unknown_keys_name_the_line() {
    let e = parse("[server]\nlisten = \n").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    let e = parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    assert!(e.message.contains("lisen"), "{e}");
}

#[test]
fn bad_values_are_refused() {
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
    ] {
        let e = parse(&bad).unwrap_err().to_string();
        assert!(e.contains(needle), "{e} lacks {needle}");
    }
}
