//! Health routes: `/_status` (the seed's status document), `/health/live` and
//! `/health/ready` (registered readiness checks, each with a timeout).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use serde::Serialize;
use tower::{Layer, Service};

use crate::body::{full, ResponseBody};

/// The status document's fields (the seed's `/_status` plus `environment`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusInfo {
    /// The git commit the binary was built from, or `unknown`.
    pub git_commit: String,
    /// When the binary was built (RFC 3339), or `unknown`.
    pub build_time: String,
    /// The deployment environment (`NOTIFY_ENVIRONMENT`).
    pub environment: String,
}

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

#[derive(Clone)]
struct ReadinessCheck {
    name: &'static str,
    timeout: Duration,
    check: CheckFn,
}

/// The health routes and their state. Cheap to clone; clones share state.
///
/// ```
/// use std::time::Duration;
/// use wharf_http::{Health, StatusInfo};
///
/// let health = Health::new(StatusInfo {
///     git_commit: "abc123".into(),
///     build_time: "2026-11-23T00:00:00Z".into(),
///     environment: "development".into(),
/// })
/// .readiness_check("api", Duration::from_secs(1), || async { Ok(()) });
/// # let _ = health;
/// ```
#[derive(Clone)]
pub struct Health {
    status_body: Bytes,
    info: Arc<StatusInfo>,
    checks: Arc<Vec<ReadinessCheck>>,
    draining: Arc<AtomicBool>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field(
                "checks",
                &self.checks.iter().map(|c| c.name).collect::<Vec<_>>(),
            )
            .field("draining", &self.draining.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The `/_status` path, as the seed's load balancers and health checks use it.
pub const STATUS_PATH: &str = "/_status";
/// Liveness: the process is up and its runtime answers.
pub const LIVE_PATH: &str = "/health/live";
/// Readiness: every registered check passes and the server is not draining.
pub const READY_PATH: &str = "/health/ready";

/// The methods every health route serves, as `Allow` lists them.
const ALLOW: &str = "GET, HEAD, OPTIONS";

#[derive(Serialize)]
struct StatusDocument<'a> {
    status: &'static str,
    #[serde(flatten)]
    info: &'a StatusInfo,
}

#[derive(Serialize)]
struct CheckResult {
    name: &'static str,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Health {
    /// Health routes reporting `info` on `/_status`.
    pub fn new(info: StatusInfo) -> Self {
        let body = serde_json::to_vec(&StatusDocument {
            status: "ok",
            info: &info,
        })
        .unwrap_or_default();
        Self {
            status_body: Bytes::from(body),
            info: Arc::new(info),
            checks: Arc::new(Vec::new()),
            draining: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Adds a readiness check: `/health/ready` answers 503 naming it when it
    /// returns an error or takes longer than `timeout`.
    #[must_use]
    pub fn readiness_check<F, Fut>(
        mut self,
        name: &'static str,
        timeout: Duration,
        check: F,
    ) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: CheckFn = Arc::new(move || Box::pin(check()));
        Arc::make_mut(&mut self.checks).push(ReadinessCheck {
            name,
            timeout,
            check,
        });
        self
    }

    /// What `/_status` reports.
    pub fn info(&self) -> &StatusInfo {
        &self.info
    }

    /// Marks the server as draining: readiness fails from now on so load
    /// balancers stop sending new work. The server calls this on shutdown.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether a request is for one of the health routes.
    pub fn handles(path: &str) -> bool {
        matches!(path, STATUS_PATH | LIVE_PATH | READY_PATH)
    }

    /// Answers a health request (`path` must satisfy [`Health::handles`]).
    ///
    /// GET and HEAD answer; OPTIONS answers as Flask answers it on every
    /// route, the Python service's `/_status` included
    /// (`provide_automatic_options`): 200, an empty `text/html` body and
    /// `Allow`. Any other method is 405 with the same `Allow`, the methods
    /// Werkzeug's `MethodNotAllowed` lists for a Flask GET route. (Werkzeug
    /// orders them as a Python set iterates; here they are alphabetical.)
    pub async fn respond(&self, method: &Method, path: &str) -> Response<ResponseBody> {
        if method == Method::OPTIONS {
            let mut response = Response::new(full(Bytes::new()));
            let headers = response.headers_mut();
            headers.insert(header::ALLOW, HeaderValue::from_static(ALLOW));
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            );
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            return response;
        }
        if method != Method::GET && method != Method::HEAD {
            let mut response = json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                Bytes::from_static(br#"{"status":"error","error":"method not allowed"}"#),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(ALLOW));
            return response;
        }
        match path {
            STATUS_PATH => json_response(StatusCode::OK, self.status_body.clone()),
            LIVE_PATH => json_response(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#)),
            _ => self.ready().await,
        }
    }

    async fn ready(&self) -> Response<ResponseBody> {
        let runs = self.checks.iter().map(|check| async move {
            let outcome = tokio::time::timeout(check.timeout, (check.check)()).await;
            let error = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(format!("timed out after {} ms", check.timeout.as_millis())),
            };
            CheckResult {
                name: check.name,
                ok: error.is_none(),
                error,
            }
        });
        let mut results = futures_util::future::join_all(runs).await;
        if self.draining.load(Ordering::Relaxed) {
            results.push(CheckResult {
                name: "server",
                ok: false,
                error: Some("draining: shutting down".to_owned()),
            });
        }
        let ok = results.iter().all(|r| r.ok);
        let body = serde_json::json!({
            "status": if ok { "ok" } else { "error" },
            "checks": results,
        });
        json_response(
            if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            },
            Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
        )
    }
}

fn json_response(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Serves the health routes in front of an inner service.
#[derive(Debug, Clone)]
pub struct HealthLayer {
    health: Health,
}

impl HealthLayer {
    /// A layer answering the routes of `health`.
    pub fn new(health: Health) -> Self {
        Self { health }
    }
}

impl<S> Layer<S> for HealthLayer {
    type Service = HealthRoutes<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HealthRoutes {
            health: self.health.clone(),
            inner,
        }
    }
}

/// The service made by [`HealthLayer`].
#[derive(Debug, Clone)]
pub struct HealthRoutes<S> {
    health: Health,
    inner: S,
}

impl<S, B> Service<Request<B>> for HealthRoutes<S>
where
    S: Service<Request<B>, Response = Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if Health::handles(request.uri().path()) {
            let health = self.health.clone();
            let method = request.method().clone();
            let path = request.uri().path().to_owned();
            return Box::pin(async move { Ok(health.respond(&method, &path).await) });
        }
        Box::pin(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    fn health() -> Health {
        Health::new(StatusInfo {
            git_commit: "abc123".into(),
            build_time: "2026-11-23T00:00:00Z".into(),
            environment: "test".into(),
        })
    }

    async fn answer(method: &str, path: &str) -> (StatusCode, http::HeaderMap, Bytes) {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let (parts, body) = health().respond(&method, path).await.into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    }

    /// Flask answers OPTIONS on every route (`provide_automatic_options`),
    /// DDF's `/_status` included: 200, an empty `text/html; charset=utf-8`
    /// body, `Allow` with the route's methods, HEAD and OPTIONS. Flask 3.1.3
    /// and Werkzeug 3.1.8 (the versions DDF pins) order `Allow` as a Python
    /// set iterates; here it is alphabetical, as in wharf-download.
    #[tokio::test]
    async fn health_routes_answer_options_as_flask_does() {
        for path in [STATUS_PATH, LIVE_PATH, READY_PATH] {
            let (status, headers, body) = answer("OPTIONS", path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert_eq!(headers[header::ALLOW], "GET, HEAD, OPTIONS", "{path}");
            assert_eq!(
                headers[header::CONTENT_TYPE],
                "text/html; charset=utf-8",
                "{path}"
            );
            assert_eq!(headers[header::CACHE_CONTROL], "no-store", "{path}");
            assert!(body.is_empty(), "{path}: {body:?}");
        }
    }

    /// Any other method is 405 (DDF's catch-all error handler made it a 500;
    /// see docs/compatibility.md), with the `Allow` of Werkzeug's
    /// `MethodNotAllowed`: the same methods as the OPTIONS answer.
    #[tokio::test]
    async fn health_routes_list_options_in_a_405_allow() {
        for path in [STATUS_PATH, LIVE_PATH, READY_PATH] {
            for method in ["POST", "PUT", "DELETE", "PATCH", "TRACE", "FOO"] {
                let (status, headers, body) = answer(method, path).await;
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                assert_eq!(
                    headers[header::ALLOW],
                    "GET, HEAD, OPTIONS",
                    "{method} {path}"
                );
                assert_eq!(
                    body,
                    Bytes::from_static(br#"{"status":"error","error":"method not allowed"}"#)
                );
            }
        }
    }

    #[tokio::test]
    async fn health_routes_answer_get_and_head() {
        for method in ["GET", "HEAD"] {
            let (status, headers, body) = answer(method, STATUS_PATH).await;
            assert_eq!(status, StatusCode::OK, "{method}");
            assert_eq!(headers[header::CONTENT_TYPE], "application/json");
            assert!(headers.get(header::ALLOW).is_none());
            let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(doc["status"], "ok");
            let (status, _, _) = answer(method, LIVE_PATH).await;
            assert_eq!(status, StatusCode::OK, "{method}");
            let (status, _, _) = answer(method, READY_PATH).await;
            assert_eq!(status, StatusCode::OK, "{method}");
        }
    }
}
