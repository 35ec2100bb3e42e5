//! One JSON access-log line per request, written when the response body is
//! finished (or abandoned), so `bytes` and `duration_ms` are what was sent.
//!
//! `request_id` is the `X-Request-Id` kept or made by the request-id layer;
//! `trace_id` is the trace of the request: the one a tracing layer (such as
//! wharf-telemetry's server span) put in the response extensions as an
//! `opentelemetry::trace::TraceId`, else the one of a well-formed incoming
//! `traceparent`.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_http::request_id::RequestId;

use crate::body::{BoxError, ResponseBody};
use crate::conn::ConnectInfo;

/// The tracing target access-log lines are written to.
pub const ACCESS_LOG_TARGET: &str = "wharf_http::access";

/// Query parameters whose values never reach a log.
pub const REDACTED_QUERY_PARAMS: &[&str] = &["key"];

/// A path's query string with the values of [`REDACTED_QUERY_PARAMS`] replaced.
pub fn redact_query(query: &str) -> String {
    RedactedQuery(query).to_string()
}

/// A query string that displays with the values of
/// [`REDACTED_QUERY_PARAMS`] replaced (what [`redact_query`] returns),
/// written straight into the log line.
#[derive(Debug, Clone, Copy)]
pub struct RedactedQuery<'a>(pub &'a str);

impl std::fmt::Display for RedactedQuery<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, pair) in self.0.split('&').enumerate() {
            if i > 0 {
                f.write_str("&")?;
            }
            let name = pair.split_once('=').map_or(pair, |(n, _)| n);
            // Compare the decoded name: `k%65y` is `key` to the application.
            if REDACTED_QUERY_PARAMS
                .iter()
                .any(|p| decodes_to_ignore_ascii_case(name, p))
            {
                f.write_str(name)?;
                f.write_str("=[redacted]")?;
            } else {
                f.write_str(pair)?;
            }
        }
        Ok(())
    }
}

/// Whether `text`, `%XX`- and `+`-decoded, is `ascii` ignoring ASCII case
/// (without decoding into a new string).
fn decodes_to_ignore_ascii_case(text: &str, ascii: &str) -> bool {
    let mut decoded = PercentDecoded {
        bytes: text.as_bytes(),
        at: 0,
    };
    let mut want = ascii.bytes();
    loop {
        match (decoded.next(), want.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(&b) => {}
            _ => return false,
        }
    }
}

/// The bytes of `%XX`- and `+`-decoded text (an invalid escape stays as is).
struct PercentDecoded<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Iterator for PercentDecoded<'_> {
    type Item = u8;

    fn next(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.at)?;
        self.at += 1;
        match byte {
            b'%' if self.at + 1 < self.bytes.len() => {
                let hex = std::str::from_utf8(&self.bytes[self.at..self.at + 2]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(value) => {
                        self.at += 2;
                        Some(value)
                    }
                    None => Some(b'%'),
                }
            }
            b'+' => Some(b' '),
            other => Some(other),
        }
    }
}

/// One finished exchange, as a [`RequestObserver`] sees it (the same facts
/// as the access-log line).
#[derive(Debug, Clone, Copy)]
pub struct Exchange<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request path, without the query.
    pub path: &'a str,
    /// The `Host` header (or HTTP/2 `:authority`), when present.
    pub host: Option<&'a str>,
    /// The response status.
    pub status: StatusCode,
    /// From the request to the end (or abandonment) of the response body.
    pub duration: std::time::Duration,
    /// Response body bytes sent.
    pub bytes: u64,
}

