//! The configuration turned into something that serves: virtual hosts,
//! locations, upstream proxies; validated with line numbers. A `Runtime` is
//! immutable; a reload builds a new one and swaps it in for new connections.
//!
//! Kept whole although over 600 lines: it is one translation, a checked
//! configuration into a `Runtime`, and `build` and its helpers (zones, Redis,
//! listeners, certificates, locations) each turn one section and name its
//! mistakes' lines the same way.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use toml::Spanned;
use tower_http::services::ServeDir;
use wharf_proxy::{
    Balance, HealthCheck, IpNet, Proxy, ProxySettings, RetryBudget, TrustedProxies, Upstream,
    UpstreamConfig, UpstreamServer,
};
use wharf_tls::CertificatePair;

use crate::acme::{AcmeOrder, Challenge};
use crate::config::{BalanceName, ConfigError, EdgeConfig, LocationSection, RedisSection, Source};

/// What a location does.
pub(crate) enum Action {
    Proxy(Proxy),
    Static {
        dir: ServeDir,
        expires: Option<Duration>,
        immutable: bool,
    },
    Return {
        status: StatusCode,
        body: String,
        location: Option<HeaderValue>,
    },
}

pub(crate) struct Location {
    pub(crate) prefix: String,
    pub(crate) action: Action,
}

pub(crate) struct VirtualHost {
    pub(crate) names: Vec<String>,
    /// Longest prefix first.
    pub(crate) locations: Vec<Location>,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
}

/// One configuration generation.
pub(crate) struct Runtime {
    pub(crate) vhosts: Vec<VirtualHost>,
    pub(crate) default_vhost: usize,
    pub(crate) proxies: Vec<Proxy>,
    /// Headers on every response: HSTS (TLS only) and the security headers.
    pub(crate) hsts: Option<HeaderValue>,
    pub(crate) security: Vec<(HeaderName, HeaderValue)>,
    pub(crate) limit_conn: usize,
    pub(crate) generation: u64,
    /// `limit_req` zones, when any are configured.
    pub(crate) limit_req: Option<wharf_ratelimit::RateLimitLayer>,
    /// `[acme] storage`, when a server obtains its certificate by ACME:
    /// HTTP-01 answers are read from it.
    pub(crate) acme_storage: Option<PathBuf>,
    /// The names ACME certificates are ordered for (lower case): only their
    /// `/.well-known/acme-challenge/` requests are answered from storage.
    pub(crate) acme_names: Vec<String>,
}

impl Runtime {
    /// The virtual host for a `Host` (port stripped, case-insensitive):
    /// exact names, then `*.suffix` wildcards, then the default.
    pub(crate) fn vhost_index(&self, host: Option<&str>) -> usize {
        let Some(host) = host else {
            return self.default_vhost;
        };
        // Names are stored lower-case; the host is compared without case
        // and without a lower-cased copy (no allocation per request).
        let host = strip_port(host).as_bytes();
        let exact = self.vhosts.iter().position(|v| {
            v.names
                .iter()
                .any(|n| n.as_bytes().eq_ignore_ascii_case(host))
        });
        let wildcard = || {
            self.vhosts.iter().position(|v| {
                v.names.iter().any(|n| {
                    n.strip_prefix("*.").is_some_and(|suffix| {
                        host.len() > suffix.len() + 1
                            && host[host.len() - suffix.len()..]
                                .eq_ignore_ascii_case(suffix.as_bytes())
                            && host[host.len() - suffix.len() - 1] == b'.'
                    })
                })
            })
        };
        exact.or_else(wildcard).unwrap_or(self.default_vhost)
    }
}

pub(crate) fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |i| &host[..=i]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

/// The current generation, swapped on reload.
pub(crate) struct Current {
    runtime: RwLock<Arc<Runtime>>,
    pub(crate) reloads_ok: AtomicU64,
    pub(crate) reloads_failed: AtomicU64,
    pub(crate) connections_open: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
}

impl Current {
    pub(crate) fn new(runtime: Runtime) -> Self {
        Self {
            runtime: RwLock::new(Arc::new(runtime)),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
        }
    }

