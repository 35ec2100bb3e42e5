//! [`PublicMetrics`]: `/metrics` on a service's public port behind a bearer
//! token, for platforms that give an instance one port (Cloud Foundry), so the
//! instance's scrape needs no admin listener.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Request, Response, StatusCode};
use tower::Service;
use wharf_config::Secret;
use wharf_http::{body, Body, BoxError, ResponseBody};

/// The path on which metrics are served (admin listener, or the public port
/// with a token).
pub const METRICS_PATH: &str = "/metrics";

/// Renders the metrics [`PublicMetrics`] serves, in the Prometheus text
/// format (in `frontend`, the instance's: `WorkerContext::instance_metrics`).
pub type MetricsText = Arc<dyn Fn() -> String + Send + Sync>;

/// Answers `GET /metrics` on the public port when a token is configured
/// (401 without it, 403 with a wrong one); everything else goes to `inner`.
#[derive(Clone)]
pub struct PublicMetrics<S> {
    inner: S,
    token: Option<Arc<Secret<String>>>,
    text: MetricsText,
}

impl<S> std::fmt::Debug for PublicMetrics<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicMetrics")
            .field("token", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

impl<S> PublicMetrics<S> {
    /// Serves `text` on [`METRICS_PATH`] to requests bearing `token`
    /// (`WHARF_METRICS_TOKEN`); with no token, every request goes to `inner`.
    pub fn new(inner: S, token: Option<Secret<String>>, text: MetricsText) -> Self {
        Self {
            inner,
            token: token.map(Arc::new),
            text,
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
                    text_response(StatusCode::OK, (self.text)())
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
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    /// The service behind: 200 "app" on every path.
    fn app() -> tower::util::BoxCloneService<Request<Body>, Response<ResponseBody>, Infallible> {
        tower::util::BoxCloneService::new(tower::service_fn(|_request: Request<Body>| async {
            Ok::<_, Infallible>(Response::new(body::full("app")))
        }))
    }

    async fn get<S>(
        service: &PublicMetrics<S>,
        path: &str,
        auth: Option<&str>,
    ) -> (StatusCode, String)
    where
        S: Service<Request<Body>, Response = Response<ResponseBody>, Error = Infallible>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
    {
        let mut request = Request::get(path);
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        let request = request.body(body::empty()).unwrap();
        let response = service.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn metrics_need_the_token_and_other_paths_reach_the_app() {
        let text: MetricsText = Arc::new(|| "wharf_up 1\n".to_owned());
        let token = Some(Secret::new("s3cret".to_owned()));
        let service = PublicMetrics::new(app(), token, Arc::clone(&text));
        let (status, _) = get(&service, "/metrics", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            get(&service, "/metrics", Some("Bearer wrong")).await.0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            get(&service, "/metrics", Some("Bearer s3cret")).await,
            (StatusCode::OK, "wharf_up 1\n".to_owned())
        );
        assert_eq!(
            get(&service, "/_status", None).await,
            (StatusCode::OK, "app".to_owned())
        );
        // No token: /metrics is the app's.
        let open = PublicMetrics::new(app(), None, text);
        assert_eq!(
            get(&open, "/metrics", Some("Bearer s3cret")).await,
            (StatusCode::OK, "app".to_owned())
        );
    }
}
