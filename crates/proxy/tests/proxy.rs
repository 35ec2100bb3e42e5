//! wharf-proxy against real upstream servers on loopback, served by
//! wharf-http: balancing, failover, retry rules, health, forwarding headers,
//! buffering, timeouts, WebSocket upgrades.
// Test helpers may unwrap: a failure is a failed test with a line number.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::unused_async)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use wharf_http::{body, Body, Listener, ResponseBody, Server, ServerConfig};
mod common;

use common::{front, Front};
use wharf_proxy::{HealthCheck, ProxySettings, TrustedProxies, UpstreamConfig, UpstreamServer};

/// A test upstream: answers with its name, counts requests, and has a few
/// special routes.
struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    /// The status `/health` answers and, when not 200, every other route.
    status: Arc<AtomicU16>,
    stop: Option<oneshot::Sender<()>>,
}

impl Backend {
    async fn start(name: &'static str) -> Self {
        Self::start_on(
            name,
            Listener::bind("127.0.0.1:0".parse().unwrap()).unwrap(),
        )
    }

    fn start_on(name: &'static str, listener: Listener) -> Self {
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(AtomicU16::new(200));
        let (tx, rx) = oneshot::channel::<()>();
        let (h, s) = (Arc::clone(&hits), Arc::clone(&status));
        let app = tower::service_fn(move |request: Request<Body>| {
            let (hits, status) = (Arc::clone(&h), Arc::clone(&s));
            async move { Ok::<_, Infallible>(backend(name, request, &hits, &status).await) }
        });
        tokio::spawn(async move {
            Server::new(ServerConfig {
                access_log: false,
                graceful_timeout: Duration::from_millis(100),
                ..ServerConfig::default()
            })
            .serve(vec![listener], app, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Self {
            addr,
            hits,
            status,
            stop: Some(tx),
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Wait until it refuses connections.
        for _ in 0..100 {
            if TcpStream::connect(self.addr).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("backend did not stop");
    }
}

async fn backend(
    name: &'static str,
    mut request: Request<Body>,
    hits: &AtomicUsize,
    status: &AtomicU16,
) -> Response<ResponseBody> {
    let path = request.uri().path().to_owned();
    let code = StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
    if path == "/health" {
        let mut response = Response::new(body::full("health\n"));
        *response.status_mut() = code;
        return response;
    }
    hits.fetch_add(1, Ordering::SeqCst);
    if code != StatusCode::OK {
        let mut response = Response::new(body::full(format!("{name} failing\n")));
        *response.status_mut() = code;
        return response;
    }
    match path.as_str() {
        "/headers" => {
            let h = request.headers();
            let get = |n: &str| h.get(n).map_or("-", |v| v.to_str().unwrap()).to_owned();
            Response::new(body::full(format!(
                "host={} xff={} real={} proto={} fhost={} conn={}",
                get("host"),
                get("x-forwarded-for"),
                get("x-real-ip"),
                get("x-forwarded-proto"),
                get("x-forwarded-host"),
                get("x-hop"),
            )))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            Response::new(body::full("slow\n"))
        }
        "/body" => {
            let body = request.into_body().collect().await.unwrap().to_bytes();
            Response::new(body::full(format!("{name} got {}", body.len())))
        }
        "/ws" => {
            let upgrade = hyper::upgrade::on(&mut request);
            tokio::spawn(async move {
                let mut io = TokioIo::new(upgrade.await.unwrap());
                let mut buf = [0u8; 64];
                loop {
                    let n = io.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    io.write_all(&buf[..n]).await.unwrap();
                }
            });
            let mut response = Response::new(body::empty());
            *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            response
                .headers_mut()
                .insert("connection", "upgrade".parse().unwrap());
            response
                .headers_mut()
                .insert("upgrade", "websocket".parse().unwrap());
            response
        }
        _ => Response::new(body::full(name)),
    }
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut builder = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let response = client
        .request(
            builder
                .body(Full::new(Bytes::from_static(b"payload")))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    request(addr, "GET", path, &[]).await
}

fn fast() -> ProxySettings {
    ProxySettings {
        connect_timeout: Duration::from_secs(1),
        send_timeout: Duration::from_millis(500),
        read_timeout: Duration::from_millis(500),
        ..ProxySettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_spread_requests_and_backup_takes_over_when_primaries_are_down() {
    let mut a = Backend::start("a").await;
    let mut b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let front = front(
        UpstreamConfig::new(
            "backend",
            vec![
                UpstreamServer::new(a.addr).weight(3),
                UpstreamServer::new(b.addr),
                UpstreamServer::new(c.addr).backup(),
            ],
        ),
        fast(),
    )
    .await;
    let mut seen = String::new();
    for _ in 0..8 {
        seen.push_str(&get(front.addr, "/").await.1);
    }
    assert_eq!(seen, "aabaaaba", "smooth weighted round robin 3:1");
    assert_eq!(c.hits(), 0, "the backup is idle while primaries are up");

    a.stop().await;
    b.stop().await;
    // A pooled keep-alive connection to a or b may get one last answer: a
    // draining wharf-http server serves a request already on its way (with
    // `Connection: close`) rather than closing under it. Then only the
    // backup answers.
    for _ in 0..10 {
        let (status, body) = get(front.addr, "/").await;
        assert_eq!(status, StatusCode::OK);
        if body == "c" {
            break;
        }
        assert!(body == "a" || body == "b", "{body}");
    }
    for _ in 0..3 {
        assert_eq!(get(front.addr, "/").await, (StatusCode::OK, "c".to_owned()));
    }
    let stats = front.proxy.upstream().stats();
    assert!(!stats[0].available && !stats[1].available && stats[2].available);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_errors_are_retried_for_get_but_a_post_is_never_sent_twice() {
    let failing = Backend::start("failing").await;
    failing.status.store(503, Ordering::SeqCst);
    let good = Backend::start("good").await;
    let mut config = UpstreamConfig::new(
        "backend",
        vec![
            UpstreamServer::new(failing.addr).max_fails(0, Duration::from_secs(10)),
            UpstreamServer::new(good.addr).max_fails(0, Duration::from_secs(10)),
        ],
    );
    config.keepalive = 4;
    let front = front(config, fast()).await;
    // Round robin alternates; every GET ends on the good server.
    for _ in 0..4 {
        assert_eq!(
            get(front.addr, "/").await,
            (StatusCode::OK, "good".to_owned())
        );
    }
    assert_eq!(failing.hits(), 2);
    // A POST that lands on the failing server gets its 503: not retried.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(request(front.addr, "POST", "/body", &[]).await.0);
    }
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE]);
    assert_eq!(failing.hits(), 3);
    assert_eq!(good.hits(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_upstream_is_a_502_and_a_slow_one_a_504() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = unused.local_addr().unwrap();
    drop(unused);
    let front_dead = front(
        UpstreamConfig::new("dead", vec![UpstreamServer::new(dead)]),
        fast(),
    )
    .await;
    let (status, body) = get(front_dead.addr, "/").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("<h1>502 Bad Gateway</h1>"), "{body}");

    let slow = Backend::start("slow").await;
    let front_slow = front(
        UpstreamConfig::new("slow", vec![UpstreamServer::new(slow.addr)]),
        ProxySettings {
            read_timeout: Duration::from_millis(300),
            send_timeout: Duration::from_millis(100),
            ..fast()
        },
    )
    .await;
    let started = std::time::Instant::now();
    let (status, _) = get(front_slow.addr, "/slow").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_health_takes_a_failing_server_out_for_fail_timeout() {
    let failing = Backend::start("failing").await;
    failing.status.store(502, Ordering::SeqCst);
    let good = Backend::start("good").await;
    let front = front(
        UpstreamConfig::new(
            "backend",
            vec![
                UpstreamServer::new(failing.addr).max_fails(1, Duration::from_millis(700)),
                UpstreamServer::new(good.addr),
            ],
        ),
        fast(),
    )
    .await;
    for _ in 0..6 {
        assert_eq!(get(front.addr, "/").await.0, StatusCode::OK);
    }
    assert_eq!(failing.hits(), 1, "out after one failure");
    tokio::time::sleep(Duration::from_millis(800)).await;
    failing.status.store(200, Ordering::SeqCst);
    let mut bodies = Vec::new();
    for _ in 0..4 {
        bodies.push(get(front.addr, "/").await.1);
    }
    assert!(
        bodies.contains(&"failing".to_owned()),
        "back after fail_timeout: {bodies:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_a_server_out_and_bring_it_back() {
    let sick = Backend::start("sick").await;
    let good = Backend::start("good").await;
    let mut config = UpstreamConfig::new(
        "backend",
        vec![
            UpstreamServer::new(sick.addr),
            UpstreamServer::new(good.addr),
        ],
    );
    config.health_check = Some(HealthCheck {
        path: "/health".to_owned(),
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        rise: 2,
        fall: 2,
    });
    let front = front(config, fast()).await;
    // Fail the health route only: traffic alone would not notice.
    sick.status.store(500, Ordering::SeqCst);
    let available = |f: &Front| f.proxy.upstream().stats()[0].available;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while available(&front) {
        assert!(std::time::Instant::now() < deadline, "never taken out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = sick.hits();
    for _ in 0..4 {
        assert_eq!(get(front.addr, "/").await.1, "good");
    }
    assert_eq!(sick.hits(), before);
    sick.status.store(200, Ordering::SeqCst);
    while !available(&front) {
        assert!(std::time::Instant::now() < deadline, "never brought back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_and_not_spoofable_by_an_untrusted_peer() {
    let backend = Backend::start("b").await;
    let spoof = [
        ("host", "app.example"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-proto", "https"),
        ("connection", "x-hop"),
        ("x-hop", "secret"),
    ];
    let untrusted = front(
        UpstreamConfig::new("b", vec![UpstreamServer::new(backend.addr)]),
        fast(),
    )
    .await;
    let (_, seen) = request(untrusted.addr, "GET", "/headers", &spoof).await;
    assert_eq!(
        seen,
        "host=app.example xff=127.0.0.1 real=127.0.0.1 proto=http fhost=app.example conn=-"
    );
    let trusted = front(
        UpstreamConfig::new("b", vec![UpstreamServer::new(backend.addr)]),
        ProxySettings {
            trusted_proxies: TrustedProxies::new(vec!["127.0.0.0/8".parse().unwrap()]),
            ..fast()
        },
    )
    .await;
    let (_, seen) = request(trusted.addr, "GET", "/headers", &spoof).await;
    assert_eq!(
        seen,
        "host=app.example xff=6.6.6.6, 127.0.0.1 real=6.6.6.6 proto=https fhost=app.example conn=-"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_does_not_hold_an_upstream_connection_while_buffering() {
    let backend = Backend::start("b").await;
    let front = front(
        UpstreamConfig::new("b", vec![UpstreamServer::new(backend.addr)]),
        fast(),
    )
    .await;
    let mut client = TcpStream::connect(front.addr).await.unwrap();
    client
        .write_all(b"POST /body HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nhello")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        backend.hits(),
        0,
        "nothing sent upstream before the body is complete"
    );
    assert_eq!(front.proxy.upstream().stats()[0].active, 0);
    client.write_all(b"world").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = client.read(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with("b got 10"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_413_before_any_upstream_is_contacted() {
    let backend = Backend::start("b").await;
    let front = front(
        UpstreamConfig::new("b", vec![UpstreamServer::new(backend.addr)]),
        ProxySettings {
            max_body_bytes: 4,
            ..fast()
        },
    )
    .await;
    let (status, _) = request(front.addr, "POST", "/body", &[]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(backend.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_copied_both_ways() {
    let backend = Backend::start("b").await;
    let front = front(
        UpstreamConfig::new("b", vec![UpstreamServer::new(backend.addr)]),
        fast(),
    )
    .await;
    let mut client = TcpStream::connect(front.addr).await.unwrap();
    client
        .write_all(
            b"GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = client.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for message in ["ping", "second message"] {
        client.write_all(message.as_bytes()).await.unwrap();
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], message.as_bytes());
    }
}
