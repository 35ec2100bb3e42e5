//! One scrape per instance: the master sums its workers' metrics, counters
//! stay monotonic across worker replacement, the text passes `promtool`, and
//! a real Prometheus computes rates and quantiles from it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{
    curl, free_port, output_with_input, require_tool, start, wait_for_port, Process,
};

const FRONTEND: &str = env!("CARGO_BIN_EXE_frontend");
const STATUS_SERIES: &str =
    "http_server_requests_total{method=\"GET\",host=\"t\",path=\"/_status\",code=\"200\"}";
const NOT_FOUND_SERIES: &str =
    "http_server_requests_total{method=\"GET\",host=\"t\",path=\"other\",code=\"404\"}";

fn frontend(extra: &[(&'static str, &str)]) -> (Process, u16) {
    let port = free_port();
    let admin = free_port();
    let mut env = HashMap::from([
        ("PORT", port.to_string()),
        ("WEB_CONCURRENCY", "2".to_owned()),
        ("WHARF_ADMIN_ADDRESS", format!("127.0.0.1:{admin}")),
        ("WHARF_ACCESS_LOG", "false".to_owned()),
    ]);
    for (k, v) in extra {
        env.insert(k, (*v).to_owned());
    }
    let running = start(FRONTEND, &["serve"], &env, port);
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], admin)),
        Duration::from_secs(10),
    );
    (running, admin)
}

fn status(addr: SocketAddr) {
    get(addr, "/_status", 200);
}

/// `GET path` with `Host: t` on a connection of its own, answered `code`.
fn get(addr: SocketAddr, path: &str, code: u16) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let head = String::from_utf8_lossy(&answer);
    assert!(
        head.starts_with(&format!("HTTP/1.1 {code} ")),
        "{path}: {head}"
    );
}

