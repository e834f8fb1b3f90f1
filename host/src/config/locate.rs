//! Where a value stands in the config text: the line of a key path, found
//! in the document's own parse tree, so of two equal values the right one
//! is named (searching the text finds the first).

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One step of a key path: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
}

/// A key path, such as `pools.models.backends[1].address`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Step>);

impl KeyPath {
    /// The path of dotted `keys`, such as `"server.listen"`.
    pub fn of(keys: &str) -> KeyPath {
        KeyPath(keys.split('.').map(|k| Step::Key(k.to_string())).collect())
    }

    /// This path and then key `key`.
    pub fn key(mut self, key: &str) -> KeyPath {
        self.0.push(Step::Key(key.to_string()));
        self
    }

    /// This path and then index `i`.
    pub fn index(mut self, i: usize) -> KeyPath {
        self.0.push(Step::Index(i));
        self
    }
}

/// Lines of key paths in one config text.
pub struct Locator<'t> {
    text: &'t str,
    root: Option<Spanned<DeTable<'t>>>,
}

impl<'t> Locator<'t> {
    pub fn new(text: &'t str) -> Locator<'t> {
        Locator {
            text,
            root: DeTable::parse(text).ok(),
        }
    }

    /// The 1-based line of the value at `path`, or of the deepest part of it
    /// the text has (a defaulted value is reported at its table); `None`
    /// when not even the first key is written.
    pub fn line(&self, path: &KeyPath) -> Option<usize> {
        let root = self.root.as_ref()?;
        let mut table = Some(root.get_ref());
        let mut array: Option<&[Spanned<DeValue<'t>>]> = None;
        let mut found: Option<usize> = None;
        for step in &path.0 {
            let value = match (step, table, array) {
                (Step::Key(k), Some(t), _) => t
                    .iter()
                    .find(|(key, _)| key.get_ref().as_ref() == k.as_str())
                    .map(|(key, value)| (key.span().start, value)),
                (Step::Index(i), _, Some(items)) => items.get(*i).map(|v| (v.span().start, v)),
                _ => None,
            };
            let Some((key_at, value)) = value else { break };
            found = Some(match value.get_ref() {
                // A table's own span covers its contents; its key is where
                // it is written.
                DeValue::Table(_) | DeValue::Array(_) => key_at,
                _ => value.span().start,
            });
            (table, array) = match value.get_ref() {
                DeValue::Table(t) => (Some(t), None),
                DeValue::Array(a) => (None, Some(&a[..])),
                _ => (None, None),
            };
        }
        found.map(|at| super::line_of(self.text, at))
    }
}

/// The closest of `known` to `typo`, when close enough to be what was
/// meant: at most two edits, or a shared prefix of four.
pub fn did_you_mean<'k>(typo: &str, known: impl IntoIterator<Item = &'k str>) -> Option<&'k str> {
    known
        .into_iter()
        .map(|k| (edit_distance(typo, k), k))
        .filter(|&(d, k)| d <= 2 || (typo.len() >= 4 && k.starts_with(&typo[..4])))
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_second_of_two_equal_values_is_found_at_its_own_line() {
        let text = "[pools.a]\nbackends = [\n  { name = \"x\", address = \"10.0.0.5\" },\n  { name = \"y\", address = \"10.0.0.5\" },\n]\n";
        let loc = Locator::new(text);
        let at = |i| KeyPath::of("pools.a.backends").index(i).key("address");
        assert_eq!(loc.line(&at(0)), Some(3));
        assert_eq!(loc.line(&at(1)), Some(4));
        // A missing key falls back to the deepest part that exists.
        assert_eq!(loc.line(&KeyPath::of("pools.a.max_fails")), Some(1));
        assert_eq!(loc.line(&KeyPath::of("server.listen")), None);
    }

    #[test]
    fn close_names_are_suggested() {
        let known = ["fail_timeout", "max_fails", "backends"];
        assert_eq!(did_you_mean("fial_timeout", known), Some("fail_timeout"));
        assert_eq!(did_you_mean("backend", known), Some("backends"));
        assert_eq!(did_you_mean("colour", known), None);
    }
}
