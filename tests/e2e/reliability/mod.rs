//! Reliability and security suite (issue 10): `frontend` and `edge` as
//! processes against dependencies that fail (down, slow, garbage) and clients
//! that attack (slowloris, smuggling, oversize, HTTP/2 floods, TLS garbage),
//! and a check that no secret reaches a log, the config report or an error
//! page. Every scenario asserts what came back and what was lost; timeouts
//! are shortened through the binaries' own settings so the suite stays short.
//! The scenarios and their results are listed in docs/reliability.md.

pub mod dependency;
mod h2;
mod hostile;
pub mod raw;
mod redis;
mod secrets;
pub mod stub;
mod tls;
mod tlsscan;
mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::{command, free_port, start, wait_for_port, Process};

pub const FRONTEND: &str = env!("CARGO_BIN_EXE_frontend");
pub const EDGE: &str = env!("CARGO_BIN_EXE_edge");

/// A document page's ids, as the old service wrote them: 22-character
/// URL-safe base64 UUIDs.
pub const SERVICE_B64: &str = "jTpOLGsfTF6afS8OGzxNXg";
pub const DOCUMENT_B64: &str = "fiudTFofSz6cjW8KK0xtjg";

pub fn document_path(key: &str) -> String {
    format!("/d/{SERVICE_B64}/{DOCUMENT_B64}?key={key}")
}

/// `frontend` in one process (no master) with short timeouts, JSON logs and
/// a private local document directory; `extra` overrides or adds variables.
pub fn frontend(extra: &[(&'static str, String)]) -> Process {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut env = HashMap::from([
        ("PORT", port.to_string()),
        ("WEB_CONCURRENCY", "0".to_owned()),
        ("WHARF_LOG_FORMAT", "json".to_owned()),
        ("WHARF_HEADER_READ_TIMEOUT_SECONDS", "1".to_owned()),
        ("WHARF_GRACEFUL_TIMEOUT_SECONDS", "2".to_owned()),
        ("WHARF_DOWNLOAD_LOCAL_DIR", dir.path().display().to_string()),
    ]);
    // The suite is about faults, not rate limits: the limiter (when this
    // build has it) would answer 429 to the many requests from one address.
    if has_rate_limiter() {
        env.insert("WHARF_RATELIMIT_ENABLED", "false".to_owned());
    }
    for (name, value) in extra {
        env.insert(name, value.clone());
    }
    start(FRONTEND, &["serve"], &env, port).keep(dir)
}

/// Whether `frontend` reads `WHARF_RATELIMIT_ENABLED` (an unknown `WHARF_`
/// variable is a configuration error, so it is set only when it exists).
fn has_rate_limiter() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        let out = command(FRONTEND, &HashMap::new())
            .arg("config")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("WHARF_RATELIMIT_ENABLED")
    })
}

/// The variables pointing `frontend` at stub APIs (development, short
/// upstream timeouts).
pub fn api_env(api: &stub::Stub) -> Vec<(&'static str, String)> {
    vec![
        ("NOTIFY_ENVIRONMENT", "development".to_owned()),
        ("API_HOST_NAME", api.base()),
        ("DOCUMENT_DOWNLOAD_API_HOST_NAME", api.base()),
        (
            "ADMIN_CLIENT_SECRET",
            "admin-client-secret-value".to_owned(),
        ),
        ("WHARF_DOWNLOAD_UPSTREAM_TIMEOUT_SECONDS", "1".to_owned()),
        ("WHARF_DOWNLOAD_CONNECT_TIMEOUT_SECONDS", "1".to_owned()),
    ]
}