fn scrape(admin: u16) -> String {
    curl(&[&format!("http://127.0.0.1:{admin}/metrics")]).1
}

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn wait_for_value(admin: u16, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = scrape(admin);
        if value(&text, series).is_some_and(|v| (v - want).abs() < 0.5) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached {want}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn workers(master: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{master}/task/{master}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn one_scrape_sums_the_workers_and_counters_survive_a_replacement() {
    let (frontend, admin) = frontend(&[]);
    for _ in 0..40 {
        status(frontend.addr());
    }
    let text = wait_for_value(admin, STATUS_SERIES, 40.0);
    // Both workers served some of them (one shared accept socket).
    let served: Vec<f64> = (0..2)
        .filter_map(|slot| {
            value(
                &text,
                &format!("wharf_worker_requests_total{{slot=\"{slot}\"}}"),
            )
        })
        .collect();
    assert_eq!(served.len(), 2, "{text}");
    assert!(
        value(&text, "http_server_request_duration_seconds_count{method=\"GET\",path=\"/_status\",code=\"200\"}")
            .is_some_and(|v| (v - 40.0).abs() < 0.5),
        "{text}"
    );
    if let Some(promtool) = require_tool("promtool", "apt-get install -y prometheus") {
        promtool_check_metrics(&promtool, &text);
    }
    // Kill a worker: its 20-odd requests must stay counted.
    let victim = workers(frontend.pid())[0];
    let _ = Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..10 {
        status(frontend.addr());
    }
    wait_for_value(admin, STATUS_SERIES, 50.0);
}

/// `promtool check metrics` (lint included) passes on `text`; what it
/// printed (nothing when it passes, so far).
fn promtool_check_metrics(promtool: &Path, text: &str) -> String {
    let out = output_with_input(Command::new(promtool).args(["check", "metrics"]), text);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics: {said}\n{text}"
    );
    said
}

/// A histogram's label set (without `le`) and its series in order, as
/// (rank: bucket 0, sum 1, count 2; `le`).
type LabelSet = (String, Vec<(u8, f64)>);

/// Where `text` breaks the order the text exposition format asks for, which
/// `promtool check metrics` does not check: every family's lines in one
/// group, no series twice, and each histogram's series one label set at a
/// time, as `_bucket`s by ascending `le` ending at `+Inf`, then `_sum`, then
/// `_count`.
fn order_problems<'a>(text: &'a str) -> Vec<String> {
    let types: HashMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .collect();
    let family = |name: &'a str| -> &'a str {
        ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .find(|base| types.get(base) == Some(&"histogram"))
            .unwrap_or(name)
    };
    let mut problems = Vec::new();
    let mut ended: Vec<&str> = Vec::new();
    let mut current = "";
    let mut seen = std::collections::HashSet::new();
    let mut histograms: HashMap<&str, Vec<LabelSet>> = HashMap::new();
    for line in text.lines() {
        let meta = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "));
        if meta.is_none() && (line.starts_with('#') || line.trim().is_empty()) {
            continue;
        }
        let series = line.rsplit_once(' ').map_or(line, |(series, _)| series);
        let (name, labels) = series
            .split_once('{')
            .map_or((series, ""), |(n, l)| (n, l.trim_end_matches('}')));
        let fam = match meta {
            Some(meta) => meta.split(' ').next().unwrap_or_default(),
            None => family(name),
        };
        if fam != current {
            if ended.contains(&fam) {
                problems.push(format!("{fam}: lines not in one group"));
            }
            ended.push(current);
            current = fam;
        }
        if meta.is_some() {
            continue;
        }
        if !seen.insert(series) {
            problems.push(format!("{series}: twice"));
        }
        if types.get(fam) != Some(&"histogram") {
            continue;
        }
        let rank = match &name[fam.len()..] {
            "_bucket" => 0,
            "_sum" => 1,
            _ => 2,
        };
        let pairs = label_pairs(labels);
        let le = pairs
            .iter()
            .find_map(|p| p.strip_prefix("le=\""))
            .map_or(f64::NAN, |v| {
                v.trim_end_matches('"').parse().unwrap_or(f64::NAN)
            });
        let set: Vec<&str> = pairs
            .into_iter()
            .filter(|p| !p.starts_with("le="))
            .collect();
        let set = set.join(",");
        let sets = histograms.entry(fam).or_default();
        match sets.last_mut() {
            Some((last, series)) if *last == set => series.push((rank, le)),
            _ => {
                if sets.iter().any(|(s, _)| *s == set) {
                    problems.push(format!("{fam}{{{set}}}: series not in one group"));
                }
                sets.push((set, vec![(rank, le)]));
            }
        }
    }
    for (fam, sets) in histograms {
        for (set, series) in sets {
            let buckets: Vec<f64> = series
                .iter()
                .filter(|(r, _)| *r == 0)
                .map(|(_, le)| *le)
                .collect();
            let ranks: Vec<u8> = series.iter().map(|(r, _)| *r).collect();
            let in_order = buckets.windows(2).all(|w| w[0] < w[1])
                && buckets.last() == Some(&f64::INFINITY)
                && ranks[buckets.len()..] == [1, 2]
                && ranks[..buckets.len()].iter().all(|r| *r == 0);
            if !in_order {
                problems.push(format!(
                    "{fam}{{{set}}}: not buckets by le to +Inf, _sum, _count: {series:?}"
                ));
            }
        }
    }
    problems
}

/// `frontend` with 2 workers, after a few requests on two routes: its one
/// scrape passes `promtool check metrics` without a word and is in the
/// format's order (buckets by `le`, as one worker writes them; not as text,
/// where `le="10"` comes before `le="2.5"`).
#[test]
fn a_frontend_scrape_passes_promtool_with_its_buckets_in_order() {
    let (frontend, admin) = frontend(&[]);
    for _ in 0..20 {
        status(frontend.addr());
        get(frontend.addr(), "/no-such-page", 404);
    }
    let text = wait_for_value(admin, STATUS_SERIES, 20.0);
    let text = if value(&text, NOT_FOUND_SERIES).is_some_and(|v| (v - 20.0).abs() < 0.5) {
        text
    } else {
        wait_for_value(admin, NOT_FOUND_SERIES, 20.0)
    };
    assert!(text.contains("_bucket{"), "{text}");
    let problems = order_problems(&text);
    assert!(problems.is_empty(), "{problems:#?}\n{text}");
    if let Some(promtool) = require_tool("promtool", "apt-get install -y prometheus") {
        let said = promtool_check_metrics(&promtool, &text);
        assert!(
            said.trim().is_empty(),
            "promtool check metrics: {said}\n{text}"
        );
    }
}

