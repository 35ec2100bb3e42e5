//! Request metrics in the Prometheus text format, and the aggregator a
//! supervisor uses to serve **one** scrape for all its worker processes.
//!
//! Each worker keeps an [`HttpMetrics`] and sends its [`render`](HttpMetrics::render)ed
//! text to the master; the master's [`Aggregator`] sums the series across
//! worker slots. When a worker is replaced, its last counters are kept as the
//! slot's base, so counters never go backwards (Python's multiprocess mode
//! gets this wrong after worker restarts).
//!
//! Names follow the OpenTelemetry HTTP semantic conventions' Prometheus
//! mapping and keep the series the old Python service exposed, so existing
//! dashboards work: `http_server_requests_total{method,host,path,code}`,
//! `http_server_request_duration_seconds{method,path,code}` (histogram),
//! `http_server_exceptions_total{error}`, plus
//! `http_server_responses_total{class}`. `path` is always a route template,
//! never a raw path, so cardinality is bounded.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Histogram bucket upper bounds in seconds: 1 ms to 30 s, dense enough
/// around 5–500 ms for P50/P95/P99 to be meaningful.
pub const DURATION_BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Distinct `host` label values kept; further hosts count under `_other`
/// (a scanner sending made-up `Host` headers cannot grow the scrape).
pub const MAX_HOSTS: usize = 32;

/// A series key: method, route template and status code (method and route
/// come from fixed sets of short `'static` strings).
type Key = (&'static str, &'static str, u16);

#[derive(Debug, Default, Clone)]
struct DurationSeries {
    /// Observations in each bucket alone (not cumulative: one increment per
    /// observation); `render` sums them into Prometheus' cumulative buckets.
    buckets: [u64; DURATION_BUCKETS.len()],
    count: u64,
    sum: f64,
}

#[derive(Debug)]
struct HostSeries {
    host: Box<str>,
    counts: Vec<(Key, u64)>,
}

/// Every request updates this under one uncontended lock, so lookups are
/// linear scans of short vectors (a few dozen series at most: methods and
/// routes are fixed sets): no hashing, no allocation on a hit.
#[derive(Debug, Default)]
struct State {
    /// host → (method, route, code) → count.
    requests: Vec<HostSeries>,
    /// (method, route, code) → histogram.
    durations: Vec<(Key, DurationSeries)>,
    /// status class → count.
    classes: [u64; 5],
    /// error name → count (5xx answers).
    exceptions: Vec<(&'static str, u64)>,
}

/// Per-process HTTP request metrics. Cheap to update from any thread.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    state: Mutex<State>,
}

/// One finished request, as [`HttpMetrics::observe`] needs it.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// The request method.
    pub method: &'a str,
    /// The `Host` the request named (empty when absent).
    pub host: &'a str,
    /// The route template (`/d/{service}/{document}`), never the raw path.
    pub route: &'static str,
    /// The response status code.
    pub status: u16,
    /// Time from request to the end of the response body.
    pub duration: Duration,
}

/// The index of the first item `matches` accepts, pushing `make()` first if
/// there is none.
fn find_or_push<T>(
    items: &mut Vec<T>,
    matches: impl Fn(&T) -> bool,
    make: impl FnOnce() -> T,
) -> usize {
    if let Some(index) = items.iter().position(matches) {
        return index;
    }
    items.push(make());
    items.len() - 1
}

/// Adds one to the count of `key`, starting it at 1 if it is new.
fn bump<K: PartialEq>(counts: &mut Vec<(K, u64)>, key: K) {
    match counts.iter_mut().find(|(k, _)| *k == key) {
        Some((_, n)) => *n += 1,
        None => counts.push((key, 1)),
    }
}

impl State {
    /// The counts of `host` (case-insensitive), added if there is room.
    fn host_counts(&mut self, host: &str) -> &mut Vec<(Key, u64)> {
        let host = if sane_host(host) { host } else { OTHER_HOST };
        let known = self
            .requests
            .iter()
            .position(|h| h.host.eq_ignore_ascii_case(host));
        let index = if let Some(index) = known {
            index
        } else {
            let host = if self.requests.len() < MAX_HOSTS {
                host
            } else {
                OTHER_HOST
            };
            find_or_push(
                &mut self.requests,
                |h| *h.host == *host,
                || HostSeries {
                    host: host.to_ascii_lowercase().into_boxed_str(),
                    counts: Vec::new(),
                },
            )
        };
        &mut self.requests[index].counts
    }
}

