//! Request paths made canonical before a route is matched, so a route's
//! prefix is a boundary: what is matched is what is forwarded.
//!
//! `//` collapses to `/`, `.` segments go, `..` removes the segment before
//! it, and `%2e` is read as the dot it encodes (as backends that decode
//! before resolving would). An encoded slash or backslash (`%2f`, `%5c`),
//! or a `..` above the root, makes the path ambiguous: refused with 400.

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path contains an encoded slash or backslash")]
    EncodedSeparator,
    #[error("the path climbs above the root with `..`")]
    AboveRoot,
}

/// The canonical form of `path`, or `None` when it is canonical already
/// (the common case, found in one pass without allocating).
pub fn normalize(path: &str) -> Result<Option<String>, PathError> {
    // `*` (OPTIONS) and other non-path forms are not paths to resolve.
    if !path.starts_with('/') || is_canonical(path.as_bytes()) {
        return Ok(None);
    }
    let decoded = decode_dots(path)?;
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop().ok_or(PathError::AboveRoot)?;
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    // A trailing slash (or a trailing `.`/`..`) names a directory: kept.
    let ends_as_dir = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    if out.is_empty() || ends_as_dir {
        out.push('/');
    }
    Ok(Some(out))
}

/// Whether `path` has no empty, `.` or `..` segment and no `%`.
fn is_canonical(path: &[u8]) -> bool {
    if memchr::memchr(b'%', path).is_some() {
        return false;
    }
    // Look at each segment after a slash.
    let mut i = 1;
    while i <= path.len() {
        let end = memchr::memchr(b'/', &path[i..]).map_or(path.len(), |n| i + n);
        let segment = &path[i..end];
        let last = end == path.len();
        if (segment.is_empty() && !last) || segment == b"." || segment == b".." {
            return false;
        }
        i = end + 1;
    }
    true
}

/// `path` with `%2e` read as `.`; other escapes kept as they are, except
/// encoded separators, which are refused.
fn decode_dots(path: &str) -> Result<std::borrow::Cow<'_, str>, PathError> {
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") {
        return Err(PathError::EncodedSeparator);
    }
    if !lower.contains("%2e") {
        return Ok(path.into());
    }
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3).unwrap_or(&rest[at..]);
        if escape.eq_ignore_ascii_case("%2e") {
            out.push('.');
        } else {
            out.push_str(escape);
        }
        rest = &rest[at + escape.len()..];
    }
    out.push_str(rest);
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_paths_cost_nothing() {
        for p in [
            "/",
            "/v1/chat/completions",
            "/a/b/",
            "/file.json",
            "/a/.hidden",
            "/a..b/c",
        ] {
            assert_eq!(normalize(p), Ok(None), "{p}");
        }
    }

    #[test]
    fn traversal_in_every_spelling_resolves_or_is_refused() {
        let n = |p: &str| normalize(p).map(|o| o.unwrap_or_else(|| p.to_string()));
        assert_eq!(n("/public/../admin/secret"), Ok("/admin/secret".into()));
        assert_eq!(n("/public/%2e%2e/admin/secret"), Ok("/admin/secret".into()));
        assert_eq!(n("/public/%2E%2e/admin"), Ok("/admin".into()));
        assert_eq!(n("/public/./../admin"), Ok("/admin".into()));
        assert_eq!(n("/public//../admin"), Ok("/admin".into()));
        assert_eq!(normalize("*"), Ok(None));
        assert_eq!(n("//public///x"), Ok("/public/x".into()));
        assert_eq!(n("/a/b/.."), Ok("/a/".into()));
        assert_eq!(n("/a/./"), Ok("/a/".into()));
        assert_eq!(n("/a/%41"), Ok("/a/%41".into()));
        assert_eq!(
            n("/public/..%2fadmin/secret"),
            Err(PathError::EncodedSeparator)
        );
        assert_eq!(n("/public%5C..%5Cadmin"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/../etc/passwd"), Err(PathError::AboveRoot));
        assert_eq!(n("/a/../../b"), Err(PathError::AboveRoot));
    }
}
