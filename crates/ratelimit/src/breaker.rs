//! A circuit breaker in front of Redis: after `threshold` consecutive
//! failures, Redis is skipped for `cooldown`; then one request probes it and
//! either closes the breaker or opens it for another cool-down.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Where the breaker stands (for readiness and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Redis is used.
    Closed,
    /// Redis is skipped until the cool-down ends.
    Open,
    /// One probe is in flight; others skip Redis until it answers.
    HalfOpen,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

#[derive(Debug)]
struct Inner {
    open_until: Option<Instant>,
    probe_started: Option<Instant>,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Breaker {
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    inner: Mutex<Inner>,
    threshold: u32,
    cooldown: Duration,
}

/// Whether to ask Redis for this check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permit {
    /// Ask it.
    Go,
    /// Skip it: the breaker is open.
    Skip,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            state: AtomicU8::new(CLOSED),
            consecutive_failures: AtomicU32::new(0),
            inner: Mutex::new(Inner {
                open_until: None,
                probe_started: None,
            }),
            threshold: threshold.max(1),
            cooldown,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Relaxed) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    pub(crate) fn permit(&self) -> Permit {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Permit::Go;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match self.state.load(Ordering::Acquire) {
            CLOSED => Permit::Go,
            OPEN if inner.open_until.is_some_and(|t| now < t) => Permit::Skip,
            OPEN => {
                inner.probe_started = Some(now);
                self.state.store(HALF_OPEN, Ordering::Release);
                tracing::debug!("Probing Redis after the rate limiter's cool-down");
                Permit::Go
            }
            // A probe that never answered (its future was dropped) must not
            // wedge the breaker half-open: start another after a cool-down.
            _ if inner
                .probe_started
                .is_some_and(|t| now.duration_since(t) >= self.cooldown) =>
            {
                inner.probe_started = Some(now);
                Permit::Go
            }
            _ => Permit::Skip,
        }
    }

    /// Records a Redis answer.
    pub(crate) fn success(&self) {
        if self.state.load(Ordering::Acquire) == CLOSED {
            // Fast path, no lock: reset the count only when there is one.
            if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
                self.consecutive_failures.store(0, Ordering::Relaxed);
            }
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if self.state.load(Ordering::Acquire) != CLOSED {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            inner.open_until = None;
            inner.probe_started = None;
            self.state.store(CLOSED, Ordering::Release);
            tracing::info!("Redis answers again; rate limits are shared across replicas again");
        }
    }

    /// Records a Redis failure (error or timeout). Returns true when this
    /// failure opened the breaker.
    pub(crate) fn failure(&self, error: &str) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if self.state.load(Ordering::Acquire) == CLOSED {
            let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if failures >= self.threshold {
                inner.open_until = Some(now + self.cooldown);
                self.state.store(OPEN, Ordering::Release);
                tracing::warn!(
                    error,
                    failures,
                    cooldown_ms = u64::try_from(self.cooldown.as_millis()).unwrap_or(u64::MAX),
                    "Redis is failing; the rate limiter stops asking it and applies each zone's failure mode until it answers again"
                );
                return true;
            }
            return false;
        }
        inner.open_until = Some(now + self.cooldown);
        inner.probe_started = None;
        self.state.store(OPEN, Ordering::Release);
        tracing::debug!(error, "Redis probe failed; the breaker stays open");
        false
    }
}
