//! Configuration: [`RateLimitSection`] for `frontend` (wharf-config pattern),
//! [`ZoneConfig`] for `edge`'s `limit_req` zones, and the constructors that
//! turn them, with wharf-config's `RedisSection`, into a [`Limiter`].

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use wharf_config::{parse, Parser, RedisSection, Var};

use crate::error::BuildError;
use crate::key::{ClientIp, ForwardedHeader, IpNet, KeySource};
use crate::layer::{RateLimitLayer, ResponseSettings};
use crate::limiter::{FailureMode, Limiter, StoreKind, Zone};
use crate::rate::{Per, Rate};
use crate::redis::{RedisOptions, RedisStore};

/// Paths of the frontend's document routes: `/d/<service>/<document>…`.
pub const DOCUMENT_PATH_PREFIX: &str = "/d/";
/// The email-confirmation form's path ends with this (the zone covers its POST).
pub const CONFIRM_PATH_SUFFIX: &str = "/confirm-email-address";

/// `frontend`'s rate limits: the document routes per client IP (nginx's
/// `api` zone: 10r/s burst 20 nodelay) and the email-confirmation POST more
/// strictly (nginx's `login` zone: 1r/s burst 5 nodelay), shared through
/// Redis when `REDIS_ENABLED=true`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[allow(clippy::struct_excessive_bools)] // one flag per environment variable
pub struct RateLimitSection {
    /// `WHARF_RATELIMIT_ENABLED`: limit at all. Default true.
    pub enabled: bool,
    /// `WHARF_RATELIMIT_DOCUMENT_RATE`: document routes, per client. Default `10r/s`.
    pub document_rate: Rate,
    /// `WHARF_RATELIMIT_DOCUMENT_BURST`: default 20.
    pub document_burst: u32,
    /// `WHARF_RATELIMIT_DOCUMENT_NODELAY`: default true.
    pub document_nodelay: bool,
    /// `WHARF_RATELIMIT_CONFIRM_RATE`: email-confirmation POST, per client. Default `1r/s`.
    pub confirm_rate: Rate,
    /// `WHARF_RATELIMIT_CONFIRM_BURST`: default 5.
    pub confirm_burst: u32,
    /// `WHARF_RATELIMIT_CONFIRM_NODELAY`: default true.
    pub confirm_nodelay: bool,
    /// `WHARF_RATELIMIT_ON_REDIS_FAILURE`: `open`, `closed` or `local`. Default `open`.
    pub on_redis_failure: FailureMode,
    /// `WHARF_RATELIMIT_REDIS_TIMEOUT_MS`: most a check waits for Redis. Default 50.
    pub redis_timeout_ms: u64,
    /// `WHARF_RATELIMIT_REDIS_CLUSTER`: `REDIS_URL` names a Cluster node. Default false.
    pub redis_cluster: bool,
    /// `WHARF_RATELIMIT_BREAKER_FAILURES`: consecutive failures before Redis is skipped. Default 5.
    pub breaker_failures: u32,
    /// `WHARF_RATELIMIT_BREAKER_COOLDOWN_MS`: how long Redis is skipped before a probe. Default 1000.
    pub breaker_cooldown_ms: u64,
    /// `WHARF_RATELIMIT_TRUSTED_PROXIES`: comma-separated addresses or ranges
    /// whose `X-Forwarded-For` is believed. Default none.
    pub trusted_proxies: Vec<String>,
    /// `WHARF_RATELIMIT_FORWARDED_HEADER`: `x-forwarded-for` or `forwarded`. Default `x-forwarded-for`.
    pub forwarded_header: String,
    /// `WHARF_RATELIMIT_IPV6_PREFIX`: IPv6 clients are grouped by this prefix. Default 64.
    pub ipv6_prefix: u8,
    /// `WHARF_RATELIMIT_STATUS`: 429 or 503. Default 429.
    pub status: u16,
    /// `WHARF_RATELIMIT_MAX_KEYS`: most clients each zone keeps in memory. Default 100000.
    pub max_keys: u64,
    /// `WHARF_RATELIMIT_KEY_PREFIX`: prefix of the Redis keys. Default `wharf:rl`.
    pub key_prefix: String,
}

impl Default for RateLimitSection {
    fn default() -> Self {
        Self {
            enabled: true,
            document_rate: Rate::const_new(10, Per::Second),
            document_burst: 20,
            document_nodelay: true,
            confirm_rate: Rate::const_new(1, Per::Second),
            confirm_burst: 5,
            confirm_nodelay: true,
            on_redis_failure: FailureMode::Open,
            redis_timeout_ms: 50,
            redis_cluster: false,
            breaker_failures: 5,
            breaker_cooldown_ms: 1000,
            trusted_proxies: Vec::new(),
            forwarded_header: "x-forwarded-for".to_owned(),
            ipv6_prefix: 64,
            status: 429,
            max_keys: 100_000,
            key_prefix: "wharf:rl".to_owned(),
        }
    }
}