    pub(crate) fn get(&self) -> Arc<Runtime> {
        match self.runtime.read() {
            Ok(r) => Arc::clone(&r),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub(crate) fn set(&self, runtime: Runtime) {
        match self.runtime.write() {
            Ok(mut r) => *r = Arc::new(runtime),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(runtime),
        }
    }
}

/// The largest `[[listen]] backlog` (the kernel caps it at
/// `net.core.somaxconn` anyway).
const MAX_BACKLOG: u32 = 65_535;

/// A listener to bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenPlan {
    pub(crate) addr: SocketAddr,
    pub(crate) tls: bool,
    pub(crate) redirect_https_port: Option<u16>,
    pub(crate) proxy_protocol: bool,
    /// The accept queue asked for (`backlog`).
    pub(crate) backlog: u32,
}

/// Everything a configuration yields.
pub(crate) struct Built {
    pub(crate) runtime: Runtime,
    pub(crate) listeners: Vec<ListenPlan>,
    pub(crate) certificates: Vec<CertificatePair>,
    /// `[[server]] acme` certificates, obtained and renewed while serving.
    pub(crate) acme: Vec<AcmeOrder>,
    pub(crate) admin: Option<SocketAddr>,
    pub(crate) trusted: TrustedProxies,
}

fn header_pair(name: &str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_bytes(name.as_bytes()).ok()?,
        HeaderValue::from_str(value).ok()?,
    ))
}

impl Runtime {
    /// Starts connecting the `[redis]` of the zones, once this process
    /// serves (a checked configuration never connects): the first requests
    /// then find the connection made rather than wait for it in their budget.
    pub(crate) fn start_redis(&self) {
        if let Some(redis) = self.limit_req.as_ref().and_then(|l| l.limiter().redis()) {
            redis.start();
        }
    }
}

/// The shared-memory segment (declared by the master) that holds every
/// `[[limit_req]]` zone of the instance.
pub(crate) const ZONE_SEGMENT: &str = "ratelimit";
/// Zones the zone memory holds: the configured ones and, after reloads that
/// changed some, their predecessors until reclaimed.
pub(crate) const MAX_ZONES: usize = 32;

/// Where this process's zones count: in a worker, the instance's shared
/// segment (the master's); else this process's own memory. Made once and
/// kept across configuration reloads, so an unchanged zone keeps its counts.
static ZONE_MEMORY: RwLock<Option<wharf_ratelimit::ZoneMemory>> = RwLock::new(None);

/// Bytes of the zone segment a master declares.
pub(crate) fn zone_memory_bytes() -> usize {
    wharf_ratelimit::ZoneMemory::bytes_for(MAX_ZONES, wharf_ratelimit::DEFAULT_MAX_KEYS)
}

fn zone_memory() -> Result<wharf_ratelimit::ZoneMemory, wharf_ratelimit::ZoneMemoryError> {
    let mut memory = ZONE_MEMORY
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(memory) = memory.as_ref() {
        return Ok(memory.clone());
    }
    let keys = wharf_ratelimit::DEFAULT_MAX_KEYS;
    let made = match wharf_supervisor::Supervisor::inherited_shared_memory(ZONE_SEGMENT) {
        Some(segment) => wharf_ratelimit::ZoneMemory::new(segment, MAX_ZONES, keys)?,
        None => wharf_ratelimit::ZoneMemory::private(MAX_ZONES, keys)?,
    };
    *memory = Some(made.clone());
    Ok(made)
}

