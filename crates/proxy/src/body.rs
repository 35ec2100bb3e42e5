//! Response bodies streamed from an upstream: counted as in flight on their
//! server until finished, cut off when the upstream stalls longer than the
//! read timeout between two reads, and their connection given back to the
//! server's pool once read to the end.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use wharf_http::BoxError;

use crate::pool::Sender;
use crate::upstream::Upstream;

/// Counts one request in flight on a server until dropped, and holds the
/// connection it went over: back to the server's pool when the answer was
/// read to the end ([`finish`](Self::finish)), closed otherwise.
#[derive(Debug)]
pub(crate) struct ActiveGuard {
    upstream: Arc<Upstream>,
    index: usize,
    connection: Option<Sender>,
}

impl ActiveGuard {
    pub(crate) fn new(upstream: &Arc<Upstream>, index: usize) -> Self {
        upstream.peers[index].active.fetch_add(1, Ordering::Relaxed);
        Self {
            upstream: Arc::clone(upstream),
            index,
            connection: None,
        }
    }

    /// The connection the answer is read from.
    pub(crate) fn hold(&mut self, connection: Sender) {
        self.connection = Some(connection);
    }

    /// The answer was read to the end: the connection may serve another.
    pub(crate) fn finish(mut self) {
        if let Some(connection) = self.connection.take() {
            self.upstream.peers[self.index].pool.put(connection);
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.upstream.peers[self.index]
            .active
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Finishes the guard still held, if any.
fn finish(guard: &mut Option<ActiveGuard>) {
    if let Some(guard) = guard.take() {
        guard.finish();
    }
}

/// The upstream stopped sending for longer than the read timeout.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent nothing for {0:?}")]
pub struct UpstreamStalled(Duration);

pin_project! {
    /// An upstream response body with its guard and read timeout.
    pub(crate) struct UpstreamBody<B> {
        #[pin]
        inner: B,
        // Armed when a read finds nothing ready, not before: a response
        // that arrives whole (most do) never touches the timer wheel.
        stall: Option<Pin<Box<Sleep>>>,
        read_timeout: Duration,
        guard: Option<ActiveGuard>,
    }
}

impl<B> UpstreamBody<B> {
    /// An answer body with no bytes to come hands its connection back at once.
    pub(crate) fn new(inner: B, read_timeout: Duration, guard: ActiveGuard) -> Self
    where
        B: Body,
    {
        let mut guard = Some(guard);
        if inner.is_end_stream() {
            finish(&mut guard);
        }
        Self {
            inner,
            stall: None,
            read_timeout,
            guard,
        }
    }
}

impl<B> Body for UpstreamBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(None) => {
                finish(this.guard);
                Poll::Ready(None)
            }
            Poll::Ready(Some(frame)) => {
                // The server stops polling a body that says it has ended
                // (a known length read whole): hand the connection back now.
                if frame.is_ok() && this.inner.is_end_stream() {
                    finish(this.guard);
                }
                // The pause before the next read starts now.
                *this.stall = None;
                Poll::Ready(Some(frame.map_err(Into::into)))
            }
            Poll::Pending => {
                let read_timeout = *this.read_timeout;
                let stall = this
                    .stall
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(read_timeout)));
                if stall.as_mut().poll(cx).is_ready() {
                    this.guard.take();
                    return Poll::Ready(Some(Err(Box::new(UpstreamStalled(*this.read_timeout)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
