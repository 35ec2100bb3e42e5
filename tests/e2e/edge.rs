//! The `edge` binary end to end: real curl and openssl against the built
//! binary, with `frontend` (or a dead port) as the upstream.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wharf_tls::{KeyKind, SelfSigned};

use crate::reliability::stub::{Reply, Stub};
use crate::support::{command, free_port, output_with_input, start, wait_for_port, Process};

const EDGE: &str = env!("CARGO_BIN_EXE_edge");
const FRONTEND: &str = env!("CARGO_BIN_EXE_frontend");

fn frontend() -> Process {
    let port = free_port();
    let env = HashMap::from([("PORT", port.to_string()), ("RUST_LOG", "warn".to_owned())]);
    start(FRONTEND, &["serve"], &env, port)
}

struct Edge {
    running: Process,
    http: u16,
    https: u16,
    admin: u16,
    config: std::path::PathBuf,
}

/// A config with a redirecting plain listener, a TLS listener, an admin
/// listener and one upstream.
fn write_config(
    dir: &Path,
    http: u16,
    https: u16,
    admin: u16,
    upstream: &str,
    extra: &str,
) -> std::path::PathBuf {
    let cert = dir.join("site.crt");
    let key = dir.join("site.key");
    if !cert.exists() {
        SelfSigned::generate(&["localhost"], KeyKind::EcdsaP256)
            .unwrap()
            .write(dir, "site")
            .unwrap();
    }
    let text = format!(
        r#"
[[listen]]
address = "127.0.0.1:{http}"
redirect_to_https = true
https_port = {https}

[[listen]]
address = "127.0.0.1:{https}"
ssl = true

[admin]
address = "127.0.0.1:{admin}"

[http]
client_max_body_size = "1k"
max_header_size = "8k"
access_log = false
{extra}

[tls]
watch_interval = "0s"

[proxy]
connect_timeout = "1s"

[[upstream]]
name = "app"
servers = [{{ address = "{upstream}" }}]

[[server]]
server_name = ["localhost"]
ssl_certificate = "{cert}"
ssl_certificate_key = "{key}"

[[server.location]]
path = "/"
proxy_pass = "app"

[[server.location]]
path = "/fixed"
return = {{ status = 200, body = "fixed\n" }}
"#,
        cert = cert.display(),
        key = key.display(),
    );
    let path = dir.join("edge.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start_edge(dir: &Path, upstream: &str, extra: &str) -> Edge {
    start_edge_with_tail(dir, upstream, extra, "")
}

/// As [`start_edge`], with `tail` appended to the file (more locations of
/// the one server, say).
fn start_edge_with_tail(dir: &Path, upstream: &str, extra: &str, tail: &str) -> Edge {
    let (http, https, admin) = (free_port(), free_port(), free_port());
    let config = write_config(dir, http, https, admin, upstream, extra);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(tail);
    std::fs::write(&config, text).unwrap();
    let env = HashMap::from([("RUST_LOG", "info".to_owned())]);
    let running = start(EDGE, &["--config", config.to_str().unwrap()], &env, https);
    wait_for_port(([127, 0, 0, 1], http).into(), Duration::from_secs(10));
    Edge {
        running,
        http,
        https,
        admin,
        config,
    }
}

impl Edge {
    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https)
    }

    fn resolve(&self) -> String {
        format!("localhost:{}:127.0.0.1", self.https)
    }

    /// curl -k over TLS; returns (status, headers+body).
    fn curl(&self, args: &[&str], path: &str) -> (u16, String) {
        let out = Command::new("curl")
            .args([
                "-sk",
                "--max-time",
                "10",
                "-i",
                "--resolve",
                &self.resolve(),
            ])
            .args(args)
            .arg(self.url(path))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text)
    }

    /// Writes a misspelt key into the file; returns the good text.
    fn write_typo(&self) -> String {
        let good = std::fs::read_to_string(&self.config).unwrap();
        let bad = good.replace("[proxy]", "[proxy]\nconect_timeout = \"1s\"");
        std::fs::write(&self.config, bad).unwrap();
        good
    }

    /// Writes `good` with the `/fixed` location answering `fixed2`.
    fn write_fixed2(&self, good: &str) {
        let changed = good.replace("body = \"fixed\\n\"", "body = \"fixed2\\n\"");
        assert_ne!(changed, good);
        std::fs::write(&self.config, changed).unwrap();
    }

    fn reload(&self) {
        self.running.signal("HUP");
        std::thread::sleep(Duration::from_millis(300));
    }

    fn metric(&self, name: &str) -> u64 {
        let (_, text) =
            crate::support::curl(&[&format!("http://127.0.0.1:{}/metrics", self.admin)]);
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in {text}"))
    }
}

