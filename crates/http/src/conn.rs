//! One accepted connection: byte-level tracking for the header-read and idle
//! timeouts, in-flight accounting, and the drain protocol.
//!
//! hyper's own `header_read_timeout` closes a slow HTTP/1 client without an
//! answer and shares one timer between "idle between requests" and "slow to
//! send headers", and hyper-util's protocol detection has no timer at all. So
//! wharf tracks both itself: [`TrackedIo`] sees every byte read, the
//! connection's service sees every request start and every response end, and a
//! watchdog beside the hyper connection future acts on the deadlines.
//!
//! Kept whole although over 600 lines: `ConnState`, the `TrackedIo` that feeds
//! it bytes and the `ConnService` that feeds it requests are one protocol over
//! shared counters, and they change together.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::body::{BoxError, ResponseBody};

/// The whole request pipeline as one cloneable service: what a connection
/// drives (built by the middleware module).
pub(crate) type AppService = tower::util::BoxCloneSyncService<
    http::Request<RequestBody>,
    http::Response<ResponseBody>,
    std::convert::Infallible,
>;

/// Peer and local addresses of the connection a request came in on, in the
/// request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectInfo {
    /// The client's address (the TCP peer: a proxy, when there is one).
    pub peer: SocketAddr,
    /// The local address it connected to.
    pub local: SocketAddr,
}

const NONE: u64 = u64::MAX;
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0";
/// The answers this layer writes itself, before hyper has a request to give
/// the middleware: built once per server, with the security headers the
/// middleware puts on every other response.
#[derive(Debug)]
pub(crate) struct RawAnswers {
    request_timeout: Bytes,
    uri_too_long: Bytes,
    bad_request: Bytes,
    header_too_large: Bytes,
}

impl RawAnswers {
    pub(crate) fn new(headers: &[(http::HeaderName, http::HeaderValue)]) -> Self {
        let answer = |status: &str| {
            let body = format!("{status}\n");
            let mut text = format!(
                "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\n",
                body.len()
            )
            .into_bytes();
            for (name, value) in headers {
                text.extend_from_slice(name.as_str().as_bytes());
                text.extend_from_slice(b": ");
                text.extend_from_slice(value.as_bytes());
                text.extend_from_slice(b"\r\n");
            }
            text.extend_from_slice(b"\r\n");
            text.extend_from_slice(body.as_bytes());
            Bytes::from(text)
        };
        Self {
            request_timeout: answer("408 Request Timeout"),
            uri_too_long: answer("414 URI Too Long"),
            bad_request: answer("400 Bad Request"),
            header_too_large: answer("431 Request Header Fields Too Large"),
        }
    }

    /// Ours in place of hyper's own HTTP/1 error answer `written` (a head it
    /// writes for a request it could not parse or whose head overflowed its
    /// buffer: bare, without the security headers), when it is one.
    fn instead_of(&self, written: &[u8]) -> Option<&Bytes> {
        let status = written.strip_prefix(b"HTTP/1.")?.get(2..5)?;
        match status {
            b"400" => Some(&self.bad_request),
            b"431" => Some(&self.header_too_large),
            _ => None,
        }
    }
}

/// What the watchdog does when a deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deadline {
    /// The request head did not arrive in time.
    HeaderRead,
    /// The connection sat idle for the keep-alive timeout.
    Idle,
    /// An HTTP/1 connection has been at rest long enough to release its
    /// hyper state (buffers) until the next request.
    Release,
    /// Nothing is due; look again.
    Recheck,
}

