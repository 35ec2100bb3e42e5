//! Counters and a latency histogram, lock-free, reported as values that
//! wharf-telemetry encodes as Prometheus text.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wharf_telemetry::metrics::{Family, Histogram, Snapshot};

/// Upper bounds (µs) of the Redis round-trip histogram buckets.
const LATENCY_BUCKETS_MICROS: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

type Getter = fn(&ZoneCounters) -> u64;

/// One zone's counters.
#[derive(Debug, Default)]
pub struct ZoneCounters {
    checks: AtomicU64,
    allowed: AtomicU64,
    delayed: AtomicU64,
    limited: AtomicU64,
    fallback: AtomicU64,
}

impl ZoneCounters {
    /// Requests this zone applied to.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }
    /// Requests that passed (possibly after a delay).
    pub fn allowed(&self) -> u64 {
        self.allowed.load(Ordering::Relaxed)
    }
    /// Requests that passed after a delay.
    pub fn delayed(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }
    /// Requests rejected (by this zone or another zone of the same request).
    pub fn limited(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }
    /// Checks decided by the failure mode because Redis could not be used.
    pub fn fallback(&self) -> u64 {
        self.fallback.load(Ordering::Relaxed)
    }

    pub(crate) fn record(&self, allowed: bool, delayed: bool, fallback: bool) {
        self.checks.fetch_add(1, Ordering::Relaxed);
        if allowed {
            self.allowed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.limited.fetch_add(1, Ordering::Relaxed);
        }
        if delayed {
            self.delayed.fetch_add(1, Ordering::Relaxed);
        }
        if fallback {
            self.fallback.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The limiter's metrics. Read them directly, as values with
/// [`Metrics::snapshot`] or as Prometheus text with
/// [`Metrics::render_prometheus`].
#[derive(Debug)]
pub struct Metrics {
    pub(crate) zones: Vec<(String, ZoneCounters)>,
    /// Where each zone counts: `redis`, `shared_memory` or `memory`.
    stores: Vec<&'static str>,
    redis_calls: AtomicU64,
    redis_errors: AtomicU64,
    redis_skipped: AtomicU64,
    deny_cache_hits: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_MICROS.len() + 1],
    latency_sum_micros: AtomicU64,
    pub(crate) fallback_active: std::sync::atomic::AtomicBool,
}

impl Metrics {
    pub(crate) fn new(zones: impl IntoIterator<Item = (String, &'static str)>) -> Self {
        let (names, stores): (Vec<String>, Vec<&'static str>) = zones.into_iter().unzip();
        Self {
            zones: names
                .into_iter()
                .map(|n| (n, ZoneCounters::default()))
                .collect(),
            stores,
            redis_calls: AtomicU64::new(0),
            redis_errors: AtomicU64::new(0),
            redis_skipped: AtomicU64::new(0),
            deny_cache_hits: AtomicU64::new(0),
            latency_buckets: Default::default(),
            latency_sum_micros: AtomicU64::new(0),
            fallback_active: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Where the zone named `name` counts: `redis` (shared by every
    /// replica), `shared_memory` (by every worker of this instance) or
    /// `memory` (this process).
    pub fn store(&self, name: &str) -> Option<&'static str> {
        let i = self.zones.iter().position(|(n, _)| n == name)?;
        self.stores.get(i).copied()
    }

    /// The counters of the zone named `name`.
    pub fn zone(&self, name: &str) -> Option<&ZoneCounters> {
        self.zones.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    /// Checks sent to Redis (including failed ones); batched checks share a
    /// round trip, so this counts checks, not round trips.
    pub fn redis_calls(&self) -> u64 {
        self.redis_calls.load(Ordering::Relaxed)
    }

    /// Checks sent to Redis that failed or timed out.
    pub fn redis_errors(&self) -> u64 {
        self.redis_errors.load(Ordering::Relaxed)
    }

    /// Checks that skipped Redis because the circuit breaker was open.
    pub fn redis_skipped(&self) -> u64 {
        self.redis_skipped.load(Ordering::Relaxed)
    }

    /// Checks answered by the local deny cache without asking Redis.
    pub fn deny_cache_hits(&self) -> u64 {
        self.deny_cache_hits.load(Ordering::Relaxed)
    }

    /// Whether the last Redis check failed (the failure modes are in force).
    pub fn fallback_active(&self) -> bool {
        self.fallback_active.load(Ordering::Relaxed)
    }

    pub(crate) fn redis_call(&self, elapsed: Duration, ok: bool) {
        self.redis_calls.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.redis_errors.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(LATENCY_BUCKETS_MICROS.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn redis_skip(&self) {
        self.redis_skipped.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn deny_cache_hit(&self) {
        self.deny_cache_hits.fetch_add(1, Ordering::Relaxed);
    }

    /// The metrics as values (names prefixed `wharf_ratelimit_`), to encode
    /// or to send to a supervisor's master.
    pub fn snapshot(&self) -> Snapshot {
        let mut out = Snapshot::new();
        let counters: [(&str, &str, Getter); 5] = [
            (
                "checks",
                "Requests a zone applied to.",
                ZoneCounters::checks,
            ),
            (
                "allowed",
                "Requests a zone let through.",
                ZoneCounters::allowed,
            ),
            (
                "delayed",
                "Requests delayed to the rate before being served.",
                ZoneCounters::delayed,
            ),
            ("limited", "Requests rejected.", ZoneCounters::limited),
            (
                "fallback",
                "Checks decided by the Redis failure mode.",
                ZoneCounters::fallback,
            ),
        ];
        for (name, help, get) in counters {
            let mut family = Family::counter(&format!("wharf_ratelimit_{name}_total"), help);
            for (zone, c) in &self.zones {
                family.sample(&[("zone", zone)], get(c));
            }
            out.push(family);
        }
        // Where each zone counts: the same in every worker.
        let mut info = Family::gauge(
            "wharf_ratelimit_zone_info",
            "Where each zone counts: redis (every replica), shared_memory (every worker of the instance) or memory (one process).",
        )
        .per_instance();
        for ((zone, _), store) in self.zones.iter().zip(&self.stores) {
            info.sample(&[("zone", zone), ("store", store)], 1_u64);
        }
        out.push(info);
        for (name, help, value) in [
            (
                "redis_errors_total",
                "Redis checks that failed or timed out.",
                self.redis_errors(),
            ),
            (
                "redis_skipped_total",
                "Checks that skipped Redis while the breaker was open.",
                self.redis_skipped(),
            ),
            (
                "deny_cache_hits_total",
                "Checks rejected from the local deny cache.",
                self.deny_cache_hits(),
            ),
        ] {
            out.push(Family::counter(&format!("wharf_ratelimit_{name}"), help).with(&[], value));
        }
        // 1 while any worker's limiter is in its failure mode.
        out.push(
            Family::gauge(
                "wharf_ratelimit_fallback_active",
                "1 while Redis is failing and failure modes decide.",
            )
            .per_instance()
            .with(&[], self.fallback_active()),
        );
        let counts: Vec<u64> = self
            .latency_buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let bounds = LATENCY_BUCKETS_MICROS.map(micros_as_seconds);
        let sum = micros_as_seconds(self.latency_sum_micros.load(Ordering::Relaxed));
        out.push(
            Family::histogram(
                "wharf_ratelimit_redis_seconds",
                "Time a Redis check waited for its answer: any wait in the batch queue, then the round trip.",
            )
            .with(&[], Histogram::from_counts(&bounds, &counts, sum)),
        );
        out
    }

    /// [`snapshot`](Self::snapshot) in the Prometheus text format.
    pub fn render_prometheus(&self) -> String {
        self.snapshot().encode()
    }
}

/// Microseconds as seconds (exact for the bucket bounds, 100 µs and up).
#[allow(clippy::cast_precision_loss)] // sums past 2^53 µs (285 years) lose a µs
fn micros_as_seconds(micros: u64) -> f64 {
    micros as f64 / 1_000_000.0
}
