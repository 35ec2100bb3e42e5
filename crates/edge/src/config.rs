//! `edge`'s TOML configuration, in nginx's vocabulary, with environment
//! overrides; and its validation, which names the line of a mistake.
//!
//! Kept whole although over 600 lines: it is one thing, the schema of edge's
//! file section by section with the defaults and nginx-style parsers its fields
//! use, and where it is loaded from; split, one format's definition would be
//! scattered over files.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use toml::Spanned;

/// `session_ticket_key` naming Redis rather than a file.
pub(crate) const TICKET_KEY_IN_REDIS: &str = "redis";

/// Environment variable naming the configuration file (`--config` wins).
pub const CONFIG_VAR: &str = "WHARF_EDGE_CONFIG";

/// A configuration problem, with the line it is on when known.
#[derive(Debug)]
pub struct ConfigError {
    /// The file, or `None` for the development defaults.
    pub file: Option<PathBuf>,
    /// The line of the file the mistake is on, when known.
    pub line: Option<usize>,
    /// What is wrong, naming the setting.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let file = self
            .file
            .as_ref()
            .map_or_else(|| "<defaults>".to_owned(), |p| p.display().to_string());
        match self.line {
            Some(line) => write!(f, "{file}:{line}: {}", self.message),
            None => write!(f, "{file}: {}", self.message),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EdgeConfig {
    /// `listen` blocks.
    #[serde(default)]
    pub(crate) listen: Vec<ListenSection>,
    /// The admin listener (`/metrics`, health).
    #[serde(default)]
    pub(crate) admin: AdminSection,
    /// Client-facing HTTP settings (nginx `http {}` level).
    #[serde(default)]
    pub(crate) http: HttpSection,
    /// TLS settings shared by every TLS listener.
    #[serde(default)]
    pub(crate) tls: TlsSection,
    /// Proxy settings (`proxy_*`).
    #[serde(default)]
    pub(crate) proxy: ProxySection,
    /// `upstream` blocks.
    #[serde(default, rename = "upstream")]
    pub(crate) upstreams: Vec<UpstreamSection>,
    /// `server` blocks.
    #[serde(default, rename = "server")]
    pub(crate) servers: Vec<ServerSection>,
    /// `[[limit_req]]` zones (nginx `limit_req_zone` + `limit_req`): `zone`,
    /// `rate` (`10r/s`), `burst`, `nodelay`, `delay`, `key` (`client_ip`,
    /// `route`, `global`, `header:<Name>`), `path_prefix`. Counted once per
    /// instance, in memory every worker shares; a reload keeps the counts of
    /// zones whose definition did not change.
    #[serde(default)]
    pub(crate) limit_req: Vec<wharf_ratelimit::ZoneConfig>,
    /// `[redis]`: where `[[limit_req]]` zones with `store = "shared"` (the
    /// default) count when set, so every replica of a fleet counts as one.
    /// Absent: every zone counts in the instance's shared memory.
    #[serde(default)]
    pub(crate) redis: Option<RedisSection>,
    /// `limit_req_status`: the status of a rejected request. Default 429
    /// (nginx's default is 503).
    #[serde(default = "default_limit_req_status")]
    pub(crate) limit_req_status: u16,
    /// `[supervisor]` (nginx `worker_processes`): present, `edge` runs as a
    /// master with `workers` worker processes (unset: one per CPU) of
    /// `worker_threads` threads each (unset: CPUs ÷ workers), sharing the
    /// listeners (`accept = "reuseport"` by default); HUP then replaces the
    /// workers one by one after the master has checked the new file.
    /// Absent (or `workers = 0`): one process, no master.
    #[serde(default)]
    pub(crate) supervisor: Option<wharf_supervisor::SupervisorSection>,
    /// `[acme]`: where certificates obtained by ACME (`[[server]] acme`)
    /// are kept, and how failed orders are retried.
    #[serde(default)]
    pub(crate) acme: AcmeSection,
}

/// `[acme]`: settings every `[[server]] acme` shares.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AcmeSection {
    /// The directory holding the account keys, the certificates (0600) and
    /// the challenge answers. Replicas that share it (a shared volume) share
    /// one account and one certificate per name, and place one order: an
    /// order is taken under a lock file in it. Default `/var/lib/edge/acme`.
    pub(crate) storage: Spanned<String>,
    /// The first wait after a failed order; it doubles after each failure,
    /// up to an hour. Default `1m`.
    #[serde(deserialize_with = "duration")]
    pub(crate) retry: Duration,
}

impl Default for AcmeSection {
    fn default() -> Self {
        Self {
            storage: Spanned::new(0..0, "/var/lib/edge/acme".to_owned()),
            retry: Duration::from_secs(60),
        }
    }
}

/// `[[server]] acme = { … }`: obtain and renew this block's certificate
/// (for every `server_name`) from an ACME CA instead of naming files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerAcme {
    /// The CA's directory URL, e.g.
    /// `https://acme-v02.api.letsencrypt.org/directory`.
    pub(crate) directory: String,
    /// Contact for the account (expiry and incident mail from the CA).
    #[serde(default)]
    pub(crate) email: Option<String>,
    /// `"tls-alpn-01"` (default: answered on a TLS listener) or `"http-01"`
    /// (answered on a plain listener, before any redirect).
    #[serde(default = "default_challenge")]
    pub(crate) challenge: String,
    /// The CA's terms of service must be agreed to: `true`.
    #[serde(default)]
    pub(crate) terms_of_service_agreed: bool,
    /// A PEM root to trust for the CA's own HTTPS (a private or test CA);
    /// default: the system's roots.
    #[serde(default)]
    pub(crate) ca_root: Option<String>,
}