/// Shared state of one connection; updated from the IO wrapper, the service and
/// response bodies (which HTTP/2 drives from other tasks, hence atomics).
#[derive(Debug)]
pub(crate) struct ConnState {
    start: Instant,
    in_flight: AtomicUsize,
    /// Requests started on this connection.
    started: AtomicU64,
    /// Milliseconds since `start` when the current request head began, or NONE.
    head_started: AtomicU64,
    /// Whether any byte of the current request head has arrived.
    head_bytes: AtomicBool,
    idle_since: AtomicU64,
    first_read: AtomicBool,
    http2: AtomicBool,
    timed_out: AtomicBool,
    draining: AtomicBool,
    /// Bytes of the current HTTP/1 request head that have arrived, and
    /// whether its request line has ended (a line feed arrived).
    head_len: AtomicUsize,
    line_ended: AtomicBool,
    /// Longest request line (method, target, version) before answering 414.
    max_request_line: usize,
    answers: Arc<RawAnswers>,
    uri_too_long: AtomicBool,
    /// Bytes were written to the stream since it was last flushed (hyper
    /// flushes the stream only once its own write buffer is empty).
    unflushed: AtomicBool,
    /// The latest request came with a body that may not have been read to
    /// its end (hyper would still have to read or discard it).
    body_unread: AtomicBool,
}

impl ConnState {
    pub(crate) fn new(max_request_line: usize, answers: Arc<RawAnswers>) -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            // The first request's head is due from the moment of connecting.
            head_started: AtomicU64::new(0),
            head_bytes: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            first_read: AtomicBool::new(false),
            http2: AtomicBool::new(false),
            timed_out: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            head_len: AtomicUsize::new(0),
            line_ended: AtomicBool::new(false),
            max_request_line,
            answers,
            uri_too_long: AtomicBool::new(false),
            unflushed: AtomicBool::new(false),
            body_unread: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// Counts bytes of a request head as they are read. Also called with the
    /// bytes hyper had read but not used when its connection was released:
    /// the start of a request pipelined behind the last one (read while it
    /// was in flight, when reads are not counted), whose head has begun.
    pub(crate) fn on_read(&self, bytes: &[u8]) {
        if !self.first_read.swap(true, Ordering::Relaxed) {
            let probe = &bytes[..bytes.len().min(HTTP2_PREFACE.len())];
            if HTTP2_PREFACE.starts_with(probe) {
                self.http2.store(true, Ordering::Relaxed);
            }
        }
        if self.http2.load(Ordering::Relaxed) || self.in_flight.load(Ordering::Acquire) > 0 {
            return;
        }
        self.head_bytes.store(true, Ordering::Relaxed);
        if !self.line_ended.load(Ordering::Relaxed) {
            if bytes.contains(&b'\n') {
                self.line_ended.store(true, Ordering::Relaxed);
            } else if self.head_len.fetch_add(bytes.len(), Ordering::Relaxed) + bytes.len()
                > self.max_request_line
            {
                self.uri_too_long.store(true, Ordering::Relaxed);
            }
        }
        self.mark_head_started();
    }

    /// The current request head began now, unless it had already.
    fn mark_head_started(&self) {
        let now = self.now_ms();
        let _ = self
            .head_started
            .compare_exchange(NONE, now, Ordering::AcqRel, Ordering::Relaxed);
    }

