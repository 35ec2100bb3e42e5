//! [`Proxy`]: the reverse-proxy tower service.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::{BodyExt, Empty, Full};
use wharf_http::{body as wbody, BoxError, ConnectInfo, ResponseBody, TlsInfo};
use wharf_telemetry::trace::ClientSpan;

use crate::body::{ActiveGuard, UpstreamBody};
use crate::errors::{error_chain, error_page};
use crate::forwarded::{remove_hop_by_hop, set_forwarded};
use crate::pool::{SendError, UpstreamRequestBody};
use crate::settings::ProxySettings;
use crate::upstream::{Counted, Upstream};

/// A reverse proxy to one upstream group, as a tower service. Cheap to clone;
/// clones share the connection pool and the servers' state.
///
/// Per request: forwarding headers are set (`Host` kept, `X-Forwarded-For`
/// appended, `X-Forwarded-Proto`/`-Host`, `X-Real-IP`), hop-by-hop headers
/// removed, the body buffered (by default), a server chosen, and the answer
/// streamed back. A connection error moves on to the next server for any
/// method; for idempotent methods so do timeouts, other errors and
/// 502/503/504 answers. A non-idempotent request is never sent twice.
/// Nothing left to try gives `502` (`504` after a timeout).
#[derive(Clone)]
pub struct Proxy {
    pub(crate) inner: Arc<ProxyInner>,
}

pub(crate) struct ProxyInner {
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) settings: ProxySettings,
    /// The idle-connection sweep runs (started by the first request, inside
    /// the runtime that serves it).
    sweeping: AtomicBool,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("upstream", &self.inner.upstream.name())
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// A proxy to `upstream`. Must be created inside a tokio runtime only if
    /// [`spawn_health_checks`](Self::spawn_health_checks) is called.
    pub fn new(upstream: Arc<Upstream>, settings: ProxySettings) -> Self {
        Self {
            inner: Arc::new(ProxyInner {
                upstream,
                settings,
                sweeping: AtomicBool::new(false),
            }),
        }
    }

    /// The upstream group (for its [`stats`](Upstream::stats)).
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.inner.upstream
    }

    /// Starts the group's active health checks, if it has any; they stop
    /// when every clone of this proxy is dropped. Needs a tokio runtime.
    pub fn spawn_health_checks(&self) -> Option<tokio::task::JoinHandle<()>> {
        let check = self.inner.upstream.health_check.clone()?;
        let weak = Arc::downgrade(&self.inner);
        Some(tokio::spawn(health_loop(weak, check)))
    }
}

impl<B> tower::Service<Request<B>> for Proxy
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        // Not boxed again when it already is (wharf-http's request body).
        let request = request.map(wharf_http::body::boxed);
        Box::pin(async move { Ok(inner.handle(request).await) })
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::PUT | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// The protocol a client asks to switch to (`Connection: upgrade` +
/// `Upgrade: …`), HTTP/1.1 only.
fn requested_upgrade<B>(request: &Request<B>) -> Option<HeaderValue> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let connection_upgrade = request
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !connection_upgrade {
        return None;
    }
    request.headers().get(header::UPGRADE).cloned()
}

enum RequestBody {
    Buffered(Bytes),
    Streaming(Option<UpstreamRequestBody>),
}

impl RequestBody {
    fn take(&mut self) -> Option<UpstreamRequestBody> {
        match self {
            Self::Buffered(bytes) => Some(
                Full::new(bytes.clone())
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            ),
            Self::Streaming(body) => body.take(),
        }
    }

    fn can_resend(&self) -> bool {
        matches!(self, Self::Buffered(_))
    }
}

/// Reads the whole body, within the limit and the per-read timeout.
async fn buffer_body(
    mut body: UpstreamRequestBody,
    settings: &ProxySettings,
) -> Result<Bytes, Response<ResponseBody>> {
    let mut buffered = BytesMut::new();
    loop {
        match tokio::time::timeout(settings.client_body_timeout, body.frame()).await {
            Err(_) => return Err(error_page(StatusCode::REQUEST_TIMEOUT)),
            Ok(None) => return Ok(buffered.freeze()),
            Ok(Some(Err(error))) => {
                if wharf_http::is_body_too_large(error.as_ref()) {
                    return Err(error_page(StatusCode::PAYLOAD_TOO_LARGE));
                }
                tracing::debug!(%error, "Client body could not be read");
                return Err(error_page(StatusCode::BAD_REQUEST));
            }
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if buffered.len() + data.len() > settings.max_body_bytes {
                        return Err(error_page(StatusCode::PAYLOAD_TOO_LARGE));
                    }
                    buffered.extend_from_slice(data);
                }
            }
        }
    }
}