/// The `[[limit_req]]` zones as one limiter, counting the client address the
/// trusted proxies (`set_real_ip_from`) report, in the instance's zone memory.
fn limit_req(
    config: &EdgeConfig,
    source: &Source,
    trusted: &[IpNet],
    redis: Option<wharf_ratelimit::RedisStore>,
) -> Result<Option<wharf_ratelimit::RateLimitLayer>, ConfigError> {
    if config.limit_req.is_empty() {
        return Ok(None);
    }
    if config.limit_req.len() > MAX_ZONES {
        return Err(source.error(None, format!("limit_req: at most {MAX_ZONES} zones")));
    }
    let memory = zone_memory().map_err(|e| source.error(None, format!("limit_req: {e}")))?;
    let client_ip = wharf_ratelimit::ClientIp::new().trust_all(trusted.iter().copied());
    let mut builder = wharf_ratelimit::Limiter::builder()
        .client_ip(client_ip)
        .memory(memory);
    if let Some(redis) = redis {
        builder = builder.redis(redis);
    }
    let mut names = HashSet::new();
    for zone in &config.limit_req {
        if !names.insert(zone.zone.clone()) {
            return Err(source.error(
                None,
                format!("limit_req: zone {:?} is defined twice", zone.zone),
            ));
        }
        builder = builder.zone(zone.to_zone());
    }
    let limiter = builder
        .build()
        .map_err(|e| source.error(None, format!("limit_req: {e}")))?;
    let status = StatusCode::from_u16(config.limit_req_status)
        .ok()
        .filter(|s| s.is_client_error() || s.is_server_error())
        .ok_or_else(|| {
            source.error(
                None,
                format!(
                    "limit_req_status: {} is not a 4xx or 5xx status",
                    config.limit_req_status
                ),
            )
        })?;
    Ok(Some(
        wharf_ratelimit::RateLimitLayer::new(limiter).with_settings(
            wharf_ratelimit::ResponseSettings {
                status,
                ..wharf_ratelimit::ResponseSettings::default()
            },
        ),
    ))
}

/// The options `[redis]` describes, with `url`.
pub(crate) fn redis_options(section: &RedisSection, url: &str) -> wharf_ratelimit::RedisOptions {
    let mut options = wharf_ratelimit::RedisOptions::new(url.to_owned());
    options.cluster = section.cluster;
    options.timeout = section.timeout.max(Duration::from_millis(1));
    options.breaker_failures = section.breaker_failures;
    options.max_batch = section.max_batch.max(1);
    options.breaker_cooldown = section.breaker_cooldown;
    options.key_prefix.clone_from(&section.key_prefix);
    options
}

/// `[tls] session_ticket_key = "redis"` needs `[redis]`.
fn check_ticket_key(config: &EdgeConfig, source: &Source) -> Result<(), ConfigError> {
    match &config.tls.session_ticket_key {
        Some(key)
            if key.get_ref() == crate::config::TICKET_KEY_IN_REDIS && config.redis.is_none() =>
        {
            Err(source.error(
                Some(key.span()),
                "session_ticket_key = \"redis\" needs [redis] (or WHARF_EDGE_REDIS_URL)",
            ))
        }
        _ => Ok(()),
    }
}

/// `[redis]` as a store that connects on its first check: a configuration
/// checked (by `check-config`, or by the master before a HUP) never connects.
fn redis_store(
    config: &EdgeConfig,
    source: &Source,
) -> Result<Option<wharf_ratelimit::RedisStore>, ConfigError> {
    let Some(section) = &config.redis else {
        return Ok(None);
    };
    let Some(url) = &section.url else {
        return Err(source.error(
            None,
            "redis: url is not set (set it, or WHARF_EDGE_REDIS_URL)".to_owned(),
        ));
    };
    wharf_ratelimit::RedisStore::lazy(&redis_options(section, url.get_ref()))
        .map(Some)
        // The URL itself may hold a password: name the variable, not the value.
        .map_err(|e| {
            if matches!(e, wharf_ratelimit::BuildError::KeyPrefix(_)) {
                return source.error(None, format!("redis: key_prefix: {e}"));
            }
            let span = Some(url.span()).filter(|span| !span.is_empty());
            source.error(span, format!("redis: url: {e}"))
        })
}

fn parse_addr(
    source: &Source,
    text: &toml::Spanned<String>,
    what: &str,
) -> Result<SocketAddr, ConfigError> {
    let value = text.get_ref();
    value
        .parse::<SocketAddr>()
        .or_else(|_| {
            // `localhost:7001` and friends: resolve once, at load.
            std::net::ToSocketAddrs::to_socket_addrs(value.as_str())
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or(())
        })
        .map_err(|()| {
            source.error(
                Some(text.span()),
                format!("invalid {what} {value:?}: expected host:port"),
            )
        })
}