impl HttpMetrics {
    /// Empty metrics.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one finished request.
    pub fn observe(&self, o: &Observation<'_>) {
        let seconds = o.duration.as_secs_f64();
        let key: Key = (normalise_method(o.method), o.route, o.status);
        // The first bucket whose bound is ≥ the duration (none: only +Inf).
        let bucket = DURATION_BUCKETS.partition_point(|bound| *bound < seconds);
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let counts = state.host_counts(o.host);
        bump(counts, key);
        let index = find_or_push(
            &mut state.durations,
            |(k, _)| *k == key,
            || (key, DurationSeries::default()),
        );
        let series = &mut state.durations[index].1;
        series.count += 1;
        series.sum += seconds;
        if let Some(n) = series.buckets.get_mut(bucket) {
            *n += 1;
        }
        let class = usize::from((o.status / 100).clamp(1, 5)) - 1;
        state.classes[class] += 1;
        if o.status >= 500 {
            bump(&mut state.exceptions, error_name(o.status));
        }
    }

    /// The metrics in the Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let Ok(state) = self.state.lock() else {
            return out;
        };
        let _ = writeln!(out, "# HELP http_server_requests_total HTTP requests served, by method, host, route template and status code.\n# TYPE http_server_requests_total counter");
        let mut requests: Vec<_> = state
            .requests
            .iter()
            .flat_map(|h| {
                h.counts
                    .iter()
                    .map(move |((m, r, c), n)| ((*m, &*h.host, *r, *c), *n))
            })
            .collect();
        requests.sort_unstable();
        for ((method, host, route, code), n) in requests {
            let _ = writeln!(
                out,
                "http_server_requests_total{{method=\"{method}\",host=\"{}\",path=\"{route}\",code=\"{code}\"}} {n}",
                escape(host)
            );
        }
        let _ = writeln!(out, "# HELP http_server_request_duration_seconds Time to serve a request, until its response body was sent.\n# TYPE http_server_request_duration_seconds histogram");
        let mut durations: Vec<_> = state.durations.iter().collect();
        durations.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for ((method, route, code), series) in durations {
            let labels = format!("method=\"{method}\",path=\"{route}\",code=\"{code}\"");
            let mut cumulative = 0;
            for (bound, n) in DURATION_BUCKETS.iter().zip(series.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "http_server_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "http_server_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                series.count
            );
            let _ = writeln!(
                out,
                "http_server_request_duration_seconds_sum{{{labels}}} {}",
                series.sum
            );
            let _ = writeln!(
                out,
                "http_server_request_duration_seconds_count{{{labels}}} {}",
                series.count
            );
        }
        let _ = writeln!(out, "# HELP http_server_responses_total HTTP responses by status class.\n# TYPE http_server_responses_total counter");
        for (i, n) in state.classes.iter().enumerate() {
            let _ = writeln!(
                out,
                "http_server_responses_total{{class=\"{}xx\"}} {n}",
                i + 1
            );
        }
        let _ = writeln!(out, "# HELP http_server_exceptions_total Requests answered with a server error, by error.\n# TYPE http_server_exceptions_total counter");
        let mut exceptions = state.exceptions.clone();
        exceptions.sort_unstable();
        for (error, n) in exceptions {
            let _ = writeln!(out, "http_server_exceptions_total{{error=\"{error}\"}} {n}");
        }
        out
    }
}

fn normalise_method(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        // Arbitrary methods would make unbounded series.
        _ => "_OTHER",
    }
}

/// The `host` label of requests whose `Host` is missing, odd or one too many.
const OTHER_HOST: &str = "_other";

/// Hosts are client-supplied: keep only short ones of host-name characters
/// (and at most [`MAX_HOSTS`] of them) so a scanner cannot create unbounded
/// series.
fn sane_host(host: &str) -> bool {
    host.len() <= 64
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
}

