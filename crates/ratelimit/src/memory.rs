//! The memory store: per zone, a fixed-size open-addressed table of
//! `(key tag, TAT)` pairs of atomic words, in a [`ZoneMemory`] that is either
//! the process's own or one segment shared by every worker process of an
//! instance (as nginx's `limit_req_zone` lives in shared memory made by its
//! master). The same code serves both, so one process and many behave alike.
//!
//! A key is stored as its 64-bit `SipHash` tag under a random key kept in the
//! segment (all processes hash alike; clients cannot aim keys at one probe
//! window). A lookup probes [`PROBE`] slots from the tag's home; a key not
//! found takes an empty slot in that window, or the one whose TAT is oldest
//! (expired keys first: a TAT in the past is as good as no state; forgetting
//! a live key errs lenient, like nginx dropping its oldest states). Charging
//! is a compare-and-swap of the TAT, so processes never wait on each other.
//!
//! Times are microseconds of `CLOCK_MONOTONIC`: one clock for every process
//! of the machine, unmoved by wall-clock steps, and still the same clock in a
//! binary that replaced this one (a USR2 upgrade).

use std::hash::Hasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::gcra::{Outcome, Policy};

/// Slots a lookup probes from a key's home slot before it evicts.
pub(crate) const PROBE: usize = 16;
/// A slot being written by another process (its tag is set last).
const BUSY: u64 = u64::MAX;
/// "WHARFRL1": a segment laid out by this code.
const MAGIC: u64 = u64::from_be_bytes(*b"WHARFRL1");
/// The magic word while the first process lays the header out.
const INITIALISING: u64 = 1;
/// Header words: magic, two hash keys, zone count, slots per zone, spare.
const HEADER: usize = 8;
/// Directory words per zone: definition id, last attached (seconds).
const DIRECTORY_ENTRY: usize = 2;

/// The machine's monotonic clock in microseconds, from 1: the same numbers in
/// every process (std's `Instant` is this clock too, but opaque).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LocalClock;

impl LocalClock {
    pub(crate) fn new() -> Self {
        Self
    }

    // A value, not a free function, so the limiter holds its clock as before.
    #[allow(clippy::unused_self)]
    pub(crate) fn now(self) -> u64 {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let secs = u64::try_from(t.tv_sec).unwrap_or(0);
        let micros = u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000;
        secs.saturating_mul(1_000_000)
            .saturating_add(micros)
            .saturating_add(1)
    }
}

/// Why a [`ZoneMemory`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZoneMemoryError {
    /// The words given are fewer than the layout needs.
    #[error("zone memory too small: {have} words for {zones} zones of {keys} keys need {need}")]
    TooSmall {
        /// Words given.
        have: usize,
        /// Words needed.
        need: usize,
        /// Zones asked for.
        zones: usize,
        /// Keys per zone asked for.
        keys: usize,
    },
    /// The segment was laid out for another size (another instance's, or a
    /// different `max_keys`).
    #[error(
        "zone memory laid out for {found_zones} zones of {found_keys} keys, not {zones} of {keys}"
    )]
    Layout {
        /// Zones in the segment.
        found_zones: usize,
        /// Keys per zone in the segment.
        found_keys: usize,
        /// Zones asked for.
        zones: usize,
        /// Keys per zone asked for.
        keys: usize,
    },
    /// No zone or no keys.
    #[error("zone memory needs at least one zone of at least {PROBE} keys")]
    Empty,
}

/// Where rate-limit zones keep their state: words of this process, or a
/// shared-memory segment every worker process of an instance maps (made by
/// the master, see `wharf_supervisor::Supervisor::shared_memory`), so a
/// client gets one answer whichever worker its connection reaches, and the
/// counts survive worker replacement and binary upgrades.
///
/// A zone is found in it by its definition (name, rate, burst, delay): a
/// process with the same definition continues the same counts; a changed
/// definition starts afresh, as in nginx.
#[derive(Clone)]
pub struct ZoneMemory {
    words: Arc<dyn AsRef<[AtomicU64]> + Send + Sync>,
    zones: usize,
    keys: usize,
    hash_keys: (u64, u64),
    shared: bool,
}

