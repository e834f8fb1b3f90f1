//! How the proxy reaches a pool's backends: TLS, the HTTP version spoken
//! upstream, the credentials it injects, and DNS discovery.
//!
//! Each setting can be given on the pool (for every backend) and on a
//! backend (overriding the pool's).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// `tls = true`, or a table of TLS settings (which implies `true`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum TlsOption {
    Enabled(bool),
    Settings(TlsSettings),
}

impl TlsOption {
    /// The settings when TLS is on.
    pub fn settings(&self) -> Option<TlsSettings> {
        match self {
            TlsOption::Enabled(false) => None,
            TlsOption::Enabled(true) => Some(TlsSettings::default()),
            TlsOption::Settings(s) => Some(s.clone()),
        }
    }
}

/// TLS to a backend. Certificates are verified against the Mozilla root
/// bundle compiled into the proxy, plus `ca_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// Extra trusted CA certificates (PEM), such as a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Trust only `ca_file`, not the public roots.
    #[serde(default)]
    pub ca_only: bool,
    /// Client certificate chain (PEM) for backends that require mTLS.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Name sent in SNI and checked against the certificate; default the
    /// backend's host name.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Accept any certificate. For tests against self-signed backends only:
    /// logged loudly at every load.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// The HTTP version spoken to a backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/2 when a TLS backend offers it by ALPN, else HTTP/1.1.
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only: by ALPN over TLS, with prior knowledge over plain TCP.
    H2,
    /// HTTP/2 with prior knowledge over plain TCP.
    H2c,
}

/// A header value the proxy injects: inline text, or read from the
/// environment or a file (re-read when the file changes), with an optional
/// prefix such as `Bearer `.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum HeaderSource {
    Inline(String),
    Env {
        env: String,
        #[serde(default)]
        prefix: String,
    },
    File {
        file: PathBuf,
        #[serde(default)]
        prefix: String,
    },
}

impl std::fmt::Debug for HeaderSource {
    // Inline values are often keys: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderSource::Inline(_) => f.write_str("Inline(***)"),
            HeaderSource::Env { env, .. } => write!(f, "Env({env})"),
            HeaderSource::File { file, .. } => write!(f, "File({})", file.display()),
        }
    }
}

/// DNS discovery: every address a name resolves to is a backend.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverConfig {
    /// `host:port` to resolve, such as a Kubernetes headless service.
    pub dns: String,
    /// How often to resolve it again.
    #[serde(default = "default_every", with = "super::duration")]
    pub every: Duration,
    /// Weight of each discovered backend.
    #[serde(default = "one")]
    pub weight: u32,
    /// Labels every discovered backend carries.
    #[serde(default)]
    pub labels: BTreeMap<String, toml::Value>,
}

fn default_every() -> Duration {
    Duration::from_secs(5)
}

fn one() -> u32 {
    1
}

/// Client credential headers: removed upstream when the proxy injects its
/// own credential or authenticates clients itself.
pub const CLIENT_AUTH_HEADERS: [&str; 3] = ["authorization", "x-api-key", "api-key"];

/// Splits a backend address into scheme (when given), host and port;
/// `https://h` defaults to port 443 and `http://h` to 80. `None` when it
/// is not `[scheme://]host:port`.
pub fn split_address(address: &str) -> Option<(Option<&str>, &str, u16)> {
    let (scheme, rest) = match address.split_once("://") {
        Some((s @ ("http" | "https"), rest)) => (Some(s), rest),
        Some(_) => return None,
        None => (None, address),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() || rest.contains('/') {
        return None;
    }
    let default_port = match scheme {
        Some("https") => Some(443),
        Some(_) => Some(80),
        None => None,
    };
    // `[v6]:port`, `host:port`, or a bare host when a scheme gives the port.
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && (!h.starts_with('[') || h.ends_with(']')) => {
            (h, p.parse::<u16>().ok().filter(|&p| p != 0)?)
        }
        _ => (rest, default_port?),
    };
    (!host.is_empty()).then_some((scheme, host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split_with_scheme_defaults() {
        assert_eq!(
            split_address("10.0.0.1:8000"),
            Some((None, "10.0.0.1", 8000))
        );
        assert_eq!(
            split_address("https://api.openai.com"),
            Some((Some("https"), "api.openai.com", 443))
        );
        assert_eq!(
            split_address("https://api.openai.com/"),
            Some((Some("https"), "api.openai.com", 443))
        );
        assert_eq!(
            split_address("http://vllm.internal:8080"),
            Some((Some("http"), "vllm.internal", 8080))
        );
        assert_eq!(split_address("[::1]:443"), Some((None, "[::1]", 443)));
        assert_eq!(split_address("api.openai.com"), None);
        assert_eq!(split_address("ftp://x:21"), None);
        assert_eq!(split_address("https://h/v1"), None);
        assert_eq!(split_address("h:0"), None);
    }
}
