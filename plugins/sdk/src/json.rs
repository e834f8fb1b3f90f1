//! Reading numbers out of small JSON documents, such as a backend's load
//! report `{"cpu":0.93,"mem":0.41,"queue":12}`, without a JSON library.
//!
//! Only top-level members are looked at; nested objects and arrays are
//! skipped whole, and strings may contain escaped quotes.

/// The number under top-level `key` of the JSON object `text`, if any.
pub fn number(text: &[u8], key: &str) -> Option<f64> {
    let mut p = Parser { text, at: 0 };
    p.skip_ws();
    p.eat(b'{')?;
    loop {
        p.skip_ws();
        if p.eat(b'}').is_some() {
            return None;
        }
        let name = p.string()?;
        p.skip_ws();
        p.eat(b':')?;
        p.skip_ws();
        if name == key.as_bytes() {
            return p.number();
        }
        p.skip_value()?;
        p.skip_ws();
        p.eat(b',')?;
    }
}

struct Parser<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// A string's raw bytes (escapes left as they are).
    fn string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.at;
        loop {
            match self.peek()? {
                b'\\' => self.at += 2,
                b'"' => {
                    let s = &self.text[start..self.at];
                    self.at += 1;
                    return Some(s);
                }
                _ => self.at += 1,
            }
        }
    }

    fn number(&mut self) -> Option<f64> {
        let start = self.at;
        while matches!(
            self.peek(),
            Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
        ) {
            self.at += 1;
        }
        core::str::from_utf8(&self.text[start..self.at])
            .ok()?
            .parse()
            .ok()
    }

    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
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
                while !matches!(self.peek(), None | Some(b',' | b'}')) {
                    self.at += 1;
                }
                Some(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn reads_top_level_numbers() {
        let report = br#" { "name": "a \"q\"", "nested": {"cpu": 9, "l": [1,{"x":2}]}, "cpu":0.93, "mem" : 41e-2, "queue":12, "ok": true }"#;
        assert_eq!(number(report, "cpu"), Some(0.93));
        assert_eq!(number(report, "mem"), Some(0.41));
        assert_eq!(number(report, "queue"), Some(12.0));
        assert_eq!(number(report, "ok"), None);
        assert_eq!(number(report, "gpu"), None);
        assert_eq!(number(b"not json", "cpu"), None);
        assert_eq!(number(b"{\"cpu\":", "cpu"), None);
    }
}