impl std::fmt::Debug for ZoneMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZoneMemory")
            .field("zones", &self.zones)
            .field("keys_per_zone", &self.keys)
            .finish_non_exhaustive()
    }
}

impl ZoneMemory {
    /// The fewest keys per zone a `ZoneMemory` holds (one probe window):
    /// [`new`](Self::new) and [`private`](Self::private) refuse fewer.
    pub const MIN_KEYS_PER_ZONE: usize = PROBE;

    /// Bytes a segment for `zones` zones of `keys_per_zone` keys needs.
    pub fn bytes_for(zones: usize, keys_per_zone: usize) -> usize {
        Self::words_for(zones, keys_per_zone).saturating_mul(8)
    }

    fn words_for(zones: usize, keys: usize) -> usize {
        HEADER
            .saturating_add(zones.saturating_mul(DIRECTORY_ENTRY))
            .saturating_add(zones.saturating_mul(keys).saturating_mul(2))
    }

    /// Memory of this process alone for `zones` zones of `keys_per_zone` keys
    /// (pages are touched only as keys arrive).
    pub fn private(zones: usize, keys_per_zone: usize) -> Result<Self, ZoneMemoryError> {
        let words: Box<[AtomicU64]> =
            bytemuck::allocation::zeroed_slice_box(Self::words_for(zones, keys_per_zone));
        let mut memory = Self::new(Arc::new(words), zones, keys_per_zone)?;
        memory.shared = false;
        Ok(memory)
    }

    /// Zone memory in `words` (zeroed when new, or laid out by an earlier
    /// call with the same sizes, in this process or another).
    pub fn new(
        words: Arc<dyn AsRef<[AtomicU64]> + Send + Sync>,
        zones: usize,
        keys_per_zone: usize,
    ) -> Result<Self, ZoneMemoryError> {
        let keys = keys_per_zone;
        if zones == 0 || keys < PROBE {
            return Err(ZoneMemoryError::Empty);
        }
        let need = Self::words_for(zones, keys);
        let have = (*words).as_ref().len();
        if have < need {
            return Err(ZoneMemoryError::TooSmall {
                have,
                need,
                zones,
                keys,
            });
        }
        let w = (*words).as_ref();
        let layout = |w: &[AtomicU64]| {
            (
                usize::try_from(w[3].load(Ordering::Acquire)).unwrap_or(0),
                usize::try_from(w[4].load(Ordering::Acquire)).unwrap_or(0),
            )
        };
        match w[0].compare_exchange(0, INITIALISING, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                let (k0, k1) = random_keys();
                w[1].store(k0, Ordering::Relaxed);
                w[2].store(k1, Ordering::Relaxed);
                w[3].store(zones as u64, Ordering::Relaxed);
                w[4].store(keys as u64, Ordering::Relaxed);
                w[0].store(MAGIC, Ordering::Release);
            }
            Err(_) => {
                // Another process is laying it out: a few stores away.
                while w[0].load(Ordering::Acquire) == INITIALISING {
                    std::thread::yield_now();
                }
            }
        }
        let (found_zones, found_keys) = layout(w);
        if w[0].load(Ordering::Acquire) != MAGIC || (found_zones, found_keys) != (zones, keys) {
            return Err(ZoneMemoryError::Layout {
                found_zones,
                found_keys,
                zones,
                keys,
            });
        }
        let hash_keys = (w[1].load(Ordering::Relaxed), w[2].load(Ordering::Relaxed));
        Ok(Self {
            words,
            zones,
            keys,
            hash_keys,
            shared: true,
        })
    }

    /// Whether other processes may count in this memory (made by
    /// [`new`](Self::new) over words they can map), not [`private`](Self::private).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Zones this memory holds.
    pub fn zones(&self) -> usize {
        self.zones
    }

    /// Keys each zone holds.
    pub fn keys_per_zone(&self) -> usize {
        self.keys
    }

    fn words(&self) -> &[AtomicU64] {
        (*self.words).as_ref()
    }

    /// The table for the zone defined by `definition` (a stable hash of its
    /// name and limits): the one already there, else a free one, else the one
    /// attached least recently (a definition no longer in use), cleared.
    pub(crate) fn table(&self, definition: u64, now_secs: u64) -> Table {
        let id = definition.max(1);
        let directory = |i: usize| &self.words()[HEADER + i * DIRECTORY_ENTRY..][..DIRECTORY_ENTRY];
        let index = loop {
            if let Some(i) =
                (0..self.zones).find(|&i| directory(i)[0].load(Ordering::Acquire) == id)
            {
                break i;
            }
            let (i, current) = (0..self.zones)
                .map(|i| (i, directory(i)[0].load(Ordering::Acquire)))
                .min_by_key(|&(i, current)| (current != 0, directory(i)[1].load(Ordering::Relaxed)))
                .unwrap_or((0, 0));
            if directory(i)[0]
                .compare_exchange(current, id, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                if current != 0 {
                    for word in self.zone_slots(i) {
                        word.store(0, Ordering::Relaxed);
                    }
                }
                break i;
            }
        };
        directory(index)[1].fetch_max(now_secs, Ordering::Relaxed);
        Table {
            memory: self.clone(),
            index,
        }
    }

    fn zone_slots(&self, index: usize) -> &[AtomicU64] {
        let start = HEADER + self.zones * DIRECTORY_ENTRY + index * self.keys * 2;
        &self.words()[start..start + self.keys * 2]
    }
}