    /// Records the protocol the connection turned out to speak. The first
    /// read only guesses (a first read of `P` could begin either the HTTP/2
    /// preface or `PUT`); the server knows once it hands the connection to
    /// hyper. An HTTP/1 connection taken for HTTP/2 has its head start now.
    pub(crate) fn set_http2(&self, http2: bool) {
        if self.http2.swap(http2, Ordering::Relaxed) && !http2 {
            self.head_bytes.store(true, Ordering::Relaxed);
            self.mark_head_started();
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started.store(NONE, Ordering::Release);
        self.head_bytes.store(false, Ordering::Relaxed);
        self.head_len.store(0, Ordering::Relaxed);
        self.line_ended.store(false, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }

    /// Whether no request has started on this connection yet: a client that
    /// just connected has its first request on the way, and closing the
    /// connection now would lose it.
    pub(crate) fn is_fresh(&self) -> bool {
        self.started.load(Ordering::Relaxed) == 0
    }

    /// Requests started on this connection so far.
    pub(crate) fn requests_started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// An HTTP/1 connection with no request in flight: its client may be
    /// sending the next request right now.
    pub(crate) fn is_idle_http1(&self) -> bool {
        !self.http2.load(Ordering::Relaxed) && self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Whether an HTTP/1 connection has nothing under way: no request in
    /// flight, no byte of the next one read, every response byte flushed and
    /// the last request's body read. Its hyper state can then be dropped and
    /// rebuilt when the next request arrives.
    pub(crate) fn is_at_rest_http1(&self) -> bool {
        self.is_idle_http1()
            && self.head_started.load(Ordering::Acquire) == NONE
            && !self.unflushed.load(Ordering::Relaxed)
            && !self.body_unread.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
            && !self.timed_out.load(Ordering::Relaxed)
    }

    /// Whether the next write can only be hyper's own answer to the head
    /// being read: HTTP/1, no request in flight, a head under way (none has
    /// been handed to the service yet), and every byte of the last response
    /// flushed, so a write now cannot be the tail of a served response. (A
    /// bad head pipelined behind a request in flight is read uncounted: it
    /// still gets hyper's bare answer.)
    fn awaits_hyper_answer(&self) -> bool {
        self.is_idle_http1()
            && self.head_started.load(Ordering::Acquire) != NONE
            && self.head_bytes.load(Ordering::Relaxed)
            && !self.unflushed.load(Ordering::Relaxed)
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub(crate) fn set_timed_out(&self) {
        self.timed_out.store(true, Ordering::Relaxed);
    }

    /// The next deadline and what to do at it. `release_after`, for an
    /// HTTP/1 connection whose hyper state can be released: how long it
    /// stays at rest first. Nothing wakes the connection's loop when it
    /// comes to rest, so one not at rest is looked at again that much later.
    pub(crate) fn next_deadline(
        &self,
        header_read_timeout: Duration,
        keepalive_timeout: Duration,
        release_after: Option<Duration>,
    ) -> (Instant, Deadline) {
        let timer = self.timer_deadline(header_read_timeout, keepalive_timeout);
        let Some(after) = release_after else {
            return timer;
        };
        let release = if self.is_at_rest_http1() {
            (
                self.at(self.idle_since.load(Ordering::Acquire)) + after,
                Deadline::Release,
            )
        } else {
            (Instant::now() + after, Deadline::Recheck)
        };
        if release.0 < timer.0 {
            release
        } else {
            timer
        }
    }

    /// The header-read or keep-alive deadline.
    fn timer_deadline(
        &self,
        header_read_timeout: Duration,
        keepalive_timeout: Duration,
    ) -> (Instant, Deadline) {
        let busy = self.in_flight.load(Ordering::Acquire) > 0;
        let head = self.head_started.load(Ordering::Acquire);
        if busy {
            return (
                Instant::now() + header_read_timeout.min(keepalive_timeout),
                Deadline::Recheck,
            );
        }
        // HTTP/2 connections are bound by it only until their first request
        // (an idle HTTP/2 connection between requests is normal).
        let fresh_h2 = self.http2.load(Ordering::Relaxed) && self.is_fresh();
        if head != NONE && (!self.http2.load(Ordering::Relaxed) || fresh_h2) {
            return (self.at(head) + header_read_timeout, Deadline::HeaderRead);
        }
        let idle = self.idle_since.load(Ordering::Acquire);
        (self.at(idle) + keepalive_timeout, Deadline::Idle)
    }
}

/// Held while a request is in flight; dropped with its response body.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let now = self.0.now_ms();
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle_since.store(now, Ordering::Release);
        }
    }
}

pin_project! {
    /// The accepted stream, watched byte by byte.
    #[derive(Debug)]
    pub(crate) struct TrackedIo<T> {
        #[pin]
        inner: T,
        state: Arc<ConnState>,
        answered_timeout: bool,
        // Bytes already read from `inner` (and counted) that the next reads
        // return first.
        prefix: Bytes,
    }
}

impl<T> TrackedIo<T> {
    pub(crate) fn new(inner: T, state: Arc<ConnState>) -> Self {
        Self {
            inner,
            state,
            answered_timeout: false,
            prefix: Bytes::new(),
        }
    }