/// An `edge` configuration: a plain listener (and a TLS one when `tls`),
/// an admin listener, one upstream group `app` and a `localhost` server
/// proxying `/` to it, plus whatever extra TOML a test needs.
#[derive(Default)]
pub struct EdgeSpec {
    /// The `servers = [...]` entries of the upstream group.
    pub servers: String,
    /// Extra lines in the plain `[[listen]]` (e.g. `proxy_protocol = true`).
    pub listen: String,
    /// Extra lines in the `[[upstream]]` table (e.g. `health_check = …`).
    pub upstream: String,
    /// Extra lines in `[http]`.
    pub http: String,
    /// Extra lines in `[proxy]`.
    pub proxy: String,
    /// Extra lines in `[tls]`.
    pub tls_settings: String,
    /// Extra `[[server.location]]` blocks.
    pub locations: String,
    pub tls: bool,
    /// Extra environment variables (e.g. tracing's).
    pub env: Vec<(&'static str, String)>,
}

pub struct Edge {
    pub proc: Process,
    pub https: Option<u16>,
    pub admin: u16,
    /// The TLS listener's self-signed certificate (PEM), for clients to trust.
    pub cert_pem: Option<String>,
}

impl Edge {
    pub fn start(spec: &EdgeSpec) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (http, admin) = (free_port(), free_port());
        let https = spec.tls.then(free_port);
        let mut tls = String::new();
        let mut certificate = String::new();
        let mut cert_pem = None;
        if let Some(https) = https {
            let site =
                wharf_tls::SelfSigned::generate(&["localhost"], wharf_tls::KeyKind::EcdsaP256)
                    .unwrap();
            site.write(dir.path(), "site").unwrap();
            cert_pem = Some(site.cert_pem);
            tls = format!("[[listen]]\naddress = \"127.0.0.1:{https}\"\nssl = true\n");
            certificate = format!(
                "ssl_certificate = \"{}\"\nssl_certificate_key = \"{}\"\n",
                dir.path().join("site.crt").display(),
                dir.path().join("site.key").display()
            );
        }
        let text = format!(
            r#"
[[listen]]
address = "127.0.0.1:{http}"
{listen_extra}
{tls}
[admin]
address = "127.0.0.1:{admin}"

[http]
{header_timeout}
client_body_timeout = "1s"
client_max_body_size = "1k"
{http_extra}

[tls]
watch_interval = "0s"
{tls_extra}

[proxy]
connect_timeout = "1s"
send_timeout = "200ms"
read_timeout = "800ms"
{proxy_extra}

[[upstream]]
name = "app"
servers = [{servers}]
{upstream_extra}

[[server]]
server_name = ["localhost"]
default_server = true
{certificate}
[[server.location]]
path = "/"
proxy_pass = "app"

{locations}
"#,
            // A test may set its own client_header_timeout (a TOML key once).
            header_timeout = if spec.http.contains("client_header_timeout") {
                ""
            } else {
                "client_header_timeout = \"1s\""
            },
            listen_extra = spec.listen,
            http_extra = spec.http,
            tls_extra = spec.tls_settings,
            proxy_extra = spec.proxy,
            servers = spec.servers,
            upstream_extra = spec.upstream,
            locations = spec.locations,
        );
        let config = dir.path().join("edge.toml");
        std::fs::write(&config, text).unwrap();
        let mut env = HashMap::from([("RUST_LOG", "info".to_owned())]);
        env.extend(spec.env.iter().cloned());
        let config_arg = config.display().to_string();
        let proc = start(EDGE, &["--config", &config_arg], &env, http).keep(dir);
        if let Some(https) = https {
            wait_for_port(([127, 0, 0, 1], https).into(), Duration::from_secs(10));
        }
        wait_for_port(([127, 0, 0, 1], admin).into(), Duration::from_secs(10));
        Self {
            proc,
            https,
            admin,
            cert_pem,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.proc.addr()
    }

    pub fn tls_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.https.unwrap()))
    }

    /// A metric line's value: `name` with its labels, e.g.
    /// `edge_upstream_up{upstream="app",server="127.0.0.1:1"}`.
    pub fn metric(&self, name: &str) -> u64 {
        self.try_metric(name)
            .unwrap_or_else(|text| panic!("no metric {name} in {text}"))
    }

    /// [`metric`](Self::metric), or the scrape it is not in (the master
    /// shows a worker's metrics only after the worker has reported).
    pub fn try_metric(&self, name: &str) -> Result<u64, String> {
        let admin = SocketAddr::from(([127, 0, 0, 1], self.admin));
        let text = raw::get(admin, "/metrics", &[]).body_text();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .ok_or(text)
    }

    /// `edge_upstream_*{upstream="app",server="addr"}`.
    pub fn server_metric(&self, metric: &str, server: SocketAddr) -> u64 {
        self.metric(&format!("{metric}{{upstream=\"app\",server=\"{server}\"}}"))
    }
}

/// Waits up to `timeout` for `condition`; false if it never held.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A loopback address nothing listens on.
pub fn dead_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so a
/// connect hangs (what a firewalled or overloaded API host looks like).
pub struct Blackhole {
    listener: std::net::TcpListener,
    _queued: Vec<std::net::TcpStream>,
}

impl Blackhole {
    pub fn new() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut queued = Vec::new();
        for _ in 0..5000 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                Ok(stream) => queued.push(stream),
                Err(_) => break,
            }
        }
        assert!(
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
            "the accept queue never filled"
        );
        Self {
            listener,
            _queued: queued,
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap()
    }
}

/// A rustls client configuration trusting `cert_pem` alone and offering the
/// one ALPN protocol `alpn`.
fn tls_client(cert_pem: &str, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}
