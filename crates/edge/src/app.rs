//! The request side of `edge`: routing to locations, static files, fixed
//! responses, headers on every response, the HTTPS redirect, the acceptor
//! that enforces `limit_conn` before the TLS handshake and pins a connection
//! to a configuration generation, and the admin routes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower::ServiceExt;
use wharf_http::{body, Accepted, Acceptor, Body, ConnectInfo, ResponseBody, TlsInfo};
use wharf_telemetry::metrics::{self, Family};

use crate::runtime::{strip_port, Action, Current, Location, Runtime};

/// The configuration generation a connection was accepted under.
#[derive(Clone)]
pub(crate) struct Snapshot(pub(crate) Arc<Runtime>);

/// Serves requests with the connection's configuration generation.
#[derive(Clone)]
pub(crate) struct EdgeApp {
    pub(crate) current: Arc<Current>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl tower::Service<Request<Body>> for EdgeApp {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<ResponseBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let runtime = snapshot(&self.current, request.extensions());
        if let Some(answer) = acme_answer(&runtime, &request) {
            return Box::pin(std::future::ready(Ok(answer)));
        }
        route(runtime, request)
    }
}

/// The configuration a request is served under: the one its connection was
/// accepted under, else the current one.
fn snapshot(current: &Current, extensions: &http::Extensions) -> Arc<Runtime> {
    extensions
        .get::<Snapshot>()
        .map_or_else(|| current.get(), |s| Arc::clone(&s.0))
}

/// The host a request names: `Host`, else the URI's authority (HTTP/2).
fn host_of<'a>(headers: &'a http::HeaderMap, uri: &'a http::Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(http::uri::Authority::as_str))
}

/// Applies the `limit_req` zones, then [`dispatch`].
fn route(
    runtime: Arc<Runtime>,
    request: Request<Body>,
) -> BoxFuture<Result<Response<ResponseBody>, Infallible>> {
    let Some(limit) = runtime.limit_req.clone() else {
        return dispatch(runtime, request);
    };
    let inner =
        tower::service_fn(move |request: Request<Body>| dispatch(Arc::clone(&runtime), request));
    let call = tower::ServiceExt::oneshot(tower::Layer::layer(&limit, inner), request);
    Box::pin(wharf_http::body::BoxedResponse::new(call))
}

/// The location of virtual host `vhost` that serves `path`.
fn find_location<'a>(runtime: &'a Runtime, vhost: usize, path: &str) -> Option<&'a Location> {
    runtime.vhosts[vhost]
        .locations
        .iter()
        .find(|l| path.starts_with(&l.prefix) || path == l.prefix.trim_end_matches('/'))
}

/// What a request's server span records (tracing on): the `path` of the
/// location that serves it as `http.route` (bounded by the configuration,
/// never the raw path), and the scheme.
pub(crate) fn request_facts(
    current: &Current,
    parts: &http::request::Parts,
) -> wharf_telemetry::trace::RequestFacts {
    let runtime = snapshot(current, &parts.extensions);
    let vhost = runtime.vhost_index(host_of(&parts.headers, &parts.uri));
    let route = find_location(&runtime, vhost, parts.uri.path())
        .map_or_else(|| "other".to_owned(), |l| l.prefix.clone());
    let scheme = if parts.extensions.get::<TlsInfo>().is_some() {
        "https"
    } else {
        "http"
    };
    wharf_telemetry::trace::RequestFacts::new(route).scheme(scheme)
}

