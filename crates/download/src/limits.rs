//! The app's rate limits: [`RateLimitSection`] (the `WHARF_RATELIMIT_*`
//! variables, in the wharf-config pattern), the two zones it describes over
//! the app's routes, and the constructors that turn it, with wharf-config's
//! `RedisSection`, into a wharf-ratelimit [`Limiter`] and layer.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use wharf_config::{parse, RedisSection, Var};
use wharf_http::ClientAddrResolver;
use wharf_ratelimit::config::{ip_list_parser, rate_parser};
use wharf_ratelimit::{
    BuildError, ClientIp, FailureMode, ForwardedHeader, IpNet, KeySource, Limiter, Per, Rate,
    RateLimitLayer, RedisOptions, RedisStore, ResponseSettings, Zone, ZoneMemory,
};

/// Paths of the document routes: `/d/<service>/<document>…`.
pub const DOCUMENT_PATH_PREFIX: &str = "/d/";
/// The email-confirmation form's path ends with this (the zone covers its POST).
pub const CONFIRM_PATH_SUFFIX: &str = "/confirm-email-address";

/// nginx's `api` zone: the document routes' default rate.
const DOCUMENT_RATE: Rate = Rate::const_new(10, Per::Second);
/// nginx's `login` zone: the email-confirmation POST's default rate.
const CONFIRM_RATE: Rate = Rate::const_new(1, Per::Second);

/// The app's rate limits: the document routes per client IP (nginx's `api`
/// zone: 10r/s burst 20 nodelay) and the email-confirmation POST more
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
    /// `WHARF_RATELIMIT_REDIS_MAX_BATCH`: most checks sent in one script
    /// call (1: one call per check, for a sharding proxy in front of Redis).
    /// Default 128; ignored on Cluster.
    pub redis_max_batch: u32,
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
            document_rate: DOCUMENT_RATE,
            document_burst: 20,
            document_nodelay: true,
            confirm_rate: CONFIRM_RATE,
            confirm_burst: 5,
            confirm_nodelay: true,
            on_redis_failure: FailureMode::Open,
            redis_timeout_ms: 50,
            redis_cluster: false,
            breaker_failures: 5,
            redis_max_batch: 128,
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
                "WHARF_RATELIMIT_REDIS_MAX_BATCH",
                "redis_max_batch",
                parse::count(1, 10_000),
            )
            .help("most Redis checks sent in one script call (1: one each)"),
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

    /// The resolver for `wharf_http::ServerConfig::client_addr` when trusted
    /// proxies are configured (the client is then resolved once per request,
    /// and the limiter and the access log read it); `None` otherwise.
    pub fn client_addr(&self) -> Option<ClientAddrResolver> {
        let client_ip = self.client_ip().ok()?;
        let resolver = client_ip.resolver();
        (!resolver.trusted().is_empty()).then(|| resolver.clone())
    }

    /// The Redis options this section and `url` describe.
    pub fn redis_options(&self, url: &str) -> RedisOptions {
        let mut options = RedisOptions::new(url);
        options.cluster = self.redis_cluster;
        options.timeout = Duration::from_millis(self.redis_timeout_ms.max(1));
        options.breaker_failures = self.breaker_failures;
        options.max_batch = usize::try_from(self.redis_max_batch).unwrap_or(usize::MAX);
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

    /// Bytes of shared memory that hold the app's zones at
    /// [`max_keys`](Self::max_keys) keys each (declare it with
    /// `wharf_supervisor::Supervisor::shared_memory` and give it to
    /// [`frontend_limiter`] in every worker, so the instance counts as one).
    pub fn zone_memory_bytes(&self) -> usize {
        ZoneMemory::bytes_for(self.frontend_zones().len(), self.keys_per_zone())
    }

    /// Wraps `words` (a segment of [`zone_memory_bytes`](Self::zone_memory_bytes)
    /// bytes) as the zone memory of the app's zones.
    pub fn zone_memory(
        &self,
        words: Arc<dyn AsRef<[AtomicU64]> + Send + Sync>,
    ) -> Result<ZoneMemory, BuildError> {
        Ok(ZoneMemory::new(
            words,
            self.frontend_zones().len(),
            self.keys_per_zone(),
        )?)
    }

    fn keys_per_zone(&self) -> usize {
        usize::try_from(self.max_keys)
            .unwrap_or(usize::MAX)
            .max(ZoneMemory::MIN_KEYS_PER_ZONE)
    }

    /// The app's two zones: `document` (every path under
    /// [`DOCUMENT_PATH_PREFIX`]) and `confirm` (a POST to a document's
    /// [`CONFIRM_PATH_SUFFIX`]), both per client IP.
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

    /// The layer `frontend` serves behind: [`frontend_layer`] over `segment`
    /// (the instance's shared memory, see [`zone_memory`](Self::zone_memory);
    /// this process's own when `None`), or a layer without zones when the
    /// section disables limiting, so the service type is the same either way.
    /// Call it inside the tokio runtime.
    pub fn layer<W>(
        &self,
        redis: &RedisSection,
        segment: Option<Arc<W>>,
    ) -> Result<RateLimitLayer, BuildError>
    where
        W: AsRef<[AtomicU64]> + Send + Sync + 'static,
    {
        let memory = segment.map(|words| self.zone_memory(words)).transpose()?;
        match frontend_layer(redis, self, memory)? {
            Some(layer) => Ok(layer),
            None => Ok(RateLimitLayer::new(Limiter::builder().build()?)),
        }
    }
}

