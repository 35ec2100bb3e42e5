//! [`Server`]: accepts on listeners and serves a tower service with limits,
//! timeouts, a connection cap and graceful drain.
//!
//! The server and its accept loop are here; each connection's life, from
//! its first bytes to its close, is in `connection`, which this module
//! only calls into.

mod connection;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use http::{Request, Response};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::Service;

use crate::accept::{Acceptor, PlainAcceptor};
use crate::body::{Body, BoxError};
use crate::config::{ServerConfig, MIN_HEADER_BYTES};
pub(crate) use crate::conn::AppService;
use crate::conn::{ConnectInfo, RequestHook};
use crate::health::Health;
use crate::listener::Listener;
use crate::middleware::access_log::RequestObserver;

/// How long connections get to close after the grace period before the
/// server stops waiting for them.
const FORCE_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// The longest an idle HTTP/1 connection (fresh or kept alive) waits for its
/// next request during a drain before it is closed.
const FRESH_GRACE: Duration = Duration::from_secs(1);

/// Why serving failed to start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// No listener was given.
    #[error("no listener to accept on")]
    NoListeners,
    /// A listener could not be registered with the runtime.
    #[error("cannot use listener: {0}")]
    Listener(#[from] std::io::Error),
    /// A configured limit is out of range.
    #[error("invalid server configuration: {0}")]
    Config(String),
}

/// What happened during shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DrainReport {
    /// Connections open when the drain began.
    pub open_at_drain: usize,
    /// Connections still open at the end of the grace period, closed forcibly.
    pub forced: usize,
}

/// The lifecycle phase broadcast to every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    Draining,
    Closing,
}

