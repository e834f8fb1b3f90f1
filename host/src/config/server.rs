//! `[server]`: the proxy listener, its limits and timeouts, and `[admin]`.

use super::{KeyPath, Problem, duration, yes};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The proxy listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address the proxy listens on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Worker threads, each with its own listener and runtime; 0 = one per core.
    #[serde(default)]
    pub workers: usize,
    /// Which CPU each worker is bound to: `"off"` (the default: the
    /// kernel places them), `"auto"` (one CPU each when the process may
    /// use exactly as many CPUs as there are workers, else none), or a
    /// list of CPU numbers taken in turn. Read on start.
    #[serde(default)]
    pub cpu_affinity: CpuAffinity,
    /// Who serves HTTP/1.1 client connections: `"lean"` (the default: the
    /// proxy's own keep-alive fast path, which hands a connection to hyper
    /// at its first request that is not a plain one) or `"hyper"` (hyper
    /// throughout). Read on start.
    #[serde(default)]
    pub http1: Http1Server,
    /// Tag every proxied response with `x-switchyard-backend`.
    #[serde(default = "yes")]
    pub backend_header: bool,
    /// Longest a client may take to send request headers (slow-loris guard).
    #[serde(default = "default_header_read", with = "duration")]
    pub header_read_timeout: Duration,
    /// Client connections served at once, all workers; more are closed on
    /// accept. 0: half the open-file limit after a reserve for the
    /// proxy's own files, so each client connection can have an upstream
    /// one. Over it, a connection is answered 503 and closed.
    #[serde(default)]
    pub max_connections: usize,
    /// Longest wait for the next bytes of a request body (nginx's
    /// `client_body_timeout`): a stalled upload gets 408 and frees its slot.
    #[serde(default = "default_body_read", with = "duration")]
    pub body_read_timeout: Duration,
    /// How long a client connection may stay open with no request in
    /// progress (HTTP/1.1 keep-alive or HTTP/2) before it is closed
    /// gracefully; 0 = never.
    #[serde(default = "default_idle", with = "duration")]
    pub idle_timeout: Duration,
    /// How long in-flight requests may take to finish on shutdown.
    #[serde(default = "default_drain", with = "duration")]
    pub drain_timeout: Duration,
    /// Log one line per request (target `switchyard::access`) when its
    /// response headers go out.
    #[serde(default)]
    pub access_log: bool,
    /// Answer requests carrying `x-switchyard-debug` with the decision's
    /// details in `x-switchyard-route`, `-plugin` and `-candidates`. Off by
    /// default: plugin versions and backend names are not for any client.
    #[serde(default)]
    pub debug_header: bool,
    /// Serve TLS (h2 and HTTP/1.1 by ALPN) instead of plain HTTP.
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    /// Request header naming the run (a LangGraph thread or run id) whose
    /// tokens and cost are counted in the shared store; `""` turns it off.
    #[serde(default = "default_run_header")]
    pub run_header: String,
    /// How long a run's counters live after its first request.
    #[serde(default = "default_run_ttl", with = "duration")]
    pub run_ttl: Duration,
}

fn default_run_header() -> String {
    "x-run-id".into()
}

fn default_run_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

/// Worker threads' binding to CPUs (`server.cpu_affinity`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(try_from = "AffinityValue")]
pub enum CpuAffinity {
    /// One CPU per worker when the allowed CPUs and the workers are as
    /// many; otherwise the kernel places the workers.
    Auto,
    /// The kernel places the workers.
    #[default]
    Off,
    /// Worker `i` runs on `cpus[i % cpus.len()]`.
    Cpus(Vec<usize>),
}

/// Who serves HTTP/1.1 client connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Http1Server {
    /// Plain keep-alive requests with small bodies on the proxy's own
    /// server; hyper from the first request that is not one.
    #[default]
    Lean,
    /// hyper for every request.
    Hyper,
}

/// The written forms of [`CpuAffinity`].
#[derive(Deserialize)]
#[serde(untagged, expecting = "\"auto\", \"off\" or a list of CPU numbers")]
enum AffinityValue {
    Word(String),
    Cpus(Vec<usize>),
}

impl TryFrom<AffinityValue> for CpuAffinity {
    type Error = String;

