//! Client keys: who may spend the provider keys the proxy holds.
//!
//! A route with `auth` takes only requests that present a known key as
//! `Authorization: Bearer <key>`, `x-api-key` or `api-key`. Keys are kept as
//! SHA-256 digests, never in clear. An authenticated request carries
//! `x-switchyard-client: <name>` and `x-switchyard-client-<label>` headers
//! that routers read as ordinary headers; the same headers sent by a client
//! are removed on every route, so nobody can claim to be someone else.

use crate::config::{AuthConfig, ClientKeyConfig};
use crate::refresh::{self, FileStamp, Refresh};
use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Prefix of the identity headers the proxy sets.
pub const CLIENT_HEADER_PREFIX: &str = "x-switchyard-client";

/// A keys file or inline key that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read keys file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("keys file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{origin}: key `{name}`: {message}")]
    Key {
        origin: String,
        name: String,
        message: String,
    },
}

/// One authenticated caller.
#[derive(Debug)]
pub struct ClientIdentity {
    pub name: Arc<str>,
    /// `x-switchyard-client` and one `x-switchyard-client-<label>` each.
    headers: Vec<(HeaderName, HeaderValue)>,
}

type KeyTable = HashMap<[u8; 32], Arc<ClientIdentity>>;

/// A route's accepted keys, re-read when the keys file changes.
pub struct ClientKeys {
    inline: Vec<ClientKeyConfig>,
    file: Option<PathBuf>,
    table: Mutex<(Arc<KeyTable>, FileStamp)>,
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientKeys")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

/// Why a request was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Unknown,
}

impl ClientKeys {
    /// Loads the route's keys now; the keys file, if any, is watched.
    pub fn load(config: &AuthConfig, base: &Path) -> Result<Arc<ClientKeys>, AuthError> {
        let file = config.keys_file.as_ref().map(|f| base.join(f));
        let stamp = file.as_deref().map(FileStamp::of).unwrap_or_default();
        let table = build_table(&config.keys, file.as_deref())?;
        let keys = Arc::new(ClientKeys {
            inline: config.keys.clone(),
            file,
            table: Mutex::new((Arc::new(table), stamp)),
        });
        if keys.file.is_some() {
            let watched: Arc<dyn Refresh> = keys.clone();
            refresh::register(&watched);
        }
        Ok(keys)
    }

    /// The caller `headers` identify, or why not.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<ClientIdentity>, Refusal> {
        let presented = presented_key(headers).ok_or(Refusal::Missing)?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let table = self.lock().0.clone();
        table.get(&digest).cloned().ok_or(Refusal::Unknown)
    }

    /// Names of every accepted key, for bounded metric labels.
    pub fn names(&self) -> Vec<Arc<str>> {
        self.lock().0.values().map(|c| c.name.clone()).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Arc<KeyTable>, FileStamp)> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Refresh for ClientKeys {
    fn refresh(&self) {
        let Some(file) = &self.file else { return };
        let now = FileStamp::of(file);
        if self.lock().1 == now {
            return;
        }
        match build_table(&self.inline, Some(file)) {
            Ok(table) => {
                let count = table.len();
                *self.lock() = (Arc::new(table), now);
                tracing::info!(file = %file.display(), keys = count, "client keys reloaded");
            }
            Err(e) => {
                self.lock().1 = now;
                tracing::warn!("client keys not reloaded, the previous keys stay: {e}");
            }
        }
    }
}

/// Sets the identity headers of `client` on a request, after removing any
/// the client sent itself.
pub fn set_identity(headers: &mut HeaderMap, client: Option<&ClientIdentity>) {
    remove_identity(headers);
    if let Some(client) = client {
        for (name, value) in &client.headers {
            headers.insert(name.clone(), value.clone());
        }
    }
}

/// Removes identity headers a client sent; cheap when there are none.
pub fn remove_identity(headers: &mut HeaderMap) {
    if !headers
        .keys()
        .any(|k| k.as_str().starts_with(CLIENT_HEADER_PREFIX))
    {
        return;
    }
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(CLIENT_HEADER_PREFIX))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// The key a request presents: a bearer token, `x-api-key` or `api-key`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?.trim();
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty());
    }
    ["x-api-key", "api-key"]
        .iter()
        .find_map(|h| headers.get(*h)?.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The keys file's shape.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    #[serde(default)]
    keys: Vec<ClientKeyConfig>,
}