fn error_name(status: u16) -> &'static str {
    match status {
        500 => "InternalServerError",
        502 => "BadGateway",
        503 => "ServiceUnavailable",
        504 => "GatewayTimeout",
        _ => "ServerError",
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// One series: metric name and its label text (`a="1",b="2"`, possibly empty).
type SeriesKey = (String, String);

#[derive(Debug, Default, Clone)]
struct Parsed {
    /// Family name → (`# HELP` line, `# TYPE` line).
    meta: BTreeMap<String, (Option<String>, Option<String>)>,
    /// Family name → its type word (counter, gauge, histogram, …).
    types: HashMap<String, String>,
    samples: BTreeMap<SeriesKey, f64>,
}

fn parse(text: &str) -> Parsed {
    let mut parsed = Parsed::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned();
            parsed.meta.entry(name).or_default().0 = Some(line.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let name = words.next().unwrap_or_default().to_owned();
            let kind = words.next().unwrap_or("untyped").to_owned();
            parsed.meta.entry(name.clone()).or_default().1 = Some(line.to_owned());
            parsed.types.insert(name, kind);
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            parsed
                .samples
                .insert((name.to_owned(), labels.to_owned()), value);
        }
    }
    parsed
}

/// The family a sample belongs to (`x_bucket` → `x` for histograms).
fn family<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    if types.contains_key(name) {
        return name;
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types.contains_key(base) {
                return base;
            }
        }
    }
    name
}

fn is_monotonic(kind: Option<&String>) -> bool {
    matches!(
        kind.map(String::as_str),
        Some("counter" | "histogram" | "summary")
    )
}

/// Gauges that state a fact about the whole instance, which every worker
/// reports alike (a certificate's expiry, the configuration generation, an
/// upstream's health, build info): summing them over workers would be wrong,
/// so the aggregate is their maximum. By name: `*_timestamp_seconds`,
/// `*_generation`, `*_up`, `*_info`.
fn is_per_instance(family: &str, kind: Option<&String>) -> bool {
    kind.is_some_and(|k| k == "gauge")
        && (["_timestamp_seconds", "_generation", "_up", "_info"]
            .iter()
            .any(|suffix| family.ends_with(suffix))
            // 1 while any worker's limiter is in its Redis failure mode.
            || PER_INSTANCE_FLAGS.contains(&family))
}

/// 0/1 gauges every worker reports alike, by full name.
const PER_INSTANCE_FLAGS: [&str; 1] = ["wharf_ratelimit_fallback_active"];

