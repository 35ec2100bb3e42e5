//! [`Zone`]s and the [`Limiter`] that checks a request against all of them.
//!
//! Kept whole although over 600 lines: zones, the builder that checks them and
//! `Limiter::check` are one decision, all or nothing across zones in memory and
//! in Redis, whose rules read best in one place.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;

use crate::breaker::BreakerState;
use crate::error::BuildError;
use crate::gcra::{Outcome, Policy};
use crate::key::{ClientIp, KeySource};
use crate::memory::{self, LocalClock, Table, ZoneMemory};
use crate::metrics::Metrics;
use crate::rate::Rate;
use crate::redis::{RedisStore, Unavailable};

/// What a Redis-backed zone does when Redis cannot answer in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Let the request through, unlimited (the default: Redis trouble never
    /// takes the site down).
    #[default]
    Open,
    /// Reject the request (for zones guarding something costly or sensitive).
    Closed,
    /// Limit it with this process's in-memory limiter instead (per replica).
    Local,
}

/// Where a zone keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// In Redis when the limiter has one, else in memory (the default).
    #[default]
    Shared,
    /// Always in this process's memory.
    Memory,
}

/// A predicate choosing the requests a zone applies to.
pub type Matcher = Arc<dyn Fn(&Parts) -> bool + Send + Sync>;

/// One `limit_req` zone: a name, a policy, a key, and which requests it covers.
///
/// ```
/// use wharf_ratelimit::{KeySource, Rate, Zone};
/// // nginx: limit_req_zone $binary_remote_addr zone=api rate=10r/s; limit_req zone=api burst=20 nodelay;
/// let zone = Zone::new("api", "10r/s".parse::<Rate>().unwrap()).burst(20).nodelay().key(KeySource::ClientIp);
/// assert_eq!(zone.policy().capacity(), 21);
/// ```
#[derive(Clone)]
pub struct Zone {
    name: String,
    rate: Rate,
    burst: u32,
    delay: Option<u32>,
    key: KeySource,
    matcher: Option<Matcher>,
    store: StoreKind,
    on_redis_failure: FailureMode,
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Zone")
            .field("name", &self.name)
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .field("delay", &self.delay)
            .field("key", &self.key)
            .field("store", &self.store)
            .field("on_redis_failure", &self.on_redis_failure)
            .finish_non_exhaustive()
    }
}

impl Zone {
    /// A zone limiting to `rate`, burst 0, delaying mode, keyed by client IP,
    /// covering every request, shared store, failing open.
    pub fn new(name: impl Into<String>, rate: Rate) -> Self {
        Self {
            name: name.into(),
            rate,
            burst: 0,
            delay: None,
            key: KeySource::ClientIp,
            matcher: None,
            store: StoreKind::Shared,
            on_redis_failure: FailureMode::Open,
        }
    }

    /// Excess requests allowed beyond the rate (nginx `burst=`). Default 0.
    #[must_use]
    pub fn burst(mut self, burst: u32) -> Self {
        self.burst = burst;
        self
    }

    /// Serve the whole burst at once (nginx `nodelay`). Default: delayed.
    #[must_use]
    pub fn nodelay(mut self) -> Self {
        self.delay = Some(u32::MAX);
        self
    }

    /// Serve the first `n` excess requests at once and delay the rest of the
    /// burst (nginx `delay=`). Default 0.
    #[must_use]
    pub fn delay_after(mut self, n: u32) -> Self {
        self.delay = Some(n);
        self
    }

    /// What requests are counted by. Default [`KeySource::ClientIp`].
    #[must_use]
    pub fn key(mut self, key: KeySource) -> Self {
        self.key = key;
        self
    }

    /// Only requests for which `f` is true are limited by this zone. Default: all.
    #[must_use]
    pub fn when(mut self, f: impl Fn(&Parts) -> bool + Send + Sync + 'static) -> Self {
        self.matcher = Some(Arc::new(f));
        self
    }

    /// Where the state lives. Default [`StoreKind::Shared`].
    #[must_use]
    pub fn store(mut self, store: StoreKind) -> Self {
        self.store = store;
        self
    }

    /// What to do when Redis cannot answer. Default [`FailureMode::Open`].
    #[must_use]
    pub fn on_redis_failure(mut self, mode: FailureMode) -> Self {
        self.on_redis_failure = mode;
        self
    }

    /// The zone's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rate.
    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// The failure mode.
    pub fn failure_mode(&self) -> FailureMode {
        self.on_redis_failure
    }

