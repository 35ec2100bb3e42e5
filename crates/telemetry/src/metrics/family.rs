//! The values every wharf crate reports its metrics as, and the one place
//! they become Prometheus text.
//!
//! A crate builds a [`Snapshot`] of [`Family`]s (name, help, kind, and a
//! value per label set); [`Snapshot::encode`] writes the text exposition
//! format 0.0.4 (`# HELP`, `# TYPE`, samples, a histogram's buckets by
//! bound then `_sum` and `_count`). Worker processes send their snapshot to
//! the master as values ([`Snapshot::to_wire`]), where the
//! [`Aggregator`](super::Aggregator) adds them up without reading text back.
//!
//! ```
//! use wharf_telemetry::metrics::{Family, Histogram, Snapshot};
//!
//! let mut snapshot = Snapshot::new();
//! let mut checks = Family::counter("app_checks_total", "Checks made.");
//! checks.sample(&[("zone", "login")], 3_u64);
//! snapshot.push(checks);
//! let mut latency = Histogram::new(&[0.001, 0.01]);
//! latency.observe(0.004);
//! snapshot.push(Family::histogram("app_seconds", "Check time.").with(&[], latency));
//! assert_eq!(
//!     snapshot.encode(),
//!     "# HELP app_checks_total Checks made.\n# TYPE app_checks_total counter\n\
//!      app_checks_total{zone=\"login\"} 3\n# HELP app_seconds Check time.\n\
//!      ## TYPE app_seconds histogram\n\
//!      app_seconds_bucket{le=\"0.001\"} 0\napp_seconds_bucket{le=\"0.01\"} 1\n\
//!      app_seconds_bucket{le=\"+Inf\"} 1\napp_seconds_sum 0.004\napp_seconds_count 1\n"
//! );
//! ```
//!
//! Why not the `prometheus-client` crate: its registry can be encoded but
//! not read back as values, which the cross-worker sum needs, and its
//! encoder writes `OpenMetrics` only (a counter's `# TYPE` names the family
//! without `_total`, plus `# EOF`), which changes what every existing
//! scrape config and dashboard reads. The encoder here is a hundred lines,
//! checked by `promtool check metrics` in the end-to-end tests.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// What a family measures, as its `# TYPE` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Only goes up (within one process).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations counted into buckets, with their sum and count.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }

    /// Whether a retired worker's values still count toward the total.
    pub(crate) fn is_monotonic(self) -> bool {
        matches!(self, Kind::Counter | Kind::Histogram)
    }
}

/// How the instance's total combines a series several workers report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Merge {
    /// Add them: requests, open connections, bytes.
    #[default]
    Sum,
    /// Take the largest: a fact about the whole instance that every worker
    /// states alike (a certificate's expiry, an upstream being up, a zone's
    /// store, "the limiter is in its failure mode").
    Max,
}

/// A histogram's buckets: upper bounds, and the observations in each bucket
/// alone (not cumulative; one more than the bounds, for those above every
/// bound), with their sum.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    bounds: Vec<f64>,
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    /// An empty histogram with these ascending upper bounds (`+Inf` is
    /// implied).
    pub fn new(bounds: &[f64]) -> Self {
        Self {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    /// A histogram from counts already made: `counts[i]` observations in
    /// bucket `i` alone (`counts[bounds.len()]` above every bound; missing
    /// counts are zero, extra ones are added to that last bucket).
    pub fn from_counts(bounds: &[f64], counts: &[u64], sum: f64) -> Self {
        let mut histogram = Self::new(bounds);
        for (i, n) in counts.iter().enumerate() {
            let last = histogram.counts.len() - 1;
            histogram.counts[i.min(last)] += n;
        }
        histogram.sum = sum;
        histogram
    }

    /// Counts one observation.
    pub fn observe(&mut self, value: f64) {
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.counts[bucket] += 1;
        self.sum += value;
    }

    /// Observations counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of the observations.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// `(upper bound, observations ≤ it)` for each bound, then `+Inf`.
    pub fn cumulative(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        let bounds = self.bounds.iter().copied().chain([f64::INFINITY]);
        bounds.zip(self.counts.iter().scan(0, |total, n| {
            *total += n;
            Some(*total)
        }))
    }

    /// Adds `other`'s observations (same bounds; with other bounds, its
    /// total still reaches `+Inf`, `_sum` and `_count`).
    fn add(&mut self, other: &Histogram) {
        if self.bounds == other.bounds {
            for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
                *mine += theirs;
            }
        } else if let Some(last) = self.counts.last_mut() {
            *last += other.count();
        }
        self.sum += other.sum;
    }
}

