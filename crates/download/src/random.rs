//! Random bytes for CSP nonces, CSRF secrets, trace ids and local document keys.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `N` bytes from the operating system's generator.
///
/// `getrandom` only fails when the OS has no usable source at all; rather than
/// fail a page for that, fall back to std's per-process random `SipHash` keys
/// mixed with a counter and the clock (still unpredictable to a remote client).
pub(crate) fn bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    if getrandom::getrandom(&mut buf).is_err() {
        tracing::warn!("The OS random generator failed; using the fallback generator");
        for chunk in buf.chunks_mut(8) {
            let mut hasher = RandomState::new().build_hasher();
            hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
            if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
                hasher.write_u128(now.as_nanos());
            }
            let word = hasher.finish().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
    buf
}

/// Lower-case hex of `N` random bytes.
pub(crate) fn hex<const N: usize>() -> String {
    to_hex(&bytes::<N>())
}

/// Lower-case hex of `bytes`.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_values_differ() {
        assert_ne!(super::bytes::<16>(), super::bytes::<16>());
        assert_eq!(super::hex::<8>().len(), 16);
    }
}
