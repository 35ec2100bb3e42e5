//! The keep-alive pool against a hand-written HTTP/1.1 upstream that counts
//! its connections: reuse across requests and body framings, the idle cap,
//! the idle timeout, and a kept-alive connection the server closes as it is
//! reused (the race every keep-alive proxy meets with gunicorn's
//! `--keep-alive`).
// Test helpers may unwrap: a failure is a failed test with a line number.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::unused_async)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
mod common;

use wharf_proxy::{ProxySettings, UpstreamConfig, UpstreamServer};

#[derive(Default)]
struct Counts {
    /// Connections accepted.
    accepted: AtomicUsize,
    /// Connections open now.
    open: AtomicUsize,
    /// Request lines received, in order.
    requests: Mutex<Vec<String>>,
    /// Close a connection, unanswered, when its second request arrives.
    drop_second_request: AtomicBool,
}

/// An HTTP/1.1 upstream written by hand, so that what it does with its
/// connections is known exactly.
struct RawBackend {
    addr: SocketAddr,
    counts: Arc<Counts>,
}

impl RawBackend {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let c = Arc::clone(&counts);
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                c.accepted.fetch_add(1, Ordering::SeqCst);
                c.open.fetch_add(1, Ordering::SeqCst);
                let c = Arc::clone(&c);
                tokio::spawn(async move {
                    serve(stream, &c).await;
                    c.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self { addr, counts }
    }

    fn accepted(&self) -> usize {
        self.counts.accepted.load(Ordering::SeqCst)
    }

    fn open(&self) -> usize {
        self.counts.open.load(Ordering::SeqCst)
    }

    fn requests(&self) -> Vec<String> {
        self.counts.requests.lock().unwrap().clone()
    }
}

/// Serves one connection until the client closes it. Routes: `/chunked`
/// (chunked body), `/empty` (204), `/slow` (answers after 200 ms), anything
/// else a 2-byte body with a length.
async fn serve(mut stream: TcpStream, counts: &Counts) {
    let mut buf = Vec::new();
    let mut served = 0;
    loop {
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + length);
        let line = head.lines().next().unwrap_or_default().to_owned();
        counts.requests.lock().unwrap().push(line.clone());
        served += 1;
        if served == 2 && counts.drop_second_request.load(Ordering::SeqCst) {
            return;
        }
        let path = line.split(' ').nth(1).unwrap_or("/");
        let head_only = line.starts_with("HEAD ");
        let answer: &[u8] = match path {
            "/chunked" => {
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
            }
            "/empty" => b"HTTP/1.1 204 No Content\r\n\r\n",
            _ if head_only => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n",
            "/slow" => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
            }
            _ => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        };
        if stream.write_all(answer).await.is_err() {
            return;
        }
    }
}

/// The front of `common`, to one server with a pool of `keepalive`.
async fn front(backend: SocketAddr, keepalive: usize, settings: ProxySettings) -> common::Front {
    let mut config = UpstreamConfig::new("raw", vec![UpstreamServer::new(backend)]);
    config.keepalive = keepalive;
    common::front(config, settings).await
}

async fn call(addr: SocketAddr, method: &str, path: &str) -> (StatusCode, Bytes) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

fn settings() -> ProxySettings {
    ProxySettings {
        connect_timeout: Duration::from_secs(1),
        send_timeout: Duration::from_secs(1),
        read_timeout: Duration::from_secs(1),
        ..ProxySettings::default()
    }
}

/// Waits up to 2 s for `f` to hold.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstream_connection_serves_sequential_requests_of_every_body_framing() {
    let backend = RawBackend::start().await;
    let front = front(backend.addr, 32, settings()).await;
    for round in 0..5 {
        assert_eq!(
            call(front.addr, "GET", "/").await,
            (StatusCode::OK, Bytes::from("ok")),
            "round {round}"
        );
        assert_eq!(
            call(front.addr, "GET", "/chunked").await,
            (StatusCode::OK, Bytes::from("ok"))
        );
        assert_eq!(
            call(front.addr, "HEAD", "/").await,
            (StatusCode::OK, Bytes::new())
        );
        assert_eq!(
            call(front.addr, "GET", "/empty").await,
            (StatusCode::NO_CONTENT, Bytes::new())
        );
        assert_eq!(
            call(front.addr, "POST", "/").await,
            (StatusCode::OK, Bytes::from("ok"))
        );
    }
    assert_eq!(backend.requests().len(), 25);
    assert_eq!(
        front.proxy.upstream().stats()[0].requests,
        25,
        "one attempt each"
    );
    assert_eq!(
        backend.accepted(),
        1,
        "every request reused the first connection"
    );
    // The counter pair says so: one connection opened, 24 requests reused it.
    let stats = &front.proxy.upstream().stats()[0];
    assert_eq!(
        (stats.connections_opened, stats.connections_reused),
        (1, 24)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_cap_close_at_once_and_the_rest_after_the_idle_timeout() {
    let backend = RawBackend::start().await;
    let front = front(
        backend.addr,
        2,
        ProxySettings {
            pool_idle_timeout: Duration::from_millis(400),
            ..settings()
        },
    )
    .await;
    // Six at once: six connections (each /slow holds its own).
    let calls: Vec<_> = (0..6)
        .map(|_| tokio::spawn(call(front.addr, "GET", "/slow")))
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().0, StatusCode::OK);
    }
    assert_eq!(backend.accepted(), 6);
    eventually("all but the 2 kept idle are closed", || backend.open() == 2).await;
    // The two kept are reused...
    assert_eq!(call(front.addr, "GET", "/").await.0, StatusCode::OK);
    assert_eq!(backend.accepted(), 6);
    // ...and closed once idle for longer than the idle timeout.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        backend.open(),
        0,
        "idle connections closed after the idle timeout"
    );
    assert_eq!(call(front.addr, "GET", "/").await.0, StatusCode::OK);
    assert_eq!(backend.accepted(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_closed_by_the_server_as_it_is_reused_costs_a_get_nothing_and_a_post_is_not_resent(
) {
    let backend = RawBackend::start().await;
    backend
        .counts
        .drop_second_request
        .store(true, Ordering::SeqCst);
    let front = front(backend.addr, 32, settings()).await;
    // Each GET after the first lands on a kept-alive connection that the
    // server closes unanswered: tried again on a new connection.
    for _ in 0..4 {
        assert_eq!(
            call(front.addr, "GET", "/").await,
            (StatusCode::OK, Bytes::from("ok"))
        );
    }
    assert_eq!(backend.accepted(), 4);
    // A POST is never sent twice: the server saw it once, the client gets 502.
    let (status, _) = call(front.addr, "POST", "/form").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let posts = backend
        .requests()
        .iter()
        .filter(|line| line.starts_with("POST /form"))
        .count();
    assert_eq!(posts, 1);
}
