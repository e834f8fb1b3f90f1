//! Token accounting from OpenAI-style `usage` objects, read from response
//! bodies as they stream past: each chunk is searched for `"usage"` and the
//! token counts after it are parsed in place, so nothing is buffered and a
//! stream's final usage chunk is caught like a whole JSON body's.

use memchr::memmem;
use std::sync::LazyLock;

/// Bytes after `"usage"` searched for the counts.
const WINDOW: usize = 512;

static USAGE: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"usage\""));

/// Token counts a response reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
}

/// Looks for usage in a response's body chunks; the last one found wins
/// (streams send `"usage": null` in early chunks, the counts at the end).
#[derive(Debug, Default)]
pub struct UsageScan {
    pub found: Option<Usage>,
}

impl UsageScan {
    /// Scans one body chunk. A `usage` object split across two chunks is
    /// missed; providers send it in one piece.
    pub fn scan(&mut self, chunk: &[u8]) {
        for at in USAGE.find_iter(chunk) {
            let rest = &chunk[at + 7..];
            let rest = &rest[..rest.len().min(WINDOW)];
            let Some(object) = object_after_colon(rest) else {
                continue;
            };
            let prompt = number_of(object, b"\"prompt_tokens\"")
                .or_else(|| number_of(object, b"\"input_tokens\""));
            let completion = number_of(object, b"\"completion_tokens\"")
                .or_else(|| number_of(object, b"\"output_tokens\""));
            if let (Some(prompt), Some(completion)) = (prompt, completion) {
                self.found = Some(Usage { prompt, completion });
            }
        }
    }
}

/// The `{...}` after `: ` at the start of `text` (up to its first `}`,
/// enough for usage objects, whose nested details come after the counts).
fn object_after_colon(text: &[u8]) -> Option<&[u8]> {
    let text = trim_start(text).strip_prefix(b":")?;
    let text = trim_start(text);
    if text.first() != Some(&b'{') {
        return None;
    }
    Some(&text[..memchr::memchr(b'}', text).map_or(text.len(), |end| end + 1)])
}

/// The unsigned number after `key:` in `object`.
fn number_of(object: &[u8], key: &[u8]) -> Option<u64> {
    let at = memmem::find(object, key)?;
    let rest = trim_start(&object[at + key.len()..]).strip_prefix(b":")?;
    let rest = trim_start(rest);
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

fn trim_start(text: &[u8]) -> &[u8] {
    let skip = text.iter().take_while(|b| b.is_ascii_whitespace()).count();
    &text[skip..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_usage_in_json_and_the_last_stream_chunk() {
        let mut s = UsageScan::default();
        s.scan(br#"{"id":"x","choices":[],"usage": {"prompt_tokens": 12, "completion_tokens":6,"total_tokens":18}}"#);
        assert_eq!(
            s.found,
            Some(Usage {
                prompt: 12,
                completion: 6
            })
        );

        let mut s = UsageScan::default();
        s.scan(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n");
        assert_eq!(s.found, None);
        s.scan(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":30,\"completion_tokens\":7,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\ndata: [DONE]\n\n");
        assert_eq!(
            s.found,
            Some(Usage {
                prompt: 30,
                completion: 7
            })
        );
    }

    #[test]
    fn reads_input_and_output_tokens_too() {
        let mut s = UsageScan::default();
        s.scan(br#"{"usage":{"input_tokens":5,"output_tokens":9}}"#);
        assert_eq!(
            s.found,
            Some(Usage {
                prompt: 5,
                completion: 9
            })
        );
        let mut s = UsageScan::default();
        s.scan(br#"{"text":"the word \"usage\" in content","usage":"#);
        assert_eq!(s.found, None);
    }
}
