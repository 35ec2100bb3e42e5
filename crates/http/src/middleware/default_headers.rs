//! Sets response headers the application did not set (the security
//! headers of the stack), all in one layer: one future around the
//! application's instead of one per header, and one lookup per header.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{HeaderName, HeaderValue, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// Adds each of its headers to responses that lack it.
#[derive(Debug, Clone)]
pub struct DefaultHeadersLayer {
    headers: Arc<[(HeaderName, HeaderValue)]>,
}

impl DefaultHeadersLayer {
    /// A layer adding `headers` (in order) where the response has none of
    /// that name.
    pub fn new(headers: impl IntoIterator<Item = (HeaderName, HeaderValue)>) -> Self {
        Self {
            headers: headers.into_iter().collect(),
        }
    }
}

impl<S> Layer<S> for DefaultHeadersLayer {
    type Service = DefaultHeaders<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DefaultHeaders {
            inner,
            headers: Arc::clone(&self.headers),
        }
    }
}

/// The service made by [`DefaultHeadersLayer`].
#[derive(Debug, Clone)]
pub struct DefaultHeaders<S> {
    inner: S,
    headers: Arc<[(HeaderName, HeaderValue)]>,
}

impl<S, R, B> Service<R> for DefaultHeaders<S>
where
    S: Service<R, Response = Response<B>>,
{
    type Response = Response<B>;
    type Error = S::Error;
    type Future = DefaultHeadersFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        DefaultHeadersFuture {
            inner: self.inner.call(request),
            headers: Arc::clone(&self.headers),
        }
    }
}

pin_project! {
    /// Future of [`DefaultHeaders`].
    pub struct DefaultHeadersFuture<F> {
        #[pin]
        inner: F,
        headers: Arc<[(HeaderName, HeaderValue)]>,
    }
}

impl<F, B, E> Future for DefaultHeadersFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        for (name, value) in this.headers.iter() {
            insert_if_absent(response.headers_mut(), name, || value.clone());
        }
        Poll::Ready(Ok(response))
    }
}

/// Sets `name` to `value()` unless the map has it: one lookup either way.
pub(crate) fn insert_if_absent(
    headers: &mut http::HeaderMap,
    name: &HeaderName,
    value: impl FnOnce() -> HeaderValue,
) {
    if let http::header::Entry::Vacant(entry) = headers.entry(name) {
        entry.insert(value());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;
    use tower::ServiceExt;

    #[tokio::test]
    async fn adds_missing_headers_and_keeps_the_applications() {
        let app = tower::service_fn(|(): ()| async {
            let mut response = Response::new(());
            response.headers_mut().insert(
                header::X_FRAME_OPTIONS,
                HeaderValue::from_static("SAMEORIGIN"),
            );
            Ok::<_, std::convert::Infallible>(response)
        });
        let layer = DefaultHeadersLayer::new([
            (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ]);
        let response = layer.layer(app).oneshot(()).await.unwrap();
        assert_eq!(response.headers()[header::X_FRAME_OPTIONS], "SAMEORIGIN");
        assert_eq!(
            response.headers()[header::X_CONTENT_TYPE_OPTIONS],
            "nosniff"
        );
        assert_eq!(response.headers().len(), 2);
    }
}
