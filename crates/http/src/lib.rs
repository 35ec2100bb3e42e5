//! An HTTP/1.1 + HTTP/2 server core on hyper and hyper-util for any
//! [`tower::Service`], with the limits a production server needs.
//!
//! **What it is for:** serving an application (a wharf app, an axum router, any
//! `Service<http::Request<Body>>`) on listeners you bound — or that a
//! supervisor or systemd handed you — and enforcing, per [`ServerConfig`]:
//! a header-read timeout (`408` where a response is possible), a keep-alive
//! idle timeout (90 s), a per-request timeout (`504`), a header size limit
//! (`431`/`414`), a body limit (`413` before reading when `Content-Length`
//! says so), a per-process connection cap (stop accepting, never fail), and a
//! graceful drain. Every request gets an `X-Request-Id`, a JSON access-log
//! line without secrets, security headers, and a `500` instead of a crash if
//! the handler panics. Optional [`Health`] routes answer `/_status`,
//! `/health/live` and `/health/ready`.
//!
//! **Idle connections are cheap.** An HTTP/1 keep-alive connection that has
//! been at rest for 200 ms (no request in flight, nothing of the next one
//! read, its response flushed) drops hyper's connection state — its read and
//! write buffers — and its clone of your service, keeping only the stream,
//! as nginx frees a keep-alive connection's request buffers; the next
//! request's first bytes build them again. HTTP/2 is recognised by its
//! preface and served by hyper's HTTP/2 connection for its whole life.
//!
//! **What it is not for:** routing (bring a router) and TLS itself: serve TLS
//! with [`Server::serve_with`] and an [`Acceptor`] such as `wharf-tls`'s. It is tokio-specific: the timers and drain need tokio.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use wharf_http::{body, Body, Listener, Server, ServerConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let app = tower::service_fn(|_req: Request<Body>| async {
//!     Ok::<_, Infallible>(Response::new(body::full("hello\n")))
//! });
//! let listener = Listener::bind("127.0.0.1:8080".parse()?)?;
//! let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
//! let report = Server::new(ServerConfig::default())
//!     .serve(vec![listener], app, shutdown)
//!     .await?;
//! println!("drained; {} connections forced closed", report.forced);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod accept;
pub mod body;
mod client_addr;
mod config;
mod conn;
mod drain;
mod health;
mod ipnet;
mod listener;
pub mod middleware;
mod probe;
mod server;

pub use accept::{request_scheme, Accepted, Acceptor, PlainAcceptor, TlsInfo};
pub use body::{is_body_too_large, is_timeout, Body, BoxError, ResponseBody};
pub use client_addr::{ClientAddr, ClientAddrResolver, ForwardedHeader};
pub use config::ServerConfig;
pub use conn::{ConnectInfo, RequestHook, TrackedBody};
pub use health::{
    Health, HealthLayer, HealthRoutes, StatusInfo, LIVE_PATH, READY_PATH, STATUS_PATH,
};
pub use ipnet::{ip_text, IpNet, IpNetError};
pub use listener::{Listener, ListenerError, BACKLOG};
pub use middleware::access_log::{Exchange, RequestObserver};
pub use probe::{probe, BuildInfo, ProbeError};
pub use server::{DrainReport, ServeError, Server};
