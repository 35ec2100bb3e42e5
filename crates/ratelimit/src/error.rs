//! Errors building a limiter.

/// Why a limiter could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The Redis URL is not one fred accepts.
    #[error("invalid Redis URL: {0}")]
    RedisUrl(String),
    /// Redis is enabled but no URL was given.
    #[error("REDIS_ENABLED is true but REDIS_URL is not set")]
    MissingRedisUrl,
    /// The key prefix contains a hash-tag brace.
    #[error("the Redis key prefix {0:?} must not contain {{ or }}")]
    KeyPrefix(String),
    /// Two zones have the same name.
    #[error("two rate-limit zones are named {0:?}")]
    DuplicateZone(String),
    /// The zone memory cannot hold these zones.
    #[error("rate-limit zone memory: {0}")]
    Memory(#[from] crate::memory::ZoneMemoryError),
    /// More zones than the shared zone memory was made for.
    #[error("{zones} rate-limit zones, but the shared zone memory holds {capacity}")]
    TooManyZones {
        /// Zones configured.
        zones: usize,
        /// Zones the memory holds.
        capacity: usize,
    },
    /// A trusted proxy range does not parse.
    #[error(transparent)]
    TrustedProxy(#[from] crate::key::IpNetError),
}