/// Builds and validates; `generation` numbers it for logs.
#[allow(clippy::too_many_lines)] // one pass over the file, in file order
pub(crate) fn build(
    config: &EdgeConfig,
    source: &Source,
    generation: u64,
) -> Result<Built, ConfigError> {
    let err = |span: Option<std::ops::Range<usize>>, msg: String| source.error(span, msg);

    let mut trusted = Vec::new();
    for net in &config.http.set_real_ip_from {
        trusted.push(
            net.get_ref()
                .parse::<IpNet>()
                .map_err(|e| err(Some(net.span()), format!("set_real_ip_from: {e}")))?,
        );
    }
    let trusted_nets = trusted;
    let trusted = TrustedProxies::new(trusted_nets.clone());

    let mut listeners = Vec::new();
    for l in &config.listen {
        let addr = parse_addr(source, &l.address, "listen address")?;
        if l.ssl && l.redirect_to_https {
            return Err(err(
                Some(l.address.span()),
                "a listener cannot both terminate TLS and redirect to HTTPS".to_owned(),
            ));
        }
        let backlog = match &l.backlog {
            None => wharf_http::BACKLOG,
            Some(n) if (1..=MAX_BACKLOG).contains(n.get_ref()) => *n.get_ref(),
            Some(n) => {
                return Err(err(
                    Some(n.span()),
                    format!("backlog {}: expected 1 to {MAX_BACKLOG}", n.get_ref()),
                ))
            }
        };
        listeners.push(ListenPlan {
            addr,
            tls: l.ssl,
            redirect_https_port: l.redirect_to_https.then_some(l.https_port),
            proxy_protocol: l.proxy_protocol,
            backlog,
        });
    }
    if listeners.is_empty() {
        return Err(err(None, "no listener: add a [[listen]] block".to_owned()));
    }
    let admin = if config.admin.enabled {
        Some(config.admin.address.parse::<SocketAddr>().map_err(|_| {
            err(
                None,
                format!("admin.address {:?}: expected ip:port", config.admin.address),
            )
        })?)
    } else {
        None
    };

    let settings = ProxySettings {
        connect_timeout: config.proxy.connect_timeout,
        send_timeout: config.proxy.send_timeout,
        read_timeout: config.proxy.read_timeout,
        buffer_request_body: config.proxy.request_buffering,
        max_body_bytes: usize::try_from(config.http.client_max_body_size).unwrap_or(usize::MAX),
        client_body_timeout: config.http.client_body_timeout,
        next_upstream_tries: config.proxy.next_upstream_tries,
        next_upstream_timeout: config.proxy.next_upstream_timeout,
        trusted_proxies: trusted.clone(),
        ..ProxySettings::default()
    };

    let mut upstreams: Vec<(String, Proxy)> = Vec::new();
    for u in &config.upstreams {
        let name = u.name.get_ref().clone();
        if upstreams.iter().any(|(n, _)| *n == name) {
            return Err(err(
                Some(u.name.span()),
                format!("upstream {name:?} is defined twice"),
            ));
        }
        let mut servers = Vec::new();
        for s in &u.servers {
            let addr = parse_addr(source, &s.address, "upstream server address")?;
            servers.push(UpstreamServer {
                addr,
                weight: s.weight,
                backup: s.backup,
                max_fails: s.max_fails,
                fail_timeout: s.fail_timeout,
            });
        }
        if servers.iter().all(|s| s.backup || s.weight == 0) {
            return Err(err(
                Some(u.name.span()),
                format!("upstream {name:?} has no usable (non-backup, weight > 0) server"),
            ));
        }
        let percent = |value: &Spanned<u8>, key: &str| {
            if *value.get_ref() > 100 {
                Err(err(
                    Some(value.span()),
                    format!(
                        "upstream {name:?}: {key} is a percentage, 0 to 100, not {}",
                        value.get_ref()
                    ),
                ))
            } else {
                Ok(*value.get_ref())
            }
        };
        let panic_threshold = percent(&u.panic_threshold, "panic_threshold")?;
        let budget = &u.retry_budget;
        let retry_budget = if budget.enabled {
            Some(RetryBudget {
                percent: percent(&budget.percent, "retry_budget.percent")?,
                min_concurrent: budget.min_concurrent,
            })
        } else {
            None
        };
        let upstream = Upstream::new(UpstreamConfig {
            name: name.clone(),
            panic_threshold,
            retry_budget,
            servers,
            balance: match u.balance {
                BalanceName::RoundRobin => Balance::RoundRobin,
                BalanceName::LeastConn => Balance::LeastConn,
            },
            keepalive: u.keepalive,
            health_check: u.health_check.as_ref().map(|h| HealthCheck {
                path: h.path.clone(),
                interval: h.interval,
                timeout: h.timeout,
                rise: h.rise.max(1),
                fall: h.fall.max(1),
            }),
        })
        .ok_or_else(|| {
            err(
                Some(u.name.span()),
                format!("upstream {name:?} has no server"),
            )
        })?;
        upstreams.push((name, Proxy::new(upstream, settings.clone())));
    }

    let mut proxies: Vec<Proxy> = upstreams.iter().map(|(_, p)| p.clone()).collect();
    let mut certificates = Vec::new();
    let mut acme = Vec::new();
    let mut vhosts = Vec::new();
    let mut default_vhost = None;
    let mut seen_names = HashSet::new();
    for (index, server) in config.servers.iter().enumerate() {
        for name in &server.server_name {
            if !seen_names.insert(name.to_ascii_lowercase()) {
                return Err(err(
                    None,
                    format!("server_name {name:?} is in two server blocks"),
                ));
            }
        }
        if server.default_server {
            if default_vhost.is_some() {
                return Err(err(None, "two server blocks are default_server".to_owned()));
            }
            default_vhost = Some(index);
        }
        certificates.extend(server_certificates(server, source)?);
        if let Some(order) = acme_order(config, server, &listeners, source)? {
            certificates.push(order.pair(server.default_server));
            acme.push(order);
        }
        let mut locations = Vec::new();
        for location in &server.locations {
            locations.push(build_location(
                location,
                source,
                &upstreams,
                &settings,
                &mut proxies,
            )?);
        }
        locations.sort_by_key(|l| std::cmp::Reverse(l.prefix.len()));
        let mut headers = Vec::new();
        for (name, value) in &server.add_header {
            headers.push(header_pair(name, value).ok_or_else(|| {
                err(
                    None,
                    format!("add_header {name:?} = {value:?}: not a valid header"),
                )
            })?);
        }
        vhosts.push(VirtualHost {
            names: server
                .server_name
                .iter()
                .map(|n| n.to_ascii_lowercase())
                .collect(),
            locations,
            headers,
        });
    }
    if vhosts.is_empty() {
        return Err(err(
            None,
            "no server block: add a [[server]] with a [[server.location]]".to_owned(),
        ));
    }
    if listeners.iter().any(|l| l.tls) && certificates.is_empty() && source.path.is_some() {
        return Err(err(
            None,
            "a TLS listener needs ssl_certificate and ssl_certificate_key in a server block"
                .to_owned(),
        ));
    }

    let http = &config.http;
    let mut security = Vec::new();
    for (name, value) in [
        ("x-frame-options", http.x_frame_options.as_str()),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", http.referrer_policy.as_str()),
    ] {
        if !value.is_empty() {
            security.push(
                header_pair(name, value)
                    .ok_or_else(|| err(None, format!("{name}: invalid value {value:?}")))?,
            );
        }
    }
    let hsts = if http.hsts.is_empty() {
        None
    } else {
        Some(
            HeaderValue::from_str(&http.hsts)
                .map_err(|_| err(None, format!("hsts: invalid value {:?}", http.hsts)))?,
        )
    };
    // `[redis]` is checked whenever present (zones or not), once: the
    // zones take the store it gives.
    let redis = redis_store(config, source)?;
    check_ticket_key(config, source)?;
    let limit_req = limit_req(config, source, &trusted_nets, redis)?;
    Ok(Built {
        runtime: Runtime {
            limit_req,
            vhosts,
            default_vhost: default_vhost.unwrap_or(0),
            proxies,
            hsts,
            security,
            limit_conn: http.limit_conn,
            generation,
            acme_storage: (!acme.is_empty()).then(|| PathBuf::from(config.acme.storage.get_ref())),
            acme_names: acme.iter().flat_map(|o| o.names.clone()).collect(),
        },
        listeners,
        certificates,
        acme,
        admin,
        trusted,
    })
}

