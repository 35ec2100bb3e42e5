//! [`Server`]: accepts on listeners and serves a tower service with limits,
//! timeouts, a connection cap and graceful drain.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::Service;

use crate::accept::{Acceptor, PlainAcceptor};
use crate::body::{Body, BoxError};
use crate::config::{ServerConfig, MIN_HEADER_BYTES};
pub(crate) use crate::conn::AppService;
use crate::conn::{ConnService, ConnState, ConnectInfo, Deadline, RequestHook, TrackedIo};
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
        Some((io, extensions, info)) => futures_util::future::Either::Left(serve_connection(
            io, extensions, info, open, permit, phase,
        )),
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

/// How long an HTTP/1 connection stays at rest (no request in flight, nothing
/// of the next one read) before its hyper state — a read buffer of 8 to 16
/// KiB, a write buffer of 8 KiB and the dispatcher — is dropped, to be built
/// again when its next request arrives. nginx frees its request buffers the
/// same way as soon as a keep-alive connection goes idle; a short delay keeps
/// the state for a client's next request when it comes at once.
const RELEASE_AT_REST: Duration = Duration::from_millis(200);

/// The HTTP/2 client preface (RFC 9113 §3.4).
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

type Http1Connection<Io> = http1::UpgradeableConnection<TokioIo<TrackedIo<Io>>, ConnService>;
type Http2Connection<Io> = http2::Connection<TokioIo<TrackedIo<Io>>, ConnService, TokioExecutor>;

/// Where a connection is in its life.
enum Stage<Io> {
    /// Holding only the stream until the first bytes of the next request
    /// arrive: a new connection, or an HTTP/1 one released at rest.
    Waiting(Waiting<Io>),
    Http1(Box<Http1Connection<Io>>),
    Http2(Pin<Box<Http2Connection<Io>>>),
    /// In between (never polled).
    Gone,
}

struct Waiting<Io> {
    io: TrackedIo<Io>,
    /// What has arrived of the next request (on a new connection, up to the
    /// length of the HTTP/2 preface, which decides the protocol).
    buf: [u8; HTTP2_PREFACE.len()],
    filled: usize,
    /// Whether this is a new connection whose protocol is not known yet.
    new: bool,
}

/// What polling a [`Stage`] produced.
enum Event {
    /// The first bytes of a request arrived on a waiting connection.
    Arrived { http2: bool },
    /// The connection is over (with hyper's error, if any).
    Ended(Option<hyper::Error>),
}

