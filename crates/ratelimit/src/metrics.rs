//! Counters and a latency histogram, lock-free, rendered as Prometheus text.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

/// The limiter's metrics. Read them directly or as Prometheus text with
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

    /// Redis round trips attempted (including failed ones).
    pub fn redis_calls(&self) -> u64 {
        self.redis_calls.load(Ordering::Relaxed)
    }

    /// Redis round trips that failed or timed out.
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

    /// The metrics in the Prometheus text exposition format, names prefixed
    /// `wharf_ratelimit_`.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::new();
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
            let _ = writeln!(out, "# HELP wharf_ratelimit_{name}_total {help}");
            let _ = writeln!(out, "# TYPE wharf_ratelimit_{name}_total counter");
            for (zone, c) in &self.zones {
                let _ = writeln!(
                    out,
                    "wharf_ratelimit_{name}_total{{zone=\"{zone}\"}} {}",
                    get(c)
                );
            }
        }
        self.render_zone_info(&mut out);
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
            let _ = writeln!(out, "# HELP wharf_ratelimit_{name} {help}");
            let _ = writeln!(out, "# TYPE wharf_ratelimit_{name} counter");
            let _ = writeln!(out, "wharf_ratelimit_{name} {value}");
        }
        let _ = writeln!(out, "# HELP wharf_ratelimit_fallback_active 1 while Redis is failing and failure modes decide.");
        let _ = writeln!(out, "# TYPE wharf_ratelimit_fallback_active gauge");
        let _ = writeln!(
            out,
            "wharf_ratelimit_fallback_active {}",
            u8::from(self.fallback_active())
        );
        let _ = writeln!(
            out,
            "# HELP wharf_ratelimit_redis_seconds Redis check round-trip time."
        );
        let _ = writeln!(out, "# TYPE wharf_ratelimit_redis_seconds histogram");
        let mut cumulative = 0;
        for (i, bucket) in self.latency_buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            match LATENCY_BUCKETS_MICROS.get(i) {
                Some(bound) => {
                    let _ = writeln!(
                        out,
                        "wharf_ratelimit_redis_seconds_bucket{{le=\"{}\"}} {cumulative}",
                        micros_as_seconds(*bound)
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        "wharf_ratelimit_redis_seconds_bucket{{le=\"+Inf\"}} {cumulative}"
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "wharf_ratelimit_redis_seconds_sum {}",
            micros_as_seconds(self.latency_sum_micros.load(Ordering::Relaxed))
        );
        let _ = writeln!(out, "wharf_ratelimit_redis_seconds_count {cumulative}");
        out
    }
}

impl Metrics {
    /// `wharf_ratelimit_zone_info{zone, store} 1`: where each zone counts.
    fn render_zone_info(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP wharf_ratelimit_zone_info Where each zone counts: redis (every replica), shared_memory (every worker of the instance) or memory (one process)."
        );
        let _ = writeln!(out, "# TYPE wharf_ratelimit_zone_info gauge");
        for ((zone, _), store) in self.zones.iter().zip(&self.stores) {
            let _ = writeln!(
                out,
                "wharf_ratelimit_zone_info{{zone=\"{zone}\",store=\"{store}\"}} 1"
            );
        }
    }
}

fn micros_as_seconds(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}
