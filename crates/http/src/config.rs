//! [`ServerConfig`]: every limit and timeout the server enforces, with defaults.

use std::time::Duration;

/// Limits and timeouts for [`Server`](crate::Server). `Default` gives the
/// documented defaults, which follow the gunicorn + nginx deployment wharf
/// replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Time a client has to send a complete request head, counted from the
    /// connection's start (first request) or from the first byte of a later
    /// request. On expiry an HTTP/1 client that sent part of a request gets
    /// `408` and the connection is closed; a silent one is just closed.
    /// Default 10 s.
    pub header_read_timeout: Duration,
    /// An idle keep-alive connection (no request in flight, nothing sent) is
    /// closed after this long; HTTP/2 gets a GOAWAY. Default 90 s.
    pub keepalive_timeout: Duration,
    /// A request whose response head is not ready in this long is answered
    /// `504`. Default 30 s (`HTTP_SERVE_TIMEOUT_SECONDS`).
    pub request_timeout: Duration,
    /// On shutdown, in-flight requests get this long to finish before their
    /// connections are closed. Default 30 s.
    pub graceful_timeout: Duration,
    /// Largest HTTP/1 request head (request line and headers) and HTTP/2
    /// header list; beyond it the answer is `431` (or `414` for a long URI).
    /// Heads (HTTP/2: header lists) up to twice this (at least 8 KiB over it)
    /// are still read whole and answered through the middleware, security
    /// headers included; a larger one gets hyper's own bare `431`.
    /// At least 8192. Default 16 KiB.
    pub max_header_bytes: usize,
    /// Largest request body: `413` when `Content-Length` says more, before the
    /// body is read; a body streamed past it fails to read. Default 10 MiB.
    pub max_body_bytes: usize,
    /// Open connections per process. At the cap the server stops accepting
    /// (new connections wait in the kernel's backlog) rather than failing
    /// them. Default 1000.
    pub max_connections: usize,
    /// Longest HTTP/1 request line (method, target, version); a longer one is
    /// answered `414 URI Too Long`. Default 8 KiB (nginx's
    /// `large_client_header_buffers` size).
    pub max_request_line_bytes: usize,
    /// Concurrent streams per HTTP/2 connection. Default 100.
    pub http2_max_concurrent_streams: u32,
    /// `Strict-Transport-Security: max-age=…` on every response when set.
    /// Default off (the TLS terminator in front sets it).
    pub hsts_max_age: Option<Duration>,
    /// Adds `; includeSubDomains` to the HSTS header (when `hsts_max_age`
    /// is set). Default false.
    pub hsts_include_subdomains: bool,
    /// Write one JSON access-log line per request (tracing target
    /// `wharf_http::access`). Default true.
    pub access_log: bool,
    /// Resolve each request's real client behind trusted proxies once, here,
    /// and put it in the request as [`ClientAddr`](crate::ClientAddr): the
    /// access log (`client`), wharf-proxy and wharf-ratelimit then all read
    /// that one answer. Default `None` (the peer is the client).
    pub client_addr: Option<crate::ClientAddrResolver>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(90),
            request_timeout: Duration::from_secs(30),
            graceful_timeout: Duration::from_secs(30),
            max_header_bytes: 16 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            max_connections: 1000,
            max_request_line_bytes: 8 * 1024,
            http2_max_concurrent_streams: 100,
            hsts_max_age: None,
            hsts_include_subdomains: false,
            access_log: true,
            client_addr: None,
        }
    }
}

/// hyper's HTTP/1 read buffer cannot be smaller than this.
pub(crate) const MIN_HEADER_BYTES: usize = 8192;