/// A series' value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Value {
    /// A counter's or a gauge's value.
    Number(f64),
    /// A histogram.
    Histogram(Histogram),
}

impl Value {
    /// The number, for a counter or gauge.
    pub fn as_number(&self) -> Option<f64> {
        match self {
            Value::Number(n) => Some(*n),
            Value::Histogram(_) => None,
        }
    }

    /// Combines `other` into `self` as `merge` says (histograms always add).
    pub(crate) fn merge(&mut self, other: &Value, merge: Merge) {
        match (self, other) {
            (Value::Number(mine), Value::Number(theirs)) => match merge {
                Merge::Sum => *mine += theirs,
                Merge::Max => *mine = mine.max(*theirs),
            },
            (Value::Histogram(mine), Value::Histogram(theirs)) => mine.add(theirs),
            // A family's kind fixes its values' shape; a mismatch is a
            // producer's bug, and the newer value wins.
            (mine, theirs) => *mine = theirs.clone(),
        }
    }
}

/// A number a metric can hold: counts as `u64`/`usize`, flags as `bool`.
pub trait IntoValue {
    /// As the exposition format's float.
    fn into_value(self) -> f64;
}

impl IntoValue for f64 {
    fn into_value(self) -> f64 {
        self
    }
}

impl IntoValue for u64 {
    // Counts past 2^53 lose precision in the float the format carries anyway.
    #[allow(clippy::cast_precision_loss)]
    fn into_value(self) -> f64 {
        self as f64
    }
}

impl IntoValue for usize {
    #[allow(clippy::cast_precision_loss)]
    fn into_value(self) -> f64 {
        self as f64
    }
}

impl IntoValue for u32 {
    fn into_value(self) -> f64 {
        f64::from(self)
    }
}

impl IntoValue for i64 {
    #[allow(clippy::cast_precision_loss)]
    fn into_value(self) -> f64 {
        self as f64
    }
}

impl IntoValue for bool {
    fn into_value(self) -> f64 {
        f64::from(u8::from(self))
    }
}

/// Label names and values, in the order they are written.
pub type Labels = Vec<(String, String)>;

/// One series: its labels and value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Label names and values.
    pub labels: Labels,
    /// The value.
    pub value: Value,
}

/// A metric family: a name, its help, its kind and its series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Family {
    /// The metric name (`http_server_requests_total`).
    pub name: String,
    /// One line saying what it counts.
    pub help: String,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// How the instance total combines workers' series.
    #[serde(default)]
    pub merge: Merge,
    /// The series, in the order they are written.
    pub series: Vec<Series>,
}

impl Family {
    fn new(name: &str, help: &str, kind: Kind) -> Self {
        Self {
            name: name.to_owned(),
            help: help.to_owned(),
            kind,
            merge: Merge::Sum,
            series: Vec::new(),
        }
    }

    /// A counter family (its name should end in `_total`).
    pub fn counter(name: &str, help: &str) -> Self {
        Self::new(name, help, Kind::Counter)
    }

    /// A gauge family.
    pub fn gauge(name: &str, help: &str) -> Self {
        Self::new(name, help, Kind::Gauge)
    }

    /// A histogram family.
    pub fn histogram(name: &str, help: &str) -> Self {
        Self::new(name, help, Kind::Histogram)
    }