fn default_challenge() -> String {
    "tls-alpn-01".to_owned()
}

fn default_limit_req_status() -> u16 {
    429
}

/// `[redis]`: the store of rate-limit zones shared by a fleet.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RedisSection {
    /// `redis://`, `rediss://` or `redis-cluster://` URL. `WHARF_EDGE_REDIS_URL`
    /// overrides it (keep a password out of the file).
    pub(crate) url: Option<Spanned<String>>,
    /// Treat the URL's host as a Redis Cluster node. Default false.
    pub(crate) cluster: bool,
    /// The most a check waits before the zone's `on_redis_failure` decides.
    /// Default `50ms`.
    #[serde(deserialize_with = "duration")]
    pub(crate) timeout: Duration,
    /// Consecutive failures that open the circuit breaker. Default 5.
    pub(crate) breaker_failures: u32,
    /// Most checks sent in one script call (1: one call each, for a
    /// sharding proxy in front of Redis). Default 128; ignored on Cluster.
    pub(crate) max_batch: usize,
    /// How long an open breaker skips Redis. Default `1s`.
    #[serde(deserialize_with = "duration")]
    pub(crate) breaker_cooldown: Duration,
    /// Prefix of every key. Default `wharf:edge`.
    pub(crate) key_prefix: String,
}

