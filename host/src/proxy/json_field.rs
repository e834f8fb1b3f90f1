//! Reads one top-level field of a JSON object from a prefix of its text,
//! for routers that route on the request body (`model`, `user`).
//!
//! It reads the field as the backend will: keys are unescaped
//! (`"mod\u0065l"` is `model`), and of duplicate keys the last one counts,
//! as in serde_json, Python's `json` and JavaScript. So a value is only
//! known once the whole object has been read: when the prefix ends before
//! the object does, the answer is `None`, never a guess a later duplicate
//! could contradict.

/// What the start of a body says about one top-level field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// A string unescaped, any other value as its JSON text.
    Value(String),
    /// The object ended without the field, or `text` is not an object.
    Absent,
    /// `text` ended before the object did: only the rest of the body could
    /// tell (a later duplicate key would win).
    Cut,
}

/// The top-level field `name` of the JSON object that `text` begins.
pub fn find_field(text: &[u8], name: &str) -> Field {
    let mut c = Cursor { text, at: 0 };
    match scan(&mut c, name) {
        Some(Some(value)) => Field::Value(value),
        Some(None) => Field::Absent,
        None if c.at >= text.len() => Field::Cut,
        None => Field::Absent,
    }
}

/// The value of the top-level field `name` in the JSON object that `text`
/// begins; `None` when `text` is not an object, lacks the field, or ends
/// before the object does.
#[cfg(test)]
pub fn top_level_field(text: &[u8], name: &str) -> Option<String> {
    match find_field(text, name) {
        Field::Value(v) => Some(v),
        Field::Absent | Field::Cut => None,
    }
}

/// Where the value of the first top-level key among `names` lies in the
/// JSON object `text` begins: its start, and its end when `text` holds all
/// of it. Keys are unescaped; unlike [`find_field`] the first match counts,
/// for hints (such as prompt-prefix hashes) that need only the value's
/// beginning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    At {
        start: usize,
        end: Option<usize>,
    },
    /// The object ended without such a key, or `text` is not an object.
    Absent,
    /// `text` ended before such a key's value started.
    Cut,
}

/// The [`Span`] of the first of `names` in the object `text` begins.
pub fn first_value(text: &[u8], names: &[&str]) -> Span {
    let mut c = Cursor { text, at: 0 };
    let found = (|| {
        c.space();
        c.eat(b'{')?;
        c.space();
        if c.peek()? == b'}' {
            return Some(None);
        }
        loop {
            c.space();
            let key = c.string()?;
            c.space();
            c.eat(b':')?;
            c.space();
            c.peek()?;
            if names.contains(&key.as_str()) {
                return Some(Some(c.at));
            }
            c.skip_value()?;
            c.space();
            match c.next()? {
                b',' => continue,
                b'}' => return Some(None),
                _ => return None,
            }
        }
    })();
    match found {
        Some(Some(start)) => {
            let end = c.skip_value().map(|()| c.at);
            // A number or literal running into the end may be cut.
            let end = end.filter(|&e| e < text.len() || matches!(text[start], b'"' | b'[' | b'{'));
            Span::At { start, end }
        }
        Some(None) => Span::Absent,
        None if c.at >= text.len() => Span::Cut,
        None => Span::Absent,
    }
}

/// Reads the object: `Some(found)` once it closed, `None` where it broke
/// off or is malformed (the cursor shows which).
fn scan(c: &mut Cursor<'_>, name: &str) -> Option<Option<String>> {
    c.space();
    c.eat(b'{')?;
    let mut found = None;
    c.space();
    if c.peek()? == b'}' {
        return Some(None);
    }
    loop {
        c.space();
        let key = c.string()?;
        c.space();
        c.eat(b':')?;
        c.space();
        if key == name {
            found = Some(c.value_text()?);
        } else {
            c.skip_value()?;
        }
        c.space();
        match c.next()? {
            b',' => continue,
            b'}' => return Some(found),
            _ => return None,
        }
    }
}