/// Called once per finished request: the seam for request metrics.
pub type RequestObserver = std::sync::Arc<dyn Fn(&Exchange<'_>) + Send + Sync>;

/// Adds access logging; see the [module docs](self).
#[derive(Clone)]
pub struct AccessLogLayer {
    enabled: bool,
    observer: Option<RequestObserver>,
}

impl std::fmt::Debug for AccessLogLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLogLayer")
            .field("enabled", &self.enabled)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl AccessLogLayer {
    /// A layer that logs when `enabled` (and passes requests through untouched
    /// otherwise, so the pipeline's type does not depend on configuration).
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            observer: None,
        }
    }

    /// Also reports every finished request to `observer` (whether or not
    /// lines are logged).
    #[must_use]
    pub fn with_observer(mut self, observer: Option<RequestObserver>) -> Self {
        self.observer = observer;
        self
    }
}

impl Default for AccessLogLayer {
    fn default() -> Self {
        Self::new(true)
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AccessLog {
            inner,
            enabled: self.enabled,
            observer: self.observer.clone(),
        }
    }
}

/// The service made by [`AccessLogLayer`].
#[derive(Clone)]
pub struct AccessLog<S> {
    inner: S,
    enabled: bool,
    observer: Option<RequestObserver>,
}

/// What is known of a request when its response starts.
struct Record {
    start: Instant,
    method: Method,
    /// The request URI (a reference-counted clone: no copy of the path).
    uri: http::Uri,
    version: Version,
    // The fields only the log line uses: header values are
    // reference-counted clones and addresses copies, formatted straight into
    // the line (no per-request strings).
    request_id: Option<HeaderValue>,
    peer: Option<std::net::SocketAddr>,
    /// The real client behind trusted proxies, when the server resolved it.
    client: Option<std::net::IpAddr>,
    user_agent: Option<HeaderValue>,
    /// The `Host` header (a reference-counted clone), kept only when the URI
    /// has no authority (HTTP/2 `:authority` and absolute-form have one).
    host_header: Option<http::HeaderValue>,
    trace_id: Option<TraceRef>,
    status: StatusCode,
    log: bool,
    observer: Option<RequestObserver>,
}

impl Record {
    fn host(&self) -> Option<&str> {
        self.uri
            .authority()
            .map(http::uri::Authority::as_str)
            .or_else(|| self.host_header.as_ref()?.to_str().ok())
    }
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("method", &self.method)
            .field("path", &self.uri.path())
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl<S, B> Service<Request<B>> for AccessLog<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody>>,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = AccessLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // Skip the record (a handful of allocations) when nothing would use it.
        let log =
            self.enabled && tracing::enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO);
        if !log && self.observer.is_none() {
            return AccessLogFuture {
                inner: self.inner.call(request),
                record: None,
            };
        }
        // Fields only the log line uses are left out when only the observer
        // (metrics) needs the record: it is on every request.
        let record = Record {
            start: Instant::now(),
            method: request.method().clone(),
            uri: request.uri().clone(),
            version: request.version(),
            request_id: log
                .then(|| {
                    request
                        .extensions()
                        .get::<RequestId>()
                        .map(|id| id.header_value().clone())
                })
                .flatten(),
            peer: log
                .then(|| {
                    request
                        .extensions()
                        .get::<ConnectInfo>()
                        .map(|info| info.peer)
                })
                .flatten(),
            client: log
                .then(|| {
                    request
                        .extensions()
                        .get::<crate::ClientAddr>()
                        .map(|client| client.0)
                })
                .flatten(),
            user_agent: log
                .then(|| request.headers().get(header::USER_AGENT).cloned())
                .flatten(),
            host_header: if request.uri().authority().is_some() {
                None
            } else {
                request.headers().get(header::HOST).cloned()
            },
            trace_id: log
                .then(|| {
                    let header = request.headers().get("traceparent")?;
                    // Checked now, sliced when the line is written.
                    trace_id(header.to_str().ok()?)?;
                    Some(TraceRef::Header(header.clone()))
                })
                .flatten(),
            status: StatusCode::OK,
            log,
            observer: self.observer.clone(),
        };
        AccessLogFuture {
            inner: self.inner.call(request),
            record: Some(record),
        }
    }
}

pin_project! {
    /// Future of [`AccessLog`].
    pub struct AccessLogFuture<F> {
        #[pin]
        inner: F,
        record: Option<Record>,
    }
}