/// A `[[server]] acme` checked against the rest of the file.
fn acme_order(
    config: &EdgeConfig,
    server: &crate::config::ServerSection,
    listeners: &[ListenPlan],
    source: &Source,
) -> Result<Option<AcmeOrder>, ConfigError> {
    let Some(spanned) = &server.acme else {
        return Ok(None);
    };
    let at = |message: String| source.error(Some(spanned.span()), message);
    let section = spanned.get_ref();
    if server.ssl_certificate.is_some() {
        return Err(at(
            "acme and ssl_certificate name two sources for one certificate: keep one".to_owned(),
        ));
    }
    if server.server_name.is_empty() {
        return Err(at(
            "acme needs server_name: the names to order a certificate for".to_owned(),
        ));
    }
    if let Some(name) = server.server_name.iter().find(|n| {
        n.contains('*')
            || n.starts_with('~')
            || !n.contains('.')
            || rustls_pki_types::DnsName::try_from(n.as_str()).is_err()
    }) {
        return Err(at(format!(
            "acme cannot order {name:?}: only full DNS names (a wildcard needs the dns-01 challenge, which edge does not answer)"
        )));
    }
    let Some(challenge) = Challenge::parse(&section.challenge) else {
        return Err(at(format!(
            "acme challenge {:?}: expected \"tls-alpn-01\" or \"http-01\"",
            section.challenge
        )));
    };
    if !section.terms_of_service_agreed {
        return Err(at(
            "acme needs terms_of_service_agreed = true: ordering accepts the CA's terms of service (see the directory's meta.termsOfService)".to_owned(),
        ));
    }
    if !section.directory.starts_with("https://") {
        return Err(at(format!(
            "acme directory {:?}: expected an https:// URL",
            section.directory
        )));
    }
    if config.acme.retry < std::time::Duration::from_secs(1) {
        return Err(source.error(
            None,
            format!(
                "[acme] retry = {:?}: at least 1s (a CA counts failed orders against its limits)",
                config.acme.retry
            ),
        ));
    }
    let answered = match challenge {
        Challenge::TlsAlpn01 => listeners.iter().any(|l| l.tls),
        Challenge::Http01 => listeners.iter().any(|l| !l.tls && !l.proxy_protocol),
    };
    if !answered {
        return Err(at(format!(
            "acme challenge {:?} needs a {} [[listen]] for the CA to reach",
            section.challenge,
            match challenge {
                Challenge::TlsAlpn01 => "TLS (ssl = true)",
                Challenge::Http01 => "plain (no ssl, no proxy_protocol)",
            }
        )));
    }
    Ok(Some(AcmeOrder {
        names: server
            .server_name
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect(),
        directory: section.directory.clone(),
        email: section.email.clone(),
        challenge,
        ca_root: section.ca_root.as_ref().map(PathBuf::from),
        storage: PathBuf::from(config.acme.storage.get_ref()),
        retry: config.acme.retry,
    }))
}

