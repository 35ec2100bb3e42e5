//! One scrape for all of a supervisor's workers: their [`Snapshot`]s added
//! up by value.

use std::collections::BTreeMap;

use super::family::{Family, Kind, Labels, Merge, Series, Snapshot, Value};

/// A family's description and its series by label set.
#[derive(Debug, Clone)]
struct Totals {
    help: String,
    kind: Kind,
    merge: Merge,
    series: BTreeMap<Labels, Value>,
}

impl Totals {
    fn of(family: &Family) -> Self {
        Self {
            help: family.help.clone(),
            kind: family.kind,
            merge: family.merge,
            series: BTreeMap::new(),
        }
    }

    fn add(&mut self, series: &[Series]) {
        for s in series {
            self.add_one(&s.labels, &s.value);
        }
    }

    fn add_one(&mut self, labels: &Labels, value: &Value) {
        match self.series.get_mut(labels) {
            Some(total) => total.merge(value, self.merge),
            None => {
                self.series.insert(labels.clone(), value.clone());
            }
        }
    }
}

/// Adds `snapshot`'s families into `totals`, by name.
fn add_all(totals: &mut BTreeMap<String, Totals>, families: &[Family]) {
    for family in families {
        totals
            .entry(family.name.clone())
            .or_insert_with(|| Totals::of(family))
            .add(&family.series);
    }
}

/// Sums worker metrics by slot into one scrape, keeping counters and
/// histograms monotonic across worker replacement; families marked
/// [`per_instance`](Family::per_instance) take the largest value instead.
///
/// ```
/// use wharf_telemetry::metrics::{Aggregator, Family, Snapshot};
///
/// let worker = |n: u64| {
///     let mut s = Snapshot::new();
///     s.push(Family::counter("jobs_total", "Jobs.").with(&[], n));
///     s
/// };
/// let mut agg = Aggregator::new();
/// agg.update(101, 0, worker(3));
/// agg.update(102, 1, worker(4));
/// // Slot 0's worker is replaced; its count is kept.
/// agg.retire(101);
/// agg.update(103, 0, worker(1));
/// assert_eq!(agg.snapshot().number("jobs_total", &[]), Some(8.0));
/// ```
#[derive(Debug, Default)]
pub struct Aggregator {
    /// Latest snapshot from each live worker, by worker id, with its slot.
    current: BTreeMap<u64, (usize, Snapshot)>,
    /// Counters and histograms of retired workers, per slot.
    base: BTreeMap<usize, BTreeMap<String, Totals>>,
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Worker `id` (a pid, say), serving `slot`, reported `snapshot`.
    pub fn update(&mut self, id: u64, slot: usize, snapshot: Snapshot) {
        self.current.insert(id, (slot, snapshot));
    }

    /// Worker `id` has gone: its counters become its slot's base, so the
    /// counts of the worker that replaces it add to them. Its gauges go.
    pub fn retire(&mut self, id: u64) {
        let Some((slot, last)) = self.current.remove(&id) else {
            return;
        };
        let base = self.base.entry(slot).or_default();
        for family in last.families() {
            if !family.kind.is_monotonic() {
                continue;
            }
            base.entry(family.name.clone())
                .or_insert_with(|| Totals {
                    merge: Merge::Sum,
                    ..Totals::of(family)
                })
                .add(&family.series);
        }
    }

    /// The instance's totals: families by name, series by label set.
    pub fn snapshot(&self) -> Snapshot {
        let mut totals: BTreeMap<String, Totals> = BTreeMap::new();
        for base in self.base.values() {
            for (name, family) in base {
                let entry = totals.entry(name.clone()).or_insert_with(|| Totals {
                    series: BTreeMap::new(),
                    ..family.clone()
                });
                for (labels, value) in &family.series {
                    entry.add_one(labels, value);
                }
            }
        }
        for (_, snapshot) in self.current.values() {
            add_all(&mut totals, snapshot.families());
        }
        let mut out = Snapshot::new();
        for (name, family) in totals {
            out.push(Family {
                name,
                help: family.help,
                kind: family.kind,
                merge: family.merge,
                series: family
                    .series
                    .into_iter()
                    .map(|(labels, value)| Series { labels, value })
                    .collect(),
            });
        }
        out
    }

    /// The totals in the Prometheus text format.
    pub fn render(&self) -> String {
        self.snapshot().encode()
    }
}
