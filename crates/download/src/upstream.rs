//! The HTTP client for the two upstream APIs: hyper-util's pooled legacy client
//! over plain TCP or rustls, with connect and request timeouts, and the trace
//! headers a request carries onward.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The largest upstream response body read (the APIs answer small JSON).
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Why an upstream call failed before giving a status.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// No response (or body) within the request timeout, or no connection
    /// within the connect timeout.
    #[error("upstream timed out")]
    Timeout,
    /// The connection failed or broke.
    #[error("upstream unreachable: {0}")]
    Unreachable(String),
    /// The response was not what the API documents (not JSON, too large).
    #[error("unexpected upstream response: {0}")]
    Invalid(String),
}

impl UpstreamError {
    /// Whether the call timed out (answered 504 rather than 500).
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout)
    }
}

/// A TCP or TLS stream.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// A pooled connection as hyper sees it.
pub(crate) struct Conn(TokioIo<Stream>);

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

/// Connects over TCP, then TLS for `https` URIs.
#[derive(Clone)]
pub(crate) struct Connector {
    http: HttpConnector,
    tls: TlsConnector,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for Connector {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let https = uri.scheme_str() == Some("https");
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_owned();
            let tcp = http.call(uri).await?.into_inner();
            if https {
                let name = rustls_pki_types::ServerName::try_from(host)?;
                let stream = tls.connect(name, tcp).await?;
                Ok(Conn(TokioIo::new(Stream::Tls(Box::new(stream)))))
            } else {
                Ok(Conn(TokioIo::new(Stream::Plain(tcp))))
            }
        })
    }
}

/// Trust roots: the system bundle (Debian's ca-certificates), or `SSL_CERT_FILE`.
fn root_store() -> rustls::RootCertStore {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    let candidates = [
        std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from),
        Some("/etc/ssl/certs/ca-certificates.crt".into()),
        Some("/etc/pki/tls/certs/ca-bundle.crt".into()),
        Some("/etc/ssl/cert.pem".into()),
    ];
    for path in candidates.into_iter().flatten() {
        if !Path::new(&path).is_file() {
            continue;
        }
        if let Ok(certs) = rustls_pki_types::CertificateDer::pem_file_iter(&path) {
            for cert in certs.flatten() {
                let _ = roots.add(cert);
            }
        }
        if !roots.is_empty() {
            break;
        }
    }
    if roots.is_empty() {
        tracing::warn!("No CA certificates found; https upstream calls will fail");
    }
    roots
}

/// The pooled client both APIs use.
#[derive(Clone)]
pub(crate) struct Upstream {
    client: Arc<Client<Connector, Full<Bytes>>>,
    request_timeout: Duration,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// An upstream answer: its status and body (and, from the local document
/// API, the headers the real API would send with it).
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
    pub(crate) headers: http::HeaderMap,
}

impl Answer {
    /// The body as JSON (`null` when it is not JSON).
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl Upstream {
    pub(crate) fn new(
        connect_timeout: Duration,
        request_timeout: Duration,
        keepalive: usize,
    ) -> Result<Self, UpstreamError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(root_store()).with_no_client_auth());
        let tls =
            tls.map_err(|error| UpstreamError::Invalid(format!("TLS configuration: {error}")))?;
        let connector = Connector {
            http,
            tls: TlsConnector::from(Arc::new(tls)),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(keepalive)
            .build(connector);
        Ok(Self {
            client: Arc::new(client),
            request_timeout,
        })
    }

    /// Sends `request` and reads the whole (small) response within the request timeout.
    ///
    /// With tracing on, the call is a client span, child of the request being
    /// served, and its `traceparent` replaces the one [`TraceHeaders`] set.
    pub(crate) async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Answer, UpstreamError> {
        let span = wharf_telemetry::trace::ClientSpan::start(request.method(), request.uri());
        span.inject(request.headers_mut());
        let result = self.exchange(request).await;
        match &result {
            Ok(answer) => span.set_status(answer.status),
            Err(UpstreamError::Timeout) => span.set_error("timeout"),
            Err(UpstreamError::Unreachable(_)) => span.set_error("unreachable"),
            Err(UpstreamError::Invalid(_)) => span.set_error("invalid_response"),
        }
        result
    }

