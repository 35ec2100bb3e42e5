//! A reverse proxy as a [`tower::Service`]: upstream groups as nginx has them,
//! with the retry and forwarding rules an nginx operator expects.
//!
//! **What it is for:** passing requests to an [`Upstream`] group whose
//! [`UpstreamServer`]s have `weight`, `backup`, `max_fails` and
//! `fail_timeout`; choosing by smooth weighted round robin (as nginx) or least
//! connections; taking failing servers out (passive health) and checking them
//! ([`HealthCheck`], active health); keeping a keep-alive pool per server
//! (32 idle by default); connect/send/read timeouts; trying the next server as
//! `proxy_next_upstream` does, never resending a non-idempotent request;
//! setting `X-Forwarded-For`/`-Proto`/`-Host` and `X-Real-IP` with the
//! client's address taken from headers only from [`TrustedProxies`]; removing
//! hop-by-hop headers; WebSocket upgrades; buffering request bodies before
//! contacting a server (on by default, as nginx) and streaming responses;
//! short 502/503/504 pages. [`proxy_protocol`] reads PROXY protocol v1/v2
//! headers for listeners behind a load balancer.
//!
//! **What it is not for:** routing (put it behind a router, as `edge` does),
//! caching, or upstreams over TLS (it speaks HTTP/1.1 to upstreams).
//!
//! ```no_run
//! use std::time::Duration;
//! use wharf_proxy::{Proxy, ProxySettings, Upstream, UpstreamConfig, UpstreamServer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let upstream = Upstream::new(UpstreamConfig::new("backend", vec![
//!     UpstreamServer::new("127.0.0.1:8000".parse()?).weight(3),
//!     UpstreamServer::new("127.0.0.1:8001".parse()?).weight(3),
//!     UpstreamServer::new("127.0.0.1:8002".parse()?).backup(),
//! ])).ok_or("no servers")?;
//! let proxy = Proxy::new(upstream, ProxySettings {
//!     read_timeout: Duration::from_secs(60),
//!     ..ProxySettings::default()
//! });
//! let listener = wharf_http::Listener::bind("127.0.0.1:8080".parse()?)?;
//! wharf_http::Server::new(wharf_http::ServerConfig::default())
//!     .serve(vec![listener], proxy, std::future::pending())
//!     .await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod body;
mod errors;
mod forwarded;
mod pool;
mod proxy;
pub mod proxy_protocol;
mod settings;
mod upstream;
mod websocket;

pub use body::UpstreamStalled;
pub use errors::error_page;
pub use forwarded::{
    remove_hop_by_hop, IpNet, IpNetError, TrustedProxies, X_FORWARDED_FOR, X_FORWARDED_HOST,
    X_FORWARDED_PROTO, X_REAL_IP,
};
pub use proxy::Proxy;
pub use settings::ProxySettings;
pub use upstream::{
    Balance, GroupStats, HealthCheck, RetryBudget, ServerStats, Upstream, UpstreamConfig,
    UpstreamServer, DEFAULT_PANIC_THRESHOLD,
};