/// Routes a request to its location's action.
fn dispatch(
    runtime: Arc<Runtime>,
    request: Request<Body>,
) -> BoxFuture<Result<Response<ResponseBody>, Infallible>> {
    let tls = request.extensions().get::<TlsInfo>().is_some();
    let vhost = runtime.vhost_index(host_of(request.headers(), request.uri()));
    let location = find_location(&runtime, vhost, request.uri().path());
    // Futures are made here, outside any async block, so their types are
    // concrete (an async block over the proxy's generic call trips a rustc
    // higher-ranked lifetime limitation).
    // The proxy's future is already boxed: it is awaited as it is.
    let pending: BoxFuture<Result<Response<ResponseBody>, Infallible>> = match location {
        None => Box::pin(std::future::ready(Ok(wharf_proxy::error_page(
            StatusCode::NOT_FOUND,
        )))),
        Some(location) => match &location.action {
            Action::Proxy(proxy) => tower::Service::call(&mut proxy.clone(), request),
            Action::Static {
                dir,
                expires,
                immutable,
            } => {
                let serving = serve_static(
                    dir.clone(),
                    location.prefix.clone(),
                    request,
                    *expires,
                    *immutable,
                );
                Box::pin(async move { Ok(serving.await) })
            }
            Action::Return {
                status,
                body: text,
                location,
            } => {
                let mut response = Response::new(body::full(text.clone()));
                *response.status_mut() = *status;
                if let Some(location) = location {
                    response
                        .headers_mut()
                        .insert(header::LOCATION, location.clone());
                }
                if !text.is_empty() {
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                }
                Box::pin(std::future::ready(Ok(response)))
            }
        },
    };
    Box::pin(async move {
        let Ok(mut response) = pending.await;
        let headers = response.headers_mut();
        let vhost = &runtime.vhosts[vhost];
        for (name, value) in runtime.security.iter().chain(vhost.headers.iter()) {
            headers.insert(name.clone(), value.clone());
        }
        if tls {
            if let Some(hsts) = &runtime.hsts {
                headers.insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
            }
        }
        Ok(response)
    })
}

/// Whether a file name carries a content hash (`app.3f9a2c1b.js`,
/// `app-3f9a2c1b.css`): such files never change, so they are `immutable`.
pub(crate) fn is_fingerprinted(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.split(['.', '-', '_'])
        .any(|part| part.len() >= 8 && part.chars().all(|c| c.is_ascii_hexdigit()))
}

async fn serve_static(
    dir: tower_http::services::ServeDir,
    prefix: String,
    request: Request<Body>,
    expires: Option<Duration>,
    immutable: bool,
) -> Response<ResponseBody> {
    let (mut parts, body) = request.into_parts();
    let rest = parts
        .uri
        .path()
        .strip_prefix(prefix.trim_end_matches('/'))
        .unwrap_or("/");
    let rest = if rest.is_empty() { "/" } else { rest };
    let fingerprinted = is_fingerprinted(rest);
    let uri = match parts.uri.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_owned(),
    };
    let Ok(uri) = uri.parse::<Uri>() else {
        return wharf_proxy::error_page(StatusCode::BAD_REQUEST);
    };
    parts.uri = uri;
    let request = Request::from_parts(parts, body);
    let served: BoxFuture<Result<Response<_>, Infallible>> = Box::pin(dir.oneshot(request));
    let Ok(response) = served.await;
    let (mut parts, file) = response.into_parts();
    if parts.status.is_success() || parts.status == StatusCode::NOT_MODIFIED {
        let cache = if immutable || fingerprinted {
            Some("public, max-age=31536000, immutable".to_owned())
        } else {
            expires.map(|e| format!("public, max-age={}", e.as_secs()))
        };
        if let Some(cache) = cache.and_then(|c| HeaderValue::from_str(&c).ok()) {
            parts.headers.insert(header::CACHE_CONTROL, cache);
        }
    } else if parts.status == StatusCode::NOT_FOUND {
        return wharf_proxy::error_page(StatusCode::NOT_FOUND);
    }
    Response::from_parts(parts, body::boxed(file))
}

/// The plain listener's answer: `301` to the same host, path and query over
/// HTTPS.
#[derive(Clone)]
pub(crate) struct RedirectApp {
    pub(crate) https_port: u16,
    pub(crate) current: Arc<Current>,
}