fn dead_address() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[test]
fn serves_h2_and_http11_over_tls_with_security_headers_and_redirects_http() {
    let dir = tempfile::tempdir().unwrap();
    let app = frontend();
    let edge = start_edge(dir.path(), &app.addr().to_string(), "");

    let (status, text) = edge.curl(&["--http2"], "/_status");
    assert_eq!(status, 200, "{text}");
    assert!(text.starts_with("HTTP/2 200"), "{text}");
    assert!(text.contains("\"status\":\"ok\""), "{text}");
    let lower = text.to_lowercase();
    assert!(
        lower.contains("strict-transport-security: max-age=63072000; includesubdomains"),
        "{text}"
    );
    assert!(lower.contains("x-frame-options: deny"), "{text}");
    assert!(lower.contains("x-content-type-options: nosniff"), "{text}");
    assert!(
        lower.contains("referrer-policy: strict-origin-when-cross-origin"),
        "{text}"
    );

    let (status, text) = edge.curl(&["--http1.1"], "/_status");
    assert_eq!(status, 200);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");

    // Errors carry the headers too.
    let (status, text) = edge.curl(&[], "/no-such-page");
    assert_eq!(status, 404);
    assert!(
        text.to_lowercase().contains("strict-transport-security"),
        "{text}"
    );

    let (_, text) =
        crate::support::curl(&["-i", &format!("http://127.0.0.1:{}/a/b?x=1&y=2", edge.http)]);
    assert!(text.starts_with("HTTP/1.1 301"), "{text}");
    assert!(
        text.to_lowercase().contains(&format!(
            "location: https://127.0.0.1:{}/a/b?x=1&y=2",
            edge.https
        )),
        "{text}"
    );
}

/// The security headers edge puts on every response, its own errors included
/// (`curl -i` output; names compared in lower case).
fn assert_security_headers(response: &str) {
    let head = response.to_ascii_lowercase();
    for header in [
        "strict-transport-security: max-age=63072000; includesubdomains",
        "x-frame-options: ",
        "x-content-type-options: nosniff",
        "referrer-policy: ",
    ] {
        assert!(head.contains(header), "no {header:?} in:\n{response}");
    }
}

#[test]
fn upstream_down_is_502_and_limits_are_413_and_431() {
    let dir = tempfile::tempdir().unwrap();
    let edge = start_edge(dir.path(), &dead_address(), "");
    let (status, text) = edge.curl(&[], "/");
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("502 Bad Gateway"), "{text}");
    assert_security_headers(&text);

    let big = "x".repeat(2048);
    let (status, text) = edge.curl(&["--http1.1", "--data-binary", &big], "/fixed");
    assert_eq!(status, 413, "{text}");
    assert_security_headers(&text);
    let header = format!("x-big: {}", "y".repeat(10_000));
    let (status, text) = edge.curl(&["--http1.1", "-H", &header], "/fixed");
    assert_eq!(status, 431, "{text}");
    assert_security_headers(&text);
    let (status, text) = edge.curl(&["--http2", "-H", &header], "/fixed");
    assert_eq!(status, 431, "HTTP/2: {text}");
    assert_security_headers(&text);
    let (status, text) = edge.curl(&[], "/fixed");
    assert_eq!((status, text.ends_with("fixed\n")), (200, true), "{text}");
}