/// An HTTP/1.1 + HTTP/2 (h2c prior knowledge) server for any tower service.
///
/// It owns connections, not routes: give it bound [`Listener`]s and a service,
/// and a future that resolves when it should shut down. See the
/// [crate docs](crate) for an example.
#[derive(Clone)]
pub struct Server {
    config: ServerConfig,
    health: Option<Health>,
    hook: Option<RequestHook>,
    observer: Option<RequestObserver>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .field("health", &self.health)
            .field("request_hook", &self.hook.is_some())
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl Server {
    /// A server with these limits.
    pub fn new(config: ServerConfig) -> Self {
        Self {
            config,
            health: None,
            hook: None,
            observer: None,
        }
    }

    /// Reports every finished request (method, path, host, status, duration,
    /// bytes) to `observer`: the seam for request metrics.
    #[must_use]
    pub fn with_observer(mut self, observer: RequestObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Calls `hook` as every request starts (health checks included) and
    /// drops what it returns when the response is done: the seam for request
    /// and in-flight counters kept outside the server.
    #[must_use]
    pub fn with_request_hook(mut self, hook: RequestHook) -> Self {
        self.hook = Some(hook);
        self
    }

    /// Serves the health routes (`/_status`, `/health/live`, `/health/ready`)
    /// in front of the application; readiness fails once draining starts.
    #[must_use]
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    fn http1_builder(&self) -> http1::Builder {
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // wharf runs its own header-read and idle timers (see `conn`),
            // which can answer 408 and tell idle from slow.
            .header_read_timeout(None)
            .keep_alive(true)
            // Past the limit, up to this, the head is still read whole and
            // answered 431 through the middleware (security headers included).
            .max_buf_size(crate::middleware::head_read_limit(
                self.config.max_header_bytes,
            ));
        builder
    }

    fn http2_builder(&self) -> http2::Builder<TokioExecutor> {
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.config.http2_max_concurrent_streams)
            // As for HTTP/1: a header list up to this is answered 431 by the
            // middleware (with the security headers), past it by h2 itself.
            .max_header_list_size(
                u32::try_from(crate::middleware::head_read_limit(
                    self.config.max_header_bytes,
                ))
                .unwrap_or(u32::MAX),
            )
            // Answer a client resetting streams en masse (CVE-2023-44487) with GOAWAY.
            .max_pending_accept_reset_streams(Some(20))
            .keep_alive_interval(Some(self.config.keepalive_timeout / 3))
            .keep_alive_timeout(Duration::from_secs(20));
        builder
    }

    /// Accepts on every listener and serves `app` until `shutdown` resolves,
    /// then drains: stops accepting (new connections are refused), marks
    /// readiness as failing, lets in-flight requests finish (HTTP/1 responses
    /// carry `Connection: close`, HTTP/2 gets GOAWAY), closes idle
    /// connections, and after the grace period closes what is left.
    pub async fn serve<S, B>(
        self,
        listeners: Vec<Listener>,
        app: S,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<DrainReport, ServeError>
    where
        S: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError> + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.serve_with(listeners, PlainAcceptor, app, shutdown)
            .await
    }

    /// Like [`serve`](Self::serve), but every accepted TCP stream first goes
    /// through `acceptor` (a TLS handshake, a PROXY protocol header): see
    /// [`Acceptor`]. The header-read and idle timers run on the stream the
    /// acceptor returns, so they see decrypted bytes. An accept that fails is
    /// logged at debug level and closes that connection only; one that takes
    /// longer than the header-read timeout is abandoned.
    pub async fn serve_with<A, S, B>(
        self,
        listeners: Vec<Listener>,
        acceptor: A,
        app: S,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<DrainReport, ServeError>
    where
        A: Acceptor,
        S: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError> + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        if listeners.is_empty() {
            return Err(ServeError::NoListeners);
        }
        if self.config.max_header_bytes < MIN_HEADER_BYTES {
            return Err(ServeError::Config(format!(
                "max_header_bytes must be at least {MIN_HEADER_BYTES}"
            )));
        }
        if self.config.max_connections == 0 {
            return Err(ServeError::Config(
                "max_connections must be at least 1".to_owned(),
            ));
        }
        let listeners = listeners
            .into_iter()
            .map(Listener::into_tokio)
            .collect::<Result<Vec<_>, _>>()?;

        let security_headers = crate::middleware::security_headers(&self.config);
        let answers = Arc::new(crate::conn::RawAnswers::new(&security_headers));
        let shared = Arc::new(Shared {
            app: crate::middleware::stack(
                &self.config,
                security_headers,
                self.health.clone(),
                self.observer.clone(),
                app,
            ),
            http1: self.http1_builder(),
            http2: self.http2_builder(),
            config: self.config.clone(),
            answers,
            slots: Arc::new(Semaphore::new(self.config.max_connections)),
            hook: self.hook.clone(),
            client_addr: self.config.client_addr.clone().map(Arc::new),
            open: std::sync::atomic::AtomicUsize::new(0),
        });
        let (phase_tx, phase_rx) = watch::channel(Phase::Serving);

        let accept_loops: Vec<_> = listeners
            .into_iter()
            .map(|listener| {
                tokio::spawn(accept_loop(
                    listener,
                    acceptor.clone(),
                    Arc::clone(&shared),
                    phase_rx.clone(),
                ))
            })
            .collect();

        shutdown.await;

        if let Some(health) = &self.health {
            health.set_draining();
        }
        let max = self.config.max_connections;
        let open_at_drain = shared.open.load(std::sync::atomic::Ordering::Relaxed);
        let _ = phase_tx.send(Phase::Draining);
        for accept in accept_loops {
            // The loop ends as soon as it sees the phase change; its listener
            // is dropped with it, so new connections are refused from here on.
            let _ = accept.await;
        }
        tracing::info!(
            open_connections = open_at_drain,
            grace_period_s = self.config.graceful_timeout.as_secs_f64(),
            "Draining: stopped accepting, waiting for in-flight requests"
        );
        let all_slots = u32::try_from(max).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(
            self.config.graceful_timeout,
            shared.slots.acquire_many(all_slots),
        )
        .await;
        let mut report = DrainReport {
            open_at_drain,
            forced: 0,
        };
        if drained.is_err() {
            report.forced = max - shared.slots.available_permits();
            tracing::warn!(
                connections = report.forced,
                "Grace period over; closing connections that are still busy"
            );
            let _ = phase_tx.send(Phase::Closing);
            let _ =
                tokio::time::timeout(FORCE_CLOSE_WAIT, shared.slots.acquire_many(all_slots)).await;
        }
        tracing::info!(forced = report.forced, "Drained");
        Ok(report)
    }
}

struct Shared {
    hook: Option<RequestHook>,
    /// `config.client_addr`, shared by every connection.
    client_addr: Option<Arc<crate::ClientAddrResolver>>,
    /// Connections being served (their permits are held too).
    open: std::sync::atomic::AtomicUsize,
    app: AppService,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    config: ServerConfig,
    /// The 408 and 414 the connection layer writes itself.
    answers: Arc<crate::conn::RawAnswers>,
    slots: Arc<Semaphore>,
}

async fn accept_loop<A: Acceptor>(
    listener: TcpListener,
    acceptor: A,
    shared: Arc<Shared>,
    mut phase: watch::Receiver<Phase>,
) {
    let local = listener.local_addr().ok();
    loop {
        if *phase.borrow_and_update() != Phase::Serving {
            // Closing a listening socket resets what is queued on it: take
            // the queue until the kernel reports nothing more can arrive
            // (see `drain`), then close.
            let swept = crate::drain::close_listener(listener, |listener| {
                sweep_backlog(listener, &acceptor, &shared, &phase)
            })
            .await;
            if swept > 0 {
                tracing::info!(
                    connections = swept,
                    "Accepted the listen backlog before closing"
                );
            }
            return;
        }
        // At the connection cap, wait for a slot before accepting: further
        // clients queue in the kernel backlog instead of being refused.
        let permit = tokio::select! {
            permit = Arc::clone(&shared.slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = phase.changed() => continue,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = phase.changed() => continue,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(%error, "Accept failed; retrying in 50 ms");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        spawn_connection(stream, peer, local, &acceptor, &shared, &phase, permit);
    }
}

fn spawn_connection<A: Acceptor>(
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    local: Option<std::net::SocketAddr>,
    acceptor: &A,
    shared: &Arc<Shared>,
    phase: &watch::Receiver<Phase>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "Cannot set TCP_NODELAY");
    }
    let info = ConnectInfo {
        peer,
        local: local.unwrap_or(peer),
    };
    let shared = Arc::clone(shared);
    let phase = phase.clone();
    // Boxed: the handshake's state is needed only until it completes, and
    // a future captured by the task would stay in the task's allocation for
    // the connection's whole life.
    let accepting = Box::pin(acceptor.accept(stream, info));
    let open = OpenConnection::new(shared);
    let timeout = open.0.config.header_read_timeout;
    // The handshake and the serving future are chained with `then`, and the
    // serving future is built in a plain closure: `Then` holds one or the
    // other, never both, where an async block would keep the handshake's
    // output (the stream) in a slot of its own beside the serving future
    // for the connection's whole life.
    let task = accept_in_time(accepting, info, timeout).then(move |accepted| match accepted {
        Some((io, extensions, info)) => futures_util::future::Either::Left(
            connection::serve_connection(io, extensions, info, open, permit, phase),
        ),
        None => futures_util::future::Either::Right(std::future::ready(())),
    });
    tokio::spawn(task);
}

/// Completes `accepting` within the header-read timeout; `None` (logged)
/// when the handshake fails or takes too long. The client's address from a
/// PROXY protocol header replaces the TCP peer in `info`.
async fn accept_in_time<Io>(
    accepting: impl Future<Output = std::io::Result<crate::Accepted<Io>>>,
    mut info: ConnectInfo,
    timeout: Duration,
) -> Option<(Io, http::Extensions, ConnectInfo)> {
    match tokio::time::timeout(timeout, accepting).await {
        Ok(Ok(accepted)) => {
            if let Some(peer) = accepted.peer {
                info.peer = peer;
            }
            Some((accepted.io, accepted.extensions, info))
        }
        Ok(Err(error)) => {
            tracing::debug!(peer = %info.peer, %error, "Connection not accepted");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %info.peer, "Connection not accepted in time; closed");
            None
        }
    }
}