impl<F, E> Future for AccessLogFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody>, E>>,
{
    type Output = Result<Response<ResponseBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        Poll::Ready(result.map(|response| {
            let Some(mut record) = this.record.take() else {
                return response;
            };
            record.status = response.status();
            // With tracing on, the server span's trace id (which is the
            // incoming one, or a new trace's) wins over the header's.
            if record.log {
                if let Some(id) = response.extensions().get::<opentelemetry::trace::TraceId>() {
                    record.trace_id = Some(TraceRef::Span(*id));
                }
            }
            response.map(|inner| {
                crate::body::boxed(LoggedBody {
                    inner,
                    bytes: 0,
                    record: Some(record),
                })
            })
        }))
    }
}

pin_project! {
    struct LoggedBody {
        #[pin]
        inner: ResponseBody,
        bytes: u64,
        record: Option<Record>,
    }

    impl PinnedDrop for LoggedBody {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(record) = this.record.take() {
                log(&record, *this.bytes);
            }
        }
    }
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(Ok(frame)) = &frame {
            if let Some(data) = frame.data_ref() {
                *this.bytes += data.remaining() as u64;
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), when
/// it is well formed, so logs can be joined with traces.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(version, 2)
        && hex(trace, 32)
        && hex(span, 16)
        && hex(flags, 2)
        && trace.bytes().any(|b| b != b'0'))
    .then_some(trace)
}

fn log(record: &Record, bytes: u64) {
    let elapsed = record.start.elapsed();
    if let Some(observer) = &record.observer {
        observer(&Exchange {
            method: &record.method,
            path: record.uri.path(),
            host: record.host(),
            status: record.status,
            duration: elapsed,
            bytes,
        });
    }
    if !record.log {
        return;
    }
    let duration_ms = elapsed.as_secs_f64() * 1000.0;
    let (mut peer, mut client) = (AddrText::new(), AddrText::new());
    // Displayed, as before: text logs show them unquoted.
    let peer = record
        .peer
        .map(|addr| tracing::field::display(peer.socket(addr)));
    let client = record
        .client
        .map(|ip| tracing::field::display(client.ip(ip)));
    tracing::info!(
        target: ACCESS_LOG_TARGET,
        method = %record.method,
        path = %record.uri.path(),
        query = record.uri.query().map(RedactedQuery).map(tracing::field::display),
        protocol = ?record.version,
        status = record.status.as_u16(),
        bytes,
        duration_ms = (duration_ms * 1000.0).round() / 1000.0,
        request_id = record.request_id.as_ref().and_then(|id| id.to_str().ok()),
        trace_id = record.trace_id.as_ref().map(tracing::field::display),
        peer,
        client,
        user_agent = record
            .user_agent
            .as_ref()
            .map(|ua| tracing::field::display(Lossy(ua.as_bytes()))),
        pid = process_id(),
        "Served request"
    );
}

/// A request's trace id: the server span's, or the incoming `traceparent`'s
/// (a header already checked with [`trace_id`]).
#[derive(Debug)]
enum TraceRef {
    Span(opentelemetry::trace::TraceId),
    Header(HeaderValue),
}

impl std::fmt::Display for TraceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Span(id) => id.fmt(f),
            Self::Header(value) => {
                let id = value.to_str().ok().and_then(trace_id).unwrap_or_default();
                f.write_str(id)
            }
        }
    }
}

/// Bytes as text, invalid UTF-8 replaced by U+FFFD (`String::from_utf8_lossy`
/// without the string).
struct Lossy<'a>(&'a [u8]);

impl std::fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_str("\u{FFFD}")?;
            }
        }
        Ok(())
    }
}

/// An address written into a buffer on the stack, as `Display` writes it,
/// IPv4 without `fmt` (whose per-octet integer formatting and padding
/// checks were 1 % of the CPU of a `/_status` load with the access log on).
struct AddrText {
    buf: [u8; 64],
    len: usize,
}

