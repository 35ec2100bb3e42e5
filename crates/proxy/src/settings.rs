//! [`ProxySettings`]: how requests are passed upstream (nginx's `proxy_*`).

use std::time::Duration;

use crate::forwarded::TrustedProxies;

/// How requests are passed upstream. `Default` gives the documented defaults
/// (nginx's, with the seeds' body limit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// Time to establish a TCP connection to a server (`proxy_connect_timeout`).
    /// Default 60 s.
    pub connect_timeout: Duration,
    /// Time to transmit the request to the server (`proxy_send_timeout`);
    /// added to the read timeout for the wait on the response head.
    /// Default 60 s.
    pub send_timeout: Duration,
    /// Time to wait for the response head after sending, and the longest
    /// pause between two reads of the response body (`proxy_read_timeout`).
    /// Default 60 s.
    pub read_timeout: Duration,
    /// Read the whole request body before contacting an upstream
    /// (`proxy_request_buffering on`), so a slow client never holds an upstream
    /// connection and a retry can resend the body. Default on.
    pub buffer_request_body: bool,
    /// Largest request body (`client_max_body_size`): `413` beyond it.
    /// Default 10 MiB.
    pub max_body_bytes: usize,
    /// Longest pause between two reads of the client's body while buffering
    /// (`client_body_timeout`): `408` past it. Default 60 s.
    pub client_body_timeout: Duration,
    /// Servers tried per request (`proxy_next_upstream_tries`); 0 tries every
    /// server once. Default 0.
    pub next_upstream_tries: usize,
    /// How long after a request first went upstream a retry may still start
    /// (`proxy_next_upstream_timeout`); zero is no limit. Default 0.
    pub next_upstream_timeout: Duration,
    /// Peers whose `X-Forwarded-For`/`-Proto`/`-Host` are believed
    /// (`set_real_ip_from`). Default none.
    pub trusted_proxies: TrustedProxies,
    /// Idle upstream connections are closed after this (a sweep runs every
    /// this long, so at the latest after twice it). Default 60 s.
    pub pool_idle_timeout: Duration,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            read_timeout: Duration::from_secs(60),
            buffer_request_body: true,
            max_body_bytes: 10 * 1024 * 1024,
            client_body_timeout: Duration::from_secs(60),
            next_upstream_tries: 0,
            next_upstream_timeout: Duration::ZERO,
            trusted_proxies: TrustedProxies::default(),
            pool_idle_timeout: Duration::from_secs(60),
        }
    }
}
