//! Configuration parsing: [`ZoneConfig`] for `edge`'s `limit_req` zones,
//! and the wharf-config parsers of rates and trusted-proxy lists that an
//! app's own section (such as wharf-download's `RateLimitSection`) uses.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use wharf_config::Parser;

use crate::key::{IpNet, KeySource};
use crate::limiter::{FailureMode, StoreKind, Zone};
use crate::rate::Rate;

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
