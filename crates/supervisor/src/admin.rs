//! The master's admin listener (`WHARF_ADMIN_ADDRESS`): the instance's
//! `/metrics` (every worker's text summed) and `/health/live`,
//! `/health/ready`, served by wharf-http like every other endpoint.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{header, HeaderValue, Request, Response, StatusCode};
use wharf_http::body::full;
use wharf_http::{Body, Listener, ResponseBody, Server, ServerConfig};

/// How long the admin listener waits for a request head.
const ADMIN_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a request head it reads (wharf-http's smallest limit).
const ADMIN_HEAD_LIMIT: usize = 8 * 1024;
/// Scrapes and probes come from a few peers: no more connections than this
/// at once.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// What the admin listener serves: the master keeps both up to date.
#[derive(Clone, Default)]
pub(crate) struct AdminState {
    /// The instance's Prometheus text, rendered by the master.
    pub(crate) metrics: Arc<Mutex<String>>,
    /// Whether the instance serves (`/health/ready`).
    pub(crate) ready: Arc<AtomicBool>,
}

/// Binds `addr` and serves the admin routes on it until the process ends.
/// After a binary upgrade the old master holds the address until it has
/// drained: then binding is retried for a while.
pub(crate) fn start(addr: &str, state: AdminState) {
    let addr = addr.to_owned();
    tokio::spawn(async move {
        let mut attempts = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(&addr).await {
                Ok(listener) => break listener,
                Err(error) if attempts < 120 && crate::upgrade::taking_over_from().is_some() => {
                    attempts += 1;
                    tracing::debug!(address = %addr, %error, "Admin address busy; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => {
                    tracing::warn!(address = %addr, %error, "Cannot start the admin listener; /metrics unavailable");
                    return;
                }
            }
        };
        tracing::info!(address = %addr, "Admin listener: /metrics, /health/live, /health/ready");
        serve(listener, state).await;
    });
}

/// Serves the admin routes on `listener` until the process ends.
async fn serve(listener: tokio::net::TcpListener, state: AdminState) {
    let listener = match listener.into_std() {
        Ok(listener) => Listener::from_std(listener),
        Err(error) => {
            tracing::warn!(%error, "Cannot use the admin listener; /metrics unavailable");
            return;
        }
    };
    let config = ServerConfig {
        header_read_timeout: ADMIN_READ_TIMEOUT,
        request_timeout: ADMIN_READ_TIMEOUT,
        max_header_bytes: ADMIN_HEAD_LIMIT,
        max_connections: ADMIN_MAX_CONNECTIONS,
        max_body_bytes: 0,
        // Scrapes every few seconds would drown the master's log.
        access_log: false,
        ..ServerConfig::default()
    };
    let app = tower::service_fn(move |request: Request<Body>| {
        std::future::ready(Ok::<_, Infallible>(answer(&state, request.uri().path())))
    });
    if let Err(error) = Server::new(config)
        .serve(vec![listener], app, std::future::pending())
        .await
    {
        tracing::warn!(%error, "Cannot serve the admin listener; /metrics unavailable");
    }
}

/// The answer to a request for `path`; every one closes its connection, as
/// a scrape or probe makes one request.
fn answer(state: &AdminState, path: &str) -> Response<ResponseBody> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.metrics.lock().map(|m| m.clone()).unwrap_or_default(),
        ),
        "/health/ready" if !state.ready.load(Ordering::Relaxed) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            "{\"status\":\"unavailable\"}".to_owned(),
        ),
        "/health/live" | "/health/ready" => (
            StatusCode::OK,
            "application/json",
            "{\"status\":\"ok\"}".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "404 Not Found\n".to_owned(),
        ),
    };
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// An admin listener on a free port serving `metrics`.
    async fn admin(metrics: &str, ready: bool) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(
            listener,
            AdminState {
                metrics: Arc::new(Mutex::new(metrics.to_owned())),
                ready: Arc::new(AtomicBool::new(ready)),
            },
        ));
        addr
    }

    /// Sends `pieces` 50 ms apart and reads the answer to the end.
    async fn ask(addr: std::net::SocketAddr, pieces: &[&str]) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            stream.write_all(piece.as_bytes()).await.unwrap();
        }
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test]
    async fn the_admin_listener_reads_a_request_line_that_comes_in_pieces() {
        let addr = admin("m 1\n", true).await;
        let answer = ask(addr, &["GET /metr", "ics HTTP/1.1\r\nHost: t\r\n", "\r\n"]).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with("\r\n\r\nm 1\n"), "{answer}");
        assert!(
            answer.contains("\r\ncontent-type: text/plain; version=0.0.4\r\n"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn the_admin_listener_answers_400_to_a_request_line_without_a_path() {
        let addr = admin("m 1\n", false).await;
        for request in ["GET\r\n\r\n", "GET  HTTP/1.1\r\n\r\n", "\u{ff}\r\n\r\n"] {
            let answer = ask(addr, &[request]).await;
            assert!(answer.starts_with("HTTP/1.1 400 "), "{request:?}: {answer}");
        }
        // Empty lines before a request line are skipped (RFC 9112, 2.2), so
        // a client that sends nothing else still waits for its request line:
        // it is answered 408 when the header-read timeout ends, not left open.
        let asked = tokio::time::Instant::now();
        let answer = ask(addr, &["\r\n\r\n"]).await;
        assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
        assert!(
            asked.elapsed() < ADMIN_READ_TIMEOUT + Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
        // An HTTP/1.0 request is answered as HTTP/1.0 (hyper's rule); an
        // HTTP/1.1 one needs its Host header (wharf-http's rule, RFC 9112).
        for (request, status, body) in [
            (
                "GET /health/live HTTP/1.0\n\n",
                "HTTP/1.0 200 ",
                "{\"status\":\"ok\"}",
            ),
            (
                "GET /health/ready HTTP/1.1\r\nHost: t\r\n\r\n",
                "HTTP/1.1 503 ",
                "{\"status\":\"unavailable\"}",
            ),
            (
                "GET /nothing HTTP/1.1\r\nHost: t\r\n\r\n",
                "HTTP/1.1 404 ",
                "404 Not Found\n",
            ),
        ] {
            let answer = ask(addr, &[request]).await;
            assert!(answer.starts_with(status), "{request:?}: {answer}");
            assert!(answer.ends_with(body), "{request:?}: {answer}");
        }
    }

    /// Set in the child process of the EMFILE test.
    const EMFILE_CHILD: &str = "WHARF_TEST_ADMIN_EMFILE_CHILD";

    /// CPU time this process has used, from `stat`, its `/proc/self/stat`
    /// opened beforehand (in the kernel's fixed 100 Hz `USER_HZ` ticks).
    fn cpu_time(stat: &mut std::fs::File) -> Duration {
        use std::io::{Read as _, Seek as _};
        let mut text = String::new();
        stat.rewind().unwrap();
        stat.read_to_string(&mut text).unwrap();
        let stat = text;
        let fields: Vec<u64> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // utime and stime, fields 14 and 15 (the list starts at field 3).
        Duration::from_millis((fields[11] + fields[12]) * 10)
    }

    /// With every file descriptor in use, a queued connection makes each
    /// `accept` fail at once with EMFILE. The loop must wait between tries,
    /// not spin: a second of it costs no measurable CPU (the spin cost 0.96
    /// to 1 s of it here, some 50,000 failed `accept4` calls a second; under
    /// a loaded machine's share of a CPU, still 180 ms or more).
    /// Run in a child process under `ulimit -n 64`, as using up the
    /// descriptors of the test process would fail the other tests.
    #[test]
    fn the_admin_accept_loop_waits_after_emfile_instead_of_spinning() {
        if std::env::var_os(EMFILE_CHILD).is_some() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                tokio::spawn(serve(listener, AdminState::default()));
                // Let the server start its accept loop before the
                // descriptors run out.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut stat = std::fs::File::open("/proc/self/stat").unwrap();
                let mut hogs = Vec::new();
                while let Ok(file) = std::fs::File::open("/dev/null") {
                    hogs.push(file);
                }
                // One descriptor free, for the client: none for the server.
                hogs.pop();
                let _client = std::net::TcpStream::connect(addr).unwrap();
                let before = cpu_time(&mut stat);
                tokio::time::sleep(Duration::from_secs(1)).await;
                println!(
                    "admin accept loop cpu_ms={}",
                    cpu_time(&mut stat).saturating_sub(before).as_millis()
                );
            });
            return;
        }
        let out = std::process::Command::new("sh")
            .args(["-c", "ulimit -n 64 && exec \"$0\" \"$@\""])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "admin::tests::the_admin_accept_loop_waits_after_emfile_instead_of_spinning",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(EMFILE_CHILD, "1")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        let cpu_ms: u64 = said
            .split("cpu_ms=")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{said}{}", String::from_utf8_lossy(&out.stderr)));
        assert!(out.status.success(), "{said}");
        assert!(cpu_ms < 50, "{cpu_ms} ms of CPU in 1 s of EMFILE: {said}");
    }
}
