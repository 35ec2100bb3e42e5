//! Shared-memory segments: made once by the master (as nginx's master makes
//! its `limit_req` and `ssl_session_cache` zones), mapped by every worker,
//! handed on to a new master on a USR2 upgrade, so state kept in them is one
//! per instance and outlives worker replacements and binary upgrades.
//!
//! A segment travels as an inherited memory-file descriptor; its name and
//! size travel in an environment variable beside it.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::sys;

/// Names and sizes of the segments a worker (or an upgraded master) finds
/// after its other inherited fds: `name=bytes,name=bytes`.
pub(crate) const ENV_SHARED: &str = "_WHARF_SHARED_MEMORY";

/// One shared-memory segment, mapped into this process: zeroed when the
/// instance made it, then whatever its processes wrote. Hand its
/// [`words`](Self::words) to a store that lays itself out in atomics (e.g.
/// `wharf_ratelimit::ZoneMemory`).
#[derive(Debug)]
pub struct SharedMemory {
    name: String,
    fd: OwnedFd,
    map: sys::Mapping,
}

impl SharedMemory {
    /// A new zeroed segment of `bytes` bytes (a multiple of 8), private to
    /// this process until its fd is handed on.
    pub fn create(name: &str, bytes: usize) -> std::io::Result<Self> {
        let fd = sys::memfd(name, bytes)?;
        Self::from_fd(name, fd)
    }

    fn from_fd(name: &str, fd: OwnedFd) -> std::io::Result<Self> {
        let len = sys::file_len(&fd)?;
        let map = sys::Mapping::new(&fd, len)?;
        Ok(Self {
            name: name.to_owned(),
            fd,
            map,
        })
    }

    /// The name it was declared with.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its size in bytes.
    pub fn len(&self) -> usize {
        self.map.words().len() * 8
    }

    /// Whether it has no bytes (never: segments are at least one word).
    pub fn is_empty(&self) -> bool {
        self.map.words().is_empty()
    }

    /// The segment as 64-bit atomic words, the only way it is read or
    /// written (other processes write it at any time).
    pub fn words(&self) -> &[AtomicU64] {
        self.map.words()
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsRef<[AtomicU64]> for SharedMemory {
    fn as_ref(&self) -> &[AtomicU64] {
        self.words()
    }
}

/// A declared segment: its name and size in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Declared {
    pub(crate) name: String,
    pub(crate) bytes: usize,
}

impl Declared {
    /// Rounds `bytes` up to whole 8-byte words (at least one).
    pub(crate) fn new(name: String, bytes: usize) -> Self {
        Self {
            name,
            bytes: bytes.max(8).div_ceil(8) * 8,
        }
    }
}

/// `name=bytes,…` for `segments`.
pub(crate) fn encode(segments: &[Arc<SharedMemory>]) -> String {
    segments
        .iter()
        .map(|s| format!("{}={}", s.name, s.len()))
        .collect::<Vec<_>>()
        .join(",")
}

/// The segments listed in `ENV_SHARED`, adopted from fds `first`, `first + 1`, ….
pub(crate) fn adopt(first: RawFd) -> std::io::Result<Vec<SharedMemory>> {
    let Ok(list) = std::env::var(ENV_SHARED) else {
        return Ok(Vec::new());
    };
    let mut segments = Vec::new();
    for (i, entry) in list.split(',').filter(|e| !e.is_empty()).enumerate() {
        let name = entry.split_once('=').map_or(entry, |(name, _)| name);
        let fd = first + RawFd::try_from(i).unwrap_or(0);
        let owned = sys::adopt_fd(fd).ok_or_else(|| {
            std::io::Error::other(format!(
                "inherited shared memory {name} (fd {fd}) is not open"
            ))
        })?;
        segments.push(SharedMemory::from_fd(name, owned)?);
    }
    Ok(segments)
}

/// The segments for this instance: each declared one taken over from
/// `inherited` (an old master's, on upgrade) when its size matches, else
/// made afresh (logged: its state starts over).
pub(crate) fn make(
    declared: &[Declared],
    mut inherited: Vec<SharedMemory>,
) -> std::io::Result<Vec<Arc<SharedMemory>>> {
    declared
        .iter()
        .map(|d| {
            match inherited.iter().position(|s| s.name == d.name) {
                Some(i) if inherited[i].len() == d.bytes => {
                    tracing::info!(segment = %d.name, bytes = d.bytes, "Shared memory taken over from the old master");
                    return Ok(Arc::new(inherited.swap_remove(i)));
                }
                Some(_) => tracing::warn!(
                    segment = %d.name,
                    bytes = d.bytes,
                    "Shared memory resized: its state starts afresh"
                ),
                None => {}
            }
            SharedMemory::create(&d.name, d.bytes).map(Arc::new)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    /// Two mappings of one memory file are one memory (as in two processes).
    #[test]
    fn two_mappings_of_a_segment_see_each_others_writes() {
        let a = SharedMemory::create("test", 4096).unwrap();
        let dup = a.fd.try_clone().unwrap();
        let b = SharedMemory::from_fd("test", dup).unwrap();
        assert_eq!((a.len(), b.len()), (4096, 4096));
        assert!(a.words().iter().all(|w| w.load(Ordering::Relaxed) == 0));
        a.words()[7].store(42, Ordering::Release);
        assert_eq!(b.words()[7].fetch_add(1, Ordering::AcqRel), 42);
        assert_eq!(a.words()[7].load(Ordering::Acquire), 43);
    }

    #[test]
    fn sizes_round_up_to_words_and_a_resized_segment_is_made_afresh() {
        assert_eq!(Declared::new("x".into(), 1).bytes, 8);
        assert_eq!(Declared::new("x".into(), 17).bytes, 24);
        let old = SharedMemory::create("zones", 64).unwrap();
        old.words()[0].store(7, Ordering::Relaxed);
        let kept = make(&[Declared::new("zones".into(), 64)], vec![old]).unwrap();
        assert_eq!(kept[0].words()[0].load(Ordering::Relaxed), 7);
        let old = SharedMemory::create("zones", 64).unwrap();
        old.words()[0].store(7, Ordering::Relaxed);
        let fresh = make(&[Declared::new("zones".into(), 128)], vec![old]).unwrap();
        assert_eq!(fresh[0].len(), 128);
        assert_eq!(fresh[0].words()[0].load(Ordering::Relaxed), 0);
    }
}