#[test]
fn x_forwarded_for_is_not_spoofable_from_an_untrusted_peer() {
    // A fixed location cannot echo headers, so proxy to a tiny echo upstream:
    // a second edge whose return block is not enough either; use nc-like TCP.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let seen_by_server = Arc::clone(&seen);
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        if let Ok((mut stream, _)) = listener.accept() {
            let mut buf = vec![0u8; 8192];
            let n = stream.read(&mut buf).unwrap_or(0);
            *seen_by_server.lock().unwrap() = String::from_utf8_lossy(&buf[..n]).into_owned();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let edge = start_edge(dir.path(), &upstream.to_string(), "");
    let (status, _) = edge.curl(
        &["-H", "X-Forwarded-For: 6.6.6.6", "-H", "X-Real-IP: 6.6.6.6"],
        "/who",
    );
    assert_eq!(status, 200);
    let request = seen.lock().unwrap().to_lowercase();
    assert!(
        request.contains("x-forwarded-for: 127.0.0.1\r\n"),
        "{request}"
    );
    assert!(request.contains("x-real-ip: 127.0.0.1\r\n"), "{request}");
    assert!(
        request.contains("x-forwarded-proto: https\r\n"),
        "{request}"
    );
    assert!(
        request.contains(&format!("host: localhost:{}\r\n", edge.https)),
        "{request}"
    );
    assert!(!request.contains("6.6.6.6"), "{request}");
}

fn s_client(port: u16, args: &[&str]) -> String {
    s_client_status(port, args).1
}

/// `openssl s_client` for `localhost` with `args` and nothing on its
/// standard input: whether it exited 0, and what it printed.
fn s_client_status(port: u16, args: &[&str]) -> (bool, String) {
    s_client_with_input(
        port,
        &[&["-servername", "localhost"][..], args].concat(),
        "",
    )
}

fn served_cert(port: u16) -> String {
    first_pem(&s_client(port, &[]))
}

#[test]
fn openssl_sees_tls12_and_13_only_alpn_and_sighup_certificate_reload() {
    let dir = tempfile::tempdir().unwrap();
    let edge = start_edge(dir.path(), &dead_address(), "");
    // TLS 1.0 and 1.1 offered (SECLEVEL=0 lets this client offer them) and
    // refused by the server: s_client fails on an alert edge sent, not on a
    // refusal of its own, and never sees a certificate.
    for version in ["-tls1", "-tls1_1"] {
        let (ok, out) = s_client_status(edge.https, &[version, "-cipher", "ALL:@SECLEVEL=0"]);
        assert!(!ok, "{version}: {out}");
        assert!(
            out.contains("alert handshake failure") || out.contains("alert protocol version"),
            "{version}: {out}"
        );
        assert!(!out.contains("BEGIN CERTIFICATE"), "{version}: {out}");
    }
    assert!(s_client(edge.https, &["-tls1_2"]).contains("Protocol  : TLSv1.2"));
    assert!(s_client(edge.https, &["-alpn", "h2"]).contains("ALPN protocol: h2"));

    let old = served_cert(edge.https);
    // A connection open across the renewal: one request before, one after.
    let mut open = s_client_session(edge.https);
    let mut open_in = open.stdin.take().unwrap();
    {
        use std::io::Write;
        open_in
            .write_all(b"GET /fixed HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    // certbot renews: new files, then `systemctl reload` sends SIGHUP.
    SelfSigned::generate(&["localhost"], KeyKind::EcdsaP256)
        .unwrap()
        .write(dir.path(), "site")
        .unwrap();
    edge.reload();
    let new = served_cert(edge.https);
    assert_ne!(old, new, "new handshakes see the new certificate");
    assert_eq!(edge.metric("edge_tls_certificate_reloads_total"), 1);
    {
        use std::io::Write;
        open_in
            .write_all(b"GET /fixed HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .unwrap();
    }
    drop(open_in);
    let out = open.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches("HTTP/1.1 200 OK").count(),
        2,
        "the open connection kept working across the renewal: {text}"
    );

    // A broken replacement is refused; the last good certificate keeps serving.
    std::fs::write(dir.path().join("site.key"), "broken").unwrap();
    edge.reload();
    assert_eq!(served_cert(edge.https), new);
    assert_eq!(edge.metric("edge_config_reload_failures_total"), 1);
    let (status, _) = edge.curl(&[], "/fixed");
    assert_eq!(status, 200);
}

#[test]
fn an_invalid_reload_is_refused_and_a_valid_one_applies_under_load_with_no_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let app = frontend();
    let edge = start_edge(dir.path(), &app.addr().to_string(), "");
    // Requests edge answers itself, and requests it proxies to frontend over
    // its keep-alive pool, both crossing every reload.
    let load = CurlLoad::start(&edge, "/fixed", 2);
    let proxied = CurlLoad::start(&edge, "/_status", 2);
    std::thread::sleep(Duration::from_millis(300));
    // A typo: refused, old configuration keeps serving.
    let good = edge.write_typo();
    edge.reload();
    assert_eq!(edge.metric("edge_config_reload_failures_total"), 1);
    // A valid change: the fixed body changes for new connections.
    edge.write_fixed2(&good);
    for _ in 0..3 {
        edge.reload();
    }
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed) = load.stop();
    let (proxied_ok, proxied_failed) = proxied.stop();
    assert_eq!(edge.metric("edge_config_reloads_total"), 3);
    let (_, text) = edge.curl(&[], "/fixed");
    assert!(
        text.ends_with("fixed2\n"),
        "new connections get the new configuration: {text}"
    );
    assert_eq!(failed, 0, "failed requests during reloads");
    assert!(ok > 10);
    assert_eq!(proxied_failed, 0, "failed proxied requests during reloads");
    assert!(proxied_ok > 10);
}

/// Threads running curl against `path` (three requests per connection) until
/// stopped, counting 200s and anything else.
struct CurlLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CurlLoad {
    fn start(edge: &Edge, path: &str, threads: usize) -> Self {
        let (url, resolve) = (edge.url(path), edge.resolve());
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads = (0..threads)
            .map(|_| {
                let (stop, ok, failed, url, resolve) = (
                    Arc::clone(&stop),
                    Arc::clone(&ok),
                    Arc::clone(&failed),
                    url.clone(),
                    resolve.clone(),
                );
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let out = Command::new("curl")
                            .args(["-sk", "--max-time", "5", "-w", "%{http_code}"])
                            .args(["--resolve", &resolve])
                            .args(["-o", "/dev/null", &url, "-o", "/dev/null", &url])
                            .args(["-o", "/dev/null", &url])
                            .output()
                            .unwrap();
                        let codes = String::from_utf8_lossy(&out.stdout).into_owned();
                        for chunk in codes.as_bytes().chunks(3) {
                            if chunk == b"200" {
                                ok.fetch_add(1, Ordering::Relaxed);
                            } else {
                                failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Stops and returns (200s, failures).
    fn stop(self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

#[test]
fn with_worker_processes_hup_rolls_a_checked_configuration_out_with_no_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let edge = start_edge(
        dir.path(),
        &dead_address(),
        "\n[supervisor]\nworkers = 2\nworker_threads = 1\n",
    );
    let admin =
        |path: &str| crate::support::curl(&[&format!("http://127.0.0.1:{}{path}", edge.admin)]);
    let reloads = || {
        let (_, text) = admin("/metrics");
        text.lines()
            .find_map(|l| l.strip_prefix("wharf_worker_restarts_total{reason=\"reload\"} "))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no reload count in {text}"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    // The master serves health and one scrape summed over both workers.
    loop {
        let (ok, text) = admin("/metrics");
        if ok
            && text.contains("wharf_worker_rss_bytes{slot=\"1\"}")
            && text.contains("edge_config_generation 1\n")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "workers not reporting: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(admin("/health/ready").0, "the instance is ready");
    assert!(admin("/health/live").0);

    let load = CurlLoad::start(&edge, "/fixed", 2);
    std::thread::sleep(Duration::from_millis(300));
    // A typo: the master's check refuses it; no worker is replaced.
    let good = edge.write_typo();
    edge.running.signal("HUP");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(reloads(), 0, "a refused reload replaced workers");
    assert!(edge.curl(&[], "/fixed").1.ends_with("fixed\n"));
    // A valid change: both workers are replaced, one by one.
    edge.write_fixed2(&good);
    edge.running.signal("HUP");
    while reloads() < 2 {
        assert!(
            std::time::Instant::now() < deadline + Duration::from_secs(10),
            "reload did not finish"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed) = load.stop();
    let (_, text) = edge.curl(&[], "/fixed");
    assert!(
        text.ends_with("fixed2\n"),
        "new workers serve the new file: {text}"
    );
    assert_eq!(failed, 0, "failed requests during the rolling reload");
    assert!(ok > 10);
}

#[test]
fn check_config_names_the_line_and_reason_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), 1, 2, 3, "127.0.0.1:9", "");
    let ok = command(EDGE, &HashMap::new())
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
    assert!(String::from_utf8_lossy(&ok.stdout).contains("test is successful"));

    let text = std::fs::read_to_string(&path).unwrap();
    let line = text
        .lines()
        .position(|l| l.starts_with("proxy_pass"))
        .unwrap()
        + 1;
    std::fs::write(
        &path,
        text.replace("proxy_pass = \"app\"", "proxy_pass = \"nope\""),
    )
    .unwrap();
    let bad = command(EDGE, &HashMap::new())
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains(&format!("edge.toml:{line}:")), "{stderr}");
    assert!(stderr.contains("no upstream of that name"), "{stderr}");

    let typo_text = text.replace("[tls]", "[tls]\nsession_tickts = false");
    let line = typo_text
        .lines()
        .position(|l| l.starts_with("session_tickts"))
        .unwrap()
        + 1;
    std::fs::write(&path, typo_text).unwrap();
    let typo = command(EDGE, &HashMap::new())
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(typo.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&typo.stderr);
    assert!(stderr.contains(&format!("edge.toml:{line}:")), "{stderr}");
    assert!(
        stderr.contains("unknown field `session_tickts`"),
        "{stderr}"
    );
}

#[test]
fn limit_req_zones_answer_429_past_the_burst() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = frontend();
    let extra = "\n[[limit_req]]\nzone = \"per_ip\"\nrate = \"1r/m\"\nburst = 2\nnodelay = true\npath_prefix = \"/_status\"\n";
    let edge = start_edge(dir.path(), &upstream.addr().to_string(), extra);
    let statuses: Vec<u16> = (0..5).map(|_| edge.curl(&[], "/_status").0).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    let (_, limited) = edge.curl(&[], "/_status");
    let lower = limited.to_ascii_lowercase();
    assert!(lower.contains("\nretry-after: "), "{limited}");
    assert!(
        lower.contains("strict-transport-security"),
        "security headers on a 429 too: {limited}"
    );
    // Other paths are outside the zone.
    assert_eq!(edge.curl(&[], "/health/live").0, 200);
}

#[test]
fn metrics_say_when_each_certificate_expires() {
    let dir = tempfile::tempdir().unwrap();
    let edge = start_edge(dir.path(), &dead_address(), "");
    wait_for_port(([127, 0, 0, 1], edge.admin).into(), Duration::from_secs(10));
    let (_, text) = crate::support::curl(&[&format!("http://127.0.0.1:{}/metrics", edge.admin)]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiries: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("edge_tls_certificate_expiry_timestamp_seconds{certificate=\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(!expiries.is_empty(), "{text}");
    assert!(expiries.iter().all(|t| *t > now), "{expiries:?}");
}

#[test]
fn healthcheck_subcommand_asks_the_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let edge = start_edge(dir.path(), &dead_address(), "");
    wait_for_port(([127, 0, 0, 1], edge.admin).into(), Duration::from_secs(10));
    let config = edge.config.to_str().unwrap().to_owned();
    let up = Command::new(EDGE)
        .args(["--config", &config, "healthcheck"])
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    drop(edge);
    let down = Command::new(EDGE)
        .args(["--config", &config, "healthcheck", "--timeout", "1"])
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("/health/live"));
}

#[test]
fn text_above_the_threshold_is_brotli_or_gzip_compressed_as_the_client_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let page = "<p>GOV.UK Notify document download</p>\n".repeat(60);
    let tail = format!(
        "\n[[server.location]]\npath = \"/page\"\nreturn = {{ status = 200, body = {page:?} }}\n"
    );
    let edge = start_edge_with_tail(dir.path(), &dead_address(), "", &tail);
    let fetch = |accept: &str, path: &str| {
        // --compressed: curl decodes what it was sent (and says what it accepts).
        let (status, text) = edge.curl(
            &["--compressed", "-H", &format!("Accept-Encoding: {accept}")],
            path,
        );
        assert_eq!(status, 200, "{text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let encoding = head.lines().find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-encoding: ")
                .map(str::to_owned)
        });
        (head.to_ascii_lowercase(), encoding, body.to_owned())
    };
    // Both accepted at the same q: brotli, decoded back to the page.
    let (head, encoding, body) = fetch("gzip, br", "/page");
    assert_eq!(encoding.as_deref(), Some("br"), "{head}");
    assert!(head.contains("vary: accept-encoding"), "{head}");
    assert_eq!(body, page);
    // gzip only, or gzip preferred by q.
    for accept in ["gzip", "br;q=0.5, gzip"] {
        let (head, encoding, body) = fetch(accept, "/page");
        assert_eq!(encoding.as_deref(), Some("gzip"), "{accept}: {head}");
        assert_eq!(body, page);
    }
    // Nothing accepted, or a body under gzip_min_length (1024): as is.
    // A compressible page varies with Accept-Encoding even when sent as is;
    // a response never compressed does not.
    let (head, encoding, body) = fetch("identity", "/page");
    assert_eq!(encoding, None, "{head}");
    assert!(head.contains("vary: accept-encoding"), "{head}");
    assert_eq!(body, page);
    let (head, encoding, _) = fetch("gzip, br", "/fixed");
    assert_eq!(encoding, None, "a 6-byte body is not compressed: {head}");
    assert!(!head.contains("vary:"), "{head}");
}

/// An upstream that answers every request `200 ok` and keeps what it read.
fn recording_upstream() -> Stub {
    Stub::start(|_| Reply::text(200, "ok"))
}

/// edge with one plain listener that expects PROXY protocol headers from
/// `trusted` peers, proxying to `upstream`.
fn start_proxy_protocol_edge(dir: &Path, upstream: std::net::SocketAddr, trusted: &str) -> Process {
    let port = free_port();
    let config = dir.join(format!("edge-{port}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"
[[listen]]
address = "127.0.0.1:{port}"
proxy_protocol = true

[admin]
enabled = false

[http]
access_log = false
set_real_ip_from = ["{trusted}"]

[[upstream]]
name = "app"
servers = [{{ address = "{upstream}" }}]

[[server]]
server_name = ["localhost"]
default_server = true

[[server.location]]
path = "/"
proxy_pass = "app"
"#
        ),
    )
    .unwrap();
    let env = HashMap::from([("RUST_LOG", "warn".to_owned())]);
    start(EDGE, &["--config", config.to_str().unwrap()], &env, port)
}

/// Writes `bytes` to `addr` and reads the answer until the server closes.
fn exchange_raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// A PROXY protocol v2 header for a TCP/IPv4 connection from `src`.
fn proxy_v2_header(src: [u8; 4], src_port: u16) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]);
    header.extend_from_slice(&src);
    header.extend_from_slice(&[127, 0, 0, 1]);
    header.extend_from_slice(&src_port.to_be_bytes());
    header.extend_from_slice(&80u16.to_be_bytes());
    header
}