fn random_keys() -> (u64, u64) {
    let mut bytes = [0_u8; 16];
    if getrandom::getrandom(&mut bytes).is_err() {
        // No OS randomness (never on Linux): fall back to the clock, still
        // distinct per instance, weaker against chosen keys.
        bytes[..8].copy_from_slice(&LocalClock::new().now().to_le_bytes());
        bytes[8..].copy_from_slice(&u64::from(std::process::id()).to_le_bytes());
    }
    let (a, b) = bytes.split_at(8);
    let word = |s: &[u8]| s.iter().fold(0_u64, |acc, &b| acc << 8 | u64::from(b));
    (word(a), word(b))
}

/// A stable 64-bit id of a zone's definition (FNV-1a: the same in every
/// build, so an upgraded binary finds its zones).
pub(crate) fn definition_id(name: &str, policy: &Policy) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(name.as_bytes());
    eat(&[0]);
    eat(&policy.interval_micros().to_le_bytes());
    eat(&policy.burst().to_le_bytes());
    eat(&policy.delay_threshold().to_le_bytes());
    hash
}

/// One zone's table in a [`ZoneMemory`].
#[derive(Clone)]
pub(crate) struct Table {
    memory: ZoneMemory,
    index: usize,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("index", &self.index)
            .field("capacity", &self.memory.keys)
            .finish_non_exhaustive()
    }
}

impl Table {
    /// A private table holding at most `max_keys` keys (tests).
    #[cfg(test)]
    pub(crate) fn new(max_keys: usize) -> Self {
        let memory = ZoneMemory::private(1, max_keys.max(PROBE)).unwrap_or_else(|e| panic!("{e}"));
        memory.table(1, 0)
    }

    fn slots(&self) -> &[AtomicU64] {
        self.memory.zone_slots(self.index)
    }

    fn tag(&self, key: &str) -> u64 {
        let (k0, k1) = self.memory.hash_keys;
        let mut hasher = siphasher::sip::SipHasher13::new_with_keys(k0, k1);
        hasher.write(key.as_bytes());
        // 0 marks an empty slot and BUSY a slot being written.
        hasher.finish().clamp(1, BUSY - 1)
    }

    /// Keys currently held (tests and metrics).
    pub(crate) fn len(&self) -> usize {
        self.slots()
            .chunks_exact(2)
            .filter(|slot| !matches!(slot[0].load(Ordering::Relaxed), 0 | BUSY))
            .count()
    }