/// An ACME HTTP-01 validation's answer (RFC 8555 8.3), served before
/// routing, limits and redirects: 200 with the key authorization, or 404.
fn acme_answer(runtime: &Runtime, request: &Request<Body>) -> Option<Response<ResponseBody>> {
    let storage = runtime.acme_storage.as_ref()?;
    let path = request.uri().path();
    if !path.starts_with("/.well-known/acme-challenge/") {
        return None;
    }
    // Other hosts' challenges (a certbot webroot, an application's own
    // ACME) are routed as any request.
    let host = strip_port(host_of(request.headers(), request.uri())?);
    if !runtime
        .acme_names
        .iter()
        .any(|n| n.eq_ignore_ascii_case(host))
    {
        return None;
    }
    Some(match crate::acme::http01_answer(storage, path) {
        Some(answer) => {
            let mut response = Response::new(wharf_http::body::full(answer));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
        None => wharf_proxy::error_page(StatusCode::NOT_FOUND),
    })
}

impl tower::Service<Request<Body>> for RedirectApp {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<ResponseBody>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if let Some(answer) = acme_answer(&self.current.get(), &request) {
            return std::future::ready(Ok(answer));
        }
        let host = host_of(request.headers(), request.uri()).unwrap_or("localhost");
        let name = strip_port(host);
        let port = if self.https_port == 443 {
            String::new()
        } else {
            format!(":{}", self.https_port)
        };
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", http::uri::PathAndQuery::as_str);
        let target = format!("https://{name}{port}{path}");
        let mut response = wharf_proxy::error_page(StatusCode::MOVED_PERMANENTLY);
        match HeaderValue::from_str(&target) {
            Ok(location) => {
                response.headers_mut().insert(header::LOCATION, location);
            }
            Err(_) => *response.status_mut() = StatusCode::BAD_REQUEST,
        }
        std::future::ready(Ok(response))
    }
}

/// Per-client-IP open connections (`limit_conn`).
#[derive(Default)]
pub(crate) struct ConnLimits {
    open: Mutex<HashMap<IpAddr, usize>>,
}

pub(crate) struct ConnGuard {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
    current: Arc<Current>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.current
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
        if let Ok(mut open) = self.limits.open.lock() {
            if let Some(n) = open.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&self.ip);
                }
            }
        }
    }
}

impl ConnLimits {
    fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        limit: usize,
        current: &Arc<Current>,
    ) -> Option<ConnGuard> {
        let mut open = self.open.lock().ok()?;
        let n = open.entry(ip).or_insert(0);
        if limit > 0 && *n >= limit {
            return None;
        }
        *n += 1;
        current.connections_open.fetch_add(1, Ordering::Relaxed);
        Some(ConnGuard {
            limits: Arc::clone(self),
            ip,
            current: Arc::clone(current),
        })
    }
}

pin_project! {
    /// A connection's stream with its `limit_conn` slot.
    pub(crate) struct Counted<Io> {
        #[pin]
        inner: Io,
        guard: ConnGuard,
    }
}

impl<Io: AsyncRead> AsyncRead for Counted<Io> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.project().inner.poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite> AsyncWrite for Counted<Io> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// Takes the connection's `limit_conn` slot, then runs `inner` (the TLS
/// handshake, or nothing for plain HTTP) and pins the connection to the
/// configuration generation it was accepted under.
///
/// The slot is taken when the connection is accepted, before the handshake:
/// a client past its limit is closed before its `ClientHello` is read, so it
/// cannot make edge do handshakes (the expensive part) beyond the limit.
/// Behind [`ProxyProtocolAcceptor`](wharf_proxy::proxy_protocol::ProxyProtocolAcceptor),
/// this runs after the PROXY header (cheap, bounded by `handshake_timeout`),
/// so `info.peer` is the client the header names, as nginx's stream
/// `limit_conn` counts `$binary_remote_addr` after `proxy_protocol`.
#[derive(Clone)]
pub(crate) struct EdgeAcceptor<A> {
    pub(crate) inner: A,
    pub(crate) current: Arc<Current>,
    pub(crate) limits: Arc<ConnLimits>,
}