    async fn exchange(&self, request: Request<Full<Bytes>>) -> Result<Answer, UpstreamError> {
        let call = async {
            let response = self.client.request(request).await.map_err(|error| {
                let timed_out = wharf_http::is_timeout(&error);
                if timed_out {
                    UpstreamError::Timeout
                } else {
                    UpstreamError::Unreachable(format!("{error:#}: {}", source_chain(&error)))
                }
            })?;
            let status = response.status();
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|error| UpstreamError::Invalid(error.to_string()))?
                .to_bytes();
            Ok(Answer {
                status,
                body,
                headers: http::HeaderMap::new(),
            })
        };
        tokio::time::timeout(self.request_timeout, call)
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }
}

fn source_chain(error: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut current = error.source();
    while let Some(err) = current {
        parts.push(err.to_string());
        current = err.source();
    }
    parts.join(": ")
}

/// A request's place in Notify's B3 traces, as notifications-utils'
/// `request_helper` (the version DDF runs) works it out: the trace id is the
/// first of `X-B3-TraceId`, `X-Amz-Cf-Id` (`CloudFront`) and `X-Amzn-Trace-Id`
/// (the load balancer) that is set, else a new 128-bit one; the span id is
/// `X-B3-SpanId`, else `self-` and a new 64-bit one; the parent is
/// `X-B3-ParentSpanId`. Every response carries the trace and span ids, and
/// every call to the APIs carries the trace id, a new span id and this span
/// as its parent, whether or not any id came in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestTrace {
    pub(crate) trace_id: String,
    pub(crate) span_id: String,
}

impl RequestTrace {
    /// The trace of a request that arrived with `headers`; the random
    /// generator's error when an id must be made and cannot be.
    pub(crate) fn of(headers: &HeaderMap) -> Result<Self, crate::random::Error> {
        let first = |names: &[&str]| {
            names.iter().find_map(|name| {
                headers
                    .get(*name)
                    .and_then(|v| v.to_str().ok())
                    .filter(|v| !v.is_empty())
                    .map(str::to_owned)
            })
        };
        // Beyond notifications-utils: a W3C trace id that came in names the
        // trace when no B3 or AWS one did, so both kinds of id agree.
        let w3c = first(&["traceparent"]).and_then(|tp| {
            let id = tp.split('-').nth(1)?;
            (is_hex(id, 32) && id != "00000000000000000000000000000000")
                .then(|| id.to_ascii_lowercase())
        });
        let trace_id = match first(&["x-b3-traceid", "x-amz-cf-id", "x-amzn-trace-id"]).or(w3c) {
            Some(id) => id,
            None => crate::random::hex::<16>()?,
        };
        let span_id = match first(&["x-b3-spanid"]) {
            Some(id) => id,
            None => format!("self-{}", crate::random::hex::<8>()?),
        };
        Ok(Self { trace_id, span_id })
    }

    /// `X-B3-TraceId` and `X-B3-SpanId` on a response, unless it has them.
    pub(crate) fn stamp(&self, headers: &mut HeaderMap) {
        for (name, value) in [
            ("x-b3-traceid", &self.trace_id),
            ("x-b3-spanid", &self.span_id),
        ] {
            if headers.contains_key(name) {
                continue;
            }
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
    }
}

/// The trace headers a request carries to the APIs: the `X-B3-*` set as
/// notifications-utils sends it (see [`RequestTrace`]) and W3C `traceparent`
/// in the same trace where the B3 id is one. With tracing on,
/// [`Upstream::send`] replaces `traceparent` with its client span's.
#[derive(Debug, Clone, Default)]
pub(crate) struct TraceHeaders {
    /// The headers every call carries alike.
    fixed: Vec<(HeaderName, HeaderValue)>,
    /// W3C trace id and flags, for each call's `traceparent`.
    trace_id: String,
    flags: String,
    /// Each call is a new span (as notifications-utils makes one per call):
    /// this random base, plus the number of calls made before.
    span_base: u64,
    calls: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| b.is_ascii_hexdigit())
}