fn build_table(inline: &[ClientKeyConfig], file: Option<&Path>) -> Result<KeyTable, AuthError> {
    let mut table = KeyTable::new();
    let mut add = |origin: &str, keys: &[ClientKeyConfig]| -> Result<(), AuthError> {
        for k in keys {
            let bad = |message: String| AuthError::Key {
                origin: origin.to_string(),
                name: k.name.clone(),
                message,
            };
            let digest = parse_digest(&k.sha256)
                .ok_or_else(|| bad("sha256 must be 64 hex digits (the key's SHA-256)".into()))?;
            let mut headers = vec![(
                HeaderName::from_static(CLIENT_HEADER_PREFIX),
                HeaderValue::from_str(&k.name)
                    .map_err(|_| bad("name is not a valid header value".into()))?,
            )];
            for (label, value) in &k.labels {
                let name =
                    HeaderName::from_bytes(format!("{CLIENT_HEADER_PREFIX}-{label}").as_bytes())
                        .map_err(|_| {
                            bad(format!("label {label:?} is not a valid header name part"))
                        })?;
                let value = HeaderValue::from_str(value).map_err(|_| {
                    bad(format!(
                        "label {label:?} has a value that is not a valid header value"
                    ))
                })?;
                headers.push((name, value));
            }
            let identity = Arc::new(ClientIdentity {
                name: k.name.as_str().into(),
                headers,
            });
            if table.insert(digest, identity).is_some() {
                return Err(bad("the same key is listed twice".into()));
            }
        }
        Ok(())
    };
    add("inline keys", inline)?;
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.into(),
            source,
        })?;
        let parsed: KeysFile = toml::from_str(&text).map_err(|e| AuthError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        add(&path.display().to_string(), &parsed.keys)?;
    }
    Ok(table)
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The SHA-256 of `key` in hex, as a keys file lists it.
pub fn key_digest(key: &str) -> String {
    Sha256::digest(key.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(file_text: &str) -> (tempfile::TempDir, Arc<ClientKeys>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("keys.toml"), file_text).unwrap();
        let config = AuthConfig {
            keys_file: Some("keys.toml".into()),
            keys: Vec::new(),
        };
        let keys = ClientKeys::load(&config, dir.path()).unwrap();
        (dir, keys)
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn keys_are_matched_by_digest_in_every_header_style() {
        let text = format!(
            "[[keys]]\nname = \"research\"\nsha256 = \"{}\"\nlabels = {{ team = \"r\" }}\n",
            key_digest("sk-client-1")
        );
        let (_dir, keys) = keys(&text);
        for h in [
            ("authorization", "Bearer sk-client-1"),
            ("x-api-key", "sk-client-1"),
            ("api-key", "sk-client-1"),
        ] {
            let who = keys.authenticate(&headers(&[h])).unwrap();
            assert_eq!(&*who.name, "research");
        }
        assert_eq!(
            keys.authenticate(&headers(&[("authorization", "Bearer sk-other")]))
                .unwrap_err(),
            Refusal::Unknown
        );
        assert_eq!(
            keys.authenticate(&HeaderMap::new()).unwrap_err(),
            Refusal::Missing
        );
        let mut h = headers(&[
            ("x-switchyard-client", "admin"),
            ("x-switchyard-client-team", "x"),
        ]);
        set_identity(
            &mut h,
            Some(
                &keys
                    .authenticate(&headers(&[("x-api-key", "sk-client-1")]))
                    .unwrap(),
            ),
        );
        assert_eq!(h["x-switchyard-client"], "research");
        assert_eq!(h["x-switchyard-client-team"], "r");
        let mut h = headers(&[("x-switchyard-client", "admin")]);
        set_identity(&mut h, None);
        assert!(h.is_empty());
    }

    #[test]
    fn a_changed_file_is_picked_up_and_a_broken_one_keeps_the_old_keys() {
        let line = |name: &str, key: &str| {
            format!(
                "[[keys]]\nname = \"{name}\"\nsha256 = \"{}\"\n",
                key_digest(key)
            )
        };
        let (dir, keys) = keys(&line("a", "k-a"));
        let a = headers(&[("x-api-key", "k-a")]);
        let b = headers(&[("x-api-key", "k-b")]);
        assert!(keys.authenticate(&a).is_ok());
        std::fs::write(dir.path().join("keys.toml"), line("b", "k-b") + "\n\n").unwrap();
        keys.refresh();
        assert!(keys.authenticate(&a).is_err());
        assert!(keys.authenticate(&b).is_ok());
        std::fs::write(dir.path().join("keys.toml"), "[[keys]]\nname = 1\n\n\n\n").unwrap();
        keys.refresh();
        assert!(keys.authenticate(&b).is_ok());
    }
}
