//! [`Server`]: accepts on listeners and serves a tower service with limits,
//! timeouts, a connection cap and graceful drain.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::Service;

use crate::accept::{Acceptor, PlainAcceptor};
use crate::body::{Body, BoxError};
use crate::config::{ServerConfig, MIN_HEADER_BYTES};
use crate::conn::{ConnService, ConnState, ConnectInfo, Deadline, RequestHook, TrackedIo};
use crate::health::Health;
use crate::listener::Listener;
use crate::middleware::access_log::RequestObserver;
pub(crate) use crate::middleware::AppService;

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

    fn builder(&self) -> auto::Builder<TokioExecutor> {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // wharf runs its own header-read and idle timers (see `conn`),
            // which can answer 408 and tell idle from slow.
            .header_read_timeout(None)
            .keep_alive(true)
            .max_buf_size(self.config.max_header_bytes);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.config.http2_max_concurrent_streams)
            .max_header_list_size(u32::try_from(self.config.max_header_bytes).unwrap_or(u32::MAX))
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

        let shared = Arc::new(Shared {
            app: crate::middleware::stack(
                &self.config,
                self.health.clone(),
                self.observer.clone(),
                app,
            ),
            builder: self.builder(),
            config: self.config.clone(),
            slots: Arc::new(Semaphore::new(self.config.max_connections)),
            hook: self.hook.clone(),
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
    /// Connections being served (their permits are held too).
    open: std::sync::atomic::AtomicUsize,
    app: AppService,
    builder: auto::Builder<TokioExecutor>,
    config: ServerConfig,
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
            // Closing a listening socket resets what is queued on it. Stop
            // accepting and let the queue settle first: handshakes under way
            // land in it, and once the supervisor has made the socket refuse
            // new connections (or shrunk its queue, whose overflow the kernel
            // drops, so those clients retry later), nothing more arrives.
            // Then take the whole queue in one sweep and close at once.
            tokio::time::sleep(SWEEP_SETTLE).await;
            sweep_backlog(&listener, &acceptor, &shared, &phase);
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
    let mut info = ConnectInfo {
        peer,
        local: local.unwrap_or(peer),
    };
    let shared = Arc::clone(shared);
    let phase = phase.clone();
    let accepting = acceptor.accept(stream, info);
    shared
        .open
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    tokio::spawn(async move {
        let _open = OpenConnection(Arc::clone(&shared));
        let accepted =
            match tokio::time::timeout(shared.config.header_read_timeout, accepting).await {
                Ok(Ok(accepted)) => accepted,
                Ok(Err(error)) => {
                    tracing::debug!(peer = %info.peer, %error, "Connection not accepted");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %info.peer, "Connection not accepted in time; closed");
                    return;
                }
            };
        if let Some(peer) = accepted.peer {
            info.peer = peer;
        }
        serve_connection(accepted.io, accepted.extensions, info, &shared, phase).await;
        drop(permit);
    });
}

/// Counts a connection as open until dropped.
struct OpenConnection(Arc<Shared>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0
            .open
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Before a draining process closes its listener, accepts every connection
/// already waiting in the kernel's backlog, so closing the socket resets none
/// of them (they are served and told `Connection: close`). Other processes
/// sharing the socket keep accepting after this one is gone.
/// How long a draining listener stops accepting before its final sweep.
const SWEEP_SETTLE: Duration = Duration::from_millis(50);

/// Accepts every connection queued on `listener` and serves it.
fn sweep_backlog<A: Acceptor>(
    listener: &TcpListener,
    acceptor: &A,
    shared: &Arc<Shared>,
    phase: &watch::Receiver<Phase>,
) {
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
    if swept > 0 {
        tracing::info!(
            connections = swept,
            "Accepted the listen backlog before closing"
        );
    }
}

async fn serve_connection<Io>(
    stream: Io,
    extensions: http::Extensions,
    info: ConnectInfo,
    shared: &Shared,
    mut phase: watch::Receiver<Phase>,
) where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let state = Arc::new(ConnState::new(shared.config.max_request_line_bytes));
    let service = ConnService {
        app: std::sync::Mutex::new(shared.app.clone()),
        state: Arc::clone(&state),
        info,
        extensions: Arc::new(extensions),
        hook: shared.hook.clone(),
    };
    let io = TokioIo::new(TrackedIo::new(stream, Arc::clone(&state)));
    let connection = shared.builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);

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
            state.set_draining();
            if state.is_fresh() || state.is_idle_http1() {
                next_request_by = Some((
                    tokio::time::Instant::now() + header_timeout.min(FRESH_GRACE),
                    state.requests_started(),
                ));
            } else {
                connection.as_mut().graceful_shutdown();
            }
        }
        if let Some((by, started)) = next_request_by {
            if state.requests_started() > started || tokio::time::Instant::now() >= by {
                next_request_by = None;
                connection.as_mut().graceful_shutdown();
            }
        }
        let (deadline, action) = state.next_deadline(header_timeout, keepalive);
        // While waiting for a fresh connection's first request, look again soon.
        let (deadline, action) = match next_request_by {
            Some(_) => (
                deadline.min(tokio::time::Instant::now() + Duration::from_millis(20)),
                if deadline <= tokio::time::Instant::now() {
                    action
                } else {
                    Deadline::Recheck
                },
            ),
            None => (deadline, action),
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
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(peer = %info.peer, %error, "Connection ended with an error");
                }
                return;
            }
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
                        let (now_due, now_action) = state.next_deadline(header_timeout, keepalive);
                        if now_action == expected && now_due <= tokio::time::Instant::now() {
                            if expected == Deadline::HeaderRead {
                                tracing::debug!(peer = %info.peer, "Request head not received in time; closing");
                                state.set_timed_out();
                            } else {
                                connection.as_mut().graceful_shutdown();
                            }
                            close_by = Some(tokio::time::Instant::now() + FORCE_CLOSE_WAIT);
                        }
                    }
                }
            }
        }
    }
}