fn server_certificates(
    server: &crate::config::ServerSection,
    source: &Source,
) -> Result<Vec<CertificatePair>, ConfigError> {
    let (Some(certs), keys) = (&server.ssl_certificate, &server.ssl_certificate_key) else {
        if let Some(keys) = &server.ssl_certificate_key {
            return Err(source.error(
                Some(keys.span()),
                "ssl_certificate_key without ssl_certificate",
            ));
        }
        return Ok(Vec::new());
    };
    let Some(keys) = keys else {
        return Err(source.error(
            Some(certs.span()),
            "ssl_certificate without ssl_certificate_key",
        ));
    };
    let cert_files = certs.get_ref().to_vec();
    let key_files = keys.get_ref().to_vec();
    if cert_files.len() != key_files.len() {
        return Err(source.error(
            Some(keys.span()),
            format!(
                "{} certificate(s) but {} key(s)",
                cert_files.len(),
                key_files.len()
            ),
        ));
    }
    let staples = server
        .ssl_stapling_file
        .as_ref()
        .map(|s| s.get_ref().to_vec())
        .unwrap_or_default();
    if !staples.is_empty() && staples.len() != cert_files.len() {
        return Err(source.error(
            server.ssl_stapling_file.as_ref().map(toml::Spanned::span),
            "ssl_stapling_file needs one file per certificate",
        ));
    }
    Ok(cert_files
        .into_iter()
        .zip(key_files)
        .enumerate()
        .map(|(i, (cert, key))| CertificatePair {
            cert: PathBuf::from(cert),
            key: PathBuf::from(key),
            ocsp: staples.get(i).map(PathBuf::from),
            default: server.default_server,
            awaited: None,
        })
        .collect())
}