    /// The slot holding `key`'s TAT, claiming one (with no state) when the
    /// key is not held.
    fn slot(&self, key: &str) -> &AtomicU64 {
        let slots = self.slots();
        let n = self.memory.keys;
        let tag = self.tag(key);
        let home = usize::try_from(tag % n as u64).unwrap_or(0);
        // A claim lost to another process is retried; after a few, the slot
        // found last is used as it is (it only errs lenient).
        for _ in 0..8 {
            let mut victim = home;
            let mut victim_tat = u64::MAX;
            for p in 0..PROBE {
                let i = (home + p) % n;
                let mut current = slots[2 * i].load(Ordering::Acquire);
                if current == BUSY {
                    current = settle(&slots[2 * i]);
                }
                if current == tag {
                    return &slots[2 * i + 1];
                }
                if current == 0 {
                    victim = i;
                    break;
                }
                let tat = slots[2 * i + 1].load(Ordering::Relaxed);
                if current != BUSY && tat < victim_tat {
                    victim = i;
                    victim_tat = tat;
                }
            }
            let tag_word = &slots[2 * victim];
            let current = tag_word.load(Ordering::Acquire);
            if current == BUSY || current == tag {
                continue;
            }
            if tag_word
                .compare_exchange(current, BUSY, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                slots[2 * victim + 1].store(0, Ordering::Release);
                tag_word.store(tag, Ordering::Release);
                return &slots[2 * victim + 1];
            }
        }
        &slots[2 * home + 1]
    }
}

/// Waits (briefly) for a slot another process is writing: it is two stores
/// from done. A writer that died there leaves it BUSY, and it is skipped.
fn settle(tag: &AtomicU64) -> u64 {
    for spin in 0..256 {
        let current = tag.load(Ordering::Acquire);
        if current != BUSY {
            return current;
        }
        if spin < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
    BUSY
}

/// One zone's request in a batch: its table, policy and key.
pub(crate) struct Item<'a> {
    pub(crate) table: &'a Table,
    pub(crate) policy: Policy,
    pub(crate) key: &'a str,
}

