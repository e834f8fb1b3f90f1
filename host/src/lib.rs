//! Switchyard: a reverse proxy for LLM and agent traffic whose routing,
//! health and breaker policies are sandboxed WebAssembly components.
//!
//! The data path, stage by stage: [`config`] is parsed and validated,
//! [`route`] matches a request to a route, [`plugin`] runs the route's router
//! component, [`balance`] holds each backend's live state, [`proxy`] forwards
//! and streams, [`admin`] exposes metrics and status.

pub mod admin;
pub mod balance;
pub mod build;
pub mod clock;
pub mod config;
pub mod control;
pub mod cpus;
pub mod discovery;
pub mod endpoint;
pub mod histogram;
pub mod jobs;
pub mod plugin;
pub mod pool;
pub mod proxy;
pub mod refresh;
pub mod reload;
pub mod rollout;
pub mod route;
mod run;
pub mod secret;
pub mod shared;
pub mod tls;

pub use run::{StartError, Switchyard};