/// Builds the app's limiter: Redis-backed when `redis.enabled`, in memory
/// otherwise (in `memory` when given: the instance's shared segment, see
/// [`RateLimitSection::zone_memory`]; else this process's own); `None` when
/// the section disables limiting. Call it inside the tokio runtime (the
/// Redis client starts connecting in the background; it does not wait for
/// Redis, so a Redis outage never stops start-up).
pub fn frontend_limiter(
    redis: &RedisSection,
    section: &RateLimitSection,
    memory: Option<ZoneMemory>,
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
    memory: Option<ZoneMemory>,
) -> Result<Option<RateLimitLayer>, BuildError> {
    Ok(frontend_limiter(redis, section, memory)?
        .map(|limiter| RateLimitLayer::new(limiter).with_settings(section.response_settings())))
}

#[cfg(test)]
mod tests {
    //! A property test of the section's variables (docs/reliability.md,
    //! "Fuzzing and property tests"; the parsers themselves are tested in
    //! wharf-ratelimit).

    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};
    use wharf_config::{EnvMap, Loader};

    use super::RateLimitSection;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Config {
        ratelimit: RateLimitSection,
    }

    fn any_text() -> impl Strategy<Value = String> {
        prop_oneof![
            ".{0,24}",
            "[ ]{0,1}[+-]?[0-9]{0,12}[ ]{0,1}(r/s|r/m|r/h|/s|r/S|r|)[ ]{0,1}",
            (0u64..100_000_000).prop_map(|n| format!("{n}r/s")),
            (0u64..100_000_000).prop_map(|n| format!("{n}r/m")),
        ]
    }

    fn var_value() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "true",
                "false",
                "10r/s",
                "30r/m",
                "0r/s",
                "1000001r/s",
                "0",
                "1",
                "5",
                "128",
                "129",
                "429",
                "503",
                "404",
                "open",
                "closed",
                "local",
                "forwarded",
                "x-forwarded-for",
                "10.0.0.0/8, ::1",
                "10.0.0.0/33",
                "",
                "wharf:rl",
                "{tag}",
                "65535",
                "99999999999",
            ])
            .prop_map(str::to_owned),
            any_text(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The section loads exactly when every set variable's parser accepts
        /// its value (no parser accepts what its field cannot hold), and a loaded
        /// section always builds its client-IP resolver.
        #[test]
        fn the_section_loads_exactly_when_every_parser_accepts(values in prop::collection::vec(proptest::option::of(var_value()), 18)) {
            let vars = RateLimitSection::vars("ratelimit");
            let pairs: Vec<(String, String)> = vars
                .iter()
                .zip(&values)
                .filter_map(|(var, value)| value.clone().map(|v| (var.name().to_owned(), v)))
                .collect();
            let rejected: Vec<&str> = vars
                .iter()
                .filter(|var| pairs.iter().any(|(n, v)| n == var.name() && !v.is_empty() && var.parse(v).is_err()))
                .map(wharf_config::Var::name)
                .collect();
            let loaded = Loader::new(vars.clone())
                .env(EnvMap::from_pairs(pairs))
                .dotenv(None)
                .load::<Config>();
            match loaded {
                Ok(loaded) => {
                    prop_assert!(rejected.is_empty(), "loaded although {rejected:?} were rejected");
                    prop_assert!(loaded.config.ratelimit.client_ip().is_ok());
                }
                Err(err) => {
                    let named: Vec<&str> = err.problems.iter().map(|p| p.variable.as_str()).collect();
                    prop_assert_eq!(&named, &rejected, "{}", err);
                }
            }
        }
    }
}