/// Parses `10r/s` or `30r/m`.
pub fn rate_parser() -> Parser {
    Arc::new(|text: &str| {
        text.parse::<Rate>()
            .map(|r| Value::from(r.to_string()))
            .map_err(|e| e.to_string())
    })
}

/// Parses a comma-separated list of IP addresses or ranges (may be empty).
pub fn ip_list_parser() -> Parser {
    Arc::new(|text: &str| {
        let mut list = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net: IpNet = item
                .parse()
                .map_err(|e: crate::key::IpNetError| e.to_string())?;
            list.push(Value::from(net.to_string()));
        }
        Ok(Value::Array(list))
    })
}

impl RateLimitSection {
    /// The variables that set this section, with keys under `section`.
    #[allow(clippy::too_many_lines)] // a flat list, one entry per variable
    pub fn vars(section: &str) -> Vec<Var> {
        vec![
            Var::new("WHARF_RATELIMIT_ENABLED", "enabled", parse::boolean())
                .help("rate-limit requests"),
            Var::new(
                "WHARF_RATELIMIT_DOCUMENT_RATE",
                "document_rate",
                rate_parser(),
            )
            .help("document routes: rate per client (10r/s)"),
            Var::new(
                "WHARF_RATELIMIT_DOCUMENT_BURST",
                "document_burst",
                parse::count(0, 1_000_000),
            )
            .help("document routes: burst"),
            Var::new(
                "WHARF_RATELIMIT_DOCUMENT_NODELAY",
                "document_nodelay",
                parse::boolean(),
            )
            .help("document routes: serve the burst at once"),
            Var::new(
                "WHARF_RATELIMIT_CONFIRM_RATE",
                "confirm_rate",
                rate_parser(),
            )
            .help("email confirmation POST: rate per client (1r/s)"),
            Var::new(
                "WHARF_RATELIMIT_CONFIRM_BURST",
                "confirm_burst",
                parse::count(0, 1_000_000),
            )
            .help("email confirmation POST: burst"),
            Var::new(
                "WHARF_RATELIMIT_CONFIRM_NODELAY",
                "confirm_nodelay",
                parse::boolean(),
            )
            .help("email confirmation POST: serve the burst at once"),
            Var::new(
                "WHARF_RATELIMIT_ON_REDIS_FAILURE",
                "on_redis_failure",
                parse::one_of(&["open", "closed", "local"]),
            )
            .help("when Redis fails: let through, reject, or limit per process"),
            Var::new(
                "WHARF_RATELIMIT_REDIS_TIMEOUT_MS",
                "redis_timeout_ms",
                parse::count(1, 60_000),
            )
            .help("most a check waits for Redis (ms)"),
            Var::new(
                "WHARF_RATELIMIT_REDIS_CLUSTER",
                "redis_cluster",
                parse::boolean(),
            )
            .help("REDIS_URL is a Redis Cluster node"),
            Var::new(
                "WHARF_RATELIMIT_BREAKER_FAILURES",
                "breaker_failures",
                parse::count(1, 1_000_000),
            )
            .help("consecutive Redis failures before it is skipped"),
            Var::new(
                "WHARF_RATELIMIT_BREAKER_COOLDOWN_MS",
                "breaker_cooldown_ms",
                parse::count(1, 3_600_000),
            )
            .help("how long Redis is skipped before a probe (ms)"),
            Var::new(
                "WHARF_RATELIMIT_TRUSTED_PROXIES",
                "trusted_proxies",
                ip_list_parser(),
            )
            .help("proxies whose X-Forwarded-For is believed (CIDRs, comma-separated)"),
            Var::new(
                "WHARF_RATELIMIT_FORWARDED_HEADER",
                "forwarded_header",
                parse::one_of(&["x-forwarded-for", "forwarded"]),
            )
            .help("header trusted proxies set"),
            Var::new(
                "WHARF_RATELIMIT_IPV6_PREFIX",
                "ipv6_prefix",
                parse::count(1, 128),
            )
            .help("IPv6 clients are grouped by this prefix length"),
            Var::new(
                "WHARF_RATELIMIT_STATUS",
                "status",
                parse::one_of(&["429", "503"]),
            )
            .help("status of a rejected request"),
            Var::new(
                "WHARF_RATELIMIT_MAX_KEYS",
                "max_keys",
                parse::count(1, 100_000_000),
            )
            .help("most clients each zone keeps in memory"),
            Var::new("WHARF_RATELIMIT_KEY_PREFIX", "key_prefix", parse::text())
                .help("prefix of the Redis keys"),
        ]
        .into_iter()
        .map(|v| v.under(section))
        .collect()
    }

