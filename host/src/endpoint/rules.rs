//! What a backend's requests get and lose: injected credentials (values
//! that never print) and removed headers, the pool's then the backend's.

use super::EndpointError;
use crate::config::{BackendConfig, CLIENT_AUTH_HEADERS, PoolConfig};
use crate::secret::SecretHeader;
use http::{HeaderMap, HeaderName};
use std::path::Path;
use std::sync::Arc;

/// Headers a backend's requests get and lose: the pool's, then the
/// backend's own.
#[derive(Default)]
pub struct RequestRules {
    set: Vec<(HeaderName, Arc<SecretHeader>)>,
    remove: Vec<HeaderName>,
    /// Drop the client's own credentials, since the proxy brings its own.
    pub strip_client_auth: bool,
}

impl RequestRules {
    /// The rules of `backend` of `pool`; file secrets resolve against `base`.
    pub fn new(
        pool: &PoolConfig,
        backend: &BackendConfig,
        base: &Path,
    ) -> Result<RequestRules, EndpointError> {
        let mut rules = RequestRules::default();
        for (name, source) in pool.set_headers.iter().chain(&backend.set_headers) {
            let header = header_name(name)?;
            let value = SecretHeader::load(source, base)
                .map_err(|e| EndpointError::Header(name.clone(), e))?;
            rules.set.retain(|(n, _)| *n != header);
            rules.set.push((header, value));
        }
        for name in pool.remove_headers.iter().chain(&backend.remove_headers) {
            rules.remove.push(header_name(name)?);
        }
        rules.strip_client_auth = !pool.pass_client_auth && !rules.set.is_empty();
        Ok(rules)
    }

    /// Whether the rules change nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty() && !self.strip_client_auth
    }

    /// Applies the rules to a request's headers.
    pub fn apply(&self, headers: &mut HeaderMap) {
        if self.strip_client_auth {
            strip_client_auth(headers);
        }
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.value());
        }
    }
}

impl RequestRules {
    /// Removes what [`RequestRules::apply`] set, before a request that was
    /// not sent goes to another backend.
    pub fn undo(&self, headers: &mut HeaderMap) {
        for (name, _) in &self.set {
            headers.remove(name);
        }
    }
}

/// Removes the client's credential headers.
pub fn strip_client_auth(headers: &mut HeaderMap) {
    for name in CLIENT_AUTH_HEADERS {
        headers.remove(name);
    }
}

fn header_name(name: &str) -> Result<HeaderName, EndpointError> {
    HeaderName::from_bytes(name.as_bytes()).map_err(|_| EndpointError::HeaderName(name.into()))
}