fn build_location(
    location: &LocationSection,
    source: &Source,
    upstreams: &[(String, Proxy)],
    settings: &ProxySettings,
    proxies: &mut Vec<Proxy>,
) -> Result<Location, ConfigError> {
    let prefix = location.path.get_ref().clone();
    if !prefix.starts_with('/') {
        return Err(source.error(
            Some(location.path.span()),
            format!("location path {prefix:?} must start with /"),
        ));
    }
    let actions = usize::from(location.proxy_pass.is_some())
        + usize::from(location.alias.is_some())
        + usize::from(location.fixed.is_some());
    if actions != 1 {
        return Err(source.error(
            Some(location.path.span()),
            format!("location {prefix:?} needs exactly one of proxy_pass, alias, return"),
        ));
    }
    let action = if let Some(target) = &location.proxy_pass {
        let name = target.get_ref();
        if let Some((_, proxy)) = upstreams.iter().find(|(n, _)| n == name) {
            Action::Proxy(proxy.clone())
        } else if let Some(direct) = name.strip_prefix("http://") {
            let spanned =
                toml::Spanned::new(target.span(), direct.trim_end_matches('/').to_owned());
            let addr = parse_addr(source, &spanned, "proxy_pass address")?;
            let upstream = Upstream::new(UpstreamConfig::new(
                name.clone(),
                vec![UpstreamServer::new(addr)],
            ))
            .ok_or_else(|| source.error(Some(target.span()), "no server"))?;
            let proxy = Proxy::new(upstream, settings.clone());
            proxies.push(proxy.clone());
            Action::Proxy(proxy)
        } else {
            return Err(source.error(
                Some(target.span()),
                format!("proxy_pass {name:?}: no upstream of that name (and not http://host:port)"),
            ));
        }
    } else if let Some(alias) = &location.alias {
        let dir = PathBuf::from(alias.get_ref());
        if !dir.is_dir() {
            return Err(source.error(
                Some(alias.span()),
                format!("alias {}: not a directory", dir.display()),
            ));
        }
        Action::Static {
            dir: ServeDir::new(dir).append_index_html_on_directories(true),
            expires: location.expires,
            immutable: location.immutable,
        }
    } else if let Some(fixed) = &location.fixed {
        let status = StatusCode::from_u16(fixed.status).map_err(|_| {
            source.error(
                Some(location.path.span()),
                format!("return status {} is not an HTTP status", fixed.status),
            )
        })?;
        let target = match &fixed.location {
            Some(l) => Some(HeaderValue::from_str(l).map_err(|_| {
                source.error(
                    Some(location.path.span()),
                    "return location is not a valid header value",
                )
            })?),
            None => None,
        };
        Action::Return {
            status,
            body: fixed.body.clone(),
            location: target,
        }
    } else {
        return Err(source.error(Some(location.path.span()), "location has no action"));
    };
    Ok(Location { prefix, action })
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod redis_tests;