/// The admin `/metrics` of an edge with 2 workers, after traffic over plain
/// HTTP and TLS to a real `frontend` (so the TLS, certificate and
/// per-upstream series all exist), passes `promtool check metrics` and is in
/// the format's order.
#[test]
fn an_edge_scrape_passes_promtool() {
    let Some(promtool) = require_tool("promtool", "apt-get install -y prometheus") else {
        return;
    };
    let upstream = crate::reliability::frontend(&[]);
    let edge = crate::reliability::Edge::start(&crate::reliability::EdgeSpec {
        servers: format!("{{ address = \"{}\" }}", upstream.addr()),
        tls: true,
        locations: "[supervisor]\nworkers = 2\nworker_threads = 1\n".to_owned(),
        ..crate::reliability::EdgeSpec::default()
    });
    let tls = edge.tls_addr();
    let plain = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{}/_status", edge.addr()),
    ]);
    assert_eq!(plain.1, "200");
    let secure = curl(&[
        "-k",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--resolve",
        &format!("localhost:{}:127.0.0.1", tls.port()),
        &format!("https://localhost:{}/_status", tls.port()),
    ]);
    assert_eq!(secure.1, "200");
    // The master shows a worker's series once the worker has reported.
    let families = [
        "edge_upstream_up",
        "edge_tls_certificate_expiry_timestamp_seconds",
        "wharf_worker_rss_bytes{slot=\"1\"}",
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = scrape(edge.admin);
        let missing: Vec<&str> = families.into_iter().filter(|f| !text.contains(f)).collect();
        if missing.is_empty() {
            break text;
        }
        assert!(Instant::now() < deadline, "no {missing:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let problems = order_problems(&text);
    assert!(problems.is_empty(), "{problems:#?}\n{text}");
    let said = promtool_check_metrics(&promtool, &text);
    assert!(
        said.trim().is_empty(),
        "promtool check metrics: {said}\n{text}"
    );
    // Facts about the whole instance are not summed over the two workers:
    // the upstream is up (1, not 2), the generation is the first.
    let value = |series: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .to_owned()
    };
    assert_eq!(
        value(&format!(
            "edge_upstream_up{{upstream=\"app\",server=\"{}\"}}",
            upstream.addr()
        )),
        "1"
    );
    assert_eq!(value("edge_config_generation"), "1");
}