    /// The client-IP resolver this section describes.
    pub fn client_ip(&self) -> Result<ClientIp, BuildError> {
        let nets = self
            .trusted_proxies
            .iter()
            .map(|s| s.parse::<IpNet>())
            .collect::<Result<Vec<_>, _>>()?;
        let header = if self.forwarded_header.eq_ignore_ascii_case("forwarded") {
            ForwardedHeader::Forwarded
        } else {
            ForwardedHeader::XForwardedFor
        };
        Ok(ClientIp::new()
            .trust_all(nets)
            .header(header)
            .ipv6_prefix(self.ipv6_prefix))
    }

    /// The Redis options this section and `url` describe.
    pub fn redis_options(&self, url: &str) -> RedisOptions {
        let mut options = RedisOptions::new(url);
        options.cluster = self.redis_cluster;
        options.timeout = Duration::from_millis(self.redis_timeout_ms.max(1));
        options.breaker_failures = self.breaker_failures;
        options.breaker_cooldown = Duration::from_millis(self.breaker_cooldown_ms);
        options.key_prefix.clone_from(&self.key_prefix);
        options
    }

    /// The response settings (status).
    pub fn response_settings(&self) -> ResponseSettings {
        ResponseSettings {
            status: StatusCode::from_u16(self.status)
                .ok()
                .filter(|s| *s == StatusCode::SERVICE_UNAVAILABLE)
                .unwrap_or(StatusCode::TOO_MANY_REQUESTS),
            ..ResponseSettings::default()
        }
    }

    /// Bytes of shared memory that hold `frontend`'s zones at
    /// [`max_keys`](Self::max_keys) keys each (declare it with
    /// `wharf_supervisor::Supervisor::shared_memory` and give it to
    /// [`frontend_limiter`] in every worker, so the instance counts as one).
    pub fn zone_memory_bytes(&self) -> usize {
        crate::ZoneMemory::bytes_for(self.frontend_zones().len(), self.keys_per_zone())
    }

    /// Wraps `words` (a segment of [`zone_memory_bytes`](Self::zone_memory_bytes)
    /// bytes) as the zone memory of `frontend`'s zones.
    pub fn zone_memory(
        &self,
        words: std::sync::Arc<dyn AsRef<[std::sync::atomic::AtomicU64]> + Send + Sync>,
    ) -> Result<crate::ZoneMemory, BuildError> {
        Ok(crate::ZoneMemory::new(
            words,
            self.frontend_zones().len(),
            self.keys_per_zone(),
        )?)
    }

    fn keys_per_zone(&self) -> usize {
        usize::try_from(self.max_keys)
            .unwrap_or(usize::MAX)
            .max(crate::memory::PROBE)
    }

    /// `frontend`'s two zones.
    pub fn frontend_zones(&self) -> Vec<Zone> {
        let mut document = Zone::new("document", self.document_rate)
            .burst(self.document_burst)
            .key(KeySource::ClientIp)
            .on_redis_failure(self.on_redis_failure)
            .when(|parts| parts.uri.path().starts_with(DOCUMENT_PATH_PREFIX));
        if self.document_nodelay {
            document = document.nodelay();
        }
        let mut confirm = Zone::new("confirm", self.confirm_rate)
            .burst(self.confirm_burst)
            .key(KeySource::ClientIp)
            .on_redis_failure(self.on_redis_failure)
            .when(|parts| {
                parts.method == Method::POST
                    && parts.uri.path().starts_with(DOCUMENT_PATH_PREFIX)
                    && parts
                        .uri
                        .path()
                        .trim_end_matches('/')
                        .ends_with(CONFIRM_PATH_SUFFIX)
            });
        if self.confirm_nodelay {
            confirm = confirm.nodelay();
        }
        vec![document, confirm]
    }
}

/// Builds `frontend`'s limiter: Redis-backed when `redis.enabled`, in memory
/// otherwise (in `memory` when given: the instance's shared segment, see
/// [`RateLimitSection::zone_memory`]; else this process's own); `None` when
/// the section disables limiting. Call it inside the tokio runtime (the
/// Redis client starts connecting in the background; it does not wait for
/// Redis, so a Redis outage never stops start-up).
pub fn frontend_limiter(
    redis: &RedisSection,
    section: &RateLimitSection,
    memory: Option<crate::ZoneMemory>,
) -> Result<Option<Limiter>, BuildError> {
    if !section.enabled {
        return Ok(None);
    }
    let mut builder = Limiter::builder()
        .client_ip(section.client_ip()?)
        .max_keys_per_zone(usize::try_from(section.max_keys).unwrap_or(usize::MAX));
    if let Some(memory) = memory {
        builder = builder.memory(memory);
    }
    for zone in section.frontend_zones() {
        builder = builder.zone(zone);
    }
    if redis.enabled {
        let url = redis.url.as_ref().ok_or(BuildError::MissingRedisUrl)?;
        builder = builder.redis(RedisStore::connect(&section.redis_options(url.expose()))?);
    }
    builder.build().map(Some)
}

