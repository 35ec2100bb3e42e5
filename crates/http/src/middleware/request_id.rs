//! Request ids: keep a sane incoming `X-Request-Id`, else make one.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_http::request_id::{MakeRequestId, RequestId};

/// The header carrying the request id.
pub const X_REQUEST_ID: &str = "x-request-id";

/// [`X_REQUEST_ID`] as a header name: looked up as is, where a `&str` is
/// parsed and checked on every lookup.
static X_REQUEST_ID_NAME: HeaderName = HeaderName::from_static(X_REQUEST_ID);

/// Longest incoming request id kept.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// Makes unique, opaque request ids: 32 hex digits from a per-process random
/// seed and a counter. Cheap (no system call per request); unique within a
/// process and, with overwhelming probability, across processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeWharfRequestId;

fn process_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.finish()
    })
}

impl MakeWharfRequestId {
    /// A fresh id.
    pub fn next_id() -> String {
        String::from_utf8_lossy(&Self::next_id_bytes()).into_owned()
    }

    /// A fresh id as ASCII hex digits, formatted without `fmt` machinery or
    /// a heap allocation: every request without an id makes one.
    fn next_id_bytes() -> [u8; 32] {
        static COUNTER: AtomicU64 = AtomicU64::new(1);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // Multiplying by an odd constant is a bijection on u64: ids stay unique
        // while not looking sequential.
        let halves = [process_seed(), n.wrapping_mul(0x9E37_79B9_7F4A_7C15)];
        let mut out = [0_u8; 32];
        for (chunk, half) in out.chunks_exact_mut(16).zip(halves) {
            for (i, digit) in chunk.iter_mut().enumerate() {
                *digit = HEX[usize::try_from((half >> (60 - 4 * i)) & 0xf).unwrap_or(0)];
            }
        }
        out
    }
}

impl MakeRequestId for MakeWharfRequestId {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        HeaderValue::from_bytes(&Self::next_id_bytes())
            .ok()
            .map(RequestId::new)
    }
}

/// Whether an incoming request id is safe to keep and log: 1–128 characters
/// of letters, digits and `-_.:`.
pub fn is_sane_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_REQUEST_ID_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The incoming request id if there is exactly one and it is sane; an insane
/// or repeated one is removed. One lookup of the header either way.
fn sane_request_id(headers: &mut http::HeaderMap) -> Option<HeaderValue> {
    let mut ids = headers.get_all(&X_REQUEST_ID_NAME).iter();
    match (ids.next(), ids.next()) {
        (None, _) => None,
        (Some(id), None) if is_sane_request_id(id) => Some(id.clone()),
        _ => {
            headers.remove(&X_REQUEST_ID_NAME);
            None
        }
    }
}

/// Keeps a sane incoming `X-Request-Id` (an insane or repeated one is
/// dropped), else makes one; puts it in the request's extensions as a
/// [`RequestId`] and echoes it on the response unless the application set
/// its own. One layer for what tower-http's `SetRequestId` and
/// `PropagateRequestId` do in two, plus the sanity check.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestIdLayer;

impl<S> Layer<S> for RequestIdLayer {
    type Service = WharfRequestId<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WharfRequestId { inner }
    }
}

/// The service made by [`RequestIdLayer`].
#[derive(Debug, Clone)]
pub struct WharfRequestId<S> {
    inner: S,
}

impl<S, B, ResB> Service<Request<B>> for WharfRequestId<S>
where
    S: Service<Request<B>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = RequestIdFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let id = sane_request_id(request.headers_mut()).or_else(|| {
            let made = MakeWharfRequestId.make_request_id(&request)?;
            let made = made.header_value().clone();
            request
                .headers_mut()
                .insert(X_REQUEST_ID_NAME.clone(), made.clone());
            Some(made)
        });
        if let Some(id) = &id {
            request.extensions_mut().insert(RequestId::new(id.clone()));
        }
        RequestIdFuture {
            inner: self.inner.call(request),
            id,
        }
    }
}

pin_project! {
    /// Future of [`WharfRequestId`].
    pub struct RequestIdFuture<F> {
        #[pin]
        inner: F,
        id: Option<HeaderValue>,
    }
}

impl<F, B, E> Future for RequestIdFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        if let Some(id) = this.id.take() {
            super::default_headers::insert_if_absent(
                response.headers_mut(),
                &X_REQUEST_ID_NAME,
                || id,
            );
        }
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drops an incoming request id that is not sane, as the layer does.
    fn drop_insane_request_id<B>(mut request: Request<B>) -> Request<B> {
        sane_request_id(request.headers_mut());
        request
    }

    #[test]
    fn ids_are_unique_and_sane() {
        let a = MakeWharfRequestId::next_id();
        let b = MakeWharfRequestId::next_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        // The process seed, then the scrambled counter, as lowercase hex.
        assert_eq!(a[..16], format!("{:016x}", process_seed()));
        assert!(
            a.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')),
            "{a}"
        );
        assert!(is_sane_request_id(&HeaderValue::from_str(&a).unwrap()));
    }

    #[test]
    fn insane_incoming_ids_are_dropped() {
        for bad in ["", "has space", "<script>", &"x".repeat(129)] {
            let req = Request::builder()
                .header(X_REQUEST_ID, bad)
                .body(())
                .unwrap();
            assert!(
                drop_insane_request_id(req)
                    .headers()
                    .get(X_REQUEST_ID)
                    .is_none(),
                "{bad:?}"
            );
        }
        let req = Request::builder()
            .header(X_REQUEST_ID, "abc-123:4.5_6")
            .body(())
            .unwrap();
        assert_eq!(
            drop_insane_request_id(req).headers()[X_REQUEST_ID],
            "abc-123:4.5_6"
        );
        let req = Request::builder()
            .header(X_REQUEST_ID, "a")
            .header(X_REQUEST_ID, "b")
            .body(())
            .unwrap();
        assert!(drop_insane_request_id(req)
            .headers()
            .get(X_REQUEST_ID)
            .is_none());
    }
}
