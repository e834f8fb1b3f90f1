//! The module map of docs/architecture.md, held true: which host modules
//! may use which, no import circle, and files small enough to have one
//! concern.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Arrows that must not exist (`from`, `to`): live state never imports a
/// pool or the plugin runtime, the runtime never imports the data path,
/// the data path never imports the admin API, config is pure data.
const FORBIDDEN: &[(&str, &str)] = &[
    ("balance", "plugin"),
    ("balance", "pool"),
    ("balance", "proxy"),
    ("plugin", "balance"),
    ("plugin", "pool"),
    ("plugin", "proxy"),
    ("plugin", "route"),
    ("proxy", "admin"),
    ("proxy", "reload"),
    ("route", "build"),
    ("route", "proxy"),
    ("pool", "route"),
    ("pool", "proxy"),
];

/// Modules config may use: none of the others.
const CONFIG_MAY_USE: &[&str] = &["config"];

/// Each host module's uses of other host modules, from `crate::` paths
/// outside test code.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut dirs = vec![src.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || path.ends_with("tests.rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).expect("under src");
            let module = rel
                .components()
                .next()
                .and_then(|c| c.as_os_str().to_str())
                .unwrap_or_default()
                .trim_end_matches(".rs")
                .to_string();
            let text = std::fs::read_to_string(&path).expect("read");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            let uses = graph.entry(module.clone()).or_default();
            for part in code.split("crate::").skip(1) {
                let name: String = part
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if !name.is_empty() && name != module {
                    uses.insert(name);
                }
            }
        }
    }
    graph
}

#[test]
fn forbidden_arrows_do_not_exist() {
    let graph = module_graph();
    for (from, to) in FORBIDDEN {
        assert!(
            !graph.get(*from).is_some_and(|uses| uses.contains(*to)),
            "`{from}` uses `{to}`, which docs/architecture.md forbids"
        );
    }
    let config = graph.get("config").cloned().unwrap_or_default();
    for used in &config {
        assert!(
            CONFIG_MAY_USE.contains(&used.as_str()),
            "config uses `{used}`; config is pure data and validation"
        );
    }
}

#[test]
fn there_is_no_import_circle() {
    let graph = module_graph();
    // Depth-first search for a back edge.
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) {
        if done.contains(node) {
            return;
        }
        if let Some(at) = path.iter().position(|n| *n == node) {
            panic!("import circle: {} -> {node}", path[at..].join(" -> "));
        }
        path.push(node);
        for next in graph.get(node).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(node);
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        visit(node, &graph, &mut Vec::new(), &mut done);
    }
    assert!(graph.len() >= 15, "{graph:?}");
}
