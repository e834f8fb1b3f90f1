//! Reading samples out of a Prometheus text exposition (a `/metrics`
//! page, format 0.0.4, which OpenMetrics pages also parse as), without
//! allocating: a model server's queue depth and KV-cache use, for a health
//! check that probes `/metrics`.
//!
//! ```
//! use switchyard_sdk::prometheus::{self, Fold};
//! let page = b"# TYPE vllm:num_requests_waiting gauge\n\
//!     vllm:num_requests_waiting{model_name=\"llama\"} 7.0\n\
//!     vllm:num_requests_waiting{model_name=\"qwen\"} 2.0\n";
//! assert_eq!(prometheus::value(page, "vllm:num_requests_waiting", Fold::Sum), Some(9.0));
//! ```

/// One sample line: `name{labels} value [timestamp]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample<'a> {
    pub name: &'a str,
    /// What stands between the braces, unparsed (`""` without labels).
    pub labels: &'a str,
    pub value: f64,
}

impl<'a> Sample<'a> {
    /// The value of label `key`, unescaped only of `\"`-free text: label
    /// values with escapes are returned as written.
    pub fn label(&self, key: &str) -> Option<&'a str> {
        let mut rest = self.labels;
        loop {
            rest = rest.trim_start_matches([',', ' ']);
            let (k, after) = rest.split_once('=')?;
            let after = after.strip_prefix('"')?;
            let end = closing_quote(after)?;
            if k.trim() == key {
                return Some(&after[..end]);
            }
            rest = &after[end + 1..];
        }
    }
}

/// Every sample of the page, in order; comment, blank and malformed lines
/// are skipped.
pub fn samples(page: &[u8]) -> impl Iterator<Item = Sample<'_>> {
    page.split(|&b| b == b'\n')
        .filter_map(|line| core::str::from_utf8(line).ok())
        .filter_map(parse_line)
}

/// How several samples of one metric (one per label set) become one value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fold {
    /// Added up: requests waiting across models.
    Sum,
    /// The largest: the fullest KV cache.
    Max,
}

/// The value of metric `name` on the page, its label sets folded; `None`
/// when the page has no sample of it. NaN samples are skipped.
pub fn value(page: &[u8], name: &str, fold: Fold) -> Option<f64> {
    let mut found: Option<f64> = None;
    for s in samples(page).filter(|s| s.name == name && !s.value.is_nan()) {
        found = Some(match (found, fold) {
            (None, _) => s.value,
            (Some(v), Fold::Sum) => v + s.value,
            (Some(v), Fold::Max) => v.max(s.value),
        });
    }
    found
}

/// The value of the first of `names` the page has: servers (and their
/// versions) name one quantity differently.
pub fn first_of(page: &[u8], names: &[&str], fold: Fold) -> Option<f64> {
    names.iter().find_map(|n| value(page, n, fold))
}

fn parse_line(line: &str) -> Option<Sample<'_>> {
    let line = line.trim_end_matches('\r').trim_start();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
    {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = "";
    if let Some(inner) = rest.strip_prefix('{') {
        let end = labels_end(inner)?;
        labels = &inner[..end];
        rest = &inner[end + 1..];
    }
    let value = rest.split_whitespace().next()?;
    Some(Sample {
        name,
        labels,
        value: parse_value(value)?,
    })
}

/// Where the label set's closing brace is: braces inside quoted values do
/// not count.
fn labels_end(inner: &str) -> Option<usize> {
    let bytes = inner.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i += 1 + closing_quote(&inner[i + 1..])?,
            b'}' => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// Index of the quote that closes a label value starting at `s[0]`.
fn closing_quote(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        t => t.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vLLM 0.6-style page, as its `/metrics` documents it.
    const VLLM: &[u8] = b"# HELP vllm:num_requests_running Number of requests currently running on GPU.\n\
# TYPE vllm:num_requests_running gauge\n\
vllm:num_requests_running{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 12.0\n\
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n\
# TYPE vllm:num_requests_waiting gauge\n\
vllm:num_requests_waiting{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 3.0\n\
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.\n\
# TYPE vllm:gpu_cache_usage_perc gauge\n\
vllm:gpu_cache_usage_perc{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.4231\n\
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.\n\
# TYPE vllm:time_to_first_token_seconds histogram\n\
vllm:time_to_first_token_seconds_bucket{le=\"0.001\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 0.0\n\
vllm:time_to_first_token_seconds_bucket{le=\"+Inf\",model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 1532.0\n\
vllm:time_to_first_token_seconds_sum{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 211.5\n\
vllm:time_to_first_token_seconds_count{model_name=\"meta-llama/Llama-3.1-8B-Instruct\"} 1532.0\n";

    /// An SGLang-style page: other names, a timestamp, CRLF line ends.
    const SGLANG: &[u8] = b"# TYPE sglang:num_queue_reqs gauge\r\n\
sglang:num_queue_reqs{model_name=\"qwen\",name=\"a}b\\\"c\"} 5 1733150000000\r\n\
sglang:num_running_reqs{model_name=\"qwen\"} 40\r\n\
sglang:token_usage{model_name=\"qwen\"} 0.97\r\n";

    #[test]
    fn reads_a_vllm_page() {
        assert_eq!(
            value(VLLM, "vllm:num_requests_waiting", Fold::Sum),
            Some(3.0)
        );
        assert_eq!(
            value(VLLM, "vllm:num_requests_running", Fold::Sum),
            Some(12.0)
        );
        assert_eq!(
            value(VLLM, "vllm:gpu_cache_usage_perc", Fold::Max),
            Some(0.4231)
        );
        assert_eq!(value(VLLM, "vllm:kv_cache_usage_perc", Fold::Max), None);
        let inf = samples(VLLM)
            .find(|s| s.label("le") == Some("+Inf"))
            .expect("+Inf bucket");
        assert_eq!(inf.value, 1532.0);
        assert_eq!(
            inf.label("model_name"),
            Some("meta-llama/Llama-3.1-8B-Instruct")
        );
        assert_eq!(samples(VLLM).count(), 7);
    }

    #[test]
    fn reads_other_names_timestamps_crlf_and_quoted_braces() {
        assert_eq!(
            first_of(
                SGLANG,
                &["vllm:num_requests_waiting", "sglang:num_queue_reqs"],
                Fold::Sum
            ),
            Some(5.0)
        );
        let s = samples(SGLANG).next().expect("a sample");
        assert_eq!(s.label("name"), Some("a}b\\\"c"));
        assert_eq!(value(SGLANG, "sglang:token_usage", Fold::Max), Some(0.97));
    }

    #[test]
    fn folds_label_sets_and_skips_junk() {
        let page = b"q{m=\"a\"} 2\nq{m=\"b\"} 5\nq{m=\"c\"} NaN\n\
            garbage line here\n{no_name=\"x\"} 1\nq{m=\"unterminated} 9\nq 1e1\n";
        assert_eq!(value(page, "q", Fold::Sum), Some(17.0));
        assert_eq!(value(page, "q", Fold::Max), Some(10.0));
        assert_eq!(value(b"", "q", Fold::Sum), None);
        assert_eq!(value(b"x +Inf\n", "x", Fold::Max), Some(f64::INFINITY));
    }
}
