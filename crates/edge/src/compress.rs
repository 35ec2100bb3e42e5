//! gzip and brotli (nginx `gzip on`): tower-http's `Compression`, entered
//! only for responses it would encode.
//!
//! tower-http wraps every response body in its `CompressionBody`, an enum as
//! large as its largest encoder, even when it then passes the bytes through
//! untouched: a move of that body into a box and a layer of polling per
//! response, most of which (JSON under 1 KiB, documents, images) are never
//! compressed. Here the predicate is asked first, on the response, exactly
//! as tower-http asks it; only a response it would compress is handed to a
//! `Compression` (over a service that yields that response), with the
//! request's `Accept-Encoding`, so the encoding chosen, the headers set
//! (`Content-Encoding`, `Vary`) and the bytes are tower-http's.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_http::compression::predicate::Predicate;
use tower_http::compression::CompressionLayer;
use wharf_http::{BoxError, ResponseBody};

/// Wraps `inner` so that responses `predicate` selects are compressed by
/// `layer` (its encodings and quality), which is given the same predicate.
#[derive(Clone)]
pub(crate) struct Compress<S, P> {
    inner: S,
    layer: CompressionLayer<P>,
    predicate: P,
}

impl<S, P: Predicate> Compress<S, P> {
    pub(crate) fn new(inner: S, layer: CompressionLayer, predicate: P) -> Self {
        Self {
            inner,
            layer: layer.compress_when(predicate.clone()),
            predicate,
        }
    }
}

impl<S, P, ReqB, B> Service<Request<ReqB>> for Compress<S, P>
where
    S: Service<Request<ReqB>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
    P: Predicate + Send + Sync + 'static,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = CompressFuture<S::Future, P>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        // All of them, as tower-http reads them; no allocation when absent.
        let accept: Vec<HeaderValue> = request
            .headers()
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .cloned()
            .collect();
        CompressFuture {
            inner: self.inner.call(request),
            accept,
            layer: Some(self.layer.clone()),
            predicate: self.predicate.clone(),
        }
    }
}

pin_project! {
    /// Future of [`Compress`].
    pub(crate) struct CompressFuture<F, P> {
        #[pin]
        inner: F,
        accept: Vec<HeaderValue>,
        layer: Option<CompressionLayer<P>>,
        predicate: P,
    }
}

impl<F, P, B> Future for CompressFuture<F, P>
where
    F: Future<Output = Result<Response<B>, Infallible>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError> + Send,
    P: Predicate + Send + Sync + 'static,
{
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = ready!(this.inner.poll(cx));
        // tower-http's own test, in its order.
        let compressing = !response.headers().contains_key(header::CONTENT_ENCODING)
            && !response.headers().contains_key(header::CONTENT_RANGE)
            && this.predicate.should_compress(&response);
        let Some(layer) = this.layer.take().filter(|_| compressing) else {
            return Poll::Ready(Ok(response.map(wharf_http::body::boxed)));
        };
        let mut request = Request::new(());
        for value in this.accept.drain(..) {
            request.headers_mut().append(header::ACCEPT_ENCODING, value);
        }
        let mut response = Some(response);
        let mut compression = layer.layer(tower::service_fn(move |_: Request<()>| {
            std::future::ready(response.take().ok_or(()))
        }));
        // The inner service answers at once, so the compression future is
        // ready on its first poll.
        let mut pending = std::pin::pin!(compression.call(request));
        match pending.as_mut().poll(cx) {
            Poll::Ready(Ok(response)) => Poll::Ready(Ok(response.map(wharf_http::body::boxed))),
            // Neither can happen: the response was there to take, and the
            // future above is `ready`. Answer as a proxy would, not panic.
            Poll::Ready(Err(())) | Poll::Pending => {
                Poll::Ready(Ok(wharf_proxy::error_page(http::StatusCode::BAD_GATEWAY)))
            }
        }
    }
}
