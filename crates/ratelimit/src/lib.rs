//! Rate limiting with nginx `limit_req` semantics, as a tower layer, in memory
//! or shared by every replica through Redis, that never takes the site down.
//!
//! **What it is for:** putting per-client (or per-header, per-route, global,
//! or your own) request budgets in front of any
//! `tower::Service<http::Request<B>>` — a wharf app, an axum router, a hyper
//! service — with exactly nginx's arithmetic (GCRA, `rate=10r/s`, `burst=20`,
//! `nodelay` or the delaying mode, several zones per request all or nothing),
//! the real client IP behind trusted proxies, `429` + `Retry-After` + the IETF
//! `RateLimit-Policy`/`RateLimit` headers, and metrics. With a [`RedisStore`]
//! every replica shares one budget: one atomic script per check on the Redis
//! clock, Cluster-ready hash tags, a time budget per check (50 ms), a circuit
//! breaker, a local deny cache, and a per-zone [`FailureMode`] for when Redis
//! is down (open by default).
//!
//! **What it is not for:** quotas over long windows (days), billing-grade
//! counts, or limiting concurrency (use `tower::limit`). Nor any app's own
//! rules: an app defines its zones where its routes are (frontend's are
//! wharf-download's `RateLimitSection`, the `WHARF_RATELIMIT_*` variables);
//! this crate gives it the pieces ([`Zone`], [`Limiter`], [`RedisStore`],
//! [`ZoneMemory`], the parsers in [`config`]) and [`ZoneConfig`], the
//! `[[limit_req]]` tables of `edge`'s configuration.
//!
//! **Semantics** (see `docs/ratelimit.md`): a zone with rate `r` (interval
//! `T = 1/r`) and burst `b` admits `b + 1` requests at once from a fresh key,
//! then one per `T`. With `nodelay` the admitted excess is served at once;
//! without it the `k`-th request of a back-to-back burst waits `(k - 1)·T`.
//! Beyond the burst requests are rejected and **not charged**.
//!
//! ```
//! use std::convert::Infallible;
//! use tower::{Layer, ServiceExt};
//! use wharf_ratelimit::{ClientIp, Limiter, RateLimitLayer, Rate, Zone};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! // nginx: limit_req_zone $binary_remote_addr zone=api:10m rate=10r/s;
//! //        limit_req zone=api burst=20 nodelay;
//! let limiter = Limiter::builder()
//!     .client_ip(ClientIp::new().trust("10.0.0.0/8".parse().unwrap()))
//!     .zone(Zone::new("api", "10r/s".parse::<Rate>().unwrap()).burst(20).nodelay())
//!     .build()
//!     .unwrap();
//! let app = tower::service_fn(|_req: http::Request<String>| async {
//!     Ok::<_, Infallible>(http::Response::new(String::from("ok")))
//! });
//! let service = RateLimitLayer::new(limiter).layer(app);
//!
//! let request = || {
//!     let mut req = http::Request::new(String::new());
//!     req.extensions_mut().insert(std::net::SocketAddr::from(([192, 0, 2, 7], 50000)));
//!     req
//! };
//! let mut statuses = Vec::new();
//! for _ in 0..22 {
//!     statuses.push(service.clone().oneshot(request()).await.unwrap().status().as_u16());
//! }
//! assert!(statuses[..21].iter().all(|s| *s == 200)); // burst=20 nodelay: 21 at once
//! assert_eq!(statuses[21], 429);
//! # });
//! ```
#![forbid(unsafe_code)]

mod batch;
mod breaker;
pub mod config;
mod error;
mod gcra;
mod key;
mod layer;
mod limiter;
mod memory;
mod metrics;
mod rate;
mod redis;

pub use breaker::BreakerState;
pub use config::{KeySpec, ZoneConfig};
pub use error::BuildError;
pub use gcra::{Outcome, Policy};
pub use key::{ClientIp, ForwardedHeader, IpNet, IpNetError, KeyFn, KeySource, PeerFn};
pub use layer::{
    RateLimit, RateLimitBody, RateLimitLayer, ResponseSettings, RATELIMIT, RATELIMIT_POLICY,
};
pub use limiter::{
    Decision, FailureMode, Limiter, LimiterBuilder, Matcher, Source, StoreKind, Zone, ZoneResult,
    DEFAULT_MAX_KEYS,
};
pub use memory::{ZoneMemory, ZoneMemoryError};
pub use metrics::{Metrics, ZoneCounters};
pub use rate::{Per, Rate, RateError, MAX_REQUESTS_PER_SECOND};
pub use redis::{RedisOptions, RedisStore};

/// The Lua sources of the Redis scripts (for review and for tests that run them).
pub mod scripts {
    pub use crate::batch::BATCH_SCRIPT;
    pub use crate::redis::{CHECK_SCRIPT, REFUND_SCRIPT};
}

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
