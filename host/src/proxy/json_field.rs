//! Reads one top-level field of a JSON object from a prefix of its text,
//! for routers that route on the request body (`model`, `user`): the body
//! may be cut anywhere, so the reader never needs the whole document and
//! answers `None` whenever the prefix ends before the field's value does.

/// The value of the top-level field `name` in the JSON object that `text`
/// begins: a string unescaped, any other value as its JSON text. `None` when
/// `text` is not an object, lacks the field, or ends before its value does.
pub fn top_level_field(text: &[u8], name: &str) -> Option<String> {
    let mut c = Cursor { text, at: 0 };
    c.space();
    c.eat(b'{')?;
    loop {
        c.space();
        if c.peek()? == b'}' {
            return None;
        }
        let key = c.string()?;
        c.space();
        c.eat(b':')?;
        c.space();
        if key == name {
            return c.value_text();
        }
        c.skip_value()?;
        c.space();
        match c.next()? {
            b',' => continue,
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
    fn not_an_object() {
        assert_eq!(field(b"[1,2]", "model"), None);
        assert_eq!(field(b"model=x", "model"), None);
        assert_eq!(field(b"", "model"), None);
    }
}
