//! The GCRA arithmetic, free of clocks and stores, in integer microseconds.
//!
//! State is one number per key: the *theoretical arrival time* `TAT` (µs on
//! the store's clock; 0 for a key never seen). With emission interval `T` and
//! burst `b`, a request at `now` computes `new = max(TAT, now) + T` and passes
//! when `new - now <= (b + 1)·T`; only a passing request stores `new` (a
//! rejected request is not charged). This is exactly nginx `limit_req`: its
//! `excess` (in requests) equals `(TAT - now) / T - 1` after the request, and
//! it passes while `excess <= burst`. So a fresh key admits `burst + 1`
//! requests at once, then one per `T`.
//!
//! In the delaying mode a passing request whose excess is `e` (0 for the first
//! of a burst) waits `max(e - delay, 0)·T` before it is served, `delay` being
//! nginx's `delay=` parameter (0 by default; `nodelay` is `delay = burst`).

use crate::rate::Rate;

/// One zone's limit: rate, burst and how much of the burst is served at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    interval: u64,
    burst: u32,
    delay: u32,
}

impl Policy {
    /// `rate` with `burst` excess requests, all delayed to the rate (nginx
    /// `limit_req zone=z burst=N;`).
    pub fn new(rate: Rate, burst: u32) -> Self {
        Self::from_interval(rate.interval_micros(), burst)
    }

    /// As [`Policy::new`] with the interval given directly in microseconds (at least 1).
    pub fn from_interval(interval_micros: u64, burst: u32) -> Self {
        Self {
            interval: interval_micros.max(1),
            burst,
            delay: 0,
        }
    }

    /// nginx `nodelay`: the whole burst is served at once.
    #[must_use]
    pub fn nodelay(mut self) -> Self {
        self.delay = self.burst;
        self
    }

    /// nginx `delay=N`: the first `n` excess requests are served at once, the
    /// rest of the burst is delayed. Capped at the burst.
    #[must_use]
    pub fn delay_after(mut self, n: u32) -> Self {
        self.delay = n.min(self.burst);
        self
    }

    /// The emission interval `T` in microseconds.
    pub fn interval_micros(&self) -> u64 {
        self.interval
    }

    /// The burst (excess requests allowed beyond the rate).
    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Excess requests served without delay (`burst` with `nodelay`).
    pub fn delay_threshold(&self) -> u32 {
        self.delay
    }

    /// Whether the whole burst is served at once.
    pub fn is_nodelay(&self) -> bool {
        self.delay >= self.burst
    }

    /// The tolerance `(burst + 1)·T`: how far ahead of `now` a TAT may be.
    pub fn limit_micros(&self) -> u64 {
        self.interval
            .saturating_mul(u64::from(self.burst).saturating_add(1))
    }

    /// How many requests a fresh key may make at once: `burst + 1`.
    pub fn capacity(&self) -> u64 {
        u64::from(self.burst) + 1
    }

    /// Decides a request at `now` for a key whose stored TAT is `tat` (0 when
    /// absent). Never panics or overflows: arithmetic saturates.
    pub fn decide(&self, tat: u64, now: u64) -> Outcome {
        self.judge(tat.max(now).saturating_add(self.interval), now)
    }

    /// The outcome of a request that would move the key's TAT to `new_tat`
    /// at `now` (what the Redis script computed). Saturates on nonsense input.
    pub fn judge(&self, new_tat: u64, now: u64) -> Outcome {
        let ahead = new_tat.saturating_sub(now);
        let base = new_tat.saturating_sub(self.interval).max(now);
        let limit = self.limit_micros();
        if ahead > limit {
            Outcome {
                allowed: false,
                tat: new_tat,
                retry_after: ahead - limit,
                delay: 0,
                remaining: 0,
                reset: base - now,
            }
        } else {
            let excess = ahead.saturating_sub(self.interval);
            let free = self.interval.saturating_mul(u64::from(self.delay));
            Outcome {
                allowed: true,
                tat: new_tat,
                retry_after: 0,
                delay: excess.saturating_sub(free),
                remaining: ((limit - ahead) / self.interval).min(u64::from(self.burst)),
                reset: ahead,
            }
        }
    }

    /// The TAT after refunding one request charged as `charged_tat`, given the
    /// TAT now stored: one interval earlier, never before `now`, and unchanged
    /// when the key has since been charged past `charged_tat` by others
    /// (refunding theirs would be wrong; ours is then lost, erring strict).
    pub fn refund(&self, stored: u64, charged_tat: u64, now: u64) -> u64 {
        if stored == charged_tat {
            stored.saturating_sub(self.interval).max(now)
        } else {
            stored
        }
    }
}

/// What [`Policy::decide`] concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// The request passes.
    pub allowed: bool,
    /// The TAT to store when it passes (for a rejected request: what it would
    /// have been; nothing is stored).
    pub tat: u64,
    /// For a rejected request: µs until the same request would pass (≥ 1).
    pub retry_after: u64,
    /// For a passing request in the delaying mode: µs to wait before serving it.
    pub delay: u64,
    /// Requests that would still pass at once after this one.
    pub remaining: u64,
    /// µs until the key is back to its full burst.
    pub reset: u64,
}