/// Counts a connection as open until dropped.
struct OpenConnection(Arc<Shared>);

impl OpenConnection {
    fn new(shared: Arc<Shared>) -> Self {
        shared
            .open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(shared)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Accepts every connection queued on `listener` and serves it; returns how
/// many. A draining process calls it before closing its listener, so closing
/// the socket resets none of them (they are served and told `Connection:
/// close`).
fn sweep_backlog<A: Acceptor>(
    listener: &TcpListener,
    acceptor: &A,
    shared: &Arc<Shared>,
    phase: &watch::Receiver<Phase>,
) -> usize {
    let local = listener.local_addr().ok();
    let socket = socket2::SockRef::from(listener);
    let mut swept = 0_usize;
    loop {
        let Ok(permit) = Arc::clone(&shared.slots).try_acquire_owned() else {
            break;
        };
        // The listener is non-blocking: this fails with WouldBlock once the
        // backlog is empty.
        let Ok((socket, peer)) = socket.accept() else {
            break;
        };
        let Some(peer) = peer.as_socket() else {
            continue;
        };
        let stream = std::net::TcpStream::from(socket);
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        let Ok(stream) = tokio::net::TcpStream::from_std(stream) else {
            continue;
        };
        spawn_connection(stream, peer, local, acceptor, shared, phase, permit);
        swept += 1;
    }
    swept
}
