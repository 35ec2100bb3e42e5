//! wharf's one metrics home: the values every crate reports ([`Snapshot`],
//! [`Family`]), the only Prometheus text encoder ([`Snapshot::encode`]),
//! per-process HTTP request metrics ([`HttpMetrics`]), the aggregator a
//! supervisor uses to serve **one** scrape for all its worker processes, and
//! [`PublicMetrics`], that scrape on a public port behind a bearer token.
//!
//! Each worker keeps an [`HttpMetrics`] and sends its
//! [`snapshot`](HttpMetrics::snapshot) to the master as values; the
//! master's [`Aggregator`] adds the series up across worker slots. When a worker is replaced, its last counters are kept as the
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

mod aggregate;
mod family;
mod public;

use std::sync::Mutex;
use std::time::Duration;

pub use aggregate::Aggregator;
pub use family::{
    Family, Histogram, IntoSeriesValue, IntoValue, Kind, Labels, Merge, Series, Snapshot, Value,
    WireError, CONTENT_TYPE,
};
pub use public::{MetricsText, PublicMetrics, METRICS_PATH};

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

impl DurationSeries {
    fn histogram(&self) -> Histogram {
        // Observations above every bound are counted only in `count`.
        let within: u64 = self.buckets.iter().sum();
        let mut counts = self.buckets.to_vec();
        counts.push(self.count - within);
        Histogram::from_counts(&DURATION_BUCKETS, &counts, self.sum)
    }
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

    /// The metrics as values, to encode or to send to a master.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::new();
        let Ok(state) = self.state.lock() else {
            return snapshot;
        };
        let mut family = Family::counter(
            "http_server_requests_total",
            "HTTP requests served, by method, host, route template and status code.",
        );
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
            family.sample(
                &[
                    ("method", method),
                    ("host", host),
                    ("path", route),
                    ("code", &code.to_string()),
                ],
                n,
            );
        }
        snapshot.push(family);
        let mut family = Family::histogram(
            "http_server_request_duration_seconds",
            "Time to serve a request, until its response body was sent.",
        );
        let mut durations: Vec<_> = state.durations.iter().collect();
        durations.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        for ((method, route, code), series) in durations {
            family.sample_histogram(
                &[
                    ("method", method),
                    ("path", route),
                    ("code", &code.to_string()),
                ],
                series.histogram(),
            );
        }
        snapshot.push(family);
        let mut family = Family::counter(
            "http_server_responses_total",
            "HTTP responses by status class.",
        );
        for (i, n) in state.classes.iter().enumerate() {
            family.sample(&[("class", &format!("{}xx", i + 1))], *n);
        }
        snapshot.push(family);
        let mut family = Family::counter(
            "http_server_exceptions_total",
            "Requests answered with a server error, by error.",
        );
        let mut exceptions = state.exceptions.clone();
        exceptions.sort_unstable();
        for (error, n) in exceptions {
            family.sample(&[("error", error)], n);
        }
        snapshot.push(family);
        snapshot
    }

    /// The metrics in the Prometheus text exposition format (0.0.4).
    pub fn render(&self) -> String {
        self.snapshot().encode()
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
        agg.update(1, 0, a.snapshot());
        agg.update(2, 1, b.snapshot());
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
        assert!(text.contains(
            "http_server_request_duration_seconds_bucket{method=\"GET\",path=\"other\",code=\"404\",le=\"+Inf\"} 1\n"
        ));
        assert!(text.contains(
            "http_server_request_duration_seconds_bucket{method=\"GET\",path=\"other\",code=\"404\",le=\"10\"} 0\n"
        ));
    }

    #[test]
    fn per_instance_gauges_are_not_summed_over_workers() {
        let worker = |open: u64, up: bool| {
            let mut s = Snapshot::new();
            s.push(Family::gauge("edge_connections_open", "Open.").with(&[], open));
            s.push(
                Family::gauge("edge_upstream_up", "Up.")
                    .per_instance()
                    .with(&[("server", "x")], up),
            );
            s
        };
        let mut agg = Aggregator::new();
        agg.update(1, 0, worker(3, true));
        agg.update(2, 1, worker(4, false));
        let out = agg.snapshot();
        assert_eq!(out.number("edge_connections_open", &[]), Some(7.0));
        assert_eq!(
            out.number("edge_upstream_up", &[("server", "x")]),
            Some(1.0)
        );
        // A retired worker's gauges are gone, its counters stay.
        agg.retire(1);
        let out = agg.snapshot();
        assert_eq!(out.number("edge_connections_open", &[]), Some(4.0));
        assert_eq!(
            out.number("edge_upstream_up", &[("server", "x")]),
            Some(0.0)
        );
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
        agg.update(100, 0, a.snapshot());
        agg.update(101, 1, b.snapshot());
        let labels = [
            ("method", "GET"),
            ("host", "example.gov.uk"),
            ("path", "/_status"),
            ("code", "200"),
        ];
        let total = |agg: &Aggregator| agg.snapshot().number("http_server_requests_total", &labels);
        assert_eq!(total(&agg), Some(4.0));
        // Slot 0's worker is replaced by a fresh one with one request.
        agg.retire(100);
        let fresh = HttpMetrics::new();
        observe(&fresh, "/_status", 200, 1);
        agg.update(102, 0, fresh.snapshot());
        assert_eq!(total(&agg), Some(5.0), "{}", agg.render());
        let text = agg.render();
        assert_eq!(
            text.matches("# TYPE http_server_requests_total counter")
                .count(),
            1,
            "{text}"
        );
        // The histogram is carried over too.
        let count = |agg: &Aggregator| {
            let snapshot = agg.snapshot();
            match snapshot
                .family("http_server_request_duration_seconds")
                .and_then(|f| f.value(&[("method", "GET"), ("path", "/_status"), ("code", "200")]))
            {
                Some(Value::Histogram(h)) => h.count(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(count(&agg), 5);
    }

    #[test]
    fn a_worker_snapshot_survives_the_wire() {
        let metrics = HttpMetrics::new();
        observe(&metrics, "/_status", 200, 3);
        observe(&metrics, "other", 503, 40_000);
        let back = Snapshot::from_wire(&metrics.snapshot().to_wire()).unwrap();
        assert_eq!(back.encode(), metrics.render());
    }
}
