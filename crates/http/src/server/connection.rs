//! One connection's life: waiting for the first bytes of a request (which
//! on a new connection decide between HTTP/1 and HTTP/2), serving it with
//! hyper, releasing an idle HTTP/1 connection's state, and closing on the
//! server's drain or a deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::watch;

use super::{OpenConnection, Phase, Shared, FORCE_CLOSE_WAIT, FRESH_GRACE};
use crate::conn::{ConnService, ConnState, ConnectInfo, Deadline, TrackedIo};

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

pub(super) fn serve_connection<Io>(
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