struct Cursor<'a> {
    text: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            self.at += 1;
        }
    }

    /// A string at the cursor, unescaped.
    fn string(&mut self) -> Option<String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            match self.next()? {
                b'"' => return String::from_utf8(out).ok(),
                b'\\' => match self.next()? {
                    b'"' => out.push(b'"'),
                    b'\\' => out.push(b'\\'),
                    b'/' => out.push(b'/'),
                    b'b' => out.push(0x08),
                    b'f' => out.push(0x0c),
                    b'n' => out.push(b'\n'),
                    b'r' => out.push(b'\r'),
                    b't' => out.push(b'\t'),
                    b'u' => {
                        let mut code = self.hex4()?;
                        if (0xD800..0xDC00).contains(&code) {
                            self.eat(b'\\')?;
                            self.eat(b'u')?;
                            let low = self.hex4()?;
                            if !(0xDC00..0xE000).contains(&low) {
                                return None;
                            }
                            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                        }
                        let ch = char::from_u32(code)?;
                        out.extend_from_slice(ch.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                    _ => return None,
                },
                b => out.push(b),
            }
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.text.get(self.at..self.at + 4)?;
        self.at += 4;
        u32::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
    }

    /// The value at the cursor: a string unescaped, anything else as text.
    fn value_text(&mut self) -> Option<String> {
        if self.peek()? == b'"' {
            return self.string();
        }
        let start = self.at;
        self.skip_value()?;
        // A number or literal running into the end of the prefix may be cut.
        if self.at >= self.text.len() {
            return None;
        }
        String::from_utf8(self.text[start..self.at].to_vec()).ok()
    }

    /// Moves past the value at the cursor, whatever it holds.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.at += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.at += 1;
                }
            }
            _ => {
                let start = self.at;
                while let Some(b) = self.peek() {
                    if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n') {
                        break;
                    }
                    self.at += 1;
                }
                (self.at > start).then_some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::top_level_field as field;

    #[test]
    fn finds_top_level_fields_only() {
        let body = br#"{"messages":[{"role":"user","content":"{\"model\": \"x\"}"}],
            "options": {"model": "nested"}, "model" : "gpt-4o-mini", "n": 2, "stream": true}"#;
        assert_eq!(field(body, "model").as_deref(), Some("gpt-4o-mini"));
        assert_eq!(field(body, "n").as_deref(), Some("2"));
        assert_eq!(field(body, "stream").as_deref(), Some("true"));
        assert_eq!(
            field(body, "options").as_deref(),
            Some(r#"{"model": "nested"}"#)
        );
        assert_eq!(field(body, "missing"), None);
    }

    #[test]
    fn unescapes_strings() {
        let body = br#"{"model":"a\"b\\c\u00e9\ud83d\ude00"}"#;
        assert_eq!(field(body, "model").as_deref(), Some("a\"b\\cé😀"));
    }

    #[test]
    fn a_cut_prefix_never_guesses() {
        let body = br#"{"messages":[{"content":"long"}],"model":"gpt-4o","max_tokens":128}"#;
        for cut in 0..body.len() {
            let prefix = &body[..cut];
            let model = field(prefix, "model");
            assert!(
                model.is_none() || model.as_deref() == Some("gpt-4o"),
                "cut {cut}"
            );
            let max = field(prefix, "max_tokens");
            assert!(max.is_none(), "cut {cut}: a number at the end may be cut");
        }
        assert_eq!(field(body, "max_tokens").as_deref(), Some("128"));
    }

    #[test]
    fn the_last_duplicate_wins_and_escaped_keys_count() {
        assert_eq!(
            field(br#"{"model":"a","model":"b"}"#, "model").as_deref(),
            Some("b")
        );
        assert_eq!(
            field(br#"{"model":"a","mod\u0065l":"b"}"#, "model").as_deref(),
            Some("b")
        );
        // Cut before the object ends: a later duplicate may follow.
        assert_eq!(field(br#"{"model":"a","messages":[]"#, "model"), None);
        // serde_json reads the same.
        let parsed: serde_json::Value =
            serde_json::from_slice(br#"{"model":"a","mod\u0065l":"b"}"#).unwrap();
        assert_eq!(parsed["model"], "b");
    }

    #[test]
    fn a_cut_object_is_told_from_a_missing_field() {
        use super::{Field, find_field};
        assert_eq!(
            find_field(br#"{"model":"a","messages":[]"#, "model"),
            Field::Cut
        );
        assert_eq!(
            find_field(br#"{"messages":[{"content":"lo"#, "model"),
            Field::Cut
        );
        assert_eq!(find_field(br#"{"messages":[]}"#, "model"), Field::Absent);
        assert_eq!(find_field(b"[1,2]", "model"), Field::Absent);
        assert_eq!(find_field(br#"{"model" x}"#, "model"), Field::Absent);
        assert_eq!(
            find_field(br#"{"model":"b"}"#, "model"),
            Field::Value("b".into())
        );
    }

    #[test]
    fn the_first_of_several_keys_is_located() {
        use super::{Span, first_value};
        let names = ["messages", "prompt"];
        let body = br#"{"model":"m", "mess\u0061ges" : [{"c":"x"}], "prompt":"p"}"#;
        let start = body.iter().position(|&b| b == b'[').unwrap();
        let end = body.iter().position(|&b| b == b']').unwrap() + 1;
        assert_eq!(
            first_value(body, &names),
            Span::At {
                start,
                end: Some(end)
            }
        );
        // Cut inside the value: its start is known, its end is not.
        assert_eq!(
            first_value(&body[..start + 3], &names),
            Span::At { start, end: None }
        );
        // Cut before it starts, or no such key at all.
        assert_eq!(first_value(&body[..start - 2], &names), Span::Cut);
        assert_eq!(first_value(br#"{"model":"m"}"#, &names), Span::Absent);
        assert_eq!(first_value(b"[1]", &names), Span::Absent);
        assert_eq!(
            first_value(br#"{"prompt":12"#, &names),
            Span::At {
                start: 10,
                end: None
            }
        );
    }

    #[test]
    fn not_an_object() {
        assert_eq!(field(b"[1,2]", "model"), None);
        assert_eq!(field(b"model=x", "model"), None);
        assert_eq!(field(b"", "model"), None);
    }
}