/// Why the last attempt failed.
enum Failure {
    NoServer,
    Error,
    Timeout,
}

impl ProxyInner {
    async fn handle(
        self: Arc<Self>,
        mut request: Request<UpstreamRequestBody>,
    ) -> Response<ResponseBody> {
        if !self.sweeping.load(Ordering::Relaxed) && !self.sweeping.swap(true, Ordering::Relaxed) {
            tokio::spawn(sweep_loop(Arc::downgrade(&self)));
        }
        let settings = &self.settings;
        // A reverse proxy, not a forward one: CONNECT is refused (405, as
        // nginx does), never passed on, so no upstream is asked to tunnel.
        if request.method() == Method::CONNECT {
            return error_page(StatusCode::METHOD_NOT_ALLOWED);
        }
        if request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|len| len > settings.max_body_bytes as u64)
        {
            return error_page(StatusCode::PAYLOAD_TOO_LARGE);
        }
        let upgrade = requested_upgrade(&request);
        let client_upgrade = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();

        let peer = parts
            .extensions
            .get::<ConnectInfo>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |info| info.peer.ip());
        let scheme = if parts.extensions.get::<TlsInfo>().is_some() {
            "https"
        } else {
            "http"
        };
        let trusted = settings.trusted_proxies.contains(peer);
        // Resolved once per request where the server did (edge); else here,
        // the same way.
        let client_ip = parts
            .extensions
            .get::<wharf_http::ClientAddr>()
            .map_or_else(
                || settings.trusted_proxies.client_ip(peer, &parts.headers),
                |client| client.0,
            );
        let host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        remove_hop_by_hop(&mut parts.headers);
        set_forwarded(
            &mut parts.headers,
            peer,
            trusted,
            client_ip,
            scheme,
            host.as_ref(),
        );
        if let Some(host) = &host {
            parts.headers.insert(header::HOST, host.clone());
        }
        // A reference-counted clone of the client's target (no copy).
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));

        if let (Some(protocol), Some(client_upgrade)) = (upgrade, client_upgrade) {
            return crate::websocket::proxy_upgrade(
                &self.upstream,
                &self.settings,
                &parts,
                path.as_str(),
                protocol,
                client_upgrade,
            )
            .await;
        }

        let body = if body.is_end_stream() {
            // Nothing to read (a GET, say): no read, no timer.
            RequestBody::Buffered(Bytes::new())
        } else if settings.buffer_request_body {
            match buffer_body(body, settings).await {
                Ok(bytes) => RequestBody::Buffered(bytes),
                Err(response) => return response,
            }
        } else {
            RequestBody::Streaming(Some(body))
        };
        self.forward(&parts, &path, body).await
    }

    /// Sends the request to servers until one answers or none is left.
    async fn forward(
        &self,
        parts: &http::request::Parts,
        path: &http::uri::PathAndQuery,
        mut body: RequestBody,
    ) -> Response<ResponseBody> {
        let settings = &self.settings;
        let idempotent = is_idempotent(&parts.method);
        let upstream = &self.upstream;
        let max_tries = match settings.next_upstream_tries {
            0 => upstream.peers.len(),
            n => n,
        };
        let mut tried = Vec::with_capacity(2);
        let mut failure = Failure::NoServer;
        let mut last_response = None;
        let mut retried_reused = false;
        let _request = Counted::new(&upstream.in_flight);
        let started = tokio::time::Instant::now();
        while tried.len() < max_tries {
            let Some(index) = upstream.pick(&tried) else {
                break;
            };
            // A retry (to the next server) must fit the time and the budget.
            let retry = if tried.is_empty() {
                None
            } else {
                let Some(permit) = self.may_retry(started) else {
                    break;
                };
                Some(permit)
            };
            let Some(attempt_body) = body.take() else {
                break;
            };
            tried.push(index);
            let peer = &upstream.peers[index];
            let (result, guard) = self.attempt(index, parts, path, attempt_body).await;
            drop(retry);
            let retryable = idempotent && body.can_resend();
            match result {
                Ok(Ok(response)) => {
                    let status = response.status();
                    let gateway_error = matches!(
                        status,
                        StatusCode::BAD_GATEWAY
                            | StatusCode::SERVICE_UNAVAILABLE
                            | StatusCode::GATEWAY_TIMEOUT
                    );
                    if gateway_error {
                        peer.failed(&upstream.name);
                        if retryable && tried.len() < max_tries {
                            tracing::info!(upstream = %upstream.name, server = %peer.config.addr, status = status.as_u16(), "Upstream answered with a gateway error; trying the next server");
                            last_response = Some(self.respond(response, guard));
                            continue;
                        }
                    } else {
                        peer.succeeded();
                    }
                    return self.respond(response, guard);
                }
                Ok(Err(SendError::Request {
                    reused: true,
                    error,
                })) if retryable && !retried_reused => {
                    // A kept-alive connection the server closed as it was
                    // used: not the server's fault (nginx tries again too).
                    tracing::debug!(upstream = %upstream.name, server = %peer.config.addr, %error, "Reused upstream connection failed; trying a new one");
                    retried_reused = true;
                    tried.pop();
                    continue;
                }
                Ok(Err(error)) => {
                    peer.failed(&upstream.name);
                    // A connect timeout is a timeout (504, as nginx), not a refusal.
                    failure = if error.is_timeout() {
                        Failure::Timeout
                    } else {
                        Failure::Error
                    };
                    let connect = error.is_connect();
                    tracing::warn!(upstream = %upstream.name, server = %peer.config.addr, error = %error_chain(&error), "Upstream request failed");
                    if !(connect || retryable) {
                        break;
                    }
                }
                Err(_) => {
                    peer.failed(&upstream.name);
                    failure = Failure::Timeout;
                    tracing::warn!(upstream = %upstream.name, server = %peer.config.addr, timeout_s = self.attempt_timeout().as_secs_f64(), "Upstream timed out");
                    if !retryable {
                        break;
                    }
                }
            }
            last_response = None;
        }
        if let Some(response) = last_response {
            return response;
        }
        match failure {
            Failure::Timeout => error_page(StatusCode::GATEWAY_TIMEOUT),
            Failure::NoServer => {
                tracing::warn!(upstream = %upstream.name, "No live upstream server");
                error_page(StatusCode::BAD_GATEWAY)
            }
            Failure::Error => error_page(StatusCode::BAD_GATEWAY),
        }
    }

    /// Whether a retry may start now: before `next_upstream_timeout` has
    /// passed since `started`, and within the retry budget. The permit counts
    /// it in flight while it lives; refusals are counted and logged.
    fn may_retry(&self, started: tokio::time::Instant) -> Option<Counted<'_>> {
        let (settings, upstream) = (&self.settings, &self.upstream);
        let late = !settings.next_upstream_timeout.is_zero()
            && started.elapsed() >= settings.next_upstream_timeout;
        if late {
            upstream.count_retry(false);
            tracing::debug!(upstream = %upstream.name, timeout_s = settings.next_upstream_timeout.as_secs_f64(), "No retry: next_upstream_timeout has passed");
            return None;
        }
        if !upstream.retry_allowed() {
            tracing::debug!(upstream = %upstream.name, "No retry: the retry budget is spent (edge_upstream_retries_refused_total)");
            return None;
        }
        Some(Counted::new(&upstream.retries_in_flight))
    }

    /// The longest one attempt may take to get an answer's head.
    fn attempt_timeout(&self) -> Duration {
        let settings = &self.settings;
        settings.connect_timeout + settings.send_timeout + settings.read_timeout
    }

    /// One try on server `index`: its answer's head (or why none came), and
    /// the guard that counts it in flight and holds its connection.
    async fn attempt(
        &self,
        index: usize,
        parts: &http::request::Parts,
        path: &http::uri::PathAndQuery,
        body: UpstreamRequestBody,
    ) -> (
        Result<Result<Response<hyper::body::Incoming>, SendError>, tokio::time::error::Elapsed>,
        ActiveGuard,
    ) {
        let upstream = &self.upstream;
        let peer = &upstream.peers[index];
        peer.requests.fetch_add(1, Ordering::Relaxed);
        let mut request = Request::new(body);
        *request.method_mut() = parts.method.clone();
        // Origin form (`/path?query`): what an HTTP/1.1 server is sent.
        *request.uri_mut() = Uri::from(path.clone());
        *request.version_mut() = Version::HTTP_11;
        *request.headers_mut() = parts.headers.clone();
        // With tracing on: a client span per attempt, and its `traceparent`
        // replaces the client's (which is passed on as is when tracing is off).
        let span =
            ClientSpan::start_parts(&parts.method, "http", peer.authority.as_ref(), path.path());
        span.inject(request.headers_mut());
        let mut guard = ActiveGuard::new(upstream, index);
        let settings = &self.settings;
        let sent = crate::pool::send(
            &peer.pool,
            peer.config.addr,
            settings.connect_timeout,
            settings.pool_idle_timeout,
            request,
        );
        let result = match tokio::time::timeout(self.attempt_timeout(), sent).await {
            Ok(Ok((response, connection))) => {
                guard.hold(connection);
                span.set_status(response.status());
                Ok(Ok(response))
            }
            Ok(Err(error)) => {
                span.set_error("upstream_error");
                Ok(Err(error))
            }
            Err(elapsed) => {
                span.set_error("timeout");
                Err(elapsed)
            }
        };
        (result, guard)
    }

    fn respond(
        &self,
        response: Response<hyper::body::Incoming>,
        guard: ActiveGuard,
    ) -> Response<ResponseBody> {
        let (mut parts, body) = response.into_parts();
        remove_hop_by_hop(&mut parts.headers);
        let body = UpstreamBody::new(body, self.settings.read_timeout, guard);
        Response::from_parts(parts, wbody::boxed(body))
    }
}

