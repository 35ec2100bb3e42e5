//! Reusable typed sections that services compose into their configuration.
//!
//! Each section is plain `serde` data whose `Default` is the documented
//! default, plus a `vars()` list naming the environment variables that set it.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::environment::Environment;
use crate::secret::Secret;
use crate::var::{parse, Var};

/// The HTTP listener and its limits (read by `wharf-http`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// `WHARF_BIND_ADDRESS`: address to listen on. Unset, it depends on the
    /// environment: see [`bind_address`](Self::bind_address).
    pub bind: Option<IpAddr>,
    /// `PORT`: TCP port. Default 7001.
    pub port: u16,
    /// `WHARF_KEEPALIVE_SECONDS`: idle keep-alive connections are closed after
    /// this long. Default 90 (the seed's gunicorn `keepalive`).
    pub keepalive_seconds: u64,
    /// `WHARF_HEADER_READ_TIMEOUT_SECONDS`: a client must send a request's
    /// headers within this long of starting it (or of connecting). Default 10.
    pub header_read_timeout_seconds: u64,
    /// `HTTP_SERVE_TIMEOUT_SECONDS`: a request that takes longer is answered
    /// 504. Default 30.
    pub request_timeout_seconds: u64,
    /// `WHARF_GRACEFUL_TIMEOUT_SECONDS`: on shutdown, in-flight requests get
    /// this long to finish. Default 30.
    pub graceful_timeout_seconds: u64,
    /// `WHARF_MAX_HEADER_BYTES`: largest request head (431 beyond). Default 16 KiB.
    pub max_header_bytes: u64,
    /// `WHARF_MAX_BODY_BYTES`: largest request body (413 beyond). Default 10 MiB.
    pub max_body_bytes: u64,
    /// `WHARF_MAX_CONNECTIONS`: open connections per process; beyond it the
    /// process stops accepting. Default 1000 (the seed's `worker_connections`).
    pub max_connections: u64,
    /// `WHARF_HSTS_MAX_AGE_SECONDS`: sends `Strict-Transport-Security` with this
    /// max-age when above 0. Default 0 (off: the TLS terminator sets it).
    pub hsts_max_age_seconds: u64,
    /// `WHARF_BACKLOG`: the listening socket's accept queue, connections
    /// whose handshake is done waiting for a worker to accept them; beyond
    /// it the kernel drops new ones. Capped by the kernel at
    /// `net.core.somaxconn`. Default 1024.
    pub backlog: u32,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            bind: None,
            port: 7001,
            keepalive_seconds: 90,
            header_read_timeout_seconds: 10,
            request_timeout_seconds: 30,
            graceful_timeout_seconds: 30,
            max_header_bytes: 16 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            max_connections: 1000,
            hsts_max_age_seconds: 0,
            backlog: 1024,
        }
    }
}

impl ServerSection {
    /// The variables that set this section, with keys under `section`.
    pub fn vars(section: &str) -> Vec<Var> {
        vec![
            Var::new("WHARF_BIND_ADDRESS", "bind", parse::ip_addr())
                .help("address to listen on (unset: 127.0.0.1 in development, else 0.0.0.0)"),
            Var::new("PORT", "port", parse::port())
                .required_when_deployed()
                .help("TCP port to listen on"),
            Var::new(
                "WHARF_KEEPALIVE_SECONDS",
                "keepalive_seconds",
                parse::seconds(1),
            )
            .help("idle keep-alive connection timeout"),
            Var::new(
                "WHARF_HEADER_READ_TIMEOUT_SECONDS",
                "header_read_timeout_seconds",
                parse::seconds(1),
            )
            .help("time allowed to send request headers"),
            Var::new(
                "HTTP_SERVE_TIMEOUT_SECONDS",
                "request_timeout_seconds",
                parse::seconds(1),
            )
            .help("per-request timeout (504 beyond)"),
            Var::new(
                "WHARF_GRACEFUL_TIMEOUT_SECONDS",
                "graceful_timeout_seconds",
                parse::seconds(0),
            )
            .help("time in-flight requests get on shutdown"),
            // hyper's HTTP/1 read buffer cannot be smaller than 8 KiB.
            Var::new(
                "WHARF_MAX_HEADER_BYTES",
                "max_header_bytes",
                parse::bytes(8192),
            )
            .help("largest request head (431 beyond)"),
            Var::new("WHARF_MAX_BODY_BYTES", "max_body_bytes", parse::bytes(0))
                .help("largest request body (413 beyond)"),
            Var::new(
                "WHARF_MAX_CONNECTIONS",
                "max_connections",
                parse::count(1, 1_000_000),
            )
            .help("open connections per process"),
            Var::new(
                "WHARF_HSTS_MAX_AGE_SECONDS",
                "hsts_max_age_seconds",
                parse::seconds(0),
            )
            .help("Strict-Transport-Security max-age; 0 = header off"),
            Var::new("WHARF_BACKLOG", "backlog", parse::count(1, 65_535))
                .help("accept queue of the listening socket (capped at net.core.somaxconn)"),
        ]
        .into_iter()
        .map(|v| v.under(section))
        .collect()
    }