    /// Puts bytes already read back in front of the stream.
    pub(crate) fn unread(&mut self, bytes: Bytes) {
        if bytes.is_empty() {
            return;
        }
        if self.prefix.is_empty() {
            self.prefix = bytes;
        } else {
            let mut joined = bytes::BytesMut::with_capacity(bytes.len() + self.prefix.len());
            joined.extend_from_slice(&bytes);
            joined.extend_from_slice(&self.prefix);
            self.prefix = joined.freeze();
        }
    }
}

/// hyper answers a head it cannot parse (400) or that overflows its buffer
/// (431) itself, bare; wharf's own answer, with the security headers, goes
/// out instead.
fn own_answer<'a>(state: &'a ConnState, written: &[u8]) -> Option<&'a Bytes> {
    if !state.awaits_hyper_answer() {
        return None;
    }
    state.answers.instead_of(written)
}

/// Writes `answer` (best effort, as the 408: one write into an idle socket
/// buffer) for hyper's `len` bytes, which count as written; the connection
/// then ends, as it would have after hyper's.
fn answer_instead<T: AsyncWrite>(
    inner: Pin<&mut T>,
    cx: &mut Context<'_>,
    state: &ConnState,
    answer: &Bytes,
    len: usize,
) -> Poll<io::Result<usize>> {
    let _ = inner.poll_write(cx, answer);
    state.set_timed_out();
    Poll::Ready(Ok(len))
}

