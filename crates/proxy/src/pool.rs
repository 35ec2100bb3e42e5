//! Keep-alive connections to one upstream server (nginx `keepalive N`).
//!
//! Each server has its own stack of idle HTTP/1.1 connections, most recently
//! used on top. A request takes the top one that is still open, waits until
//! its connection task is ready for another request, and sends; a connection
//! goes back on the stack only when its response body was read to the end
//! (see the `body` module). Beyond the cap the oldest idle connection is closed,
//! and connections idle for longer than the idle timeout are closed when the
//! pool is next used or swept.
//!
//! This is a plain `Mutex<Vec<_>>` per server over
//! `hyper::client::conn::http1` rather than hyper-util's general client: no
//! per-request key hashing, no spawned "return to pool" task and no checkout
//! waiters, which is most of what a request cost on top of the HTTP/1 work.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The body type sent upstream: what the pool's connections carry.
pub(crate) type UpstreamRequestBody =
    http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, wharf_http::BoxError>;

/// A connection's request handle.
pub(crate) type Sender = SendRequest<UpstreamRequestBody>;

/// Why an attempt on one server failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The TCP connection could not be made.
    #[error("connect")]
    Connect(#[source] std::io::Error),
    /// The TCP connection was not made in time (`proxy_connect_timeout`).
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The HTTP/1 connection could not be set up.
    #[error("HTTP/1 handshake")]
    Handshake(#[source] hyper::Error),
    /// The request failed after it was written (or while it was).
    #[error("request")]
    Request {
        #[source]
        error: hyper::Error,
        /// It went over a connection taken from the pool, which the server
        /// may have closed at the same moment (nginx then tries again).
        reused: bool,
    },
}

impl SendError {
    /// No connection was made: safe to try the next server for any method.
    pub(crate) fn is_connect(&self) -> bool {
        matches!(
            self,
            Self::Connect(_) | Self::ConnectTimeout(_) | Self::Handshake(_)
        )
    }

    /// A timeout (a `504`, as nginx), not a refusal.
    pub(crate) fn is_timeout(&self) -> bool {
        matches!(self, Self::ConnectTimeout(_)) || wharf_http::is_timeout(self)
    }
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// One server's idle connections.
pub(crate) struct Pool {
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    /// Connections opened to the server (requests and upgrades).
    pub(crate) opened: AtomicU64,
    /// Requests sent over a kept-alive connection from the pool.
    pub(crate) reused: AtomicU64,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("idle", &self.idle_count())
            .field("max_idle", &self.max_idle)
            .field("opened", &self.opened)
            .field("reused", &self.reused)
            .finish()
    }
}

impl Pool {
    /// A pool keeping at most `max_idle` idle connections (0 keeps none).
    pub(crate) fn new(max_idle: usize) -> Self {
        Self {
            idle: Mutex::new(Vec::new()),
            max_idle,
            opened: AtomicU64::new(0),
            reused: AtomicU64::new(0),
        }
    }

    /// Idle connections held now.
    pub(crate) fn idle_count(&self) -> usize {
        self.idle.lock().map_or(0, |idle| idle.len())
    }

    /// The most recently used idle connection that is still open, closing
    /// those idle for longer than `idle_timeout` on the way.
    pub(crate) fn take(&self, idle_timeout: Duration) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        expire(&mut idle, idle_timeout);
        while let Some(entry) = idle.pop() {
            if !entry.sender.is_closed() {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Keeps a connection whose last response was read to the end; beyond
    /// the cap the oldest idle one is closed.
    pub(crate) fn put(&self, sender: Sender) {
        if self.max_idle == 0 || sender.is_closed() {
            return;
        }
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        if idle.len() >= self.max_idle {
            idle.remove(0);
        }
        idle.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Closes connections idle for longer than `idle_timeout` or closed by
    /// the server.
    pub(crate) fn sweep(&self, idle_timeout: Duration) {
        if let Ok(mut idle) = self.idle.lock() {
            expire(&mut idle, idle_timeout);
            idle.retain(|entry| !entry.sender.is_closed());
        }
    }
}

/// Drops the entries idle too long: they are oldest first.
fn expire(idle: &mut Vec<Idle>, idle_timeout: Duration) {
    if idle.is_empty() {
        return;
    }
    let now = Instant::now();
    let stale = idle
        .iter()
        .take_while(|entry| now.duration_since(entry.since) > idle_timeout)
        .count();
    idle.drain(..stale);
}

/// A TCP connection to `addr` within `timeout` (`proxy_connect_timeout`),
/// for pooled requests and for upgrades alike.
pub(crate) async fn connect_tcp(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, SendError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(SendError::Connect(error)),
        Err(_) => return Err(SendError::ConnectTimeout(timeout)),
    };
    // Requests and answers are written whole: Nagle would only add delay.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A new connection to `addr`, its connection task spawned.
pub(crate) async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Sender, SendError> {
    let stream = connect_tcp(addr, timeout).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(SendError::Handshake)?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "Upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// Sends `request` over an idle connection of `pool` if one is usable, or
/// else over a new connection to `addr`. Gives back the connection with the
/// response: it returns to the pool once the body was read to the end.
pub(crate) async fn send(
    pool: &Pool,
    addr: SocketAddr,
    connect_timeout: Duration,
    idle_timeout: Duration,
    mut request: http::Request<UpstreamRequestBody>,
) -> Result<(http::Response<Incoming>, Sender), SendError> {
    while let Some(mut sender) = pool.take(idle_timeout) {
        // A connection back in the pool is ready as soon as its task has run
        // once more; an error here means it closed meanwhile.
        if sender.ready().await.is_err() {
            continue;
        }
        match sender.try_send_request(request).await {
            Ok(response) => {
                pool.reused.fetch_add(1, Ordering::Relaxed);
                return Ok((response, sender));
            }
            Err(mut error) => match error.take_message() {
                // Never written: the connection was closing. Try another.
                Some(unsent) => request = unsent,
                None => {
                    return Err(SendError::Request {
                        error: error.into_error(),
                        reused: true,
                    })
                }
            },
        }
    }
    let mut sender = connect(addr, connect_timeout).await?;
    pool.opened.fetch_add(1, Ordering::Relaxed);
    match sender.send_request(request).await {
        Ok(response) => Ok((response, sender)),
        Err(error) => Err(SendError::Request {
            error,
            reused: false,
        }),
    }
}