const PROXIED_GET: &[u8] = b"GET /who HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

#[test]
fn proxy_protocol_gives_the_client_address_from_trusted_peers_only() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = recording_upstream();

    // A trusted load balancer: v1 and v2 headers name the client.
    let edge = start_proxy_protocol_edge(dir.path(), upstream.addr, "127.0.0.1");
    let mut v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 51234 80\r\n".to_vec();
    v1.extend_from_slice(PROXIED_GET);
    let answer = exchange_raw(edge.addr(), &v1);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut v2 = proxy_v2_header([198, 51, 100, 9], 40000);
    v2.extend_from_slice(PROXIED_GET);
    let answer = exchange_raw(edge.addr(), &v2);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].header("x-real-ip").as_deref(), Some("203.0.113.7"));
    assert_eq!(
        seen[0].header("x-forwarded-for").as_deref(),
        Some("203.0.113.7")
    );
    assert_eq!(seen[1].header("x-real-ip").as_deref(), Some("198.51.100.9"));
    drop(edge);

    // The same header from a peer outside set_real_ip_from is not believed:
    // it is not HTTP, so the request is refused, and nothing reaches the
    // upstream with the claimed address. Plain requests from that peer work.
    let edge = start_proxy_protocol_edge(dir.path(), upstream.addr, "10.0.0.0/8");
    let answer = exchange_raw(edge.addr(), &v1);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let answer = exchange_raw(edge.addr(), PROXIED_GET);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[2].header("x-real-ip").as_deref(), Some("127.0.0.1"));
    assert!(!seen[2].head.contains("203.0.113.7"), "{seen:?}");
}