/// Decides every item at `now`, all or nothing: either every item passes and
/// each is charged, or none is charged. Items are of distinct zones.
pub(crate) fn check_all(items: &[Item<'_>], now: u64) -> Vec<Outcome> {
    if let [item] = items {
        return vec![check_one(item, now)];
    }
    let slots: Vec<&AtomicU64> = items.iter().map(|item| item.table.slot(item.key)).collect();
    loop {
        let tats: Vec<u64> = slots.iter().map(|s| s.load(Ordering::Acquire)).collect();
        let outcomes: Vec<Outcome> = items
            .iter()
            .zip(&tats)
            .map(|(item, &tat)| item.policy.decide(tat, now))
            .collect();
        if !outcomes.iter().all(|o| o.allowed) {
            return outcomes;
        }
        // Charge each; if another process moved one meanwhile, undo the ones
        // charged (where still ours) and decide again on fresh values.
        let charged = slots
            .iter()
            .zip(tats.iter().zip(&outcomes))
            .take_while(|(slot, (&tat, outcome))| {
                slot.compare_exchange(tat, outcome.tat, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            })
            .count();
        if charged == slots.len() {
            return outcomes;
        }
        for (slot, (&tat, outcome)) in slots.iter().zip(tats.iter().zip(&outcomes)).take(charged) {
            let _ = slot.compare_exchange(outcome.tat, tat, Ordering::AcqRel, Ordering::Acquire);
        }
    }
}

/// Decides (and charges, if it passes) one item at `now`.
pub(crate) fn check_one(item: &Item<'_>, now: u64) -> Outcome {
    let slot = item.table.slot(item.key);
    let mut tat = slot.load(Ordering::Acquire);
    loop {
        let outcome = item.policy.decide(tat, now);
        if !outcome.allowed {
            return outcome;
        }
        match slot.compare_exchange_weak(tat, outcome.tat, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return outcome,
            Err(current) => tat = current,
        }
    }
}

/// The TAT stored for `key` (tests).
#[cfg(test)]
pub(crate) fn peek(table: &Table, key: &str) -> Option<u64> {
    let slots = table.slots();
    let n = table.memory.keys;
    let tag = table.tag(key);
    let home = usize::try_from(tag % n as u64).unwrap_or(0);
    (0..PROBE)
        .map(|p| (home + p) % n)
        .find(|&i| slots[2 * i].load(Ordering::Acquire) == tag)
        .map(|i| slots[2 * i + 1].load(Ordering::Acquire))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate::Rate;

    fn policy() -> Policy {
        Policy::new(Rate::per_second(1).unwrap(), 2).nodelay()
    }

    /// Two handles on one segment (two processes' mappings of it, here two
    /// `ZoneMemory` values over the same words) share every count.
    #[test]
    fn two_handles_on_one_segment_share_a_zone() {
        let words: Arc<Box<[AtomicU64]>> = Arc::new(
            (0..ZoneMemory::words_for(4, 1000))
                .map(|_| AtomicU64::new(0))
                .collect(),
        );
        let a = ZoneMemory::new(words.clone(), 4, 1000).unwrap();
        let b = ZoneMemory::new(words, 4, 1000).unwrap();
        let id = definition_id("api", &policy());
        let (ta, tb) = (a.table(id, 1), b.table(id, 1));
        let now = 1_000_000;
        let mut admitted = 0;
        for i in 0..10 {
            let table = if i % 2 == 0 { &ta } else { &tb };
            let item = Item {
                table,
                policy: policy(),
                key: "10.0.0.1",
            };
            admitted += u32::from(check_one(&item, now).allowed);
        }
        assert_eq!(admitted, 3, "burst 2 + 1 across both handles");
        // A different layout is refused, not misread.
        let other: Arc<Box<[AtomicU64]>> = Arc::new(
            (0..ZoneMemory::words_for(4, 1000))
                .map(|_| AtomicU64::new(0))
                .collect(),
        );
        ZoneMemory::new(other.clone(), 4, 1000).unwrap();
        assert!(matches!(
            ZoneMemory::new(other, 2, 1000),
            Err(ZoneMemoryError::Layout { .. })
        ));
    }

    /// A changed definition gets its own (fresh) table; the same definition
    /// finds its counts again.
    #[test]
    fn a_zone_is_found_by_its_definition() {
        let memory = ZoneMemory::private(2, 100).unwrap();
        let strict = Policy::new(Rate::per_second(1).unwrap(), 0);
        let id = definition_id("z", &strict);
        let table = memory.table(id, 1);
        let item = Item {
            table: &table,
            policy: strict,
            key: "k",
        };
        assert!(check_one(&item, 10).allowed);
        assert!(!check_one(&item, 10).allowed);
        let again = memory.table(id, 2);
        let item = Item {
            table: &again,
            policy: strict,
            key: "k",
        };
        assert!(
            !check_one(&item, 10).allowed,
            "same definition, same counts"
        );
        let looser = Policy::new(Rate::per_second(1).unwrap(), 5);
        let changed = memory.table(definition_id("z", &looser), 3);
        let item = Item {
            table: &changed,
            policy: looser,
            key: "k",
        };
        assert!(check_one(&item, 10).allowed, "a changed zone starts afresh");
        // Both are held; a third definition takes the least recently attached.
        let third = memory.table(definition_id("y", &looser), 4);
        assert_eq!(third.index, table.index);
        assert_eq!(third.len(), 0);
    }

    #[test]
    fn the_clock_is_the_machines_monotonic_one() {
        let a = LocalClock::new().now();
        let b = LocalClock::new().now();
        assert!(a > 1_000 && b >= a);
        // The same clock std's Instant reads (CLOCK_MONOTONIC on Linux):
        // a sleep moves both alike.
        let start = std::time::Instant::now();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let moved = LocalClock::new().now() - b;
        let elapsed = u64::try_from(start.elapsed().as_micros()).unwrap();
        assert!(
            moved >= 20_000 && moved <= elapsed + 1_000,
            "{moved} vs {elapsed}"
        );
    }
}