    fn try_from(value: AffinityValue) -> Result<Self, String> {
        match value {
            AffinityValue::Word(w) if w == "auto" => Ok(CpuAffinity::Auto),
            AffinityValue::Word(w) if w == "off" => Ok(CpuAffinity::Off),
            AffinityValue::Word(w) => Err(format!(
                "{w:?}: expected \"auto\", \"off\" or a list of CPU numbers"
            )),
            AffinityValue::Cpus(cpus) if cpus.is_empty() => {
                Err("an empty list binds no worker: write \"off\"".into())
            }
            AffinityValue::Cpus(cpus) => match cpus.iter().find(|&&c| c >= MAX_CPUS) {
                Some(c) => Err(format!("CPU {c} is above the highest, {}", MAX_CPUS - 1)),
                None => Ok(CpuAffinity::Cpus(cpus)),
            },
        }
    }
}

/// CPUs a Linux CPU set can name.
const MAX_CPUS: usize = 1024;

/// The listener's certificate; both files are re-read when they change.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Certificate chain, PEM; relative to the config file.
    pub cert: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            workers: 0,
            cpu_affinity: CpuAffinity::Off,
            http1: Http1Server::Lean,
            backend_header: true,
            header_read_timeout: default_header_read(),
            body_read_timeout: default_body_read(),
            max_connections: 0,
            idle_timeout: default_idle(),
            drain_timeout: default_drain(),
            access_log: false,
            debug_header: false,
            tls: None,
            run_header: default_run_header(),
            run_ttl: default_run_ttl(),
        }
    }
}

/// The admin listener: `/metrics`, `/status`, `/plugins`, `/dashboard`,
/// `/healthz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: String,
    /// Bearer token every admin request but `/healthz` must carry. Required
    /// when `listen` is not a loopback address.
    #[serde(default)]
    pub token: Option<String>,
    /// Environment variable holding the token, so it stays out of the file.
    #[serde(default)]
    pub token_env: Option<String>,
}

impl AdminConfig {
    /// The bearer token, from `token` or `token_env`.
    pub fn bearer_token(&self) -> Option<String> {
        self.token
            .clone()
            .or_else(|| std::env::var(self.token_env.as_ref()?).ok())
            .filter(|t| !t.is_empty())
    }
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_header_read() -> Duration {
    Duration::from_secs(30)
}

fn default_idle() -> Duration {
    Duration::from_secs(60)
}

fn default_body_read() -> Duration {
    Duration::from_secs(60)
}

fn default_drain() -> Duration {
    Duration::from_secs(30)
}

impl ServerConfig {
    /// Checks what the types cannot: a listen address, a sane worker count.
    pub(super) fn validate(&self) -> Result<(), Problem> {
        if !self.run_header.is_empty()
            && http::HeaderName::from_bytes(self.run_header.as_bytes()).is_err()
        {
            return Err(Problem::new(
                KeyPath::of("server.run_header"),
                format!(
                    "server.run_header {:?} is not a header name",
                    self.run_header
                ),
            ));
        }
        if self.run_ttl.is_zero() || self.run_ttl.as_millis() > u128::from(u32::MAX) {
            return Err(Problem::new(
                KeyPath::of("server.run_ttl"),
                "server.run_ttl must be above zero and at most 49 days",
            ));
        }
        self.listen.parse::<std::net::SocketAddr>().map_err(|e| {
            Problem::new(
                KeyPath::of("server.listen"),
                format!("server.listen {:?}: {e}", self.listen),
            )
        })?;
        if self.workers > 1024 {
            return Err(Problem::new(
                KeyPath::of("server.workers"),
                format!(
                    "server.workers = {} is above 1024 (0: one per core)",
                    self.workers
                ),
            ));
        }
        Ok(())
    }
}

impl AdminConfig {
    /// A listen address, and a token wherever it is not loopback.
    pub(super) fn validate(&self) -> Result<(), Problem> {
        let at = KeyPath::of("admin.listen");
        let addr = self.listen.parse::<std::net::SocketAddr>().map_err(|e| {
            Problem::new(at.clone(), format!("admin.listen {:?}: {e}", self.listen))
        })?;
        if !addr.ip().is_loopback() && self.bearer_token().is_none() {
            return Err(Problem::new(
                at,
                format!(
                    "admin.listen {:?} is not a loopback address: set admin.token (or admin.token_env) so metrics and state are not open to the network",
                    self.listen
                ),
            ));
        }
        Ok(())
    }
}