/// `openssl s_client` to 127.0.0.1:`port` with `args`, `input` on its
/// standard input: whether it exited 0, and what it printed.
pub fn s_client_with_input(port: u16, args: &[&str], input: &str) -> (bool, String) {
    let out = output_with_input(
        Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(args),
        input,
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// One TLS connection to `localhost` on `port` that lives as long as the
/// child: what is written to its standard input is sent, what the server
/// answers comes out on its standard output (`-quiet`: nothing else).
fn s_client_session(port: u16) -> std::process::Child {
    Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .args(["-servername", "localhost", "-ign_eof", "-quiet"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The first certificate in PEM text (`s_client` output or a file).
fn first_pem(text: &str) -> String {
    let start = text
        .find("-----BEGIN CERTIFICATE-----")
        .unwrap_or_else(|| panic!("no certificate in {text}"));
    let end = text[start..].find("-----END").unwrap() + start;
    text[start..end].to_owned()
}

#[test]
fn sni_picks_the_certificate_and_sessions_resume_against_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    SelfSigned::generate(&["other.test"], KeyKind::EcdsaP256)
        .unwrap()
        .write(dir.path(), "other")
        .unwrap();
    let tail = format!(
        r#"
[[server]]
server_name = ["other.test"]
ssl_certificate = "{cert}"
ssl_certificate_key = "{key}"

[[server.location]]
path = "/"
return = {{ status = 200, body = "other\n" }}
"#,
        cert = dir.path().join("other.crt").display(),
        key = dir.path().join("other.key").display(),
    );
    let edge = start_edge_with_tail(dir.path(), &dead_address(), "", &tail);
    let site = first_pem(&std::fs::read_to_string(dir.path().join("site.crt")).unwrap());
    let other = first_pem(&std::fs::read_to_string(dir.path().join("other.crt")).unwrap());
    assert_ne!(site, other);

    // SNI: each name gets its own certificate, and its own server block.
    let request = "GET / HTTP/1.0\r\nHost: other.test\r\n\r\n";
    let (ok, out) = s_client_with_input(
        edge.https,
        &["-servername", "other.test", "-showcerts", "-ign_eof"],
        request,
    );
    assert!(ok, "{out}");
    assert_eq!(first_pem(&out), other);
    assert!(out.contains("\nother\n"), "{out}");
    let (ok, out) =
        s_client_with_input(edge.https, &["-servername", "localhost", "-showcerts"], "");
    assert!(ok, "{out}");
    assert_eq!(first_pem(&out), site);

    // Resumption, TLS 1.3 (tickets or the session cache) and TLS 1.2.
    let request = "GET /fixed HTTP/1.0\r\nHost: localhost\r\n\r\n";
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = dir.path().join(format!("session{version}.pem"));
        let sess = sess.to_str().unwrap();
        let args = ["-servername", "localhost", version, "-ign_eof"];
        let (ok, out) = s_client_with_input(
            edge.https,
            &[&args[..], &["-sess_out", sess]].concat(),
            request,
        );
        assert!(ok, "{version}: {out}");
        assert!(out.contains("New, TLSv1."), "{version}: {out}");
        let (ok, out) = s_client_with_input(
            edge.https,
            &[&args[..], &["-sess_in", sess]].concat(),
            request,
        );
        assert!(ok, "{version}: {out}");
        assert!(out.contains("Reused, TLSv1."), "{version}: {out}");
        assert!(out.contains("\nfixed\n"), "{version}: {out}");
    }
}

#[test]
fn x_forwarded_for_from_a_trusted_peer_is_appended_to() {
    let upstream = recording_upstream();
    let dir = tempfile::tempdir().unwrap();
    let edge = start_edge(
        dir.path(),
        &upstream.addr.to_string(),
        r#"set_real_ip_from = ["127.0.0.1"]"#,
    );
    let (status, text) = edge.curl(&["-H", "X-Forwarded-For: 203.0.113.7"], "/who");
    assert_eq!(status, 200, "{text}");
    let seen = upstream.seen();
    // The chain keeps what the trusted peer said and adds the peer itself;
    // the client's address is the one it vouched for.
    assert_eq!(
        seen[0].header("x-forwarded-for").as_deref(),
        Some("203.0.113.7, 127.0.0.1"),
        "{:?}",
        seen[0]
    );
    assert_eq!(seen[0].header("x-real-ip").as_deref(), Some("203.0.113.7"));
}

#[test]
fn a_slow_client_body_is_buffered_before_the_upstream_is_contacted() {
    use std::io::Write;
    let upstream = recording_upstream();
    let dir = tempfile::tempdir().unwrap();
    let edge = start_edge(dir.path(), &upstream.addr.to_string(), "");
    let mut client = s_client_session(edge.https);
    let mut input = client.stdin.take().unwrap();
    let body = "b".repeat(600);
    input
        .write_all(
            format!(
                "POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 600\r\nConnection: close\r\n\r\n{}",
                &body[..300]
            )
            .as_bytes(),
        )
        .unwrap();
    // Half the body is in: the upstream has not been contacted at all (no
    // connection, not just no whole request).
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(upstream.connections(), 0, "{:?}", upstream.seen());
    input.write_all(&body.as_bytes()[300..]).unwrap();
    drop(input);
    let out = client.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    // It arrived whole, with its length.
    assert_eq!(seen[0].header("content-length").as_deref(), Some("600"));
    assert_eq!(seen[0].body, body.as_bytes());
}

/// One client address per request (issue #23): what edge sends upstream
/// (`X-Real-IP`), the client a `limit_req` zone counts, and the access log's
/// `client` are the same address, for a trusted peer's `X-Forwarded-For`
/// (trusted hops skipped, garbage stopping the walk), an untrusted peer's
/// (ignored), and a PROXY protocol header from a trusted balancer.
#[test]
fn the_proxy_the_zones_and_the_access_log_agree_on_the_client() {
    use crate::reliability::{raw, Edge, EdgeSpec};

    // 1 request per client per minute: a second one from the same client is
    // refused, one from another is not.
    let zone = "[[limit_req]]\nzone = \"one\"\nrate = \"1r/m\"\nnodelay = true\n";
    let upstream = Stub::start(|_| Reply::text(200, "ok"));
    let edge = |trusted: &str, listen: &str| {
        Edge::start(&EdgeSpec {
            servers: format!("{{ address = \"{}\" }}", upstream.addr),
            http: format!("set_real_ip_from = [\"{trusted}\"]\naccess_log = true\n"),
            listen: listen.to_owned(),
            locations: zone.to_owned(),
            ..EdgeSpec::default()
        })
    };
    // What the upstream saw last, and what the access log said last.
    let last_real_ip = || upstream.seen().last().and_then(|s| s.header("x-real-ip"));
    // The access log's `client` on its `n`-th line (0-based), once written.
    let logged_client = |edge: &Edge, n: usize| {
        let lines = || {
            edge.proc
                .logs()
                .lines()
                .filter(|l| l.contains("Served request"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        crate::support::wait_until("the access-log line", Duration::from_secs(5), || {
            lines().len() > n
        });
        let value: serde_json::Value = serde_json::from_str(&lines()[n]).unwrap();
        value["fields"]["client"]
            .as_str()
            .or(value["client"].as_str())
            .map(str::to_owned)
    };
    let get = |edge: &Edge, xff: &str| {
        raw::get(edge.addr(), "/", &[&format!("X-Forwarded-For: {xff}")]).status
    };

    // A trusted peer (the test runs on 127.0.0.1).
    let trusting = edge("127.0.0.0/8", "");
    for (i, (xff, client)) in [
        ("203.0.113.1", "203.0.113.1"),
        ("203.0.113.2, 127.0.0.5", "203.0.113.2"),
        ("203.0.113.9, junk", "127.0.0.1"),
    ]
    .into_iter()
    .enumerate()
    {
        let before = upstream.seen().len();
        assert_eq!(get(&trusting, xff), 200, "{xff}: the client's first");
        assert_eq!(upstream.seen().len(), before + 1);
        assert_eq!(last_real_ip().as_deref(), Some(client), "{xff}: X-Real-IP");
        assert_eq!(
            logged_client(&trusting, 2 * i).as_deref(),
            Some(client),
            "{xff}: log"
        );
        assert_eq!(get(&trusting, xff), 429, "{xff}: the zone counted {client}");
        assert_eq!(
            logged_client(&trusting, 2 * i + 1).as_deref(),
            Some(client),
            "{xff}: the 429's log line"
        );
    }

    // An untrusted peer: its X-Forwarded-For is nobody's address.
    let wary = edge("10.0.0.0/8", "");
    assert_eq!(get(&wary, "203.0.113.1"), 200);
    assert_eq!(last_real_ip().as_deref(), Some("127.0.0.1"));
    assert_eq!(logged_client(&wary, 0).as_deref(), Some("127.0.0.1"));
    assert_eq!(
        get(&wary, "203.0.113.77"),
        429,
        "the same client, 127.0.0.1"
    );

    // PROXY protocol from a trusted balancer: the header's source is the
    // client (it is not trusted, so its X-Forwarded-For is not believed).
    let balanced = edge("127.0.0.1", "proxy_protocol = true");
    let through_balancer = |source: &str| {
        let mut bytes = format!("PROXY TCP4 {source} 127.0.0.1 40000 80\r\n").into_bytes();
        bytes.extend_from_slice(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Forwarded-For: 203.0.113.5\r\nConnection: close\r\n\r\n",
        );
        let answer = exchange_raw(balanced.addr(), &bytes);
        answer.get(9..12).unwrap_or_default().to_owned()
    };
    assert_eq!(through_balancer("198.51.100.7"), "200");
    assert_eq!(last_real_ip().as_deref(), Some("198.51.100.7"));
    assert_eq!(logged_client(&balanced, 0).as_deref(), Some("198.51.100.7"));
    assert_eq!(through_balancer("198.51.100.7"), "429");
    assert_eq!(through_balancer("198.51.100.8"), "200", "another client");
}

/// A rustls client trusting the certificate `write_config` put in `dir`.
fn trusting_client(dir: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(dir.join("site.crt")).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

type TlsSession = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// A TLS connection to `localhost` on `port` (after `prefix`, a PROXY
/// protocol header, if any) that has answered `GET /fixed` and stays open:
/// the server has finished its handshake and counts the connection.
fn held_tls_session(port: u16, client: &Arc<rustls::ClientConfig>, prefix: &[u8]) -> TlsSession {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    tcp.write_all(prefix).unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::clone(client), name).unwrap();
    let mut session = rustls::StreamOwned::new(conn, tcp);
    session
        .write_all(b"GET /fixed HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0_u8; 4096];
    while !answer.ends_with(b"\r\n\r\nfixed\n") {
        let n = session.read(&mut chunk).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    session
}

/// The bytes of a `ClientHello` for `localhost`, as a client's first flight.
fn client_hello(client: &Arc<rustls::ClientConfig>) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::clone(client), name).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    assert_eq!(hello[0], 0x16, "a handshake record");
    hello
}

/// Sends `prefix` and a `ClientHello` on a new connection to `port` and
/// asserts the server closes it within a second having sent nothing (a
/// `ServerHello` would be there); how long the close took.
fn assert_hello_refused(port: u16, client: &Arc<rustls::ClientConfig>, prefix: &[u8]) -> Duration {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let started = std::time::Instant::now();
    let _ = stream.write_all(&[prefix, &client_hello(client)].concat());
    let answer = crate::reliability::raw::read_all(&mut stream, Duration::from_secs(3));
    let took = started.elapsed();
    assert!(
        answer.bytes.is_empty(),
        "the handshake started: {} bytes came back (record type {:#04x}, 0x16 = handshake: a ServerHello); closed: {}",
        answer.bytes.len(),
        answer.bytes[0],
        answer.closed
    );
    assert!(answer.closed, "left open for {took:?}");
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    took
}

/// The handshakes edge has started and finished one way or another.
fn handshakes_seen(edge: &Edge) -> u64 {
    edge.metric("edge_tls_handshakes_total")
        + edge.metric("edge_tls_handshake_failures_total")
        + edge.metric("edge_tls_handshake_timeouts_total")
}

/// Waits (5 s at most) for `edge_connections_open` to be `n`.
fn wait_for_open_connections(edge: &Edge, n: u64) {
    wait_for_port(([127, 0, 0, 1], edge.admin).into(), Duration::from_secs(10));
    crate::support::wait_until("edge_connections_open", Duration::from_secs(5), || {
        edge.metric("edge_connections_open") == n
    });
}

/// `limit_conn` (issue #26) counts a connection when it is accepted, before
/// the TLS handshake: past the limit, a client's connection is closed before
/// edge reads its `ClientHello`, so one address cannot make edge do handshakes
/// (the expensive part) beyond its limit. Plain HTTP connections share the
/// count, as before; a closed connection gives its slot back.
#[test]
fn limit_conn_refuses_past_the_limit_before_the_tls_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let edge = start_edge(dir.path(), &dead_address(), "limit_conn = 2");
    let client = trusting_client(dir.path());
    // The start-up port probes have given their slots back.
    wait_for_open_connections(&edge, 0);

    let mut held = vec![
        held_tls_session(edge.https, &client, b""),
        held_tls_session(edge.https, &client, b""),
    ];
    assert_eq!(edge.metric("edge_connections_open"), 2);
    let handshakes = handshakes_seen(&edge);
    let limited = edge.metric("edge_connections_limited_total");

    // Five more from the same address: closed at once, no ServerHello.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        slowest = slowest.max(assert_hello_refused(edge.https, &client, b""));
    }
    // The plain listener counts the same address.
    let answer = crate::reliability::raw::exchange(
        ([127, 0, 0, 1], edge.http).into(),
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        Duration::from_secs(3),
    );
    assert!(answer.closed && answer.bytes.is_empty(), "{answer:?}");
    eprintln!("refused connections closed within {slowest:?}");

    assert_eq!(
        handshakes_seen(&edge),
        handshakes,
        "edge ran handshakes for connections past limit_conn"
    );
    assert_eq!(edge.metric("edge_connections_limited_total") - limited, 6);
    assert_eq!(edge.metric("edge_connections_open"), 2);

    // A closed connection gives its slot back.
    drop(held.pop());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while edge.metric("edge_connections_open") != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot never came back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    held.push(held_tls_session(edge.https, &client, b""));
    assert_eq!(handshakes_seen(&edge), handshakes + 1);
    assert_eq!(edge.metric("edge_connections_open"), 2);
}

/// Behind a load balancer speaking PROXY protocol, `limit_conn` counts the
/// client the header names (nginx's stream `limit_conn` with `real_ip`):
/// the header is read first (cheap, bounded by `handshake_timeout`), then
/// the count decides, then TLS.
#[test]
fn limit_conn_counts_the_proxy_protocol_client_before_the_tls_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (http, https, admin) = (free_port(), free_port(), free_port());
    let config = write_config(
        dir.path(),
        http,
        https,
        admin,
        &dead_address(),
        "limit_conn = 1\nset_real_ip_from = [\"127.0.0.1\"]",
    );
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace("ssl = true", "ssl = true\nproxy_protocol = true");
    std::fs::write(&config, text).unwrap();
    let env = HashMap::from([("RUST_LOG", "info".to_owned())]);
    let running = start(EDGE, &["--config", config.to_str().unwrap()], &env, https);
    wait_for_port(([127, 0, 0, 1], admin).into(), Duration::from_secs(10));
    let edge = Edge {
        running,
        http,
        https,
        admin,
        config,
    };
    let client = trusting_client(dir.path());
    let from = |ip: &str| format!("PROXY TCP4 {ip} 127.0.0.1 40000 443\r\n").into_bytes();

    let _held = held_tls_session(https, &client, &from("203.0.113.7"));
    let handshakes = handshakes_seen(&edge);
    let limited = edge.metric("edge_connections_limited_total");
    assert_hello_refused(https, &client, &from("203.0.113.7"));
    assert_eq!(handshakes_seen(&edge), handshakes);
    assert_eq!(edge.metric("edge_connections_limited_total") - limited, 1);
    // Another client behind the same balancer (the same TCP peer) is served.
    let _other = held_tls_session(https, &client, &from("198.51.100.9"));
    assert_eq!(handshakes_seen(&edge), handshakes + 1);
    assert_eq!(edge.metric("edge_connections_open"), 2);
}
