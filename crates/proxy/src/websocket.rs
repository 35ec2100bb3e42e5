//! Protocol upgrades (WebSocket): the handshake goes to a server on a fresh
//! connection; on `101` both connections are joined and bytes copied both
//! ways until either side closes.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Empty;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use wharf_http::{body as wbody, ResponseBody};

use crate::body::ActiveGuard;
use crate::errors::{error_chain, error_page};
use crate::settings::ProxySettings;
use crate::upstream::Upstream;

pub(crate) async fn proxy_upgrade(
    upstream: &std::sync::Arc<Upstream>,
    settings: &ProxySettings,
    parts: &http::request::Parts,
    path: &str,
    protocol: HeaderValue,
    client_upgrade: OnUpgrade,
) -> Response<ResponseBody> {
    let mut tried = Vec::new();
    while let Some(index) = upstream.pick(&tried) {
        tried.push(index);
        let peer = &upstream.peers[index];
        peer.requests.fetch_add(1, Ordering::Relaxed);
        let addr = peer.config.addr;
        let stream = match crate::pool::connect_tcp(addr, settings.connect_timeout).await {
            Ok(stream) => {
                peer.pool.opened.fetch_add(1, Ordering::Relaxed);
                stream
            }
            Err(error) => {
                tracing::warn!(upstream = %upstream.name, server = %addr, error = %error_chain(&error), "Upstream connection failed");
                peer.failed(&upstream.name);
                continue;
            }
        };
        let Ok((mut sender, connection)) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
        else {
            peer.failed(&upstream.name);
            continue;
        };
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "Upstream upgrade connection ended with an error");
            }
        });
        let mut request = Request::new(Empty::<Bytes>::new());
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = match path.parse() {
            Ok(uri) => uri,
            Err(_) => return error_page(StatusCode::BAD_REQUEST),
        };
        *request.headers_mut() = parts.headers.clone();
        request
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        request.headers_mut().insert(header::UPGRADE, protocol);
        let wait = settings.send_timeout + settings.read_timeout;
        let mut response = match tokio::time::timeout(wait, sender.send_request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                tracing::warn!(upstream = %upstream.name, server = %addr, %error, "Upstream upgrade request failed");
                peer.failed(&upstream.name);
                return error_page(StatusCode::BAD_GATEWAY);
            }
            Err(_) => {
                peer.failed(&upstream.name);
                return error_page(StatusCode::GATEWAY_TIMEOUT);
            }
        };
        peer.succeeded();
        let guard = ActiveGuard::new(upstream, index);
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let (parts, body) = response.into_parts();
            return Response::from_parts(parts, wbody::boxed(body));
        }
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let upstream_name = upstream.name.clone();
        let idle_timeout = settings.read_timeout;
        tokio::spawn(async move {
            let _guard = guard;
            match tokio::join!(client_upgrade, upstream_upgrade) {
                (Ok(client), Ok(server)) => {
                    run_tunnel(client, server, idle_timeout, &upstream_name).await;
                }
                (Err(error), _) | (_, Err(error)) => {
                    tracing::debug!(upstream = %upstream_name, %error, "Upgrade did not complete");
                }
            }
        });
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, wbody::empty());
    }
    tracing::warn!(upstream = %upstream.name, "No live upstream server for an upgrade");
    error_page(StatusCode::BAD_GATEWAY)
}

/// Copies both ways until either side closes or nothing moves for
/// `idle_timeout` (as nginx's `proxy_read_timeout`).
async fn run_tunnel(
    client: hyper::upgrade::Upgraded,
    server: hyper::upgrade::Upgraded,
    idle_timeout: Duration,
    upstream_name: &str,
) {
    let activity = Arc::new(Activity::new());
    let mut client = Active::new(TokioIo::new(client), Arc::clone(&activity));
    let mut server = Active::new(TokioIo::new(server), Arc::clone(&activity));
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut server) => match copied {
            Ok((up, down)) => tracing::debug!(
                upstream = %upstream_name,
                bytes_up = up,
                bytes_down = down,
                "Upgraded connection closed"
            ),
            Err(error) => {
                tracing::debug!(upstream = %upstream_name, %error, "Upgraded connection ended with an error");
            }
        },
        () = activity.idle_for(idle_timeout) => {
            // As nginx's proxy_read_timeout: a tunnel silent in
            // both directions is closed on both sides.
            tracing::debug!(upstream = %upstream_name, idle_s = idle_timeout.as_secs_f64(), "Upgraded connection idle; closing");
        }
    }
}

/// When bytes last moved through a tunnel, in either direction.
struct Activity {
    start: tokio::time::Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(now, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `timeout`.
    async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let due = last + timeout;
            if tokio::time::Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    }
}

pin_project_lite::pin_project! {
    /// A stream that records activity on every read and write.
    struct Active<T> {
        #[pin]
        inner: T,
        activity: Arc<Activity>,
    }
}

impl<T> Active<T> {
    fn new(inner: T, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<T: AsyncRead> AsyncRead for Active<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let result = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        result
    }
}

impl<T: AsyncWrite> AsyncWrite for Active<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.project();
        let result = this.inner.poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        result
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