impl<A> Acceptor for EdgeAcceptor<A>
where
    A: Acceptor,
{
    type Io = Counted<A::Io>;
    type Future = BoxFuture<io::Result<Accepted<Self::Io>>>;

    fn accept(&self, stream: TcpStream, info: ConnectInfo) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let runtime = this.current.get();
            let (client, limit) = (info.peer.ip(), runtime.limit_conn);
            let Some(guard) = this.limits.acquire(client, limit, &this.current) else {
                this.current
                    .connections_refused
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(
                    peer = %info.peer,
                    "limit_conn reached; connection closed before the handshake"
                );
                drop(stream);
                return Err(io::Error::other("limit_conn reached"));
            };
            // A failed handshake drops the guard: the slot is free again.
            let accepted = this.inner.accept(stream, info).await?;
            let mut extensions = accepted.extensions;
            extensions.insert(Snapshot(runtime));
            Ok(Accepted {
                io: Counted {
                    inner: accepted.io,
                    guard,
                },
                extensions,
                peer: accepted.peer,
            })
        })
    }
}

/// This process's edge metrics as values (the master adds up every
/// worker's; the admin listener encodes them when there is no master).
#[allow(clippy::too_many_lines)] // one line per metric
pub(crate) fn metrics(current: &Current, tls: Option<&wharf_tls::TlsConfig>) -> metrics::Snapshot {
    let mut out = metrics::Snapshot::new();
    let mut one = |family: Family, value: u64| out.push(family.with(&[], value));
    if let Some(tls) = tls {
        let s = tls.stats();
        for (name, help, value) in [
            (
                "edge_tls_handshakes_total",
                "Completed TLS handshakes.",
                s.handshakes,
            ),
            (
                "edge_tls_resumed_total",
                "Handshakes that resumed a session.",
                s.resumed,
            ),
            (
                "edge_tls_handshake_failures_total",
                "Failed TLS handshakes.",
                s.handshake_failures,
            ),
            (
                "edge_tls_handshake_timeouts_total",
                "TLS handshakes past the timeout.",
                s.handshake_timeouts,
            ),
            (
                "edge_tls_certificate_reloads_total",
                "Certificate sets swapped in.",
                s.reloads,
            ),
            (
                "edge_tls_certificate_reload_failures_total",
                "Certificate reloads refused (old certificates kept).",
                s.reload_failures,
            ),
        ] {
            one(Family::counter(name, help), value);
        }
    }
    one(
        Family::counter(
            "edge_config_reloads_total",
            "Configuration reloads applied.",
        ),
        current.reloads_ok.load(Ordering::Relaxed),
    );
    one(
        Family::counter(
            "edge_config_reload_failures_total",
            "Configuration reloads refused.",
        ),
        current.reloads_failed.load(Ordering::Relaxed),
    );
    one(
        Family::gauge("edge_connections_open", "Client connections open."),
        current.connections_open.load(Ordering::Relaxed),
    );
    one(
        Family::counter(
            "edge_connections_limited_total",
            "Connections closed by limit_conn.",
        ),
        current.connections_refused.load(Ordering::Relaxed),
    );
    let runtime = current.get();
    one(
        Family::gauge(
            "edge_config_generation",
            "The configuration generation new connections get.",
        )
        .per_instance(),
        runtime.generation,
    );
    let mut families = [
        // Every worker checks the same servers' health alike.
        Family::gauge("edge_upstream_up", "Whether an upstream server takes requests.").per_instance(),
        Family::counter(
            "edge_upstream_requests_total",
            "Requests sent to an upstream server (attempts, retries included).",
        ),
        Family::counter(
            "edge_upstream_failures_total",
            "Upstream attempts that failed (connect error, timeout, gateway error).",
        ),
        Family::gauge("edge_upstream_active", "Requests in flight to an upstream server."),
        Family::counter(
            "edge_upstream_connections_opened_total",
            "Connections opened to an upstream server.",
        ),
        Family::counter(
            "edge_upstream_connections_reused_total",
            "Requests sent over a kept-alive upstream connection (reuse rate: reused / (reused + opened)).",
        ),
    ];
    let mut panicking = Family::gauge(
        "edge_upstream_panic",
        "1 while an upstream group routes to all its servers, health ignored, because too few are healthy (panic_threshold).",
    )
    .per_instance();
    let mut groups = [
        Family::counter(
            "edge_upstream_panic_routed_total",
            "Requests routed while the group was in panic.",
        ),
        Family::counter(
            "edge_upstream_retries_total",
            "Requests sent on to another server after a failure.",
        ),
        Family::counter(
            "edge_upstream_retries_refused_total",
            "Retries not made: the retry budget was spent or next_upstream_timeout had passed.",
        ),
    ];
    for proxy in &runtime.proxies {
        let upstream = proxy.upstream();
        let g = upstream.group_stats();
        let labels = [("upstream", upstream.name())];
        panicking.sample(&labels, g.panicking);
        for (family, value) in groups
            .iter_mut()
            .zip([g.panic_routed, g.retries, g.retries_refused])
        {
            family.sample(&labels, value);
        }
        for s in upstream.stats() {
            let server = s.addr.to_string();
            let labels = [("upstream", upstream.name()), ("server", server.as_str())];
            let values = [
                u64::from(s.available),
                s.requests,
                s.failures,
                u64::try_from(s.active).unwrap_or(u64::MAX),
                s.connections_opened,
                s.connections_reused,
            ];
            for (family, value) in families.iter_mut().zip(values) {
                family.sample(&labels, value);
            }
        }
    }
    out.push(panicking);
    for family in families.into_iter().chain(groups) {
        out.push(family);
    }
    if let Some(tls) = tls {
        let mut expiries = Family::gauge(
            "edge_tls_certificate_expiry_timestamp_seconds",
            "When each served certificate expires (notAfter).",
        )
        .per_instance();
        for (certificate, expires) in tls.certificate_expiries() {
            expiries.sample(&[("certificate", &certificate)], expires);
        }
        out.push(expiries);
        if runtime.acme_storage.is_some() {
            let mut awaited = Family::gauge(
                "edge_tls_certificate_awaited",
                "Names whose ACME certificate has not been obtained yet (their handshakes fail).",
            )
            .per_instance();
            for name in tls.awaited() {
                awaited.sample(&[("server_name", &name)], 1_u64);
            }
            out.push(awaited);
            out.push(crate::acme::metrics());
        }
    }
    // Per zone: checks, rejections, and where it counts (zone_info).
    if let Some(limit) = &runtime.limit_req {
        out.extend(limit.limiter().metrics().snapshot());
    }
    out
}

/// The admin listener's routes: `/metrics`; health comes from wharf-http.
pub(crate) fn admin(
    current: &Current,
    tls: Option<&wharf_tls::TlsConfig>,
    listening: &[Arc<wharf_http::Listener>],
    request: &Request<Body>,
) -> Response<ResponseBody> {
    if request.uri().path() == "/metrics" {
        use std::os::fd::AsFd as _;
        let mut snapshot = metrics(current, tls);
        snapshot.extend(wharf_supervisor::listen_metrics(
            listening.iter().map(|l| (l.as_fd(), None)),
        ));
        let mut response = Response::new(body::full(snapshot.encode()));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(metrics::CONTENT_TYPE),
        );
        return response;
    }
    wharf_proxy::error_page(StatusCode::NOT_FOUND)
}

#[cfg(test)]
mod tests {
    use super::is_fingerprinted;

    #[test]
    fn fingerprinted_names_are_recognised() {
        assert!(is_fingerprinted("/js/app.3f9a2c1b.js"));
        assert!(is_fingerprinted("/css/site-0123abcd4567.css"));
        assert!(!is_fingerprinted("/css/site.css"));
        assert!(!is_fingerprinted("/img/favicon.ico"));
    }
}