async fn health_loop(weak: Weak<ProxyInner>, check: crate::upstream::HealthCheck) {
    loop {
        tokio::time::sleep(check.interval).await;
        let Some(inner) = weak.upgrade() else { return };
        let probes = (0..inner.upstream.peers.len()).map(|i| {
            let inner = Arc::clone(&inner);
            let check = check.clone();
            async move {
                let peer = &inner.upstream.peers[i];
                let ok = probe(&inner, peer.config.addr, &check).await;
                record_check(&inner.upstream, i, ok, &check);
            }
        });
        futures_util::future::join_all(probes).await;
    }
}

async fn probe(
    inner: &ProxyInner,
    addr: std::net::SocketAddr,
    check: &crate::upstream::HealthCheck,
) -> bool {
    let Ok(uri) = Uri::try_from(check.path.as_str()) else {
        return false;
    };
    let mut request = Request::new(
        Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *request.uri_mut() = uri;
    if let Ok(host) = HeaderValue::from_str(&addr.to_string()) {
        request.headers_mut().insert(header::HOST, host);
    }
    // A new connection per check, as nginx's checks: a pooled one could hide
    // a server that no longer accepts connections.
    let checked = async {
        let mut sender = crate::pool::connect(addr, inner.settings.connect_timeout)
            .await
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        Some(response.status().is_success() || response.status().is_redirection())
    };
    matches!(
        tokio::time::timeout(check.timeout, checked).await,
        Ok(Some(true))
    )
}

/// Every idle timeout, closes the pools' connections idle for longer (they
/// are also dropped when a request next meets them); ends with the proxy.
async fn sweep_loop(weak: Weak<ProxyInner>) {
    let Some(period) = weak.upgrade().map(|inner| inner.settings.pool_idle_timeout) else {
        return;
    };
    let period = period.max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = weak.upgrade() else { return };
        for peer in &inner.upstream.peers {
            peer.pool.sweep(inner.settings.pool_idle_timeout);
        }
    }
}

fn record_check(upstream: &Upstream, index: usize, ok: bool, check: &crate::upstream::HealthCheck) {
    let peer = &upstream.peers[index];
    if ok {
        peer.check_fails.store(0, Ordering::Relaxed);
        let passes = peer.check_passes.fetch_add(1, Ordering::Relaxed) + 1;
        if passes >= check.rise && !peer.healthy.swap(true, Ordering::Relaxed) {
            tracing::info!(upstream = %upstream.name, server = %peer.config.addr, "Health check passing; server back in");
        }
    } else {
        peer.check_passes.store(0, Ordering::Relaxed);
        let fails = peer.check_fails.fetch_add(1, Ordering::Relaxed) + 1;
        if fails >= check.fall && peer.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(upstream = %upstream.name, server = %peer.config.addr, path = %check.path, "Health check failing; server taken out");
        }
    }
}