impl<Io> Stage<Io>
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    fn poll(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Event> {
        use std::task::Poll;
        match self {
            Stage::Waiting(waiting) => loop {
                let mut read = tokio::io::ReadBuf::new(&mut waiting.buf[waiting.filled..]);
                match std::task::ready!(tokio::io::AsyncRead::poll_read(
                    Pin::new(&mut waiting.io),
                    cx,
                    &mut read
                )) {
                    Err(_) => return Poll::Ready(Event::Ended(None)),
                    Ok(()) if read.filled().is_empty() => {
                        // End of stream: quietly, unless part of a request came
                        // (hyper then answers it as it would any cut-off request).
                        return Poll::Ready(if waiting.filled == 0 {
                            Event::Ended(None)
                        } else {
                            Event::Arrived { http2: false }
                        });
                    }
                    Ok(()) => waiting.filled += read.filled().len(),
                }
                let got = &waiting.buf[..waiting.filled];
                if !waiting.new || !HTTP2_PREFACE.starts_with(got) {
                    return Poll::Ready(Event::Arrived { http2: false });
                }
                if got.len() == HTTP2_PREFACE.len() {
                    return Poll::Ready(Event::Arrived { http2: true });
                }
            },
            Stage::Http1(connection) => Pin::new(&mut **connection)
                .poll(cx)
                .map(|result| Event::Ended(result.err())),
            Stage::Http2(connection) => connection
                .as_mut()
                .poll(cx)
                .map(|result| Event::Ended(result.err())),
            Stage::Gone => Poll::Ready(Event::Ended(None)),
        }
    }

    /// Hands a waiting connection whose request has begun to hyper.
    fn start(&mut self, http2: bool, conn: &Connection) {
        let Stage::Waiting(waiting) = std::mem::replace(self, Stage::Gone) else {
            return;
        };
        let Waiting {
            mut io,
            buf,
            filled,
            ..
        } = waiting;
        io.unread(Bytes::copy_from_slice(&buf[..filled]));
        conn.state.set_http2(http2);
        let service = conn.service();
        *self = if http2 {
            Stage::Http2(Box::pin(
                conn.shared()
                    .http2
                    .serve_connection(TokioIo::new(io), service),
            ))
        } else {
            Stage::Http1(Box::new(
                conn.shared()
                    .http1
                    .serve_connection(TokioIo::new(io), service)
                    .with_upgrades(),
            ))
        };
    }

    /// Drops an HTTP/1 connection's hyper state (and its copy of the app
    /// stack), keeping the stream and anything hyper read but did not use
    /// until its next request.
    fn release(&mut self, conn: &Connection) {
        let Stage::Http1(connection) = std::mem::replace(self, Stage::Gone) else {
            return;
        };
        // `None`: upgraded, the stream belongs to the upgrade now.
        let Some(parts) = connection.into_parts() else {
            return;
        };
        let mut io = parts.io.into_inner();
        // Copied: hyper's read buffer is what releasing frees.
        let pending = !parts.read_buf.is_empty();
        if pending {
            // The start of the next request (one that arrived while the last
            // was in flight): its head has begun, and the header timeout runs.
            conn.state.on_read(&parts.read_buf);
            io.unread(Bytes::copy_from_slice(&parts.read_buf));
        }
        *self = Stage::Waiting(Waiting {
            io,
            buf: [0; HTTP2_PREFACE.len()],
            filled: 0,
            new: false,
        });
        if pending {
            self.start(false, conn);
        }
    }

    /// Asks the connection to finish what it is doing and close; `true` when
    /// it has nothing under way and can be closed now.
    fn graceful_shutdown(&mut self) -> bool {
        match self {
            Stage::Waiting(_) | Stage::Gone => true,
            Stage::Http1(connection) => {
                Pin::new(&mut **connection).graceful_shutdown();
                false
            }
            Stage::Http2(connection) => {
                connection.as_mut().graceful_shutdown();
                false
            }
        }
    }

    /// Closes a waiting connection's stream (TLS `close_notify`, then FIN).
    async fn close(&mut self) {
        if let Stage::Waiting(waiting) = self {
            let _ = tokio::time::timeout(
                FORCE_CLOSE_WAIT,
                tokio::io::AsyncWriteExt::shutdown(&mut waiting.io),
            )
            .await;
        }
    }
}

/// What a connection keeps for its whole life.
struct Connection {
    /// The server's shared state; counts the connection as open.
    open: OpenConnection,
    /// The connection's place under `worker_connections`.
    _permit: tokio::sync::OwnedSemaphorePermit,
    state: Arc<ConnState>,
    info: ConnectInfo,
    /// From the acceptor (e.g. TLS facts); copied into every request.
    extensions: Arc<http::Extensions>,
}

impl Connection {
    fn shared(&self) -> &Shared {
        &self.open.0
    }

    /// The hyper service for the connection's next stretch of requests.
    fn service(&self) -> ConnService {
        ConnService {
            app: std::sync::Mutex::new(self.shared().app.clone()),
            state: Arc::clone(&self.state),
            extensions: Arc::clone(&self.extensions),
            hook: self.shared().hook.clone(),
            client_addr: self.shared().client_addr.clone(),
        }
    }
}

fn serve_connection<Io>(
    stream: Io,
    extensions: http::Extensions,
    info: ConnectInfo,
    open: OpenConnection,
    permit: tokio::sync::OwnedSemaphorePermit,
    phase: watch::Receiver<Phase>,
) -> impl Future<Output = ()> + Send
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let conn_state = Arc::new(ConnState::new(
        open.0.config.max_request_line_bytes,
        Arc::clone(&open.0.answers),
    ));
    let stage = Stage::Waiting(Waiting {
        io: TrackedIo::new(stream, Arc::clone(&conn_state)),
        buf: [0; HTTP2_PREFACE.len()],
        filled: 0,
        new: true,
    });
    let conn = Connection {
        open,
        _permit: permit,
        state: conn_state,
        info,
        extensions: Arc::new({
            // Every request gets the connection's facts in one clone of
            // this map (see `ConnService::call`).
            let mut extensions = extensions;
            extensions.insert(info);
            extensions
        }),
    };
    // The stream goes into `stage` here, outside the future: an async fn's
    // arguments stay in its future for its whole life, so a stream passed in
    // and moved into a local would be held twice in every connection's task.
    drive(stage, conn, phase)
}

