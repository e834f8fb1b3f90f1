//! End-to-end tests: one binary, real sockets on 127.0.0.1, compiled plugins.

mod compat;
mod dashboard;
mod failures;
mod hedging;
mod hostile;
mod library;
mod llm;
mod loading;
mod observability;
mod providers;
mod proxying;
mod reload;
mod resilience;
mod rollout;
mod routing;
mod server_http1;
mod smuggling;
mod streaming;
mod tls;
mod upstream_http1;
mod workers;