#[test]
fn public_metrics_need_the_bearer_token() {
    let (frontend, _admin) = frontend(&[("WHARF_METRICS_TOKEN", "token-123")]);
    let url = frontend.url("/metrics");
    let code = |extra: &[&str]| {
        let mut args = vec!["-o", "/dev/null", "-w", "%{http_code}"];
        args.extend_from_slice(extra);
        args.push(&url);
        curl(&args).1
    };
    assert_eq!(code(&[]), "401");
    assert_eq!(code(&["-H", "Authorization: Bearer wrong"]), "403");
    status(frontend.addr());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = curl(&["-H", "Authorization: Bearer token-123", &url]);
        if text.contains("wharf_workers{state=\"ready\"} 2")
            && text.contains("http_server_requests_total")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn query(port: u16, promql: &str) -> Vec<serde_json::Value> {
    let (_, body) = curl(&[
        "--get",
        "--data-urlencode",
        &format!("query={promql}"),
        &format!("http://127.0.0.1:{port}/api/v1/query"),
    ]);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    doc["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn scalar(result: &[serde_json::Value]) -> Option<f64> {
    result.first()?["value"][1].as_str()?.parse().ok()
}

#[test]
fn a_real_prometheus_sees_a_steady_rate_and_a_p99_across_a_worker_replacement() {
    let Some(prometheus) = require_tool("prometheus", "apt-get install -y prometheus") else {
        return;
    };
    let (frontend, admin) = frontend(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: frontend\n    static_configs:\n      - targets: ['127.0.0.1:{admin}']\n"
        ),
    )
    .unwrap();
    let port = free_port();
    let _prometheus = Prometheus(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for_port(
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(20),
    );
    // Steady load: ~100 requests per second for 12 s, a worker killed at 6 s.
    let addr = frontend.addr();
    let load = std::thread::spawn(move || {
        let started = Instant::now();
        let mut sent = 0_u32;
        while started.elapsed() < Duration::from_secs(12) {
            status(addr);
            sent += 1;
            let due = Duration::from_millis(u64::from(sent) * 10);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    });
    std::thread::sleep(Duration::from_secs(6));
    let victim = workers(frontend.pid())[0];
    let _ = Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status();
    load.join().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let rate = scalar(&query(
        port,
        "sum(rate(http_server_requests_total{path=\"/_status\"}[4s]))",
    ));
    let max_rate = scalar(&query(
        port,
        "max_over_time(sum(rate(http_server_requests_total{path=\"/_status\"}[3s]))[12s:1s])",
    ));
    let p99 = scalar(&query(
        port,
        "histogram_quantile(0.99, sum by (le) (rate(http_server_request_duration_seconds_bucket[10s])))",
    ));
    eprintln!("rate {rate:?} max rate {max_rate:?} p99 {p99:?}");
    let max_rate = max_rate.expect("a request rate");
    // A counter reset (a replaced worker's counts lost) would show as a spike
    // far above the ~100/s sent; Prometheus treats a drop as a reset.
    assert!(max_rate > 20.0 && max_rate < 200.0, "max rate {max_rate}");
    let p99 = p99.expect("a p99");
    assert!(p99 > 0.0 && p99 < 1.0, "p99 {p99}");
}

#[test]
fn alert_rules_are_valid_and_every_alert_passes_its_unit_test() {
    let Some(promtool) = require_tool("promtool", "apt-get install -y prometheus") else {
        return;
    };
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/observability/prometheus"
    );
    let check = Command::new(&promtool)
        .args(["check", "rules", "alerts.yml"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let test = Command::new(&promtool)
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
    // Every alert in alerts.yml has a test.
    let rules = std::fs::read_to_string(format!("{dir}/alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(format!("{dir}/alerts.test.yml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no unit test in alerts.test.yml"
        );
    }
}

/// The `name="value"` pairs of a sample's label text, split at the commas
/// between them, not at those inside quoted values (read independently of
/// wharf-telemetry's encoder, which this checks).
fn label_pairs(labels: &str) -> Vec<&str> {
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

/// Access-log lines wait in a buffer for up to 100 ms (wharf-telemetry's
/// writer): requests served just before SIGTERM are still in the log, each
/// once, and every line of the log is whole JSON.
#[test]
fn requests_served_just_before_sigterm_are_in_the_access_log() {
    let (running, _admin) = frontend(&[("WHARF_ACCESS_LOG", "true"), ("WHARF_LOG_FORMAT", "json")]);
    let ids: Vec<String> = (0..40).map(|n| format!("before-term-{n}")).collect();
    for id in &ids {
        let mut stream = TcpStream::connect(running.addr()).unwrap();
        write!(
            stream,
            "GET /_status HTTP/1.1\r\nHost: t\r\nX-Request-Id: {id}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 200 "));
    }
    running.signal("TERM");
    let output = running.wait_exit(Duration::from_secs(15));
    assert!(output.status.success(), "{:?}", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: not a JSON line: {l}")))
        .collect();
    for id in &ids {
        let found: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|l| l["message"] == "Served request" && l["request_id"] == id.as_str())
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{id}: {} access lines in\n{stdout}",
            found.len()
        );
        assert_eq!(found[0]["path"], "/_status");
        assert_eq!(found[0]["status"], 200);
    }
}