impl Default for RedisSection {
    fn default() -> Self {
        Self {
            url: None,
            cluster: false,
            timeout: Duration::from_millis(50),
            breaker_failures: 5,
            max_batch: 128,
            breaker_cooldown: Duration::from_secs(1),
            key_prefix: "wharf:edge".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenSection {
    /// `listen 443 ssl`: the address.
    pub(crate) address: Spanned<String>,
    /// Terminate TLS here.
    #[serde(default)]
    pub(crate) ssl: bool,
    /// Answer every request with a 301 to `https://` (nginx `return 301
    /// https://$host$request_uri`) instead of serving it.
    #[serde(default)]
    pub(crate) redirect_to_https: bool,
    /// The port the redirect points at. Default 443.
    #[serde(default = "default_https_port")]
    pub(crate) https_port: u16,
    /// Expect a PROXY protocol header from trusted peers (`set_real_ip_from`).
    #[serde(default)]
    pub(crate) proxy_protocol: bool,
    /// `listen … backlog=N`: the accept queue (connections whose handshake
    /// is done, waiting to be accepted; the kernel drops new ones beyond it
    /// and caps it at `net.core.somaxconn`). Default 1024.
    #[serde(default)]
    pub(crate) backlog: Option<Spanned<u32>>,
}

fn default_https_port() -> u16 {
    443
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct AdminSection {
    /// Where `/metrics` and `/health` are served; loopback by default.
    pub(crate) address: String,
    /// Turn the admin listener off.
    pub(crate) enabled: bool,
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:9901".to_owned(),
            enabled: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct HttpSection {
    /// `client_max_body_size`: `413` beyond it. Default `10M`.
    #[serde(deserialize_with = "size")]
    pub(crate) client_max_body_size: u64,
    /// Largest request head (`large_client_header_buffers`): `431` beyond it.
    /// Default `16k`.
    #[serde(deserialize_with = "size")]
    pub(crate) max_header_size: u64,
    /// `client_header_timeout`. Default `10s`.
    #[serde(deserialize_with = "duration")]
    pub(crate) client_header_timeout: Duration,
    /// `client_body_timeout`: longest pause while reading a body. Default `60s`.
    #[serde(deserialize_with = "duration")]
    pub(crate) client_body_timeout: Duration,
    /// `keepalive_timeout`. Default `75s` (nginx's).
    #[serde(deserialize_with = "duration")]
    pub(crate) keepalive_timeout: Duration,
    /// Time to drain on SIGTERM. Default `30s`.
    #[serde(deserialize_with = "duration")]
    pub(crate) shutdown_timeout: Duration,
    /// Open connections per process (`worker_connections`). Default 10000.
    pub(crate) worker_connections: usize,
    /// `limit_conn`: open connections per client IP; 0 is unlimited.
    /// Default 0.
    pub(crate) limit_conn: usize,
    /// `set_real_ip_from`: peers whose `X-Forwarded-For` and PROXY headers
    /// are believed.
    pub(crate) set_real_ip_from: Vec<Spanned<String>>,
    /// JSON access log lines. Default on.
    pub(crate) access_log: bool,
    /// `gzip on`. Default on.
    pub(crate) gzip: bool,
    /// `gzip_min_length`: the smallest body compressed (gzip or brotli).
    /// Default 1024.
    pub(crate) gzip_min_length: u16,
    /// Brotli (`ngx_brotli`'s `brotli on`) for clients that accept it, at
    /// quality 4 (as Cloudflare serves dynamic content), preferred over gzip
    /// at equal `q`. Same types and threshold as gzip. Default on.
    pub(crate) brotli: bool,
    /// `Strict-Transport-Security` on TLS responses; empty for none.
    /// Default `max-age=63072000; includeSubDomains`.
    pub(crate) hsts: String,
    /// `X-Frame-Options`. Default `DENY`.
    pub(crate) x_frame_options: String,
    /// `Referrer-Policy`. Default `strict-origin-when-cross-origin`.
    pub(crate) referrer_policy: String,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            client_max_body_size: 10 * 1024 * 1024,
            max_header_size: 16 * 1024,
            client_header_timeout: Duration::from_secs(10),
            client_body_timeout: Duration::from_secs(60),
            keepalive_timeout: Duration::from_secs(75),
            shutdown_timeout: Duration::from_secs(30),
            worker_connections: 10_000,
            limit_conn: 0,
            set_real_ip_from: Vec::new(),
            access_log: true,
            gzip: true,
            gzip_min_length: 1024,
            brotli: true,
            hsts: "max-age=63072000; includeSubDomains".to_owned(),
            x_frame_options: "DENY".to_owned(),
            referrer_policy: "strict-origin-when-cross-origin".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TlsSection {
    /// `ssl_session_cache shared:SSL:…` size in sessions (512 bytes each in
    /// memory every worker shares, so 20480 is nginx's `10m`); 0 turns it
    /// off. Default 20480.
    pub(crate) session_cache: usize,
    /// `ssl_session_timeout`: how long a cached session can be resumed.
    /// Default `1d` (the seeds'; nginx's own default is `5m`).
    #[serde(deserialize_with = "duration")]
    pub(crate) session_timeout: Duration,
    /// `ssl_session_tickets`. Default on.
    pub(crate) session_tickets: bool,
    /// Handshake timeout. Default `10s`.
    #[serde(deserialize_with = "duration")]
    pub(crate) handshake_timeout: Duration,
    /// How often certificate files are checked for changes; `0s` turns the
    /// watcher off (SIGHUP still reloads). Default `5s`.
    #[serde(deserialize_with = "duration")]
    pub(crate) watch_interval: Duration,
    /// `ssl_client_certificate`: CA file for client certificates.
    pub(crate) client_certificate: Option<Spanned<String>>,
    /// `ssl_verify_client on` (true) or `optional` (false). Default true.
    pub(crate) verify_client: bool,
    /// `ssl_session_ticket_key`: a file of at least 32 random bytes shared by
    /// the replicas that must resume each other's sessions. Unlike nginx's,
    /// its keys rotate by themselves (derived from it and the time). Re-read
    /// on reload. `"redis"`: the secret lives in `[redis]` (the first replica
    /// to ask chooses it), re-read every minute, so deleting the key rotates
    /// every replica without a restart. Unset: the instance's own secret, in
    /// shared memory.
    pub(crate) session_ticket_key: Option<Spanned<String>>,
}

impl Default for TlsSection {
    fn default() -> Self {
        Self {
            session_cache: 20_480,
            session_timeout: Duration::from_secs(86_400),
            session_tickets: true,
            handshake_timeout: Duration::from_secs(10),
            watch_interval: Duration::from_secs(5),
            client_certificate: None,
            verify_client: true,
            session_ticket_key: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ProxySection {
    /// `proxy_connect_timeout`. Default `60s`.
    #[serde(deserialize_with = "duration")]
    pub(crate) connect_timeout: Duration,
    /// `proxy_send_timeout`. Default `60s`.
    #[serde(deserialize_with = "duration")]
    pub(crate) send_timeout: Duration,
    /// `proxy_read_timeout`. Default `60s`.
    #[serde(deserialize_with = "duration")]
    pub(crate) read_timeout: Duration,
    /// `proxy_request_buffering`. Default on.
    pub(crate) request_buffering: bool,
    /// `proxy_next_upstream_tries`; 0 tries every server. Default 0.
    pub(crate) next_upstream_tries: usize,
    /// `proxy_next_upstream_timeout`: no retry starts this long after the
    /// request first went upstream; `0s` is no limit. Default `0s`.
    #[serde(deserialize_with = "duration")]
    pub(crate) next_upstream_timeout: Duration,
}

impl Default for ProxySection {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(60),
            request_buffering: true,
            next_upstream_tries: 0,
            next_upstream_timeout: Duration::ZERO,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamSection {
    pub(crate) name: Spanned<String>,
    #[serde(default)]
    pub(crate) servers: Vec<UpstreamServerSection>,
    /// `keepalive`. Default 32.
    #[serde(default = "default_keepalive")]
    pub(crate) keepalive: usize,
    /// `round_robin` (default) or `least_conn`.
    #[serde(default)]
    pub(crate) balance: BalanceName,
    #[serde(default)]
    pub(crate) health_check: Option<HealthCheckSection>,
    /// Envoy's panic threshold, percent: below this share of available
    /// servers, route to all of them; 0 is nginx's behaviour. Default 50.
    #[serde(default = "default_panic_threshold")]
    pub(crate) panic_threshold: Spanned<u8>,
    /// Envoy's retry budget: `{ percent = 20, min_concurrent = 3 }` (the
    /// default), or `{ enabled = false }` to retry every retryable failure
    /// (nginx).
    #[serde(default)]
    pub(crate) retry_budget: RetryBudgetSection,
}

fn default_keepalive() -> usize {
    32
}

fn default_panic_threshold() -> Spanned<u8> {
    Spanned::new(0..0, wharf_proxy::DEFAULT_PANIC_THRESHOLD)
}

/// `retry_budget = { percent = 20, min_concurrent = 3 }` (the defaults), or
/// `{ enabled = false }` to retry every retryable failure (nginx).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct RetryBudgetSection {
    pub(crate) enabled: bool,
    pub(crate) percent: Spanned<u8>,
    pub(crate) min_concurrent: usize,
}

impl Default for RetryBudgetSection {
    fn default() -> Self {
        Self {
            enabled: true,
            percent: default_retry_percent(),
            min_concurrent: default_min_retries(),
        }
    }
}

fn default_retry_percent() -> Spanned<u8> {
    Spanned::new(0..0, wharf_proxy::RetryBudget::default().percent)
}

fn default_min_retries() -> usize {
    wharf_proxy::RetryBudget::default().min_concurrent
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum BalanceName {
    #[default]
    RoundRobin,
    LeastConn,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamServerSection {
    pub(crate) address: Spanned<String>,
    #[serde(default = "one")]
    pub(crate) weight: u32,
    #[serde(default)]
    pub(crate) backup: bool,
    #[serde(default = "one")]
    pub(crate) max_fails: u32,
    #[serde(default = "ten_seconds", deserialize_with = "duration")]
    pub(crate) fail_timeout: Duration,
}

fn one() -> u32 {
    1
}

fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthCheckSection {
    pub(crate) path: String,
    #[serde(default = "five_seconds", deserialize_with = "duration")]
    pub(crate) interval: Duration,
    #[serde(default = "two_seconds", deserialize_with = "duration")]
    pub(crate) timeout: Duration,
    #[serde(default = "two")]
    pub(crate) rise: u32,
    #[serde(default = "three")]
    pub(crate) fall: u32,
}

fn five_seconds() -> Duration {
    Duration::from_secs(5)
}
fn two_seconds() -> Duration {
    Duration::from_secs(2)
}
fn two() -> u32 {
    2
}
fn three() -> u32 {
    3
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerSection {
    /// `server_name`: exact names and `*.example.com` wildcards.
    #[serde(default)]
    pub(crate) server_name: Vec<String>,
    /// `listen … default_server`: the block for unknown hosts (default: the first).
    #[serde(default)]
    pub(crate) default_server: bool,
    /// `ssl_certificate`: one file or a list (e.g. ECDSA and RSA side by side).
    #[serde(default)]
    pub(crate) ssl_certificate: Option<Spanned<OneOrMany>>,
    /// `ssl_certificate_key`: one per certificate, in the same order.
    #[serde(default)]
    pub(crate) ssl_certificate_key: Option<Spanned<OneOrMany>>,
    /// `ssl_stapling_file`: one DER OCSP response per certificate.
    #[serde(default)]
    pub(crate) ssl_stapling_file: Option<Spanned<OneOrMany>>,
    /// `acme`: obtain the certificate from an ACME CA instead of
    /// `ssl_certificate` files (see [`ServerAcme`]).
    #[serde(default)]
    pub(crate) acme: Option<Spanned<ServerAcme>>,
    /// `add_header`: extra response headers on every response of this block.
    #[serde(default)]
    pub(crate) add_header: BTreeMap<String, String>,
    #[serde(default, rename = "location")]
    pub(crate) locations: Vec<LocationSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub(crate) fn to_vec(&self) -> Vec<String> {
        match self {
            Self::One(one) => vec![one.clone()],
            Self::Many(many) => many.clone(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LocationSection {
    /// The path prefix (`location /static/`); the longest match wins.
    pub(crate) path: Spanned<String>,
    /// `proxy_pass`: an upstream's name or `http://host:port`.
    #[serde(default)]
    pub(crate) proxy_pass: Option<Spanned<String>>,
    /// `alias`: a directory whose files are served for the rest of the path.
    #[serde(default)]
    pub(crate) alias: Option<Spanned<String>>,
    /// `expires`: `Cache-Control: max-age` for static files.
    #[serde(default, deserialize_with = "optional_duration")]
    pub(crate) expires: Option<Duration>,
    /// `Cache-Control: public, immutable` on every file; without it, only
    /// fingerprinted names (`app.3f9a2c1b.js`) are marked immutable.
    #[serde(default)]
    pub(crate) immutable: bool,
    /// `return`: a fixed response.
    #[serde(default, rename = "return")]
    pub(crate) fixed: Option<ReturnSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReturnSection {
    pub(crate) status: u16,
    #[serde(default)]
    pub(crate) body: String,
    /// `Location` for redirects.
    #[serde(default)]
    pub(crate) location: Option<String>,
}

/// Parses `30s`, `5m`, `1h`, `1d`, `500ms`, or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, "s"), |i| text.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 30s, 5m, 1h, 1d"))?;
    let factor: u64 = match unit {
        "ms" => return Ok(Duration::from_millis(n)),
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "M" => 30 * 86_400,
        "y" => 365 * 86_400,
        _ => return Err(format!("invalid duration {text:?}: unknown unit {unit:?}")),
    };
    n.checked_mul(factor)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("invalid duration {text:?}: too long"))
}

/// Parses `10M`, `16k`, `1g`, or a number of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |i| text.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected e.g. 10M, 16k"))?;
    let factor: u64 = match unit {
        "" => 1,
        "k" | "K" => 1024,
        "m" | "M" => 1024 * 1024,
        "g" | "G" => 1024 * 1024 * 1024,
        _ => return Err(format!("invalid size {text:?}: unknown unit {unit:?}")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TextOrNumber {
    Text(String),
    Number(u64),
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match TextOrNumber::deserialize(d)? {
        TextOrNumber::Text(text) => parse_duration(&text).map_err(de::Error::custom),
        TextOrNumber::Number(n) => Ok(Duration::from_secs(n)),
    }
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match TextOrNumber::deserialize(d)? {
        TextOrNumber::Text(text) => parse_size(&text).map_err(de::Error::custom),
        TextOrNumber::Number(n) => Ok(n),
    }
}

/// Where the configuration came from.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub(crate) path: Option<PathBuf>,
    pub(crate) text: String,
}

impl Source {
    pub(crate) fn error(
        &self,
        span: Option<std::ops::Range<usize>>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.path.clone(),
            line: span.map(|s| line_of(&self.text, s.start)),
            message: message.into(),
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).unwrap_or(text).matches('\n').count() + 1
}

/// Reads and parses the file; `None` means development defaults.
pub(crate) fn load(path: Option<&Path>) -> Result<(EdgeConfig, Source), ConfigError> {
    let Some(path) = path else {
        let source = Source {
            path: None,
            text: String::new(),
        };
        return Ok((development(), source));
    };
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: Some(path.to_owned()),
        line: None,
        message: format!("cannot read: {e}"),
    })?;
    parse(Some(path), text)
}

/// Parses the text of a configuration file read from `path` (the pure half
/// of [`load`], which the property tests and the `edge_config` fuzz target
/// call directly).
pub(crate) fn parse(
    path: Option<&Path>,
    text: String,
) -> Result<(EdgeConfig, Source), ConfigError> {
    let source = Source {
        path: path.map(Path::to_owned),
        text,
    };
    let config: EdgeConfig = toml::from_str(&source.text).map_err(|e| {
        let message = e.message().to_owned();
        source.error(e.span(), message)
    })?;
    Ok((config, source))
}

/// The configuration with no file: 8080 redirects to 8443, which terminates
/// TLS with a self-signed certificate and proxies to `frontend` on 7001.
pub(crate) fn development() -> EdgeConfig {
    let spanned = |s: &str| Spanned::new(0..0, s.to_owned());
    EdgeConfig {
        listen: vec![
            ListenSection {
                address: spanned("127.0.0.1:8080"),
                ssl: false,
                redirect_to_https: true,
                https_port: 8443,
                proxy_protocol: false,
                backlog: None,
            },
            ListenSection {
                address: spanned("127.0.0.1:8443"),
                ssl: true,
                redirect_to_https: false,
                https_port: 8443,
                proxy_protocol: false,
                backlog: None,
            },
        ],
        admin: AdminSection::default(),
        http: HttpSection::default(),
        tls: TlsSection::default(),
        proxy: ProxySection::default(),
        limit_req: Vec::new(),
        redis: None,
        limit_req_status: default_limit_req_status(),
        // One process: each worker would make its own self-signed certificate.
        supervisor: None,
        acme: AcmeSection::default(),
        upstreams: vec![UpstreamSection {
            name: spanned("frontend"),
            servers: vec![UpstreamServerSection {
                address: spanned("127.0.0.1:7001"),
                weight: 1,
                backup: false,
                max_fails: 1,
                fail_timeout: Duration::from_secs(10),
            }],
            keepalive: 32,
            balance: BalanceName::RoundRobin,
            health_check: None,
            panic_threshold: default_panic_threshold(),
            retry_budget: RetryBudgetSection::default(),
        }],
        servers: vec![ServerSection {
            server_name: vec!["localhost".to_owned()],
            default_server: true,
            ssl_certificate: None,
            ssl_certificate_key: None,
            ssl_stapling_file: None,
            acme: None,
            add_header: BTreeMap::new(),
            locations: vec![LocationSection {
                path: spanned("/"),
                proxy_pass: Some(spanned("frontend")),
                alias: None,
                expires: None,
                immutable: false,
                fixed: None,
            }],
        }],
    }
}

/// What `edge` reads from the environment through wharf-config (so a mistake
/// names its variable): tracing. Everything else is in the TOML file.
#[derive(Debug, Clone, Default, serde::Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct EdgeEnv {
    /// `WHARF_TRACING` and the `OTEL_*` variables.
    pub(crate) tracing: wharf_telemetry::trace::TraceSection,
}

/// The variables of [`EdgeEnv`].
pub(crate) fn env_vars() -> Vec<wharf_config::Var> {
    wharf_telemetry::trace::TraceSection::vars("tracing")
}

/// Loads [`EdgeEnv`] from `env` (no `.env` file).
pub(crate) fn load_env(env: &wharf_config::EnvMap) -> Result<EdgeEnv, wharf_config::ConfigError> {
    wharf_config::Loader::new(env_vars())
        .env(env.clone())
        .dotenv(None)
        .load::<EdgeEnv>()
        .map(|loaded| loaded.config)
}

/// Environment overrides, applied after the file: listener addresses and the
/// servers of the first upstream.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overrides {
    /// `WHARF_EDGE_HTTP`: address of the plain (redirecting) listener.
    pub(crate) http: Option<String>,
    /// `WHARF_EDGE_HTTPS`: address of the TLS listener.
    pub(crate) https: Option<String>,
    /// `WHARF_EDGE_ADMIN`: admin listener address, or `off`.
    pub(crate) admin: Option<String>,
    /// `WHARF_EDGE_UPSTREAM`: comma-separated `host:port` servers replacing
    /// those of the first upstream.
    pub(crate) upstream: Option<String>,
    /// `WHARF_EDGE_REDIS_URL`: `[redis] url` (and `[redis]` itself when the
    /// file has none).
    pub(crate) redis_url: Option<String>,
}

impl Overrides {
    /// The overrides `env` sets (blank values count as unset).
    pub(crate) fn from_env(env: &wharf_config::EnvMap) -> Self {
        let var = |name: &str| {
            env.get(name)
                .filter(|v| !v.trim().is_empty())
                .map(str::to_owned)
        };
        Self {
            http: var("WHARF_EDGE_HTTP"),
            https: var("WHARF_EDGE_HTTPS"),
            admin: var("WHARF_EDGE_ADMIN"),
            upstream: var("WHARF_EDGE_UPSTREAM"),
            redis_url: var("WHARF_EDGE_REDIS_URL"),
        }
    }

    pub(crate) fn apply(&self, config: &mut EdgeConfig) {
        let set = |listen: &mut Vec<ListenSection>, ssl: bool, address: &str| {
            if let Some(l) = listen.iter_mut().find(|l| l.ssl == ssl) {
                l.address = Spanned::new(0..0, address.to_owned());
            }
        };
        if let Some(http) = &self.http {
            set(&mut config.listen, false, http);
        }
        if let Some(https) = &self.https {
            set(&mut config.listen, true, https);
            if let Ok(addr) = https.parse::<SocketAddr>() {
                for l in config.listen.iter_mut().filter(|l| l.redirect_to_https) {
                    l.https_port = addr.port();
                }
            }
        }
        if let Some(admin) = &self.admin {
            if admin == "off" {
                config.admin.enabled = false;
            } else {
                config.admin.address.clone_from(admin);
            }
        }
        if let Some(url) = &self.redis_url {
            config.redis.get_or_insert_with(RedisSection::default).url =
                Some(Spanned::new(0..0, url.clone()));
        }
        if let (Some(servers), Some(first)) = (&self.upstream, config.upstreams.first_mut()) {
            first.servers = servers
                .split(',')
                .map(|s| UpstreamServerSection {
                    address: Spanned::new(0..0, s.trim().to_owned()),
                    weight: 1,
                    backup: false,
                    max_fails: 1,
                    fail_timeout: Duration::from_secs(10),
                })
                .collect();
        }
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests;
