//! A TLS session cache every process of an instance reads and writes: nginx's
//! `ssl_session_cache shared:SSL:10m`, for rustls.
//!
//! rustls's own cache ([`ServerSessionMemoryCache`](rustls::server::ServerSessionMemoryCache))
//! lives in one process, so with a worker process per CPU a returning client
//! whose new connection lands on another worker gets a full handshake. This
//! one lives in memory the processes share (the supervisor's shared segment,
//! made by the master, kept across worker replacements and binary upgrades),
//! laid out as fixed slots of 512 bytes:
//!
//! | word | holds |
//! |---|---|
//! | 0 | sequence: odd while a writer holds the slot (a seqlock) |
//! | 1 | the key's hash |
//! | 2 | when it was stored (Unix seconds; 0 = empty) |
//! | 3 | key length, value length |
//! | 4–7 | the key (a session id or stateful ticket: at most 32 bytes) |
//! | 8–63 | the value (at most 448 bytes) |
//!
//! A key hashes to a run of 4 slots; a new session takes the run's
//! slot holding the same key, else an empty or expired one, else the oldest.
//! Readers copy a slot and check its sequence did not move (retrying a few
//! times), so nothing blocks: a slot busy for longer is a miss, and a client
//! then does a full handshake, never a wrong one (the value is checked
//! against the key it was read with). A value too large for a slot (a session
//! carrying a long client-certificate chain) is not cached.

use std::hash::Hasher;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bytes per cached session.
pub(crate) const SLOT_BYTES: usize = 512;
const SLOT_WORDS: usize = SLOT_BYTES / 8;
const HEADER_WORDS: usize = 8;
const KEY_WORDS: usize = 4;
const MAX_KEY: usize = KEY_WORDS * 8;
/// The largest session value a slot holds.
pub(crate) const MAX_VALUE: usize = (SLOT_WORDS - HEADER_WORDS) * 8;
/// Slots a key may occupy.
pub(crate) const WAYS: usize = 4;
/// Times a reader re-reads a slot a writer is changing before calling it a miss.
const READ_TRIES: usize = 4;

/// Memory for the cache: a process's own, or a segment other processes map too.
pub(crate) type Words = Arc<dyn AsRef<[AtomicU64]> + Send + Sync>;

/// A session cache over shared words, for
/// [`TlsSettings::session_store`](crate::TlsSettings::session_store).
///
/// ```
/// use rustls::server::StoresServerSessions;
/// use wharf_tls::SharedSessionCache;
///
/// // Two handles on one memory, as two worker processes mapping one segment.
/// let a = SharedSessionCache::private(1024, std::time::Duration::from_secs(300));
/// let b = a.clone();
/// assert!(a.put(b"session-id".to_vec(), b"secrets".to_vec()));
/// assert_eq!(b.get(b"session-id").as_deref(), Some(&b"secrets"[..]));
/// assert_eq!(b.take(b"session-id").as_deref(), Some(&b"secrets"[..]));
/// assert_eq!(a.get(b"session-id"), None);
/// ```
#[derive(Clone)]
pub struct SharedSessionCache {
    words: Words,
    slots: usize,
    lifetime: u64,
}

impl std::fmt::Debug for SharedSessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSessionCache")
            .field("slots", &self.slots)
            .field("lifetime_secs", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// Two handles are equal when they share memory and lifetime.
impl PartialEq for SharedSessionCache {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.words, &other.words) && self.lifetime == other.lifetime
    }
}

impl Eq for SharedSessionCache {}

impl SharedSessionCache {
    /// Bytes of memory that hold `sessions` sessions.
    pub fn bytes_for(sessions: usize) -> usize {
        sessions.max(WAYS).saturating_mul(SLOT_BYTES)
    }

    /// A cache in `words` (zeroed when new, or written by an earlier cache in
    /// this process or another): as many sessions as whole slots fit, each
    /// kept at most `lifetime` (nginx's `ssl_session_timeout`).
    pub fn new(words: Arc<dyn AsRef<[AtomicU64]> + Send + Sync>, lifetime: Duration) -> Self {
        let slots = (*words).as_ref().len() / SLOT_WORDS;
        Self {
            words,
            slots,
            lifetime: lifetime.as_secs().max(1),
        }
    }

