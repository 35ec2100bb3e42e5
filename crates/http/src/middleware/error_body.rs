//! Gives bodiless error responses (from timeouts, limits, panics) a short
//! plain-text body, so a client or operator sees what happened.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{header, HeaderValue, Response};
use http_body::Body as _;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::body::{full, ResponseBody};

/// Adds a short body to empty 4xx/5xx responses; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorBodyLayer;

impl<S> Layer<S> for ErrorBodyLayer {
    type Service = ErrorBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorBody { inner }
    }
}

/// The service made by [`ErrorBodyLayer`].
#[derive(Debug, Clone)]
pub struct ErrorBody<S> {
    inner: S,
}

impl<S, R> Service<R> for ErrorBody<S>
where
    S: Service<R, Response = Response<ResponseBody>>,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = ErrorBodyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        ErrorBodyFuture {
            inner: self.inner.call(request),
        }
    }
}

pin_project! {
    /// Future of [`ErrorBody`].
    pub struct ErrorBodyFuture<F> {
        #[pin]
        inner: F,
    }
}

impl<F, E> Future for ErrorBodyFuture<F>
where
    F: Future<Output = Result<Response<ResponseBody>, E>>,
{
    type Output = Result<Response<ResponseBody>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = ready!(self.project().inner.poll(cx))?;
        let status = response.status();
        if (status.is_client_error() || status.is_server_error())
            && response.body().size_hint().exact() == Some(0)
            && !response.headers().contains_key(header::CONTENT_TYPE)
        {
            let text = format!(
                "{} {}\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or("Error")
            );
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            response.headers_mut().remove(header::CONTENT_LENGTH);
            *response.body_mut() = full(text);
        }
        Poll::Ready(Ok(response))
    }
}
