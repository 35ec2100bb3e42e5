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
    curl, free_port, output_with_input, require_tool, start, wait_for_port, Running,
};

const FRONTEND: &str = env!("CARGO_BIN_EXE_frontend");
const STATUS_SERIES: &str =
    "http_server_requests_total{method=\"GET\",host=\"t\",path=\"/_status\",code=\"200\"}";

fn frontend(extra: &[(&'static str, &str)]) -> (Running, u16) {
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
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /_status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));
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
    let victim = workers(frontend.child.id())[0];
    let _ = Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status();
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..10 {
        status(frontend.addr());
    }
    wait_for_value(admin, STATUS_SERIES, 50.0);
}

/// `promtool check metrics` (lint included) passes on `text`.
fn promtool_check_metrics(promtool: &Path, text: &str) {
    let out = output_with_input(Command::new(promtool).args(["check", "metrics"]), text);
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// edge's admin `/metrics`, after traffic over plain HTTP and TLS to a real
/// `frontend` (so the TLS, certificate and per-upstream series all exist),
/// passes `promtool check metrics`.
#[test]
fn an_edge_scrape_passes_promtool() {
    let Some(promtool) = require_tool("promtool", "apt-get install -y prometheus") else {
        return;
    };
    let upstream = crate::reliability::frontend(&[]);
    let edge = crate::reliability::Edge::start(&crate::reliability::EdgeSpec {
        servers: format!("{{ address = \"{}\" }}", upstream.addr()),
        tls: true,
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
    let text = scrape(edge.admin);
    for family in [
        "edge_upstream_up",
        "edge_tls_certificate_expiry_timestamp_seconds",
    ] {
        assert!(text.contains(family), "no {family}:\n{text}");
    }
    promtool_check_metrics(&promtool, &text);
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
    let victim = workers(frontend.child.id())[0];
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