    /// A cache of `sessions` sessions in this process's memory (zeroed
    /// pages from the allocator: memory is touched only as sessions arrive).
    pub fn private(sessions: usize, lifetime: Duration) -> Self {
        let words: Box<[AtomicU64]> =
            bytemuck::allocation::zeroed_slice_box(Self::bytes_for(sessions) / 8);
        Self::new(Arc::new(words), lifetime)
    }

    /// Sessions it holds at most.
    pub fn capacity(&self) -> usize {
        self.slots
    }

    /// Sessions held now (a scan: for tests and diagnostics).
    pub fn len(&self) -> usize {
        let now = now_secs();
        (0..self.slots)
            .filter(|&i| {
                let stored = self.slot(i)[2].load(Ordering::Relaxed);
                stored != 0 && !self.expired(stored, now)
            })
            .count()
    }

    /// Whether it holds no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn slot(&self, i: usize) -> &[AtomicU64] {
        let words = (*self.words).as_ref();
        &words[i * SLOT_WORDS..(i + 1) * SLOT_WORDS]
    }

    fn run(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        // `slots` ≥ 1 whenever this is called (checked by the callers).
        let first = usize::try_from(hash % self.slots as u64).unwrap_or(0);
        (0..WAYS.min(self.slots)).map(move |k| (first + k) % self.slots)
    }

    fn expired(&self, stored: u64, now: u64) -> bool {
        now.saturating_sub(stored) >= self.lifetime
    }

    /// Reads slot `i` if it holds `key` (alive), as a consistent copy.
    fn read(&self, i: usize, hash: u64, key: &[u8], now: u64) -> Option<(u64, Vec<u8>)> {
        let slot = self.slot(i);
        for _ in 0..READ_TRIES {
            let seq = slot[0].load(Ordering::Acquire);
            if seq & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            if slot[1].load(Ordering::Relaxed) != hash {
                return None;
            }
            let stored = slot[2].load(Ordering::Relaxed);
            let lengths = slot[3].load(Ordering::Relaxed);
            let (key_len, value_len) = unpack(lengths);
            if stored == 0 || key_len != key.len() || value_len > MAX_VALUE {
                return None;
            }
            let mut stored_key = [0_u8; MAX_KEY];
            copy_out(&slot[4..4 + KEY_WORDS], &mut stored_key);
            let mut value = vec![0_u8; value_len.div_ceil(8) * 8];
            copy_out(
                &slot[HEADER_WORDS..HEADER_WORDS + value.len() / 8],
                &mut value,
            );
            fence(Ordering::Acquire);
            if slot[0].load(Ordering::Relaxed) != seq {
                continue;
            }
            if stored_key[..key_len] != *key || self.expired(stored, now) {
                return None;
            }
            value.truncate(value_len);
            return Some((seq, value));
        }
        None
    }

    /// Takes slot `i`'s lock if its sequence is still `seq` (even); returns
    /// the guard that releases it.
    fn lock(&self, i: usize, seq: u64) -> Option<Locked<'_>> {
        let slot = self.slot(i);
        slot[0]
            .compare_exchange(
                seq,
                seq.wrapping_add(1),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .ok()?;
        // The odd sequence must be visible before any data store: a reader
        // that sees new data then re-reads the sequence (after its acquire
        // fence) and finds it moved. The compare-and-swap's acquire orders
        // only later loads; this orders later stores too (as crossbeam's
        // SeqLock and Linux's write_seqcount_begin do).
        fence(Ordering::Release);
        Some(Locked { slot, seq })
    }
}

/// A slot held by a writer; dropping it publishes the write.
struct Locked<'a> {
    slot: &'a [AtomicU64],
    seq: u64,
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.slot[0].store(self.seq.wrapping_add(2), Ordering::Release);
    }
}

