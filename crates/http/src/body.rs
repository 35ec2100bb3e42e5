//! The body types wharf-http hands to applications and expects back.

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// A boxed error, as tower and hyper use.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body: the client's bytes, already limited to the configured
/// maximum (reading past it fails with an error for which
/// [`is_body_too_large`] is true).
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A response body of any kind, boxed.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// A response body holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty response body.
pub fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any body whose error converts to [`BoxError`].
pub fn boxed<B>(body: B) -> ResponseBody
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // A body that is already a `ResponseBody` is returned as it is: boxing
    // it again would add an allocation and a virtual call per frame for
    // each layer that boxes (the stack and its applications box in turn).
    let mut slot = Some(body);
    if let Some(boxed) =
        (&mut slot as &mut dyn std::any::Any).downcast_mut::<Option<ResponseBody>>()
    {
        if let Some(body) = boxed.take() {
            return body;
        }
    }
    match slot {
        Some(body) => body.map_err(Into::into).boxed_unsync(),
        // Only the downcast above takes the body out, and it returned.
        None => empty(),
    }
}

/// Whether reading a request body failed because it was larger than the
/// configured maximum; an application answers 413 when it is.
pub fn is_body_too_large(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(err) = current {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        current = err.source();
    }
    false
}

/// Whether any error in the chain is an I/O timeout: how a client call's
/// connect or read timeout shows (several levels down), so callers can answer
/// 504 rather than 502 without matching on messages.
pub fn is_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(err) = current {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        current = err.source();
    }
    false
}

pin_project_lite::pin_project! {
    /// A service's response future with the body boxed into a
    /// [`ResponseBody`]: how a layer that answers some requests itself (with
    /// a `ResponseBody`) passes the others on to a service with another body
    /// type. A named future, so no async block has to be generic over the
    /// inner service (which trips rustc's higher-ranked lifetime checks).
    pub struct BoxedResponse<F> {
        #[pin]
        inner: F,
    }
}

impl<F> BoxedResponse<F> {
    /// Wraps a response future.
    pub fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<F, B> std::future::Future for BoxedResponse<F>
where
    F: std::future::Future<Output = Result<http::Response<B>, std::convert::Infallible>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<http::Response<ResponseBody>, std::convert::Infallible>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.project()
            .inner
            .poll(cx)
            .map(|result| result.map(|response| response.map(boxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn boxing_keeps_the_bytes_whether_or_not_already_boxed() {
        let once = boxed(Full::new(Bytes::from_static(b"hello")));
        let twice = boxed(once);
        assert_eq!(http_body::Body::size_hint(&twice).exact(), Some(5));
        let bytes = twice.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "hello");
    }
}