/// Serves one connection until it ends, acting on its deadlines and on the
/// server's phase changes.
///
/// A plain function returning an `async move` block, not an `async fn`: an
/// async fn copies its arguments into locals, and both copies of the stage
/// would stay in every connection's task; a block uses its captures in place.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would hold the stage twice in every connection's task"
)]
fn drive<Io>(
    mut stage: Stage<Io>,
    conn: Connection,
    mut phase: watch::Receiver<Phase>,
) -> impl Future<Output = ()> + Send
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    async move {
        let shared = conn.shared();
        let conn_state = &conn.state;
        let info = conn.info;
        let header_timeout = shared.config.header_read_timeout;
        let keepalive = shared.config.keepalive_timeout;
        // Set once the connection has been asked to close; past it, it is dropped.
        let mut close_by: Option<tokio::time::Instant> = None;
        let mut draining = false;
        // An idle HTTP/1 connection (fresh, or kept alive between requests) when
        // the drain begins gets until this deadline to send its next request:
        // its client may be sending it right now, and closing under it would fail
        // that request (the keep-alive race every reload otherwise loses). The
        // request is served with `Connection: close`.
        let mut next_request_by: Option<(tokio::time::Instant, u64)> = None;
        loop {
            if !draining && *phase.borrow_and_update() != Phase::Serving {
                draining = true;
                conn_state.set_draining();
                if conn_state.is_fresh() || conn_state.is_idle_http1() {
                    next_request_by = Some((
                        tokio::time::Instant::now() + header_timeout.min(FRESH_GRACE),
                        conn_state.requests_started(),
                    ));
                } else if stage.graceful_shutdown() {
                    return stage.close().await;
                }
            }
            if let Some((by, started)) = next_request_by {
                if conn_state.requests_started() > started || tokio::time::Instant::now() >= by {
                    next_request_by = None;
                    if stage.graceful_shutdown() {
                        return stage.close().await;
                    }
                }
            }
            let release_after = matches!(stage, Stage::Http1(_)).then_some(RELEASE_AT_REST);
            let (deadline, action) =
                conn_state.next_deadline(header_timeout, keepalive, release_after);
            // While a drain waits for a fresh connection's first request,
            // look again soon.
            let now = tokio::time::Instant::now();
            let (deadline, action) = if next_request_by.is_some() && deadline > now {
                (
                    deadline.min(now + Duration::from_millis(20)),
                    Deadline::Recheck,
                )
            } else {
                (deadline, action)
            };
            let (deadline, action) = match close_by {
                Some(close_by) => (close_by, None),
                None => (deadline, Some(action)),
            };
            // `biased`: the connection first. After a stall (a loaded machine
            // that did not run this task for a while), bytes that arrived before the
            // deadline are read before the timer is looked at, as nginx handles
            // events before expiring timers; otherwise a request already in the
            // socket could be closed as a silent client.
            tokio::select! {
                biased;
                event = std::future::poll_fn(|cx| stage.poll(cx)) => match event {
                    Event::Arrived { http2 } => stage.start(http2, &conn),
                    Event::Ended(error) => {
                        if let Some(error) = error {
                            tracing::debug!(peer = %info.peer, %error, "Connection ended with an error");
                        }
                        return;
                    }
                },
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow() == Phase::Closing {
                        return;
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    match action {
                        None => return,
                        Some(Deadline::Recheck) => {}
                        Some(expected) => {
                            // Only act if the deadline still stands (a request may
                            // have started since the timer was set).
                            let (now_due, now_action) =
                                conn_state.next_deadline(header_timeout, keepalive, release_after);
                            if now_action == expected && now_due <= tokio::time::Instant::now() {
                                match expected {
                                    Deadline::Release => stage.release(&conn),
                                    Deadline::HeaderRead => {
                                        tracing::debug!(peer = %info.peer, "Request head not received in time; closing");
                                        // The stream now reads as ended (after a 408
                                        // where part of a request came).
                                        conn_state.set_timed_out();
                                        close_by = Some(tokio::time::Instant::now() + FORCE_CLOSE_WAIT);
                                    }
                                    _ => {
                                        if stage.graceful_shutdown() {
                                            return stage.close().await;
                                        }
                                        close_by = Some(tokio::time::Instant::now() + FORCE_CLOSE_WAIT);
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