/// The `name="value"` pairs of a label text (what is between a sample's
/// braces), split at the commas between them, not at those inside quoted
/// values.
///
/// ```
/// use wharf_telemetry::metrics::label_pairs;
/// assert_eq!(label_pairs(r#"a="1,2",le="0.5""#), [r#"a="1,2""#, r#"le="0.5""#]);
/// ```
pub fn label_pairs(labels: &str) -> Vec<&str> {
    let mut pairs = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, byte) in labels.bytes().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                pairs.push(&labels[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < labels.len() {
        pairs.push(&labels[start..]);
    }
    pairs
}

/// Puts a histogram's samples in the exposition format's order: by label
/// set (`le` aside), each set's `_bucket`s by numeric `le` with `+Inf` last,
/// then its `_sum`, then its `_count`. (Sorted as text, `le="10"` would come
/// before `le="2.5"` and `_count` before `_sum`.)
fn sort_histogram(samples: &mut [(&SeriesKey, f64)]) {
    samples.sort_by_cached_key(|((name, labels), _)| {
        let rank = if name.ends_with("_bucket") {
            0
        } else if name.ends_with("_sum") {
            1
        } else if name.ends_with("_count") {
            2
        } else {
            3
        };
        let mut le = None;
        let mut rest = Vec::new();
        for pair in label_pairs(labels) {
            match pair.strip_prefix("le=\"").and_then(|v| v.strip_suffix('"')) {
                Some(bound) => le = Some(bound),
                None => rest.push(pair),
            }
        }
        // Parses `+Inf` too; an unreadable bound sorts after it, by text.
        let bound = le.map_or(f64::NAN, |le| le.parse().unwrap_or(f64::NAN));
        (rest.join(","), rank, TotalOrder(bound), labels.clone())
    });
}

/// An `f64` ordered by [`f64::total_cmp`] (NaN after `+Inf`).
#[derive(Debug, Clone, Copy)]
struct TotalOrder(f64);

impl PartialEq for TotalOrder {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for TotalOrder {}

impl PartialOrd for TotalOrder {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TotalOrder {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Sums worker metrics by slot into one scrape, keeping counters monotonic
/// across worker replacement; per-instance gauges (see `is_per_instance`)
/// take the maximum instead.
#[derive(Debug, Default)]
pub struct Aggregator {
    /// Latest text from each live worker, by worker id, with its slot.
    current: BTreeMap<u64, (usize, Parsed)>,
    /// Counters of retired workers, per slot.
    base: BTreeMap<usize, Parsed>,
}

impl Aggregator {
    /// An empty aggregator.
    pub fn new() -> Self {
        Self::default()
    }

    /// Worker `id` (a pid, say), serving `slot`, reported `text`.
    pub fn update(&mut self, id: u64, slot: usize, text: &str) {
        self.current.insert(id, (slot, parse(text)));
    }

    /// Worker `id` has gone: its counters become its slot's base, so the
    /// counts of the worker that replaces it add to them.
    pub fn retire(&mut self, id: u64) {
        let Some((slot, last)) = self.current.remove(&id) else {
            return;
        };
        let base = self.base.entry(slot).or_default();
        for (name, meta) in &last.meta {
            base.meta
                .entry(name.clone())
                .or_insert_with(|| meta.clone());
        }
        for (name, kind) in &last.types {
            base.types.insert(name.clone(), kind.clone());
        }
        for ((name, labels), value) in last.samples {
            let fam = family(&name, &last.types).to_owned();
            if is_monotonic(last.types.get(&fam)) {
                *base.samples.entry((name, labels)).or_default() += value;
            }
        }
    }

    /// The summed metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut meta: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
        let mut types: HashMap<String, String> = HashMap::new();
        let mut sums: BTreeMap<SeriesKey, f64> = BTreeMap::new();
        for parsed in self
            .base
            .values()
            .chain(self.current.values().map(|(_, parsed)| parsed))
        {
            for (name, m) in &parsed.meta {
                meta.entry(name.clone()).or_insert_with(|| m.clone());
            }
            for (name, kind) in &parsed.types {
                types.insert(name.clone(), kind.clone());
            }
            for (key, value) in &parsed.samples {
                sums.entry(key.clone())
                    .and_modify(|sum| {
                        // Only a series two workers report needs its family.
                        let fam = family(&key.0, &parsed.types);
                        if is_per_instance(fam, parsed.types.get(fam)) {
                            *sum = sum.max(*value);
                        } else {
                            *sum += value;
                        }
                    })
                    .or_insert(*value);
            }
        }
        // Group samples under their family's HELP/TYPE lines.
        let mut by_family: BTreeMap<String, Vec<(&SeriesKey, f64)>> = BTreeMap::new();
        for (key, value) in &sums {
            by_family
                .entry(family(&key.0, &types).to_owned())
                .or_default()
                .push((key, *value));
        }
        let mut out = String::new();
        for (fam, mut samples) in by_family {
            if let Some((help, kind)) = meta.get(&fam) {
                for line in [help, kind].into_iter().flatten() {
                    let _ = writeln!(out, "{line}");
                }
            }
            if types.get(&fam).is_some_and(|kind| kind == "histogram") {
                sort_histogram(&mut samples);
            }
            for ((name, labels), value) in samples {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {value}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {value}");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observe(metrics: &HttpMetrics, route: &'static str, status: u16, ms: u64) {
        metrics.observe(&Observation {
            method: "GET",
            host: "example.gov.uk",
            route,
            status,
            duration: Duration::from_millis(ms),
        });
    }

    #[test]
    fn renders_the_old_series_and_a_histogram() {
        let metrics = HttpMetrics::new();
        observe(&metrics, "/_status", 200, 3);
        observe(&metrics, "/_status", 200, 40);
        observe(&metrics, "/d/{service}/{document}", 504, 30_000);
        let text = metrics.render();
        assert!(text.contains("http_server_requests_total{method=\"GET\",host=\"example.gov.uk\",path=\"/_status\",code=\"200\"} 2"), "{text}");
        assert!(text.contains("http_server_request_duration_seconds_bucket{method=\"GET\",path=\"/_status\",code=\"200\",le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("http_server_request_duration_seconds_bucket{method=\"GET\",path=\"/_status\",code=\"200\",le=\"0.05\"} 2"));
        assert!(text.contains("http_server_request_duration_seconds_count{method=\"GET\",path=\"/_status\",code=\"200\"} 2"));
        assert!(text.contains("http_server_responses_total{class=\"5xx\"} 1"));
        assert!(text.contains("http_server_exceptions_total{error=\"GatewayTimeout\"} 1"));
    }

    #[test]
    fn hostile_methods_and_hosts_do_not_create_series() {
        let metrics = HttpMetrics::new();
        metrics.observe(&Observation {
            method: "FOOBAR",
            host: "<script>",
            route: "other",
            status: 405,
            duration: Duration::ZERO,
        });
        let text = metrics.render();
        assert!(text.contains("method=\"_OTHER\",host=\"_other\""), "{text}");
    }

    #[test]
    fn made_up_hosts_beyond_the_cap_share_one_series() {
        let metrics = HttpMetrics::new();
        for i in 0..MAX_HOSTS + 10 {
            let host = format!("h{i}.example");
            metrics.observe(&Observation {
                method: "GET",
                host: &host,
                route: "other",
                status: 404,
                duration: Duration::ZERO,
            });
        }
        // Known hosts are matched case-insensitively, even after the cap.
        metrics.observe(&Observation {
            method: "GET",
            host: "H0.Example",
            route: "other",
            status: 404,
            duration: Duration::ZERO,
        });
        let text = metrics.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("http_server_requests_total{"))
            .count();
        assert_eq!(series, MAX_HOSTS + 1, "{text}");
        assert!(
            text.contains("host=\"h0.example\",path=\"other\",code=\"404\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("host=\"_other\",path=\"other\",code=\"404\"} 10"),
            "{text}"
        );
    }

    #[test]
    fn buckets_are_cumulative_and_slow_requests_only_reach_inf() {
        let metrics = HttpMetrics::new();
        observe(&metrics, "/_status", 200, 1);
        observe(&metrics, "/_status", 200, 1);
        observe(&metrics, "/_status", 200, 60_000);
        let text = metrics.render();
        for (le, n) in [("0.001", 2), ("0.0025", 2), ("30", 2), ("+Inf", 3)] {
            let line = format!(
                "http_server_request_duration_seconds_bucket{{method=\"GET\",path=\"/_status\",code=\"200\",le=\"{le}\"}} {n}"
            );
            assert!(text.contains(&line), "{line} in {text}");
        }
    }

    /// The series (name and labels, no value) of `family`'s lines in `text`.
    fn series_of<'a>(text: &'a str, family: &str) -> Vec<&'a str> {
        text.lines()
            .filter(|l| l.starts_with(family))
            .filter_map(|l| l.rsplit_once(' ').map(|(series, _)| series))
            .collect()
    }

    #[test]
    fn the_aggregate_lists_buckets_by_bound_then_sum_and_count() {
        let (a, b, both) = (HttpMetrics::new(), HttpMetrics::new(), HttpMetrics::new());
        for (metrics, route, status, ms) in [
            (&a, "/_status", 200, 3),
            (&b, "/_status", 200, 700),
            (&b, "other", 404, 12_000),
        ] {
            observe(metrics, route, status, ms);
            observe(&both, route, status, ms);
        }
        let mut agg = Aggregator::new();
        agg.update(1, 0, &a.render());
        agg.update(2, 1, &b.render());
        let text = agg.render();
        // One process that saw every request writes them in the order the
        // exposition format wants: per label set, `le` ascending, `+Inf`,
        // `_sum`, `_count`.
        let want = both.render();
        let family = "http_server_request_duration_seconds";
        assert_eq!(series_of(&text, family), series_of(&want, family), "{text}");
        assert_eq!(
            series_of(&text, family).len(),
            2 * (DURATION_BUCKETS.len() + 3)
        );
        assert!(text.contains(
            "http_server_request_duration_seconds_bucket{method=\"GET\",path=\"/_status\",code=\"200\",le=\"2.5\"} 2\n"
        ));
    }

    #[test]
    fn buckets_sort_by_number_wherever_le_is_and_however_it_is_written() {
        let mut agg = Aggregator::new();
        agg.update(
            1,
            0,
            "# TYPE t_seconds histogram\n\
             t_seconds_count{zone=\"b,\\\"c\"} 3\n\
             t_seconds_sum{zone=\"b,\\\"c\"} 0.5\n\
             t_seconds_bucket{le=\"+Inf\",zone=\"b,\\\"c\"} 3\n\
             t_seconds_bucket{le=\"1.000000\",zone=\"b,\\\"c\"} 3\n\
             t_seconds_bucket{le=\"0.000100\",zone=\"b,\\\"c\"} 1\n\
             t_seconds_bucket{le=\"0.050000\",zone=\"b,\\\"c\"} 2\n\
             t_seconds_count{zone=\"a\"} 0\n\
             t_seconds_bucket{zone=\"a\",le=\"10\"} 0\n\
             t_seconds_bucket{zone=\"a\",le=\"2.5\"} 0\n\
             t_seconds_bucket{zone=\"a\",le=\"+Inf\"} 0\n\
             t_seconds_sum{zone=\"a\"} 0\n\
             # TYPE t_total counter\n\
             t_total{le=\"2\"} 1\n\
             t_total{le=\"10\"} 1\n",
        );
        assert_eq!(
            agg.render(),
            "# TYPE t_seconds histogram\n\
             t_seconds_bucket{zone=\"a\",le=\"2.5\"} 0\n\
             t_seconds_bucket{zone=\"a\",le=\"10\"} 0\n\
             t_seconds_bucket{zone=\"a\",le=\"+Inf\"} 0\n\
             t_seconds_sum{zone=\"a\"} 0\n\
             t_seconds_count{zone=\"a\"} 0\n\
             t_seconds_bucket{le=\"0.000100\",zone=\"b,\\\"c\"} 1\n\
             t_seconds_bucket{le=\"0.050000\",zone=\"b,\\\"c\"} 2\n\
             t_seconds_bucket{le=\"1.000000\",zone=\"b,\\\"c\"} 3\n\
             t_seconds_bucket{le=\"+Inf\",zone=\"b,\\\"c\"} 3\n\
             t_seconds_sum{zone=\"b,\\\"c\"} 0.5\n\
             t_seconds_count{zone=\"b,\\\"c\"} 3\n\
             # TYPE t_total counter\n\
             t_total{le=\"10\"} 1\n\
             t_total{le=\"2\"} 1\n"
        );
    }

    #[test]
    fn per_instance_gauges_are_not_summed_over_workers() {
        let text = |open: u32, up: u32| {
            format!(
                "# TYPE edge_connections_open gauge\nedge_connections_open {open}\n\
                 # TYPE edge_tls_certificate_expiry_timestamp_seconds gauge\n\
                 edge_tls_certificate_expiry_timestamp_seconds{{name=\"a\"}} 1900000000\n\
                 # TYPE edge_upstream_up gauge\nedge_upstream_up{{server=\"x\"}} {up}\n\
                 # TYPE wharf_ratelimit_fallback_active gauge\nwharf_ratelimit_fallback_active 1\n"
            )
        };
        let mut agg = Aggregator::new();
        agg.update(1, 0, &text(3, 1));
        agg.update(2, 1, &text(4, 0));
        let out = agg.render();
        assert!(out.contains("edge_connections_open 7\n"), "{out}");
        assert!(
            out.contains("edge_tls_certificate_expiry_timestamp_seconds{name=\"a\"} 1900000000\n"),
            "{out}"
        );
        assert!(out.contains("edge_upstream_up{server=\"x\"} 1\n"), "{out}");
        assert!(out.contains("wharf_ratelimit_fallback_active 1\n"), "{out}");
    }

    #[test]
    fn the_aggregate_sums_slots_and_never_goes_backwards() {
        let a = HttpMetrics::new();
        let b = HttpMetrics::new();
        for _ in 0..3 {
            observe(&a, "/_status", 200, 1);
        }
        observe(&b, "/_status", 200, 1);
        let mut agg = Aggregator::new();
        agg.update(100, 0, &a.render());
        agg.update(101, 1, &b.render());
        let total = |agg: &Aggregator| {
            let text = agg.render();
            parse(&text).samples[&(
                "http_server_requests_total".to_owned(),
                "method=\"GET\",host=\"example.gov.uk\",path=\"/_status\",code=\"200\"".to_owned(),
            )]
        };
        assert!((total(&agg) - 4.0).abs() < f64::EPSILON);
        // Slot 0's worker is replaced by a fresh one with one request.
        agg.retire(100);
        let fresh = HttpMetrics::new();
        observe(&fresh, "/_status", 200, 1);
        agg.update(102, 0, &fresh.render());
        assert!((total(&agg) - 5.0).abs() < f64::EPSILON, "{}", agg.render());
        let text = agg.render();
        assert_eq!(
            text.matches("# TYPE http_server_requests_total counter")
                .count(),
            1,
            "{text}"
        );
    }
}