    /// The GCRA policy the settings make.
    pub fn policy(&self) -> Policy {
        let policy = Policy::new(self.rate, self.burst);
        match self.delay {
            Some(n) => policy.delay_after(n),
            None => policy,
        }
    }
}

/// How one zone judged a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneResult {
    /// The zone's name.
    pub zone: Arc<str>,
    /// `burst + 1`: requests the zone admits at once.
    pub capacity: u64,
    /// Seconds to refill the whole burst, `ceil((burst + 1)·T)`.
    pub window_seconds: u64,
    /// Requests that would still pass at once after this one (when known).
    pub remaining: Option<u64>,
    /// Until the zone is back to its full burst (when known).
    pub reset: Option<Duration>,
    /// This zone alone would have rejected the request.
    pub rejected: bool,
    /// Where the answer came from.
    pub source: Source,
}

/// Where a zone's answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// This process's memory (a memory zone, or no Redis configured).
    Memory,
    /// Redis.
    Redis,
    /// The local deny cache (a Redis zone that denied this key recently).
    DenyCache,
    /// Redis was unavailable and the zone fails open.
    FailedOpen,
    /// Redis was unavailable and the zone fails closed.
    FailedClosed,
    /// Redis was unavailable and the in-memory fallback decided.
    Fallback,
}

/// The verdict on one request across every zone that applies to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may go on.
    pub allowed: bool,
    /// For an allowed request: wait this long first (delaying mode).
    pub delay: Duration,
    /// For a rejected request: when the same request would pass.
    pub retry_after: Duration,
    /// One result per zone that applied, in zone order.
    pub zones: Vec<ZoneResult>,
}

impl Decision {
    /// A decision: a rejected request waits for nothing (`retry_after` is
    /// what it is told), an allowed one gets no `retry_after`.
    fn settled(
        rejected: bool,
        delay: Duration,
        retry_after: Duration,
        zones: Vec<ZoneResult>,
    ) -> Self {
        Self {
            allowed: !rejected,
            delay: if rejected { Duration::ZERO } else { delay },
            retry_after: if rejected {
                retry_after
            } else {
                Duration::ZERO
            },
            zones,
        }
    }

    fn unlimited() -> Self {
        Self {
            allowed: true,
            delay: Duration::ZERO,
            retry_after: Duration::ZERO,
            zones: Vec::new(),
        }
    }

    /// `Retry-After` in whole seconds, rounded up (at least 1 for a rejection).
    pub fn retry_after_seconds(&self) -> u64 {
        ceil_seconds(self.retry_after).max(u64::from(!self.allowed))
    }
}

