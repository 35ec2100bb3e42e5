//! wharf-ratelimit alone: nginx-style `limit_req` in front of a plain hyper
//! service, in memory or shared through Redis.
//!
//! ```sh
//! cargo run --example ratelimit                       # http://127.0.0.1:8081/
//! for i in $(seq 25); do curl -s -o /dev/null -w '%{http_code} ' localhost:8081/; done; echo
//! # 21 × 200 (rate 10r/s, burst 20, nodelay), then 429 with Retry-After: 1
//! REDIS_URL=redis://127.0.0.1:6379 PORT=8082 cargo run --example ratelimit   # shared by every process
//! curl -s localhost:8081/metrics                      # the limiter's Prometheus metrics
//! ```
//!
//! Environment: `PORT` (8081), `RATE` (`10r/s`), `BURST` (20), `REDIS_URL`
//! (unset: in memory), `RATELIMIT=off` to serve without the layer (for
//! benchmarks).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower::{Layer, ServiceExt};
use wharf_ratelimit::{Limiter, Rate, RateLimitLayer, RedisOptions, RedisStore, Zone};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = env_or("PORT", "8081").parse()?;
    let rate: Rate = env_or("RATE", "10r/s").parse()?;
    let burst: u32 = env_or("BURST", "20").parse()?;
    let mut builder = Limiter::builder().zone(Zone::new("example", rate).burst(burst).nodelay());
    if let Ok(url) = std::env::var("REDIS_URL") {
        let store = RedisStore::connect(&RedisOptions::new(url))?;
        if !store.wait_connected(Duration::from_secs(2)).await {
            eprintln!("Redis does not answer yet; failing open until it does");
        }
        builder = builder.redis(store);
    }
    let limiter = builder.build()?;
    let limiting_on = std::env::var("RATELIMIT").map_or(true, |v| v != "off");

    // The plain service: hello, and the limiter's metrics at /metrics.
    let metrics_source = limiter.clone();
    let app = tower::service_fn(move |request: Request<Incoming>| {
        let body = if request.uri().path() == "/metrics" {
            metrics_source.metrics().render_prometheus()
        } else {
            "hello\n".to_owned()
        };
        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body)))) }
    });
    let service = RateLimitLayer::new(limiter).layer(app.clone());

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "listening on http://{}/ (rate limiting {})",
        listener.local_addr()?,
        if limiting_on { "on" } else { "off" }
    );
    loop {
        let (stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let app = app.clone();
        tokio::spawn(async move {
            // The limiter finds the client in a `SocketAddr` request extension.
            let hyper_service =
                hyper::service::service_fn(move |mut request: Request<Incoming>| {
                    request.extensions_mut().insert::<SocketAddr>(peer);
                    let service = service.clone();
                    let app = app.clone();
                    async move {
                        if limiting_on {
                            service
                                .oneshot(request)
                                .await
                                .map(|r| r.map(http_body_util::Either::Left))
                        } else {
                            app.oneshot(request)
                                .await
                                .map(|r| r.map(http_body_util::Either::Right))
                        }
                    }
                });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), hyper_service)
                .await;
        });
    }
}
