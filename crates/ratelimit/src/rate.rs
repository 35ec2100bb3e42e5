//! [`Rate`]: nginx's `rate=10r/s` / `rate=30r/m`, held as the emission interval.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The per-second or per-minute unit of a [`Rate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Per {
    /// `r/s`.
    Second,
    /// `r/m`.
    Minute,
}

/// A sustained request rate, written as nginx writes it: `10r/s`, `30r/m`.
///
/// Held as the *emission interval* `T` in whole microseconds (`1 s / n` or
/// `60 s / n`, truncated): one request is admitted per `T` once the burst is
/// used up. nginx holds `r/m` rates as milli-requests per second truncated to
/// an integer (`1r/m` is really 0.016 r/s, one request per 62.5 s); wharf keeps
/// the exact interval (60 s), so per-minute rates can differ from nginx's by
/// that rounding. Per-second rates match nginx exactly for any `n` dividing
/// 1 000 000.
///
/// ```
/// use wharf_ratelimit::Rate;
/// let rate: Rate = "10r/s".parse().unwrap();
/// assert_eq!(rate.interval_micros(), 100_000);
/// assert_eq!(rate.to_string(), "10r/s");
/// assert!("10/s".parse::<Rate>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    requests: u32,
    per: Per,
}

/// The largest number of requests a [`Rate`] may name (one per microsecond).
pub const MAX_REQUESTS_PER_SECOND: u32 = 1_000_000;

impl Rate {
    /// `requests` per `per`, for constants (checked when the constant is
    /// evaluated): `const API: Rate = Rate::const_new(10, Per::Second);`
    ///
    /// # Panics
    ///
    /// Unless 1 ≤ `requests` ≤ 1 000 000 per second or 60 000 000 per minute
    /// (in a constant, that is a compile error).
    pub const fn const_new(requests: u32, per: Per) -> Self {
        let most = match per {
            Per::Second => MAX_REQUESTS_PER_SECOND,
            Per::Minute => MAX_REQUESTS_PER_SECOND * 60,
        };
        assert!(requests >= 1 && requests <= most, "rate out of range");
        Self { requests, per }
    }

    /// `requests` per second; `None` unless 1 ≤ `requests` ≤ 1 000 000.
    pub fn per_second(requests: u32) -> Option<Self> {
        (1..=MAX_REQUESTS_PER_SECOND)
            .contains(&requests)
            .then_some(Self {
                requests,
                per: Per::Second,
            })
    }

    /// `requests` per minute; `None` unless 1 ≤ `requests` ≤ 60 000 000.
    pub fn per_minute(requests: u32) -> Option<Self> {
        (1..=MAX_REQUESTS_PER_SECOND * 60)
            .contains(&requests)
            .then_some(Self {
                requests,
                per: Per::Minute,
            })
    }

    /// The number of requests per [`unit`](Self::per).
    pub fn requests(&self) -> u32 {
        self.requests
    }

    /// The unit.
    pub fn per(&self) -> Per {
        self.per
    }

    /// The emission interval `T` in microseconds (at least 1).
    pub fn interval_micros(&self) -> u64 {
        let window: u64 = match self.per {
            Per::Second => 1_000_000,
            Per::Minute => 60_000_000,
        };
        (window / u64::from(self.requests)).max(1)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per {
            Per::Second => "s",
            Per::Minute => "m",
        };
        write!(f, "{}r/{unit}", self.requests)
    }
}

/// Why a rate did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateError {
    /// Not of the form `<n>r/s` or `<n>r/m`.
    #[error("expected a rate like 10r/s or 30r/m")]
    Syntax,
    /// The number is 0 or more than one request per microsecond.
    #[error("expected from 1r/s to 1000000r/s (or 1r/m to 60000000r/m)")]
    OutOfRange,
}

impl FromStr for Rate {
    type Err = RateError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (number, per) = if let Some(n) = text.strip_suffix("r/s") {
            (n, Per::Second)
        } else if let Some(n) = text.strip_suffix("r/m") {
            (n, Per::Minute)
        } else {
            return Err(RateError::Syntax);
        };
        if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RateError::Syntax);
        }
        let requests: u32 = number.parse().map_err(|_| RateError::OutOfRange)?;
        match per {
            Per::Second => Self::per_second(requests),
            Per::Minute => Self::per_minute(requests),
        }
        .ok_or(RateError::OutOfRange)
    }
}

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}