impl<T: AsyncRead + AsyncWrite> AsyncRead for TrackedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut this = self.project();
        if this.state.timed_out.load(Ordering::Relaxed) {
            // The head did not arrive in time. Where the client sent part of a
            // request, answer 408 (best effort: one write into an idle socket
            // buffer), then report end of stream so hyper closes.
            if !*this.answered_timeout && this.state.head_bytes.load(Ordering::Relaxed) {
                *this.answered_timeout = true;
                let answer = &this.state.answers.request_timeout;
                let _ = this.inner.as_mut().poll_write(cx, answer);
            }
            return Poll::Ready(Ok(()));
        }
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            if n == this.prefix.len() {
                // Not `split_to`: an empty remainder would keep the buffer.
                *this.prefix = Bytes::new();
            } else {
                bytes::Buf::advance(this.prefix, n);
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        ready!(this.inner.as_mut().poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            this.state.on_read(read);
        }
        if this.state.uri_too_long.load(Ordering::Relaxed) {
            // The request line is longer than any we serve: answer 414 (best
            // effort, as for 408) and end the connection.
            buf.set_filled(before);
            if !*this.answered_timeout {
                *this.answered_timeout = true;
                let answer = &this.state.answers.uri_too_long;
                let _ = this.inner.as_mut().poll_write(cx, answer);
            }
            this.state.set_timed_out();
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        if let Some(answer) = own_answer(this.state, buf) {
            return answer_instead(this.inner.as_mut(), cx, this.state, answer, buf.len());
        }
        this.state.unflushed.store(true, Ordering::Relaxed);
        this.inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut this = self.project();
        if let Some(answer) = bufs.first().and_then(|first| own_answer(this.state, first)) {
            let len = bufs.iter().map(|b| b.len()).sum();
            return answer_instead(this.inner.as_mut(), cx, this.state, answer, len);
        }
        this.state.unflushed.store(true, Ordering::Relaxed);
        this.inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        ready!(this.inner.poll_flush(cx))?;
        this.state.unflushed.store(false, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// Called as each request starts; the value it returns is dropped when the
/// response has been sent (or abandoned). A supervisor uses it to count
/// requests and requests in flight across every route, health checks included.
pub type RequestHook = Arc<dyn Fn() -> Box<dyn Send + Sync> + Send + Sync>;

pin_project! {
    /// A response body that keeps its request counted as in flight until
    /// hyper has finished with it.
    pub struct TrackedBody {
        #[pin]
        inner: ResponseBody,
        in_flight: InFlight,
        hook_guard: Option<Box<dyn Send + Sync>>,
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The per-connection hyper service: counts requests, adds connection facts,
/// asks HTTP/1 clients to go away while draining, and calls the app stack.
pub(crate) struct ConnService {
    /// The connection's own copy of the app stack. Its requests come one at
    /// a time from the connection's task, so the lock is never contended; it
    /// spares a clone of the whole stack per request.
    pub(crate) app: std::sync::Mutex<AppService>,
    pub(crate) state: Arc<ConnState>,
    /// The connection's `ConnectInfo` and what the acceptor added (e.g. TLS
    /// facts); copied into every request.
    pub(crate) extensions: Arc<http::Extensions>,
    pub(crate) hook: Option<RequestHook>,
    /// Resolves each request's client once (`ServerConfig::client_addr`).
    pub(crate) client_addr: Option<Arc<crate::ClientAddrResolver>>,
}

pin_project! {
    /// A request's body as hyper delivers it; clears the connection's
    /// `body_unread` once read to its end.
    #[derive(Debug)]
    pub(crate) struct RequestBody {
        #[pin]
        inner: Incoming,
        state: Option<Arc<ConnState>>,
    }
}

impl http_body::Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        if frame.is_none() || this.inner.is_end_stream() {
            if let Some(state) = this.state.take() {
                state.body_unread.store(false, Ordering::Relaxed);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        if req.version() == Version::HTTP_11
            && req.headers().get_all(http::header::HOST).iter().count() != 1
        {
            // RFC 9112 §3.2: an HTTP/1.1 request without exactly one Host is 400.
            let in_flight = self.state.request_started();
            let mut response = Response::new(crate::body::full(
                "400 Bad Request: exactly one Host header is required\n",
            ));
            *response.status_mut() = http::StatusCode::BAD_REQUEST;
            response
                .headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            return Box::pin(std::future::ready(Ok(response.map(|inner| TrackedBody {
                inner,
                in_flight,
                hook_guard: None,
            }))));
        }
        let in_flight = self.state.request_started();
        let has_body = !http_body::Body::is_end_stream(req.body());
        self.state.body_unread.store(has_body, Ordering::Relaxed);
        let body_state = has_body.then(|| Arc::clone(&self.state));
        let mut req = req.map(|inner| RequestBody {
            inner,
            state: body_state,
        });
        let hook_guard = self.hook.as_ref().map(|hook| hook());
        let http1 = req.version() < Version::HTTP_2;
        // The connection's extensions hold its `ConnectInfo` and what the
        // acceptor added (TLS facts, say): one clone of a map sized for them,
        // instead of inserts that grow the request's map entry by entry.
        let conn_extensions = (*self.extensions).clone();
        if req.extensions().is_empty() {
            *req.extensions_mut() = conn_extensions;
        } else {
            req.extensions_mut().extend(conn_extensions);
        }
        if let Some(resolver) = &self.client_addr {
            resolver.insert(&mut req);
        }
        let response = {
            let mut app = self
                .app
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // tower's contract is `poll_ready` before `call`. Every layer of
            // the stack is always ready; were one not, a clone of the stack
            // waits for readiness on its own, as `oneshot` does.
            let waker = std::task::Waker::noop();
            match tower::Service::poll_ready(&mut *app, &mut Context::from_waker(waker)) {
                Poll::Ready(Ok(())) => tower::Service::call(&mut *app, req),
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => Box::pin(app.clone().oneshot(req)),
            }
        };
        let state = Arc::clone(&self.state);
        Box::pin(async move {
            let Ok(mut response) = response.await;
            if http1 && state.draining.load(Ordering::Relaxed) {
                response
                    .headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response.map(|inner| TrackedBody {
                inner,
                in_flight,
                hook_guard,
            }))
        })
    }
}