    /// Marks a gauge as a fact about the whole instance that every worker
    /// reports alike: the instance total takes the largest, not the sum.
    #[must_use]
    pub fn per_instance(mut self) -> Self {
        self.merge = Merge::Max;
        self
    }

    /// Adds a series with a number.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl IntoValue) -> &mut Self {
        self.push_series(labels, Value::Number(value.into_value()))
    }

    /// Adds a series with a histogram.
    pub fn sample_histogram(&mut self, labels: &[(&str, &str)], value: Histogram) -> &mut Self {
        self.push_series(labels, Value::Histogram(value))
    }

    /// [`sample`](Self::sample), by value: `Family::gauge(..).with(&[], 3_u64)`.
    #[must_use]
    pub fn with(mut self, labels: &[(&str, &str)], value: impl IntoSeriesValue) -> Self {
        self.push_series(labels, value.into_series_value());
        self
    }

    fn push_series(&mut self, labels: &[(&str, &str)], value: Value) -> &mut Self {
        self.series.push(Series {
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            value,
        });
        self
    }

    /// The value of the series with exactly these labels (in any order).
    pub fn value(&self, labels: &[(&str, &str)]) -> Option<&Value> {
        self.series
            .iter()
            .find(|s| {
                s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(n, w)| n == k && w == v))
            })
            .map(|s| &s.value)
    }

    fn encode(&self, out: &mut String) {
        let name = &self.name;
        let _ = writeln!(out, "# HELP {name} {}", escape_help(&self.help));
        let _ = writeln!(out, "# TYPE {name} {}", self.kind.as_str());
        for series in &self.series {
            let labels = label_text(&series.labels);
            match &series.value {
                Value::Number(n) => {
                    let braced = braced(&labels);
                    let _ = writeln!(out, "{name}{braced} {}", number(*n));
                }
                Value::Histogram(h) => {
                    let sep = if labels.is_empty() { "" } else { "," };
                    for (bound, n) in h.cumulative() {
                        let _ = writeln!(
                            out,
                            "{name}_bucket{{{labels}{sep}le=\"{}\"}} {n}",
                            number(bound)
                        );
                    }
                    let braced = braced(&labels);
                    let _ = writeln!(out, "{name}_sum{braced} {}", number(h.sum));
                    let _ = writeln!(out, "{name}_count{braced} {}", h.count());
                }
            }
        }
    }
}

/// What [`Family::with`] takes: a number or a [`Histogram`].
pub trait IntoSeriesValue {
    /// As a series value.
    fn into_series_value(self) -> Value;
}

impl<T: IntoValue> IntoSeriesValue for T {
    fn into_series_value(self) -> Value {
        Value::Number(self.into_value())
    }
}

impl IntoSeriesValue for Histogram {
    fn into_series_value(self) -> Value {
        Value::Histogram(self)
    }
}

/// Metric families, as one process (or the sum of an instance's) reports
/// them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    families: Vec<Family>,
}

/// A snapshot that could not be read from the wire.
#[derive(Debug, thiserror::Error)]
#[error("metrics snapshot: {0}")]
pub struct WireError(#[from] serde_json::Error);

impl Snapshot {
    /// No families.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a family; one already here by that name gets its series (so the
    /// text has one `# TYPE` line per name).
    pub fn push(&mut self, family: Family) {
        match self.families.iter_mut().find(|f| f.name == family.name) {
            Some(known) => known.series.extend(family.series),
            None => self.families.push(family),
        }
    }

    /// Adds every family of `other`.
    pub fn extend(&mut self, other: Snapshot) {
        for family in other.families {
            self.push(family);
        }
    }

    /// The families, in order.
    pub fn families(&self) -> &[Family] {
        &self.families
    }

    /// The family named `name`.
    pub fn family(&self, name: &str) -> Option<&Family> {
        self.families.iter().find(|f| f.name == name)
    }

    /// The number held by `name`'s series with exactly these labels.
    pub fn number(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.family(name)?.value(labels)?.as_number()
    }

    /// The Prometheus text exposition format, version 0.0.4 (serve it as
    /// [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for family in &self.families {
            family.encode(&mut out);
        }
        out
    }

    /// The values as one line of JSON, for a worker to send its master.
    pub fn to_wire(&self) -> String {
        // Serialising plain structs of strings and numbers cannot fail
        // (non-finite floats become `null`, read back as an error below).
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads what [`to_wire`](Self::to_wire) wrote.
    pub fn from_wire(text: &str) -> Result<Self, WireError> {
        Ok(serde_json::from_str(text)?)
    }
}