pub(crate) fn ceil_seconds(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

struct ZoneState {
    zone: Zone,
    name: Arc<str>,
    policy: Policy,
    table: Table,
}

struct Inner {
    zones: Vec<ZoneState>,
    client_ip: ClientIp,
    redis: Option<RedisStore>,
    clock: LocalClock,
    metrics: Metrics,
}

/// Checks requests against a set of zones. Cheap to clone (an `Arc`).
///
/// ```
/// use wharf_ratelimit::{Limiter, Rate, Zone, KeySource};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let limiter = Limiter::builder()
///     .zone(Zone::new("api", Rate::per_second(10).unwrap()).burst(2).nodelay().key(KeySource::Global))
///     .build()
///     .unwrap();
/// let (parts, ()) = http::Request::get("/").body(()).unwrap().into_parts();
/// let mut allowed = 0;
/// for _ in 0..5 {
///     if limiter.check(&parts).await.allowed { allowed += 1; }
/// }
/// assert_eq!(allowed, 3); // burst 2, nodelay: 2 + 1 pass at once
/// # });
/// ```
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field(
                "zones",
                &self.inner.zones.iter().map(|z| &z.zone).collect::<Vec<_>>(),
            )
            .field("client_ip", &self.inner.client_ip)
            .field("redis", &self.inner.redis)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Limiter`].
#[derive(Debug, Default)]
pub struct LimiterBuilder {
    zones: Vec<Zone>,
    client_ip: ClientIp,
    redis: Option<RedisStore>,
    max_keys: Option<usize>,
    memory: Option<ZoneMemory>,
}

/// Default most keys each zone keeps in memory.
pub const DEFAULT_MAX_KEYS: usize = 100_000;

impl LimiterBuilder {
    /// Adds a zone. Zones are checked in the order added.
    #[must_use]
    pub fn zone(mut self, zone: Zone) -> Self {
        self.zones.push(zone);
        self
    }

    /// How client IPs are found. Default [`ClientIp::new`] (no trusted proxies).
    #[must_use]
    pub fn client_ip(mut self, client_ip: ClientIp) -> Self {
        self.client_ip = client_ip;
        self
    }

    /// Shares [`StoreKind::Shared`] zones through Redis. Default: none (memory).
    #[must_use]
    pub fn redis(mut self, store: RedisStore) -> Self {
        self.redis = Some(store);
        self
    }

    /// Most keys each zone holds in memory (bounded memory; nearest-to-expiry
    /// keys are forgotten beyond it). Default 100 000.
    #[must_use]
    pub fn max_keys_per_zone(mut self, max_keys: usize) -> Self {
        self.max_keys = Some(max_keys);
        self
    }

    /// Keeps the memory zones' state in `memory`: give every worker process
    /// of an instance the same shared segment (made by the master) and they
    /// count as one, across worker restarts and binary upgrades too. Its
    /// keys per zone replace [`max_keys_per_zone`](Self::max_keys_per_zone).
    /// Default: memory of this process alone.
    #[must_use]
    pub fn memory(mut self, memory: ZoneMemory) -> Self {
        self.memory = Some(memory);
        self
    }

    /// The limiter.
    pub fn build(self) -> Result<Limiter, BuildError> {
        for (i, zone) in self.zones.iter().enumerate() {
            if self.zones[..i].iter().any(|z| z.name == zone.name) {
                return Err(BuildError::DuplicateZone(zone.name.clone()));
            }
        }
        let memory = match self.memory {
            Some(memory) if memory.zones() < self.zones.len() => {
                return Err(BuildError::TooManyZones {
                    zones: self.zones.len(),
                    capacity: memory.zones(),
                })
            }
            Some(memory) => memory,
            None => ZoneMemory::private(
                self.zones.len().max(1),
                self.max_keys.unwrap_or(DEFAULT_MAX_KEYS).max(memory::PROBE),
            )?,
        };
        let clock = LocalClock::new();
        let now_secs = clock.now() / 1_000_000;
        let memory_store = if memory.is_shared() {
            "shared_memory"
        } else {
            "memory"
        };
        let metrics = Metrics::new(self.zones.iter().map(|z| {
            let store = if z.store == StoreKind::Shared && self.redis.is_some() {
                "redis"
            } else {
                memory_store
            };
            (z.name.clone(), store)
        }));
        Ok(Limiter {
            inner: Arc::new(Inner {
                zones: self
                    .zones
                    .into_iter()
                    .map(|zone| {
                        let policy = zone.policy();
                        ZoneState {
                            name: Arc::from(zone.name.as_str()),
                            table: memory
                                .table(memory::definition_id(&zone.name, &policy), now_secs),
                            policy,
                            zone,
                        }
                    })
                    .collect(),
                client_ip: self.client_ip,
                redis: self.redis,
                clock,
                metrics,
            }),
        })
    }
}

/// A zone that applies to the request, with its key.
struct Applied {
    zone: usize,
    key: String,
}

impl Limiter {
    /// A builder with no zones.
    pub fn builder() -> LimiterBuilder {
        LimiterBuilder::default()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The zones, in order.
    pub fn zones(&self) -> impl Iterator<Item = &Zone> {
        self.inner.zones.iter().map(|z| &z.zone)
    }

    /// The Redis store, if any.
    pub fn redis(&self) -> Option<&RedisStore> {
        self.inner.redis.as_ref()
    }

    /// The client-IP resolver.
    pub fn client_ip(&self) -> &ClientIp {
        &self.inner.client_ip
    }

    /// Keys held in memory by zone `name` (its own state or its fallback).
    pub fn memory_keys(&self, name: &str) -> Option<usize> {
        self.inner
            .zones
            .iter()
            .find(|z| z.zone.name == name)
            .map(|z| z.table.len())
    }

    /// Readiness: `Ok` unless Redis is down **and** some Redis-backed zone
    /// fails closed (then the instance would reject that zone's traffic, so
    /// it should leave the load balancer). The error names Redis's state.
    pub async fn readiness(&self) -> Result<(), String> {
        let Some(redis) = &self.inner.redis else {
            return Ok(());
        };
        let result = redis.ping().await;
        let fails_closed = self.inner.zones.iter().any(|z| {
            z.zone.store == StoreKind::Shared && z.zone.on_redis_failure == FailureMode::Closed
        });
        match result {
            Err(error) if fails_closed => Err(format!("{error}; a rate-limit zone fails closed")),
            // Down but failing open (or to memory): report it, stay ready.
            _ => Ok(()),
        }
    }

    /// Redis's state for a status page: `none`, `ok`, `breaker open`, ….
    pub fn redis_state(&self) -> &'static str {
        match &self.inner.redis {
            None => "none",
            Some(r) => match r.breaker_state() {
                BreakerState::Closed if self.inner.metrics.fallback_active() => "failing",
                BreakerState::Closed => "ok",
                BreakerState::Open => "breaker open",
                BreakerState::HalfOpen => "probing",
            },
        }
    }

    /// Checks a request against every zone that applies, all or nothing, and
    /// charges it when it passes.
    pub async fn check(&self, parts: &Parts) -> Decision {
        let inner = &*self.inner;
        let applied: Vec<Applied> = inner
            .zones
            .iter()
            .enumerate()
            .filter(|(_, z)| z.zone.matcher.as_ref().is_none_or(|m| m(parts)))
            .filter_map(|(i, z)| {
                Some(Applied {
                    zone: i,
                    key: z.zone.key.extract(parts, &inner.client_ip)?,
                })
            })
            .collect();
        if applied.is_empty() {
            return Decision::unlimited();
        }
        let decision = self.decide(&applied).await;
        for z in &decision.zones {
            if let Some((_, counters)) = inner.metrics.zones.iter().find(|(n, _)| **n == *z.zone) {
                let fallback = matches!(
                    z.source,
                    Source::FailedOpen | Source::FailedClosed | Source::Fallback
                );
                counters.record(
                    decision.allowed,
                    decision.allowed && !decision.delay.is_zero(),
                    fallback,
                );
            }
        }
        decision
    }

    #[allow(clippy::too_many_lines)] // one pass over the zones, in the order the doc describes
    async fn decide(&self, applied: &[Applied]) -> Decision {
        let inner = &*self.inner;
        // One zone, in memory (the common case, and every check under
        // attack): the same decision as the general path below, without its
        // bookkeeping vectors.
        if let [only] = applied {
            let z = &inner.zones[only.zone];
            if !self.in_redis(only.zone) {
                let item = memory::Item {
                    table: &z.table,
                    policy: z.policy,
                    key: &only.key,
                };
                let outcome = memory::check_one(&item, inner.clock.now());
                let rejected = !outcome.allowed;
                return Decision::settled(
                    rejected,
                    Duration::from_micros(outcome.delay),
                    Duration::from_micros(outcome.retry_after),
                    vec![self.result(only.zone, Some(&outcome), rejected, Source::Memory)],
                );
            }
        }
        let mut results: Vec<Option<ZoneResult>> = vec![None; applied.len()];
        let mut memory_items: Vec<usize> = Vec::new();
        let mut redis_items: Vec<usize> = Vec::new();
        for (i, a) in applied.iter().enumerate() {
            if self.in_redis(a.zone) {
                redis_items.push(i);
            } else {
                memory_items.push(i);
            }
        }
        let mut rejected = false;
        let mut retry_after = Duration::ZERO;
        let mut delay = Duration::ZERO;
        let mut charged: Vec<(Vec<String>, Vec<i64>)> = Vec::new();

        if let (Some(redis), false) = (&inner.redis, redis_items.is_empty()) {
            let redis_keys: Vec<String> = redis_items
                .iter()
                .map(|&i| redis.redis_key(&inner.zones[applied[i].zone].zone.name, &applied[i].key))
                .collect();
            if let Some(wait) = redis.denied(&redis_keys) {
                inner.metrics.deny_cache_hit();
                let zones = redis_items
                    .iter()
                    .map(|&i| self.result(applied[i].zone, None, true, Source::DenyCache))
                    .collect();
                return Decision {
                    allowed: false,
                    delay: Duration::ZERO,
                    retry_after: wait,
                    zones,
                };
            }
            // Group by client key: one hash tag, one slot, one atomic script.
            let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
            for (n, &i) in redis_items.iter().enumerate() {
                match groups.iter_mut().find(|(k, _)| *k == applied[i].key) {
                    Some((_, members)) => members.push(n),
                    None => groups.push((&applied[i].key, vec![n])),
                }
            }
            for (_, members) in groups {
                let keys: Vec<String> = members.iter().map(|&n| redis_keys[n].clone()).collect();
                let policies: Vec<Policy> = members
                    .iter()
                    .map(|&n| inner.zones[applied[redis_items[n]].zone].policy)
                    .collect();
                match redis
                    .check_group(keys.clone(), &policies, &inner.metrics)
                    .await
                {
                    Ok(answer) => {
                        for (m, &n) in members.iter().enumerate() {
                            let i = redis_items[n];
                            let outcome = policies[m].judge(answer.tats[m], answer.now);
                            if outcome.allowed {
                                delay = delay.max(Duration::from_micros(outcome.delay));
                            } else {
                                let wait = Duration::from_micros(outcome.retry_after);
                                retry_after = retry_after.max(wait);
                                redis.deny_until(&keys[m], wait);
                            }
                            results[i] = Some(self.result(
                                applied[i].zone,
                                Some(&outcome),
                                !outcome.allowed,
                                Source::Redis,
                            ));
                        }
                        if answer.allowed {
                            let args = policies
                                .iter()
                                .zip(&answer.tats)
                                .flat_map(|(p, tat)| [p.interval_micros(), *tat])
                                .map(|v| i64::try_from(v).unwrap_or(i64::MAX))
                                .collect();
                            charged.push((keys, args));
                        } else {
                            rejected = true;
                            break;
                        }
                    }
                    Err(why) => {
                        for &n in &members {
                            let i = redis_items[n];
                            let zone = applied[i].zone;
                            match inner.zones[zone].zone.on_redis_failure {
                                FailureMode::Open => {
                                    results[i] =
                                        Some(self.result(zone, None, false, Source::FailedOpen));
                                }
                                FailureMode::Closed => {
                                    rejected = true;
                                    retry_after = retry_after.max(Duration::from_secs(1));
                                    results[i] =
                                        Some(self.result(zone, None, true, Source::FailedClosed));
                                }
                                FailureMode::Local => memory_items.push(i),
                            }
                        }
                        if let Unavailable::Failed(error) = why {
                            tracing::trace!(error, "Redis check failed");
                        }
                        if rejected {
                            break;
                        }
                    }
                }
            }
        }

        if !rejected && !memory_items.is_empty() {
            memory_items.sort_by_key(|&i| applied[i].zone);
            let items: Vec<memory::Item<'_>> = memory_items
                .iter()
                .map(|&i| {
                    let z = &inner.zones[applied[i].zone];
                    memory::Item {
                        table: &z.table,
                        policy: z.policy,
                        key: &applied[i].key,
                    }
                })
                .collect();
            let outcomes = memory::check_all(&items, inner.clock.now());
            for (&i, outcome) in memory_items.iter().zip(&outcomes) {
                let zone = applied[i].zone;
                let source = if self.in_redis(zone) {
                    Source::Fallback
                } else {
                    Source::Memory
                };
                if outcome.allowed {
                    delay = delay.max(Duration::from_micros(outcome.delay));
                } else {
                    rejected = true;
                    retry_after = retry_after.max(Duration::from_micros(outcome.retry_after));
                }
                results[i] = Some(self.result(zone, Some(outcome), !outcome.allowed, source));
            }
        }

        if rejected && !charged.is_empty() {
            if let Some(redis) = &inner.redis {
                for (keys, args) in charged {
                    redis.refund_group(keys, args).await;
                }
            }
        }
        Decision::settled(
            rejected,
            delay,
            retry_after,
            results.into_iter().flatten().collect(),
        )
    }

    /// Whether `zone` keeps its state in Redis (a shared zone, and a store).
    fn in_redis(&self, zone: usize) -> bool {
        self.inner.redis.is_some() && self.inner.zones[zone].zone.store == StoreKind::Shared
    }

    fn result(
        &self,
        zone: usize,
        outcome: Option<&Outcome>,
        rejected: bool,
        source: Source,
    ) -> ZoneResult {
        let z = &self.inner.zones[zone];
        let window = Duration::from_micros(z.policy.limit_micros());
        ZoneResult {
            zone: Arc::clone(&z.name),
            capacity: z.policy.capacity(),
            window_seconds: ceil_seconds(window).max(1),
            remaining: outcome.map(|o| o.remaining),
            reset: outcome.map(|o| Duration::from_micros(o.reset)),
            rejected,
            source,
        }
    }
}