    /// The address to listen on: `WHARF_BIND_ADDRESS` when set; otherwise
    /// loopback (`127.0.0.1`) in development, as Flask's and gunicorn's
    /// defaults are, so a developer's server (and its sample documents) is
    /// not reachable from the network, and every interface (`0.0.0.0`) in
    /// any other environment.
    pub fn bind_address(&self, environment: Environment) -> IpAddr {
        self.bind.unwrap_or(match environment {
            Environment::Development => IpAddr::V4(Ipv4Addr::LOCALHOST),
            _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        })
    }

    /// [`keepalive_seconds`](Self::keepalive_seconds) as a `Duration`.
    pub fn keepalive(&self) -> Duration {
        Duration::from_secs(self.keepalive_seconds)
    }

    /// [`header_read_timeout_seconds`](Self::header_read_timeout_seconds) as a `Duration`.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_seconds)
    }

    /// [`request_timeout_seconds`](Self::request_timeout_seconds) as a `Duration`.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_seconds)
    }

    /// [`graceful_timeout_seconds`](Self::graceful_timeout_seconds) as a `Duration`.
    pub fn graceful_timeout(&self) -> Duration {
        Duration::from_secs(self.graceful_timeout_seconds)
    }
}

/// Redis, for state shared across replicas (rate limits).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSection {
    /// `REDIS_ENABLED`: use Redis; when false an in-process store is used.
    /// Default false.
    pub enabled: bool,
    /// `REDIS_URL`: `redis://` or `rediss://` URL; may hold a password, so it
    /// is a secret. Default unset.
    pub url: Option<Secret<String>>,
}

impl RedisSection {
    /// The variables that set this section, with keys under `section`.
    pub fn vars(section: &str) -> Vec<Var> {
        vec![
            Var::new("REDIS_ENABLED", "enabled", parse::boolean())
                .required_when_deployed()
                .help("use Redis for shared state"),
            Var::new("REDIS_URL", "url", parse::url(&["redis", "rediss", "unix"]))
                .required_when_deployed()
                .secret()
                .help("Redis connection URL"),
        ]
        .into_iter()
        .map(|v| v.under(section))
        .collect()
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON in deployed environments, pretty in development and test.
    #[default]
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable, coloured when on a terminal.
    Pretty,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// `WHARF_LOG_FORMAT`: `auto`, `json` or `pretty`. Default `auto`.
    pub format: LogFormat,
    /// `RUST_LOG`: a tracing filter such as `info,wharf_http=debug`. Default `info`.
    pub filter: String,
    /// `WHARF_ACCESS_LOG`: one JSON line per request. Default true.
    pub access_log: bool,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            filter: "info".to_owned(),
            access_log: true,
        }
    }
}

impl LogSection {
    /// The variables that set this section, with keys under `section`.
    pub fn vars(section: &str) -> Vec<Var> {
        vec![
            Var::new(
                "WHARF_LOG_FORMAT",
                "format",
                parse::one_of(&["auto", "json", "pretty"]),
            )
            .help("log format"),
            Var::new("RUST_LOG", "filter", parse::text()).help("log filter"),
            Var::new("WHARF_ACCESS_LOG", "access_log", parse::boolean())
                .help("write an access-log line per request"),
        ]
        .into_iter()
        .map(|v| v.under(section))
        .collect()
    }
}