impl rustls::server::StoresServerSessions for SharedSessionCache {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        if self.slots == 0 || key.len() > MAX_KEY || value.len() > MAX_VALUE {
            return false;
        }
        let hash = hash_of(&key);
        let now = now_secs();
        // The run's slot holding this key, else an empty or expired one, else
        // the oldest; a slot a writer holds is passed over.
        let mut best: Option<(usize, u64, (u8, u64))> = None; // (slot, seq, rank)
        for i in self.run(hash) {
            let slot = self.slot(i);
            let seq = slot[0].load(Ordering::Acquire);
            if seq & 1 == 1 {
                continue;
            }
            let stored = slot[2].load(Ordering::Relaxed);
            let rank = if stored != 0 && self.read(i, hash, &key, now).is_some() {
                (0, 0)
            } else if stored == 0 || self.expired(stored, now) {
                (1, 0)
            } else {
                // Among live sessions, the oldest ranks lowest.
                (2, stored)
            };
            if best.is_none_or(|(_, _, r)| rank < r) {
                best = Some((i, seq, rank));
            }
        }
        let Some((i, seq, _)) = best else {
            return false;
        };
        let Some(locked) = self.lock(i, seq) else {
            return false;
        };
        let slot = locked.slot;
        slot[1].store(hash, Ordering::Relaxed);
        slot[2].store(now.max(1), Ordering::Relaxed);
        slot[3].store(pack(key.len(), value.len()), Ordering::Relaxed);
        copy_in(&key, &slot[4..4 + KEY_WORDS]);
        copy_in(&value, &slot[HEADER_WORDS..]);
        drop(locked);
        true
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        if self.slots == 0 || key.len() > MAX_KEY {
            return None;
        }
        let hash = hash_of(key);
        let now = now_secs();
        self.run(hash)
            .find_map(|i| self.read(i, hash, key, now))
            .map(|(_, value)| value)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        if self.slots == 0 || key.len() > MAX_KEY {
            return None;
        }
        let hash = hash_of(key);
        let now = now_secs();
        for i in self.run(hash) {
            let Some((seq, value)) = self.read(i, hash, key, now) else {
                continue;
            };
            // Only the process that empties the slot gets the session (a
            // TLS 1.3 stateful ticket resumes once).
            let locked = self.lock(i, seq)?;
            locked.slot[2].store(0, Ordering::Relaxed);
            drop(locked);
            return Some(value);
        }
        None
    }

    fn can_cache(&self) -> bool {
        self.slots > 0
    }
}

fn hash_of(key: &[u8]) -> u64 {
    // SipHash-1-3 with fixed keys: the same in every process and every
    // binary (a USR2 upgrade keeps the cache). Keys are session ids the
    // server chose at random, so no client picks where its session lands.
    let mut hasher = siphasher::sip::SipHasher13::new_with_keys(0x0077_6861_7266, 0x7365_7373);
    hasher.write(key);
    hasher.finish()
}

fn pack(key_len: usize, value_len: usize) -> u64 {
    (key_len as u64) | ((value_len as u64) << 16)
}

fn unpack(lengths: u64) -> (usize, usize) {
    // Both fit 16 bits by construction; a torn read is caught by the sequence.
    (
        usize::try_from(lengths & 0xffff).unwrap_or(0),
        usize::try_from((lengths >> 16) & 0xffff).unwrap_or(usize::MAX),
    )
}

