//! The tower layer: checks each request, rejects with 429 (or 503) and the
//! rate-limit headers, delays in the delaying mode, else calls the service.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, ACCEPT, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use crate::limiter::{ceil_seconds, Decision, Limiter};

/// `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// How rejections look.
#[derive(Debug, Clone)]
pub struct ResponseSettings {
    /// Status of a rejection. Default 429; 503 is nginx's `limit_req_status` default.
    pub status: StatusCode,
    /// Send `RateLimit-Policy`/`RateLimit` on allowed responses too (they are
    /// always sent on rejections). Default true.
    pub headers_on_success: bool,
}

impl Default for ResponseSettings {
    fn default() -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            headers_on_success: true,
        }
    }
}

/// Puts a [`Limiter`] in front of a service.
///
/// ```
/// use std::convert::Infallible;
/// use tower::{Layer, ServiceExt};
/// use wharf_ratelimit::{KeySource, Limiter, RateLimitLayer, Rate, Zone};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let limiter = Limiter::builder()
///     .zone(Zone::new("all", Rate::per_second(1).unwrap()).key(KeySource::Global))
///     .build().unwrap();
/// let app = tower::service_fn(|_req: http::Request<String>| async {
///     Ok::<_, Infallible>(http::Response::new(String::from("hi")))
/// });
/// let service = RateLimitLayer::new(limiter).layer(app);
/// let first = service.clone().oneshot(http::Request::new(String::new())).await.unwrap();
/// assert_eq!(first.status(), 200);
/// let second = service.oneshot(http::Request::new(String::new())).await.unwrap();
/// assert_eq!(second.status(), 429);
/// assert_eq!(second.headers()["retry-after"], "1");
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: Limiter,
    settings: ResponseSettings,
}

impl RateLimitLayer {
    /// A layer with the default [`ResponseSettings`].
    pub fn new(limiter: Limiter) -> Self {
        Self {
            limiter,
            settings: ResponseSettings::default(),
        }
    }

    /// Overrides how rejections look.
    #[must_use]
    pub fn with_settings(mut self, settings: ResponseSettings) -> Self {
        self.settings = settings;
        self
    }

    /// The limiter.
    pub fn limiter(&self) -> &Limiter {
        &self.limiter
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: self.limiter.clone(),
            settings: self.settings.clone(),
        }
    }
}

/// The service made by [`RateLimitLayer`].
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: Limiter,
    settings: ResponseSettings,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RateLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = Response<RateLimitBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // The ready service goes with this call; a fresh clone stays for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limiter = self.limiter.clone();
        let settings = self.settings.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let decision = limiter.check(&parts).await;
            if !decision.allowed {
                return Ok(rejection(&decision, &settings, &parts.headers));
            }
            if !decision.delay.is_zero() {
                tokio::time::sleep(decision.delay).await;
            }
            let response = inner.call(Request::from_parts(parts, body)).await?;
            let mut response = response.map(|body| RateLimitBody::Inner { body });
            if settings.headers_on_success {
                add_headers(response.headers_mut(), &decision);
            }
            Ok(response)
        })
    }
}

fn add_headers(headers: &mut HeaderMap, decision: &Decision) {
    if decision.zones.is_empty() {
        return;
    }
    let mut policy = String::new();
    let mut state = String::new();
    for z in &decision.zones {
        if !policy.is_empty() {
            policy.push_str(", ");
        }
        let _ = write!(
            policy,
            "\"{}\";q={};w={}",
            z.zone, z.capacity, z.window_seconds
        );
        if let (Some(remaining), Some(reset)) = (z.remaining, z.reset) {
            if !state.is_empty() {
                state.push_str(", ");
            }
            let _ = write!(
                state,
                "\"{}\";r={remaining};t={}",
                z.zone,
                ceil_seconds(reset)
            );
        } else if z.rejected {
            if !state.is_empty() {
                state.push_str(", ");
            }
            let _ = write!(
                state,
                "\"{}\";r=0;t={}",
                z.zone,
                decision.retry_after_seconds()
            );
        }
    }
    if let Ok(v) = HeaderValue::from_str(&policy) {
        headers.insert(RATELIMIT_POLICY.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&state) {
        if !state.is_empty() {
            headers.insert(RATELIMIT.clone(), v);
        }
    }
}

fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("json") && !v.contains("html"))
}

/// The rejection response for `decision`.
fn rejection<B>(
    decision: &Decision,
    settings: &ResponseSettings,
    request_headers: &HeaderMap,
) -> Response<RateLimitBody<B>> {
    let seconds = decision.retry_after_seconds();
    let (content_type, body) = if wants_json(request_headers) {
        (
            "application/json",
            format!(
                "{{\"error\":\"rate_limited\",\"message\":\"Too many requests. Try again in {seconds} seconds.\",\"retry_after\":{seconds}}}"
            ),
        )
    } else {
        (
            "text/html; charset=utf-8",
            format!(
                "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Too many requests</title></head>\n<body><h1>Too many requests</h1><p>You have made too many requests. Try again in {seconds} second{}.</p></body></html>\n",
                if seconds == 1 { "" } else { "s" }
            ),
        )
    };
    let mut response = Response::new(RateLimitBody::Limited {
        data: Some(Bytes::from(body)),
    });
    *response.status_mut() = settings.status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    add_headers(headers, decision);
    response
}

pin_project_lite::pin_project! {
    /// The response body: the service's, or the rejection page.
    // pin-project-lite cannot carry field docs; the variant docs name them.
    #[allow(missing_docs)]
    #[project = BodyProj]
    pub enum RateLimitBody<B> {
        /// The inner service's body.
        Inner { #[pin] body: B },
        /// A rejection page (`data` until it is sent).
        Limited { data: Option<Bytes> },
    }
}

impl<B> Body for RateLimitBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match self.project() {
            BodyProj::Inner { body } => body.poll_frame(cx),
            BodyProj::Limited { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Inner { body } => body.is_end_stream(),
            Self::Limited { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Inner { body } => body.size_hint(),
            Self::Limited { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