impl TraceHeaders {
    /// Onward headers for a request that arrived with `incoming`, whose B3
    /// trace is `trace`; the random generator's error when it cannot make the
    /// new ids.
    pub(crate) fn onward(
        incoming: &HeaderMap,
        trace: &RequestTrace,
    ) -> Result<Self, crate::random::Error> {
        let get = |name: &str| {
            incoming
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let traceparent = get("traceparent").and_then(|tp| {
            let parts: Vec<&str> = tp.split('-').collect();
            (parts.len() >= 4
                && is_hex(parts[0], 2)
                && is_hex(parts[1], 32)
                && parts[1] != "00000000000000000000000000000000"
                && is_hex(parts[2], 16)
                && is_hex(parts[3], 2))
            .then(|| (parts[1].to_ascii_lowercase(), parts[3].to_ascii_lowercase()))
        });
        let b3_trace = Some(trace.trace_id.as_str());
        let trace_id = traceparent
            .as_ref()
            .map(|(id, _)| id.clone())
            .or_else(|| {
                b3_trace.and_then(|id| {
                    if is_hex(id, 32) {
                        Some(id.to_ascii_lowercase())
                    } else if is_hex(id, 16) {
                        Some(format!("{:0>32}", id.to_ascii_lowercase()))
                    } else {
                        None
                    }
                })
            })
            .map_or_else(crate::random::hex::<16>, Ok)?;
        let flags = traceparent.map_or_else(|| "01".to_owned(), |(_, flags)| flags);
        let span_base = u64::from_be_bytes(crate::random::bytes::<8>()?);
        let mut headers = Vec::new();
        let mut push = |name: &'static str, value: &str| {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.push((HeaderName::from_static(name), value));
            }
        };
        push("x-b3-traceid", &trace.trace_id);
        push("x-b3-parentspanid", &trace.span_id);
        if let Some(sampled) = get("x-b3-sampled") {
            push("x-b3-sampled", sampled);
        }
        if let Some(state) = get("tracestate") {
            push("tracestate", state);
        }
        Ok(Self {
            fixed: headers,
            trace_id,
            flags,
            span_base,
            calls: std::sync::Arc::default(),
        })
    }

    /// The headers of the next call: the fixed ones, and this call's span
    /// as `X-B3-SpanId` and `traceparent`'s parent id.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for (name, value) in &self.fixed {
            headers.insert(name.clone(), value.clone());
        }
        let n = self
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let span = format!("{:016x}", self.span_base.wrapping_add(n));
        let traceparent = format!("00-{}-{span}-{}", self.trace_id, self.flags);
        for (name, value) in [("x-b3-spanid", span), ("traceparent", traceparent)] {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b3_headers_are_propagated_with_a_new_span() {
        let mut incoming = HeaderMap::new();
        incoming.insert(
            "x-b3-traceid",
            HeaderValue::from_static("463ac35c9f6413ad48485a3953bb6124"),
        );
        incoming.insert("x-b3-spanid", HeaderValue::from_static("a2fb4a1d1a96d312"));
        let mut out = HeaderMap::new();
        let trace = RequestTrace::of(&incoming).unwrap();
        TraceHeaders::onward(&incoming, &trace)
            .unwrap()
            .apply(&mut out);
        assert_eq!(out["x-b3-traceid"], "463ac35c9f6413ad48485a3953bb6124");
        assert_eq!(out["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        let span = out["x-b3-spanid"].to_str().unwrap();
        assert!(is_hex(span, 16) && span != "a2fb4a1d1a96d312");
        assert_eq!(
            out["traceparent"].to_str().unwrap(),
            format!("00-463ac35c9f6413ad48485a3953bb6124-{span}-01")
        );
    }

    #[test]
    fn traceparent_keeps_its_trace_and_flags() {
        let mut incoming = HeaderMap::new();
        incoming.insert(
            "traceparent",
            HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
        );
        let mut out = HeaderMap::new();
        let trace = RequestTrace::of(&incoming).unwrap();
        TraceHeaders::onward(&incoming, &trace)
            .unwrap()
            .apply(&mut out);
        let tp = out["traceparent"].to_str().unwrap();
        assert!(tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
        assert!(tp.ends_with("-00"));
        assert!(!tp.contains("b7ad6b7169203331"));
        // B3 goes onward too (notifications-utils always sends it), in the
        // same trace; this request made its own span id, the new call's parent.
        assert_eq!(out["x-b3-traceid"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(out["x-b3-parentspanid"], trace.span_id.as_str());
        assert!(trace.span_id.starts_with("self-"));
    }

    #[test]
    fn no_generator_no_trace_ids() {
        let error =
            crate::random::tests::failing(|| RequestTrace::of(&HeaderMap::new())).unwrap_err();
        assert_eq!(error, crate::random::tests::eio());
        let trace = RequestTrace {
            trace_id: "t".to_owned(),
            span_id: "s".to_owned(),
        };
        let error =
            crate::random::tests::failing(|| TraceHeaders::onward(&HeaderMap::new(), &trace))
                .unwrap_err();
        assert_eq!(error, crate::random::tests::eio());
    }

    #[test]
    fn a_new_trace_starts_without_incoming_headers() {
        let trace = RequestTrace::of(&HeaderMap::new()).unwrap();
        assert!(is_hex(&trace.trace_id, 32), "{trace:?}");
        let span = trace.span_id.strip_prefix("self-").unwrap();
        assert!(is_hex(span, 16), "{trace:?}");
        let mut out = HeaderMap::new();
        TraceHeaders::onward(&HeaderMap::new(), &trace)
            .unwrap()
            .apply(&mut out);
        let tp = out["traceparent"].to_str().unwrap();
        assert_eq!(tp.len(), 55);
        assert!(tp.starts_with(&format!("00-{}-", trace.trace_id)));
        assert_eq!(out["x-b3-traceid"], trace.trace_id.as_str());
        assert_eq!(out["x-b3-parentspanid"], trace.span_id.as_str());
        let onward_span = out["x-b3-spanid"].to_str().unwrap();
        assert!(is_hex(onward_span, 16) && onward_span != span);
        // The response carries this request's ids, unless it set its own.
        let mut response = HeaderMap::new();
        trace.stamp(&mut response);
        assert_eq!(response["x-b3-traceid"], trace.trace_id.as_str());
        assert_eq!(response["x-b3-spanid"], trace.span_id.as_str());
        let mut own = HeaderMap::new();
        own.insert("x-b3-spanid", HeaderValue::from_static("mine"));
        trace.stamp(&mut own);
        assert_eq!(own["x-b3-spanid"], "mine");
    }

    /// Behind `CloudFront` or a load balancer, their request id is the trace id
    /// (notifications-utils' `NOTIFY_TRACE_ID_ALT_HEADERS`), in that order;
    /// an `X-B3-TraceId` wins over both.
    #[test]
    fn aws_request_ids_name_the_trace_when_no_b3_one_came() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, HeaderValue::from_static(value));
            }
            map
        };
        let cf = "TyE-_AQMm9wVqY2nX0JfQ0m7mcB5oHa3UZF4WJiCDSbNdEp0Ik1mUw==";
        let alb = "Root=1-67891233-abcdef012345678912345678";
        let of =
            |pairs: &[(&'static str, &'static str)]| RequestTrace::of(&headers(pairs)).unwrap();
        assert_eq!(of(&[("x-amzn-trace-id", alb)]).trace_id, alb);
        assert_eq!(
            of(&[("x-amz-cf-id", cf), ("x-amzn-trace-id", alb)]).trace_id,
            cf
        );
        assert_eq!(
            of(&[("x-b3-traceid", "abc"), ("x-amz-cf-id", cf)]).trace_id,
            "abc"
        );
        // Onward, the AWS id is the B3 trace id as it is; W3C gets its own.
        let incoming = headers(&[("x-amz-cf-id", cf)]);
        let trace = RequestTrace::of(&incoming).unwrap();
        let mut out = HeaderMap::new();
        TraceHeaders::onward(&incoming, &trace)
            .unwrap()
            .apply(&mut out);
        assert_eq!(out["x-b3-traceid"], cf);
        assert_eq!(out["traceparent"].to_str().unwrap().len(), 55);
    }
}