fn copy_in(bytes: &[u8], words: &[AtomicU64]) {
    for (chunk, word) in bytes.chunks(8).zip(words) {
        let mut b = [0_u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        word.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
}

fn copy_out(words: &[AtomicU64], bytes: &mut [u8]) {
    for (word, chunk) in words.iter().zip(bytes.chunks_mut(8)) {
        let b = word.load(Ordering::Relaxed).to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::StoresServerSessions;

    fn cache(sessions: usize) -> SharedSessionCache {
        SharedSessionCache::private(sessions, Duration::from_secs(300))
    }

    #[test]
    fn what_one_handle_puts_another_on_the_same_memory_gets() {
        let a = cache(64);
        let b = SharedSessionCache::new(Arc::clone(&a.words), Duration::from_secs(300));
        let value: Vec<u8> = (0..=255).cycle().take(MAX_VALUE).collect();
        assert!(a.put(vec![7; 32], value.clone()));
        assert_eq!(b.get(&[7; 32]), Some(value.clone()));
        assert_eq!(b.get(&[7; 31]), None);
        assert_eq!(b.get(&[8; 32]), None);
        // Overwriting a key keeps one copy.
        assert!(b.put(vec![7; 32], b"short".to_vec()));
        assert_eq!(a.get(&[7; 32]).as_deref(), Some(&b"short"[..]));
        assert_eq!(a.len(), 1);
    }

    #[test]
    fn take_hands_a_session_out_once() {
        let c = cache(64);
        assert!(c.put(b"ticket".to_vec(), b"v".to_vec()));
        assert_eq!(c.take(b"ticket").as_deref(), Some(&b"v"[..]));
        assert_eq!(c.take(b"ticket"), None);
        assert_eq!(c.get(b"ticket"), None);
    }

    #[test]
    fn oversized_keys_and_values_are_not_cached() {
        let c = cache(64);
        assert!(!c.put(vec![1; MAX_KEY + 1], b"v".to_vec()));
        assert!(!c.put(b"k".to_vec(), vec![0; MAX_VALUE + 1]));
        assert!(c.is_empty());
    }

    #[test]
    fn a_full_run_gives_the_oldest_slot_to_a_new_session() {
        // Four slots: one run, every key lands in it.
        let c = cache(WAYS);
        assert_eq!(c.capacity(), WAYS);
        let now = now_secs();
        for (age, key) in [40_u64, 10, 30, 20].into_iter().zip(0_u8..) {
            assert!(c.put(vec![key], vec![key]));
            let slot = (0..WAYS)
                .find(|&i| c.read(i, hash_of(&[key]), &[key], now).is_some())
                .unwrap();
            c.slot(slot)[2].store(now - age, Ordering::Relaxed);
        }
        assert!(c.put(vec![9], vec![9]));
        assert_eq!(c.get(&[0]), None, "the oldest (40 s) went");
        for key in [1_u8, 2, 3, 9] {
            assert_eq!(c.get(&[key]), Some(vec![key]), "key {key}");
        }
    }

    #[test]
    fn a_full_cache_replaces_the_oldest_and_keeps_the_rest() {
        let c = cache(256);
        assert_eq!(c.capacity(), 256);
        for i in 0_u32..2_000 {
            assert!(c.put(i.to_le_bytes().to_vec(), i.to_be_bytes().to_vec()));
        }
        // Bounded: never more than its slots, and the newest are all there.
        assert!(c.len() <= 256);
        for i in 1_990_u32..2_000 {
            assert_eq!(c.get(&i.to_le_bytes()), Some(i.to_be_bytes().to_vec()));
        }
    }

    #[test]
    fn expired_sessions_are_misses() {
        let c = SharedSessionCache::private(64, Duration::from_secs(1));
        assert!(c.put(b"k".to_vec(), b"v".to_vec()));
        // Age the entry by hand rather than sleeping.
        let hash = hash_of(b"k");
        for i in c.run(hash) {
            let slot = c.slot(i);
            if slot[2].load(Ordering::Relaxed) != 0 {
                slot[2].store(now_secs() - 5, Ordering::Relaxed);
            }
        }
        assert_eq!(c.get(b"k"), None);
        assert!(c.is_empty());
    }

    #[test]
    fn a_slot_held_by_a_dead_writer_is_a_miss_not_a_hang() {
        let c = cache(64);
        assert!(c.put(b"k".to_vec(), b"v".to_vec()));
        let i = c
            .run(hash_of(b"k"))
            .find(|&i| c.read(i, hash_of(b"k"), b"k", now_secs()).is_some());
        let slot = c.slot(i.unwrap());
        let seq = slot[0].load(Ordering::Relaxed);
        slot[0].store(seq + 1, Ordering::Relaxed); // a writer that never finished
        assert_eq!(c.get(b"k"), None);
        assert_eq!(c.take(b"k"), None);
        // The run still has room for others.
        assert!(c.put(b"k".to_vec(), b"w".to_vec()));
        assert_eq!(c.get(b"k").as_deref(), Some(&b"w"[..]));
    }

    #[test]
    fn threads_writing_and_reading_never_see_a_torn_value() {
        let c = cache(16);
        std::thread::scope(|s| {
            for t in 0_u8..4 {
                let c = c.clone();
                s.spawn(move || {
                    for n in 0_u32..20_000 {
                        let [low, ..] = n.to_le_bytes();
                        let key = [low % 8; 8];
                        // A value of one repeated byte: a torn read mixes bytes.
                        let byte = t.wrapping_mul(61).wrapping_add(low);
                        c.put(key.to_vec(), vec![byte; 200 + usize::from(low % 200)]);
                        if let Some(v) = c.get(&key) {
                            assert!(v.iter().all(|b| *b == v[0]), "torn read");
                            assert!((200..400).contains(&v.len()));
                        }
                    }
                });
            }
        });
    }
}