impl AddrText {
    fn new() -> Self {
        Self {
            buf: [0; 64],
            len: 0,
        }
    }

    fn socket(&mut self, addr: std::net::SocketAddr) -> &str {
        match addr {
            std::net::SocketAddr::V4(v4) => {
                self.v4(*v4.ip());
                self.push(b":");
                self.number(v4.port());
            }
            std::net::SocketAddr::V6(v6) => {
                let _ = std::fmt::Write::write_fmt(self, format_args!("{v6}"));
            }
        }
        self.text()
    }

    fn ip(&mut self, ip: std::net::IpAddr) -> &str {
        match ip {
            std::net::IpAddr::V4(v4) => self.v4(v4),
            std::net::IpAddr::V6(v6) => {
                let _ = std::fmt::Write::write_fmt(self, format_args!("{v6}"));
            }
        }
        self.text()
    }

    fn v4(&mut self, ip: std::net::Ipv4Addr) {
        for (i, octet) in ip.octets().into_iter().enumerate() {
            if i > 0 {
                self.push(b".");
            }
            self.number(u16::from(octet));
        }
    }

    fn number(&mut self, mut n: u16) {
        let mut digits = [0_u8; 5];
        let mut at = digits.len();
        loop {
            at -= 1;
            // `n % 10` is below 10: the cast cannot truncate.
            #[allow(clippy::cast_possible_truncation)]
            let d = (n % 10) as u8;
            digits[at] = b'0' + d;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }

    fn push(&mut self, bytes: &[u8]) {
        // The longest address (an IPv6 with scope id and port) fits in 64
        // bytes; anything longer is cut rather than overrun.
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn text(&self) -> &str {
        // Only ASCII was pushed (digits, '.', ':', and Display's IPv6 text).
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for AddrText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// This process's id (gunicorn's `%(p)s`): which worker served a request.
/// Read once: workers are started by exec, never forked from a running
/// process, so it cannot change under us.
fn process_id() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

#[cfg(test)]
mod tests {
    use super::{redact_query, AddrText};

    #[test]
    fn trace_ids_come_only_from_well_formed_traceparents() {
        use super::trace_id;
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace_id("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id("00-xyz-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id("garbage"), None);
    }

    #[test]
    fn user_agents_are_written_as_from_utf8_lossy_writes_them() {
        for bytes in [
            &b"curl/8.5.0"[..],
            b"caf\xc3\xa9",
            b"bad \xff\xfe tail",
            b"cut \xe2\x82",
            b"",
        ] {
            assert_eq!(
                super::Lossy(bytes).to_string(),
                String::from_utf8_lossy(bytes),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn the_key_parameter_is_redacted_and_the_rest_kept() {
        assert_eq!(redact_query("key=s3cret&x=1"), "key=[redacted]&x=1");
        assert_eq!(redact_query("a=b&KEY=s3cret"), "a=b&KEY=[redacted]");
        assert_eq!(redact_query("keyboard=1"), "keyboard=1");
        assert_eq!(redact_query("key"), "key=[redacted]");
        assert_eq!(redact_query("k%65y=SECRET&x=1"), "k%65y=[redacted]&x=1");
        assert_eq!(redact_query("%4B%45%59=SECRET"), "%4B%45%59=[redacted]");
        assert_eq!(redact_query("a=%"), "a=%");
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for addr in [
            "0.0.0.0:0",
            "127.0.0.1:7001",
            "255.255.255.255:65535",
            "10.20.3.4:80",
            "[::1]:8443",
            "[2001:db8::1%7]:65535",
            "[::ffff:192.0.2.1]:1",
        ] {
            let addr: std::net::SocketAddr = addr.parse().unwrap();
            assert_eq!(AddrText::new().socket(addr), addr.to_string());
            assert_eq!(AddrText::new().ip(addr.ip()), addr.ip().to_string());
        }
    }
}
