//! The `prompt-prefix` attribute: hashes of the beginning of a request's
//! prompt, one per whole block, each covering everything before it, so a
//! router can send a conversation to the model server whose prefix cache
//! holds its earlier turns. Computed by the host, natively, from the bytes
//! it read of the body (the value's start must lie within them; its end
//! need not).

use super::json_field::{Span, first_value};
use std::fmt::Write;

/// Keys whose value is the prompt: chat, then completions.
const PROMPT_KEYS: [&str; 2] = ["messages", "prompt"];
/// Hashes listed at most.
pub const MAX_HASHES: usize = 256;

/// What the body's first bytes say about its prompt's prefix hashes.
#[derive(Debug, PartialEq, Eq)]
pub enum Prefix {
    /// Comma-separated 16-digit hex hashes.
    Hashes(String),
    Absent,
    NotSeen,
}

/// The prefix hashes of the prompt in `body` (the first bytes of a JSON
/// body; `whole` when they are all of it), cut into `block`-byte blocks up
/// to `max_bytes`.
pub fn prefix_hashes(body: &[u8], whole: bool, block: usize, max_bytes: usize) -> Prefix {
    let (start, end) = match first_value(body, &PROMPT_KEYS) {
        Span::At { start, end } => (start, end),
        Span::Absent => return Prefix::Absent,
        Span::Cut if whole => return Prefix::Absent,
        Span::Cut => return Prefix::NotSeen,
    };
    let known_end = end.is_some() || whole;
    let prompt = &body[start..end.unwrap_or(body.len())];
    let prompt = &prompt[..prompt.len().min(max_bytes)];
    let blocks = (prompt.len() / block).min(MAX_HASHES);
    let mut out = String::with_capacity(17 * blocks.max(1));
    let mut hasher = PrefixHasher::default();
    if blocks == 0 {
        // Shorter than a block: its whole text, when that is all of it.
        if !known_end {
            return Prefix::NotSeen;
        }
        hasher.write(prompt);
        push_hex(&mut out, hasher.finish());
        return Prefix::Hashes(out);
    }
    for chunk in prompt.chunks_exact(block).take(blocks) {
        hasher.write(chunk);
        if !out.is_empty() {
            out.push(',');
        }
        push_hex(&mut out, hasher.finish());
    }
    Prefix::Hashes(out)
}

fn push_hex(out: &mut String, h: u64) {
    let _ = write!(out, "{h:016x}");
}

/// A running hash of a byte string, read in whole blocks (multiples of 8
/// bytes but for the last write), eight bytes per step: fast enough to
/// hash a few KiB per request, and fixed, so every replica agrees.
struct PrefixHasher {
    state: u64,
    len: u64,
}

impl Default for PrefixHasher {
    fn default() -> Self {
        PrefixHasher {
            state: 0x243F_6A88_85A3_08D3,
            len: 0,
        }
    }
}

impl PrefixHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let w = u64::from_le_bytes(w.try_into().unwrap_or_default());
            self.step(w);
        }
        let tail = words.remainder();
        if !tail.is_empty() {
            let mut last = [0u8; 8];
            last[..tail.len()].copy_from_slice(tail);
            self.step(u64::from_le_bytes(last));
        }
        self.len += bytes.len() as u64;
    }

    fn step(&mut self, w: u64) {
        self.state = (self.state ^ w)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(31);
    }

    /// The hash of everything written so far (splitmix64's finaliser over
    /// the state and the length).
    fn finish(&self) -> u64 {
        let mut z = self.state ^ self.len.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(turns: &[&str], tail: &str) -> Vec<u8> {
        let messages: Vec<String> = turns
            .iter()
            .map(|t| format!(r#"{{"role":"user","content":"{t}"}}"#))
            .collect();
        format!(
            r#"{{"model":"m","messages":[{}]{tail}}}"#,
            messages.join(",")
        )
        .into_bytes()
    }

    fn hashes(p: Prefix) -> Vec<String> {
        match p {
            Prefix::Hashes(h) => h.split(',').map(String::from).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_grown_conversation_shares_its_earlier_blocks() {
        let system = "You are a planner. ".repeat(20);
        let one = chat(&[&system, "first question"], r#","stream":true"#);
        let two = chat(&[&system, "first question", "an answer", "second"], "");
        let a = hashes(prefix_hashes(&one, true, 64, 8192));
        let b = hashes(prefix_hashes(&two, true, 64, 8192));
        assert!(a.len() >= 6 && b.len() > a.len(), "{} {}", a.len(), b.len());
        // Every whole block of the shorter prompt's messages is shared,
        // whatever follows the array (the last block, partial, is left out).
        assert_eq!(a[..], b[..a.len()]);
        assert!(a.iter().all(|h| h.len() == 16));
        // Another conversation differs from its first block on.
        let other = chat(
            &["Different system prompt entirely, and long enough.", "q"],
            "",
        );
        let c = hashes(prefix_hashes(&other, true, 32, 8192));
        assert_ne!(c[0], hashes(prefix_hashes(&one, true, 32, 8192))[0]);
    }

    #[test]
    fn only_the_beginning_must_be_read() {
        let body = chat(&[&"x".repeat(5000)], "");
        let all = hashes(prefix_hashes(&body, true, 256, 2048));
        assert_eq!(all.len(), 8);
        // The body cut at 1 KiB: the hashes it holds are the same.
        let cut = hashes(prefix_hashes(&body[..1024], false, 256, 2048));
        assert_eq!(cut[..], all[..cut.len()]);
        assert_eq!(cut.len(), (1024 - 24) / 256);
        // Cut before the prompt starts, or before its first block ends.
        assert_eq!(
            prefix_hashes(&body[..20], false, 256, 2048),
            Prefix::NotSeen
        );
        assert_eq!(
            prefix_hashes(&body[..100], false, 256, 2048),
            Prefix::NotSeen
        );
    }

    #[test]
    fn short_prompts_absent_prompts_and_limits() {
        let short = br#"{"prompt":"hi"}"#;
        let h = hashes(prefix_hashes(short, true, 64, 1024));
        assert_eq!(h.len(), 1);
        assert_ne!(
            h,
            hashes(prefix_hashes(br#"{"prompt":"ho"}"#, true, 64, 1024))
        );
        assert_eq!(
            prefix_hashes(br#"{"model":"m"}"#, true, 64, 1024),
            Prefix::Absent
        );
        assert_eq!(prefix_hashes(b"not json", true, 64, 1024), Prefix::Absent);
        let long = chat(&[&"y".repeat(100_000)], "");
        assert_eq!(
            hashes(prefix_hashes(&long, true, 16, 1 << 20)).len(),
            MAX_HASHES
        );
        // Fixed values: a replica or a later build hashes the same.
        assert_eq!(
            hashes(prefix_hashes(
                br#"{"prompt":"0123456789abcdef"}"#,
                false,
                16,
                64
            )),
            ["84cc7c5b3d0f750b"]
        );
    }
}