/// The `Content-Type` of [`Snapshot::encode`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// `a="1",b="2"` (escaped), or empty.
fn label_text(labels: &[(String, String)]) -> String {
    let mut out = String::new();
    for (i, (name, value)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{name}=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out
}

fn braced(labels: &str) -> String {
    if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value or bound as the format writes it (`3`, `0.25`, `+Inf`).
fn number(n: f64) -> String {
    if n.is_nan() {
        "NaN".to_owned()
    } else if n.is_infinite() {
        if n > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        n.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_help_are_escaped() {
        let mut family = Family::gauge("g", "a \\ b\nc");
        family.sample(&[("name", "a\"b\\c\nd"), ("x", "")], 1.5);
        let mut snapshot = Snapshot::new();
        snapshot.push(family);
        assert_eq!(
            snapshot.encode(),
            "# HELP g a \\\\ b\\nc\n# TYPE g gauge\ng{name=\"a\\\"b\\\\c\\nd\",x=\"\"} 1.5\n"
        );
    }

    #[test]
    fn buckets_come_by_bound_then_sum_then_count() {
        let mut h = Histogram::new(&[0.001, 2.5, 10.0]);
        for v in [0.0005, 3.0, 3.0, 100.0] {
            h.observe(v);
        }
        let text = Family::histogram("t_seconds", "T.")
            .with(&[("zone", "a")], h)
            .series[0]
            .clone();
        let mut family = Family::histogram("t_seconds", "T.");
        family.series.push(text);
        let mut out = String::new();
        family.encode(&mut out);
        assert_eq!(
            out,
            "# HELP t_seconds T.\n# TYPE t_seconds histogram\n\
             t_seconds_bucket{zone=\"a\",le=\"0.001\"} 1\n\
             t_seconds_bucket{zone=\"a\",le=\"2.5\"} 1\n\
             t_seconds_bucket{zone=\"a\",le=\"10\"} 3\n\
             t_seconds_bucket{zone=\"a\",le=\"+Inf\"} 4\n\
             t_seconds_sum{zone=\"a\"} 106.0005\n\
             t_seconds_count{zone=\"a\"} 4\n"
        );
    }

    #[test]
    fn a_family_pushed_twice_is_written_once() {
        let mut snapshot = Snapshot::new();
        snapshot.push(Family::counter("c_total", "C.").with(&[("a", "1")], 1_u64));
        snapshot.push(Family::counter("c_total", "C.").with(&[("a", "2")], 2_u64));
        let text = snapshot.encode();
        assert_eq!(text.matches("# TYPE c_total counter").count(), 1, "{text}");
        assert_eq!(snapshot.number("c_total", &[("a", "2")]), Some(2.0));
    }

    #[test]
    fn the_wire_form_reads_back_the_same_values() {
        let mut snapshot = Snapshot::new();
        snapshot.push(Family::gauge("up", "Up.").per_instance().with(&[], true));
        snapshot.push(
            Family::histogram("h", "H.")
                .with(&[("r", "/")], Histogram::from_counts(&[1.0], &[2, 1], 3.5)),
        );
        let back = Snapshot::from_wire(&snapshot.to_wire()).unwrap();
        assert_eq!(back, snapshot);
        assert!(Snapshot::from_wire("{\"families\":[{\"name\":1}]}").is_err());
    }

    #[test]
    fn special_values_are_written_as_the_format_spells_them() {
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.0001), "0.0001");
        assert_eq!(number(1e21), "1000000000000000000000");
    }
}
