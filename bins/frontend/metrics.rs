//! Request metrics for `frontend`: route templates (bounded cardinality), the
//! observer that feeds wharf-telemetry's `HttpMetrics`, and `/metrics` on the
//! public port behind a bearer token (for platforms with one port).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Request, Response, StatusCode};
use tower::Service;
use wharf_config::Secret;
use wharf_http::{body, Body, BoxError, Exchange, RequestObserver, ResponseBody};
use wharf_supervisor::InstanceMetrics;
use wharf_telemetry::metrics::{HttpMetrics, Observation};

/// The path on which metrics are served (admin listener, or the public port
/// with a token).
pub(crate) const METRICS_PATH: &str = "/metrics";

/// The route template a path matches: never the raw path, so a scanner cannot
/// create unbounded series.
pub(crate) fn route_template(path: &str) -> &'static str {
    // The first six segments, without allocating (every request comes here).
    // Longer paths keep only those: every exact pattern below is shorter, so
    // it cannot match a truncated path either, as with the whole list.
    let mut segments = [""; 6];
    let mut count = 0;
    for (slot, segment) in segments
        .iter_mut()
        .zip(path.trim_start_matches('/').split('/'))
    {
        *slot = segment;
        count += 1;
    }
    match &segments[..count] {
        ["_status"] => "/_status",
        ["health", "live"] => "/health/live",
        ["health", "ready"] => "/health/ready",
        ["metrics"] => METRICS_PATH,
        ["d", _, _] => "/d/{service}/{document}",
        ["d", _, _, "confirm-email-address"] => "/d/{service}/{document}/confirm-email-address",
        ["d", _, _, "download"] => "/d/{service}/{document}/download",
        ["services", _, "documents", _, "check"] => {
            "/services/{service}/documents/{document}/check"
        }
        ["services", _, "documents", _, "authenticate"] => {
            "/services/{service}/documents/{document}/authenticate"
        }
        ["services", ..] => "/services/{service}/documents/{document}",
        ["static", ..] => "/static/{asset}",
        ["security.txt"] | [".well-known", "security.txt"] => "/security.txt",
        _ => "other",
    }
}

/// Feeds every finished request into `metrics`.
pub(crate) fn observer(metrics: Arc<HttpMetrics>) -> RequestObserver {
    Arc::new(move |exchange: &Exchange<'_>| {
        metrics.observe(&Observation {
            method: exchange.method.as_str(),
            host: exchange.host.unwrap_or(""),
            route: route_template(exchange.path),
            status: exchange.status.as_u16(),
            duration: exchange.duration,
        });
    })
}

/// Answers `GET /metrics` on the public port when a token is configured
/// (401 without it, 403 with a wrong one); everything else goes to `inner`.
#[derive(Clone)]
pub(crate) struct PublicMetrics<S> {
    inner: S,
    token: Option<Arc<Secret<String>>>,
    metrics: InstanceMetrics,
}

impl<S> PublicMetrics<S> {
    pub(crate) fn new(inner: S, token: Option<Secret<String>>, metrics: InstanceMetrics) -> Self {
        Self {
            inner,
            token: token.map(Arc::new),
            metrics,
        }
    }
}

fn text_response(status: StatusCode, text: String) -> Response<ResponseBody> {
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Compares without an early exit, so timing does not reveal the token.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl<S, B> Service<Request<Body>> for PublicMetrics<S>
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if let (Some(token), METRICS_PATH) = (&self.token, request.uri().path()) {
            let presented = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            let response = match presented {
                None => {
                    let mut response =
                        text_response(StatusCode::UNAUTHORIZED, "401 Unauthorized\n".into());
                    response
                        .headers_mut()
                        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                    response
                }
                Some(presented) if same(presented.as_bytes(), token.expose().as_bytes()) => {
                    text_response(StatusCode::OK, self.metrics.text())
                }
                Some(_) => text_response(StatusCode::FORBIDDEN, "403 Forbidden\n".into()),
            };
            return Box::pin(async move { Ok(response) });
        }
        Box::pin(body::BoxedResponse::new(self.inner.call(request)))
    }
}

#[cfg(test)]
mod tests {
    use super::route_template;

    #[test]
    fn paths_map_to_bounded_templates() {
        assert_eq!(route_template("/_status"), "/_status");
        assert_eq!(route_template("/d/abc/def"), "/d/{service}/{document}");
        assert_eq!(
            route_template("/d/abc/def/confirm-email-address"),
            "/d/{service}/{document}/confirm-email-address"
        );
        assert_eq!(
            route_template("/d/abc/def/download"),
            "/d/{service}/{document}/download"
        );
        assert_eq!(
            route_template("/static/css/app-1234.css"),
            "/static/{asset}"
        );
        assert_eq!(route_template("/wp-admin/install.php"), "other");
        assert_eq!(route_template("/d/a/b/c/d/e"), "other");
        assert_eq!(route_template("/d/a/b/c/d/e/f/g"), "other");
        assert_eq!(
            route_template("/static/a/b/c/d/e/f/g.css"),
            "/static/{asset}"
        );
        assert_eq!(route_template("/"), "other");
        assert_eq!(route_template(""), "other");
    }
}
