//! The layers every request goes through, outermost first:
//!
//! 1. request id: keep a sane incoming `X-Request-Id`, else generate one; echo it;
//! 2. access log: one JSON line per request, secrets left out;
//! 3. security headers: `X-Content-Type-Options: nosniff`, `X-Frame-Options: DENY`,
//!    `Referrer-Policy: no-referrer`, and HSTS when configured (each only when
//!    the application did not set it);
//! 4. short bodies for bodiless error responses;
//! 5. request timeout: `504` when the response head is not ready in time;
//! 6. panic catcher: a panicking handler becomes a `500` for that request alone;
//! 7. body limit: `413` from `Content-Length` before reading, and a read error
//!    past the limit while streaming;
//! 8. health routes, then the application.

pub mod access_log;
pub mod default_headers;
pub mod error_body;
pub mod request_id;

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::body::{boxed, full, Body, BoxError, ResponseBody};
use crate::config::ServerConfig;
use crate::conn::{AppService, RequestBody};
use crate::health::{Health, HealthLayer};

use access_log::AccessLogLayer;
use default_headers::DefaultHeadersLayer;
use error_body::ErrorBodyLayer;
use request_id::RequestIdLayer;

#[allow(clippy::needless_pass_by_value)] // tower-http's ResponseForPanic hands the payload over by value.
fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response<ResponseBody> {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned());
    tracing::error!(panic = %message, "Request handler panicked; answered 500");
    let mut response = Response::new(full("500 Internal Server Error\n"));
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Adapts an application service: boxes its body and turns its errors into
/// 500s, and answers a request whose head is over the limit (`431`, or `414`
/// for its target alone) instead of passing it on.
#[derive(Clone)]
struct App<S> {
    inner: S,
    max_head_bytes: usize,
}

/// The sizes of `request`'s request line and of its whole head, as HTTP/1
/// sends them: `METHOD target HTTP/1.1\r\n`, each `name: value\r\n`, the
/// blank line.
fn head_bytes<B>(request: &Request<B>) -> (usize, usize) {
    let target = request
        .uri()
        .path_and_query()
        .map_or(1, |p| p.as_str().len());
    let line = request.method().as_str().len() + target + 12;
    let fields: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    (line, line + fields + 2)
}

/// hyper answers a head too large for its read buffer (HTTP/2: a header list
/// over its limit) itself, and that answer goes out without the security
/// headers; so the buffer is larger than the limit, and a head up to this
/// size is answered here, through the layers.
pub(crate) fn head_read_limit(max_head_bytes: usize) -> usize {
    max_head_bytes
        .saturating_mul(2)
        .max(max_head_bytes.saturating_add(8 * 1024))
}

/// `414` when the request line alone is over the limit (as nginx), else `431`.
fn head_too_large(line_bytes: usize, max_head_bytes: usize) -> Response<ResponseBody> {
    let mut response = Response::new(crate::body::empty());
    *response.status_mut() = if line_bytes > max_head_bytes {
        StatusCode::URI_TOO_LONG
    } else {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    };
    // As hyper does for its own: whatever else the client sent is not read.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

impl<S, B> Service<Request<Body>> for App<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError> + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // An application that fails readiness is answered per request in `call`.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        use futures_util::FutureExt as _;
        let (line, head) = head_bytes(&request);
        if head > self.max_head_bytes {
            let response = head_too_large(line, self.max_head_bytes);
            return Box::pin(std::future::ready(Ok(response)));
        }
        Box::pin(self.inner.call(request).map(app_response))
    }
}

#[allow(clippy::unnecessary_wraps)] // the shape `FutureExt::map` must return for an Infallible service.
fn app_response<B, E>(result: Result<Response<B>, E>) -> Result<Response<ResponseBody>, Infallible>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    Ok(match result {
        Ok(response) => response.map(boxed),
        Err(error) => {
            let error: BoxError = error.into();
            tracing::error!(error = %error, "Application failed; answered 500");
            let mut response = Response::new(crate::body::empty());
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
        }
    })
}

/// The security headers of layer 3, as `config` sets them: computed once per
/// server, for [`stack`] and for the answers the connection layer sends
/// itself (408, 414).
pub(crate) fn security_headers(config: &ServerConfig) -> Vec<(header::HeaderName, HeaderValue)> {
    let hsts = config.hsts_max_age.and_then(|age| {
        let subdomains = if config.hsts_include_subdomains {
            "; includeSubDomains"
        } else {
            ""
        };
        HeaderValue::from_str(&format!("max-age={}{subdomains}", age.as_secs())).ok()
    });
    [
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ]
    .into_iter()
    .chain(hsts.map(|value| (header::STRICT_TRANSPORT_SECURITY, value)))
    .collect()
}

/// Builds the pipeline of the [module docs](self) around `app`.
pub(crate) fn stack<S, B>(
    config: &ServerConfig,
    security_headers: Vec<(header::HeaderName, HeaderValue)>,
    health: Option<Health>,
    observer: Option<access_log::RequestObserver>,
    app: S,
) -> AppService
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError> + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let app = ServiceBuilder::new()
        .option_layer(health.map(HealthLayer::new))
        .service(App {
            inner: app,
            max_head_bytes: config.max_header_bytes,
        });
    let pipeline = ServiceBuilder::new()
        .layer(RequestIdLayer)
        .layer(AccessLogLayer::new(config.access_log).with_observer(observer))
        .layer(DefaultHeadersLayer::new(security_headers))
        .layer(ErrorBodyLayer)
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            config.request_timeout,
        ))
        .map_response(|response: Response<_>| response.map(boxed))
        .layer(CatchPanicLayer::custom(panic_response))
        .map_response(|response: Response<_>| response.map(boxed))
        .layer(RequestBodyLimitLayer::new(config.max_body_bytes))
        .map_request(|request: Request<tower_http::body::Limited<RequestBody>>| {
            request.map(|body| body.map_err(Into::into).boxed_unsync())
        })
        .service(app);
    BoxCloneSyncService::new(pipeline)
}
