//! The in-memory store: per zone, a sharded map from key to TAT, bounded in
//! size, expired entries evicted.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::gcra::{Outcome, Policy};

/// Shards per table: enough that two cores rarely meet on one lock.
const SHARDS: usize = 64;

/// The process-local clock: microseconds since the store was made, from 1.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LocalClock {
    base: Instant,
}

impl LocalClock {
    pub(crate) fn new() -> Self {
        Self {
            base: Instant::now(),
        }
    }

    pub(crate) fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_micros())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }
}

struct Shard {
    map: HashMap<Box<str>, u64>,
}

/// One zone's keys in memory.
pub(crate) struct Table {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    per_shard: usize,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("capacity", &(self.per_shard * SHARDS))
            .finish_non_exhaustive()
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic while holding a shard cannot leave a TAT half-written (it is one
    // u64 store), so a poisoned lock's data is still sound.
    shard.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Table {
    /// A table holding at most about `max_keys` keys.
    pub(crate) fn new(max_keys: usize) -> Self {
        let per_shard = max_keys.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        map: HashMap::new(),
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            per_shard,
        }
    }

    fn shard_of(&self, key: &str) -> usize {
        // Shard by the high bits; the map inside uses its own hasher state.
        let h = self.hasher.hash_one(key);
        usize::try_from(h >> 58).unwrap_or(0) % SHARDS
    }

    /// Keys currently held (for tests and metrics).
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }
}

/// One zone's request in a batch: its table, policy and key.
pub(crate) struct Item<'a> {
    pub(crate) table: &'a Table,
    pub(crate) policy: Policy,
    pub(crate) key: &'a str,
}

/// Decides every item at `now`, all or nothing: either every item passes and
/// each is charged, or none is charged. Items must be of distinct tables (one
/// per zone) in zone order: each locks one shard of its own table, always in
/// zone order, so concurrent batches never deadlock.
pub(crate) fn check_all(items: &[Item<'_>], now: u64) -> Vec<Outcome> {
    if let [item] = items {
        return vec![check_one(item, now)];
    }
    let mut guards: Vec<MutexGuard<'_, Shard>> = items
        .iter()
        .map(|item| lock(&item.table.shards[item.table.shard_of(item.key)]))
        .collect();
    let outcomes: Vec<Outcome> = items
        .iter()
        .zip(&guards)
        .map(|(item, shard)| {
            let tat = shard.map.get(item.key).copied().unwrap_or(0);
            item.policy.decide(tat, now)
        })
        .collect();
    if outcomes.iter().all(|o| o.allowed) {
        for ((item, shard), outcome) in items.iter().zip(&mut guards).zip(&outcomes) {
            store(shard, item.key, outcome.tat, now, item.table.per_shard);
        }
    }
    outcomes
}

/// Decides (and charges, if it passes) one item at `now`.
pub(crate) fn check_one(item: &Item<'_>, now: u64) -> Outcome {
    let mut shard = lock(&item.table.shards[item.table.shard_of(item.key)]);
    let tat = shard.map.get(item.key).copied().unwrap_or(0);
    let outcome = item.policy.decide(tat, now);
    if outcome.allowed {
        store(&mut shard, item.key, outcome.tat, now, item.table.per_shard);
    }
    outcome
}

fn store(shard: &mut Shard, key: &str, tat: u64, now: u64, per_shard: usize) {
    if let Some(slot) = shard.map.get_mut(key) {
        *slot = tat;
        return;
    }
    if shard.map.len() >= per_shard {
        evict(shard, now, per_shard);
    }
    shard.map.insert(key.into(), tat);
}

/// Frees room: drops expired keys (TAT in the past: they are as good as new);
/// if that frees less than an eighth, also drops the half nearest to expiry
/// (forgetting a key errs lenient, like nginx dropping its oldest states).
/// Amortised O(1) per insert.
fn evict(shard: &mut Shard, now: u64, per_shard: usize) {
    shard.map.retain(|_, tat| *tat > now);
    if shard.map.len() <= per_shard - per_shard / 8 {
        return;
    }
    let mut tats: Vec<u64> = shard.map.values().copied().collect();
    let middle = tats.len() / 2;
    let (_, median, _) = tats.select_nth_unstable(middle);
    let cut = *median;
    shard.map.retain(|_, tat| *tat > cut);
    if shard.map.len() >= per_shard {
        shard.map.clear();
    }
}

/// The TAT stored for `key` (tests).
#[cfg(test)]
pub(crate) fn peek(table: &Table, key: &str) -> Option<u64> {
    lock(&table.shards[table.shard_of(key)])
        .map
        .get(key)
        .copied()
}
