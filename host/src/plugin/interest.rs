//! The request attributes a router declares it needs, as the host reads
//! them: a header, a JSON body field, the prompt's prefix hashes.

/// A request attribute the plugin declared it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interest {
    Header(http::HeaderName),
    Path,
    Query,
    Cookie(String),
    Host,
    /// A top-level field of the JSON body, read from its first bytes.
    JsonBody(String),
    /// The body's size in bytes.
    BodySize,
    /// Block hashes of the prompt's beginning: bytes per block, bytes at most.
    PromptPrefix {
        block: u32,
        max_bytes: u32,
    },
}

impl Interest {
    /// Parses the name [`Interest::name`] gives: `header:NAME`,
    /// `cookie:NAME`, `json-body:FIELD`, `path`, `query`, `host`,
    /// `body-size`, `prompt-prefix:BLOCK:MAX_BYTES`.
    pub fn parse(text: &str) -> Option<Interest> {
        Some(match text.split_once(':') {
            Some(("header", h)) => {
                Interest::Header(http::HeaderName::from_bytes(h.as_bytes()).ok()?)
            }
            Some(("cookie", c)) if !c.is_empty() => Interest::Cookie(c.to_string()),
            Some(("json-body", f)) if !f.is_empty() => Interest::JsonBody(f.to_string()),
            Some(("prompt-prefix", sizes)) => {
                let (block, max) = sizes.split_once(':')?;
                let (block, max_bytes) = (block.parse().ok()?, max.parse().ok()?);
                prefix_blocks_problem(block, max_bytes)
                    .is_none()
                    .then_some(())?;
                Interest::PromptPrefix { block, max_bytes }
            }
            None if text == "path" => Interest::Path,
            None if text == "query" => Interest::Query,
            None if text == "host" => Interest::Host,
            None if text == "body-size" => Interest::BodySize,
            _ => return None,
        })
    }

    /// A stable name, as traces and `/shadow` show it.
    pub fn name(&self) -> String {
        match self {
            Interest::Header(h) => format!("header:{h}"),
            Interest::Cookie(c) => format!("cookie:{c}"),
            Interest::JsonBody(f) => format!("json-body:{f}"),
            Interest::Path => "path".into(),
            Interest::Query => "query".into(),
            Interest::Host => "host".into(),
            Interest::BodySize => "body-size".into(),
            Interest::PromptPrefix { block, max_bytes } => {
                format!("prompt-prefix:{block}:{max_bytes}")
            }
        }
    }

    /// Whether the attribute is read from the request body, which is then
    /// read (up to `body_peek` bytes) before the decision.
    pub fn reads_body(&self) -> bool {
        matches!(self, Interest::JsonBody(_) | Interest::PromptPrefix { .. })
    }
}

/// What is wrong with `prompt-prefix` sizes, if anything: a block of
/// 16..=65536 bytes, a multiple of 8, and `block..=1 MiB` bytes hashed.
pub fn prefix_blocks_problem(block: u32, max_bytes: u32) -> Option<String> {
    let ok = (16..=65536).contains(&block)
        && block.is_multiple_of(8)
        && (block..=1 << 20).contains(&max_bytes);
    (!ok).then(|| {
        format!(
            "prompt-prefix block {block} and max-bytes {max_bytes}: need a block of 16 to 65536 bytes, a multiple of 8, and block <= max-bytes <= 1048576"
        )
    })
}
