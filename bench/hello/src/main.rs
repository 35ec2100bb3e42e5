//! `bare-hyper`: the ceiling for the benchmark harness (`bench/run`).
//!
//! This is the least a Rust HTTP server can do to answer `GET /_status`: hyper 1.x
//! behind `hyper_util`'s HTTP/1 + HTTP/2 auto builder, on a multi-thread tokio
//! runtime, with `TCP_NODELAY` on every accepted socket. It does no routing, no
//! logging, no middleware and no allocation per response beyond what hyper does
//! itself: every request, whatever its method or path, gets `200 OK` with
//! `Content-Type: application/json` and a fixed JSON body the size of the real
//! `frontend`'s `/_status` answer.
//!
//! The harness runs it beside `frontend` on the same machine, under the same load,
//! and reports `frontend` as a fraction of this ceiling. Nothing built on hyper can
//! be expected to beat it, so the ratio measures what wharf's own layers cost.
//!
//! Configuration, from the environment:
//!
//! - `PORT`: the loopback port to listen on (`127.0.0.1:$PORT`), default `7101`.
//! - `WORKER_THREADS`: tokio worker threads; unset means tokio's default (one per
//!   core).

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use tokio::net::TcpListener;
use wharf_bench_hello::{env_parse, runtime, BoxResult};

/// The port used when `PORT` is not set.
const DEFAULT_PORT: u16 = 7101;

/// The fixed answer: the same shape and size as `frontend`'s `/_status` body.
const BODY: &[u8] = br#"{"status":"ok","git_commit":"abcdef0","build_time":"2026-11-23T00:00:00Z","environment":"development"}"#;

fn main() -> BoxResult<()> {
    let port = env_parse::<u16>("PORT")?.unwrap_or(DEFAULT_PORT);

    runtime()?.block_on(serve(port))
}

/// Accepts connections on `127.0.0.1:port` forever, one task per connection.
async fn serve(port: u16) -> BoxResult<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let listener = TcpListener::bind(addr).await?;
    eprintln!("bare-hyper listening on http://{}", listener.local_addr()?);

    let builder = Builder::new(TokioExecutor::new());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Typically EMFILE/ENFILE under load: back off briefly rather than spin.
                eprintln!("bare-hyper: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            eprintln!("bare-hyper: TCP_NODELAY on {peer}: {e}");
        }
        let builder = builder.clone();
        tokio::spawn(async move {
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service_fn(status))
                .await
            {
                eprintln!("bare-hyper: connection from {peer}: {e}");
            }
        });
    }
}

/// Answers any request with `200 OK` and the fixed JSON body.
#[allow(clippy::unused_async)] // `service_fn` needs a future.
async fn status(
    _request: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(BODY)));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}