/// [`frontend_limiter`] as a layer with the section's response settings.
pub fn frontend_layer(
    redis: &RedisSection,
    section: &RateLimitSection,
    memory: Option<crate::ZoneMemory>,
) -> Result<Option<RateLimitLayer>, BuildError> {
    Ok(frontend_limiter(redis, section, memory)?
        .map(|limiter| RateLimitLayer::new(limiter).with_settings(section.response_settings())))
}

/// What a zone counts by, as written in configuration: `client_ip`, `route`,
/// `global`, or `header:<Name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum KeySpec {
    /// `client_ip`.
    ClientIp,
    /// `route`.
    Route,
    /// `global`.
    Global,
    /// `header:<Name>`.
    Header(String),
}

impl TryFrom<String> for KeySpec {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        match text.as_str() {
            "client_ip" => Ok(Self::ClientIp),
            "route" => Ok(Self::Route),
            "global" => Ok(Self::Global),
            other => match other.strip_prefix("header:") {
                Some(name) if http::HeaderName::from_bytes(name.as_bytes()).is_ok() => {
                    Ok(Self::Header(name.to_ascii_lowercase()))
                }
                _ => Err(format!(
                    "expected client_ip, route, global or header:<Name>, got {text:?}"
                )),
            },
        }
    }
}

impl From<KeySpec> for String {
    fn from(spec: KeySpec) -> Self {
        match spec {
            KeySpec::ClientIp => "client_ip".to_owned(),
            KeySpec::Route => "route".to_owned(),
            KeySpec::Global => "global".to_owned(),
            KeySpec::Header(name) => format!("header:{name}"),
        }
    }
}

/// One `limit_req` zone in `edge`'s configuration (TOML):
///
/// ```toml
/// [[limit_req]]
/// zone = "api"              # name (metrics, headers, Redis keys)
/// key = "client_ip"         # client_ip | route | global | header:<Name>
/// rate = "10r/s"            # or "30r/m"
/// burst = 20
/// nodelay = true            # or delay = 8 (nginx delay=)
/// store = "shared"          # shared (Redis when configured) | memory
/// on_redis_failure = "open" # open | closed | local
/// path_prefix = "/api/"     # optional: only these paths
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// The zone's name.
    pub zone: String,
    /// What requests are counted by. Default `client_ip`.
    #[serde(default = "default_key")]
    pub key: KeySpec,
    /// The rate.
    pub rate: Rate,
    /// The burst. Default 0.
    #[serde(default)]
    pub burst: u32,
    /// Serve the burst at once. Default false.
    #[serde(default)]
    pub nodelay: bool,
    /// nginx `delay=`: excess served at once before delaying. Default 0.
    #[serde(default)]
    pub delay: u32,
    /// Where the state lives. Default `shared`.
    #[serde(default)]
    pub store: StoreKind,
    /// When Redis fails. Default `open`.
    #[serde(default)]
    pub on_redis_failure: FailureMode,
    /// Only paths starting with this. Default: every path.
    #[serde(default)]
    pub path_prefix: Option<String>,
}

fn default_key() -> KeySpec {
    KeySpec::ClientIp
}

impl ZoneConfig {
    /// The zone this describes.
    pub fn to_zone(&self) -> Zone {
        let key = match &self.key {
            KeySpec::ClientIp => KeySource::ClientIp,
            KeySpec::Route => KeySource::Route,
            KeySpec::Global => KeySource::Global,
            KeySpec::Header(name) => http::HeaderName::from_bytes(name.as_bytes())
                .map_or(KeySource::Global, KeySource::Header),
        };
        let mut zone = Zone::new(self.zone.clone(), self.rate)
            .burst(self.burst)
            .key(key)
            .store(self.store)
            .on_redis_failure(self.on_redis_failure);
        zone = if self.nodelay {
            zone.nodelay()
        } else {
            zone.delay_after(self.delay)
        };
        if let Some(prefix) = self.path_prefix.clone() {
            zone = zone.when(move |parts| parts.uri.path().starts_with(&prefix));
        }
        zone
    }
}
