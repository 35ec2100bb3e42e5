//! edge's TLS listener against garbage and stalled handshakes, and its
//! WebSocket tunnel against frames after close and idle tunnels.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::raw::read_all;
use super::stub::{Reply, Stub};
use super::{eventually, tls_client, Edge, EdgeSpec};

fn tls_edge(upstream: &Stub, handshake_timeout: &str) -> Edge {
    Edge::start(&EdgeSpec {
        servers: format!("{{ address = \"{}\" }}", upstream.addr),
        tls: true,
        tls_settings: format!("handshake_timeout = \"{handshake_timeout}\""),
        // The TLS timer, not the header-read one, must be what fires.
        http: "client_header_timeout = \"10s\"".to_owned(),
        ..EdgeSpec::default()
    })
}

/// curl over TLS; the status.
fn curl_status(edge: &Edge, path: &str) -> String {
    let https = edge.https.unwrap();
    let out = Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--resolve",
            &format!("localhost:{https}:127.0.0.1"),
            &format!("https://localhost:{https}{path}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends `bytes` and waits (at most `wait`) for the server to close; how
/// long that took, or `None` if it did not.
fn closes_within(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Option<(Duration, Vec<u8>)> {
    let mut stream = TcpStream::connect(addr).unwrap();
    let started = Instant::now();
    let _ = stream.write_all(bytes);
    let answer = read_all(&mut stream, wait);
    answer.closed.then(|| (started.elapsed(), answer.bytes))
}

#[test]
fn tls_garbage_is_closed_at_once_and_counted() {
    let upstream = Stub::start(|_| Reply::text(200, "ok"));
    // A long handshake timeout: garbage must be closed at once, not by it.
    let edge = tls_edge(&upstream, "5s");
    let addr = edge.tls_addr();
    let garbage: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        (0..=255_u8).cycle().take(4096).collect(),
        // A handshake record holding no ClientHello.
        vec![0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff],
        // SSLv2-style hello.
        vec![
            0x80, 0x2e, 0x01, 0x00, 0x02, 0x00, 0x15, 0x00, 0x00, 0x00, 0x10,
        ],
        // An alert before any hello.
        vec![0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28],
    ];
    let before = edge.metric("edge_tls_handshake_failures_total");
    for _ in 0..4 {
        for bytes in &garbage {
            let (took, answer) = closes_within(addr, bytes, Duration::from_secs(2))
                .unwrap_or_else(|| panic!("not closed: {bytes:?}"));
            assert!(took < Duration::from_secs(1), "{took:?} for {bytes:?}");
            assert!(
                !answer.starts_with(b"HTTP/"),
                "a plain answer on the TLS port"
            );
        }
    }
    // At least one each (the start-up port probe may land in the count).
    let failures = edge.metric("edge_tls_handshake_failures_total") - before;
    assert!(failures >= 20, "{failures}");
    assert_eq!(curl_status(&edge, "/after"), "200");
    assert_eq!(upstream.count("/"), 1);
}

#[test]
fn stalled_handshakes_are_closed_by_the_handshake_timeout() {
    let upstream = Stub::start(|_| Reply::text(200, "ok"));
    let edge = tls_edge(&upstream, "500ms");
    let addr = edge.tls_addr();
    // Silent, a ClientHello record cut short, a record announcing 16 KiB
    // and sending 10 bytes.
    let stalls: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
        ],
        [vec![0x16, 0x03, 0x01, 0x40, 0x00], vec![0; 10]].concat(),
    ];
    let threads: Vec<_> = (0..60)
        .map(|i| {
            let bytes = stalls[i % stalls.len()].clone();
            std::thread::spawn(move || closes_within(addr, &bytes, Duration::from_secs(4)))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    // Served meanwhile.
    assert_eq!(curl_status(&edge, "/during"), "200");
    for thread in threads {
        let (took, answer) = thread
            .join()
            .unwrap()
            .expect("a stalled handshake was never closed");
        assert!(
            took >= Duration::from_millis(400) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert!(!answer.starts_with(b"HTTP/"));
    }
    assert_eq!(edge.metric("edge_tls_handshake_timeouts_total"), 60);
    assert_eq!(edge.metric("edge_connections_open"), 0);
}

/// A masked client frame (RFC 6455 §5.2).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![0x80 | opcode, 0x80 | u8::try_from(payload.len()).unwrap()];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A WebSocket server that echoes text frames and, on a Close, answers
/// Close and closes the connection; counts frames it read.
fn websocket_upstream(frames_read: Arc<AtomicUsize>, close_on_close: bool) -> Stub {
    Stub::start(move |seen| {
        if seen.header("upgrade").is_none() {
            return Reply::text(200, "plain");
        }
        let frames_read = Arc::clone(&frames_read);
        Reply::Takeover(Box::new(move |mut stream: TcpStream| {
            let _ = stream.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
            );
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let mut header = [0_u8; 6];
            while stream.read_exact(&mut header).is_ok() {
                let len = usize::from(header[1] & 0x7f);
                let mut payload = vec![0_u8; len];
                if stream.read_exact(&mut payload).is_err() {
                    return;
                }
                frames_read.fetch_add(1, Ordering::SeqCst);
                let opcode = header[0] & 0x0f;
                let unmasked: Vec<u8> = payload
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ header[2 + i % 4])
                    .collect();
                let mut reply = vec![0x80 | opcode, u8::try_from(len).unwrap()];
                reply.extend_from_slice(&unmasked);
                let _ = stream.write_all(&reply);
                if opcode == 0x8 && close_on_close {
                    return;
                }
            }
        }))
    })
}

fn upgrade(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    upgrade_over(stream)
}

/// Asks for a WebSocket upgrade over `stream` and reads the `101` head.
fn upgrade_over<S: Read + Write>(mut stream: S) -> S {
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0_u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// The WebSocket echo through edge's TLS listener (HTTP/1.1 by ALPN, as
/// browsers open `wss://`): the upgrade, a frame each way, the close.
#[test]
fn websocket_echo_over_tls() {
    use rustls::pki_types::ServerName;
    let upstream = websocket_upstream(Arc::new(AtomicUsize::new(0)), true);
    let edge = Edge::start(&EdgeSpec {
        servers: format!("{{ address = \"{}\" }}", upstream.addr),
        tls: true,
        ..EdgeSpec::default()
    });
    let config = tls_client(edge.cert_pem.as_deref().unwrap(), b"http/1.1");
    let tcp = TcpStream::connect(edge.tls_addr()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = rustls::StreamOwned::new(rustls::ClientConnection::new(config, name).unwrap(), tcp);
    let mut ws = upgrade_over(tls);
    assert_eq!(ws.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    echo_then_close(&mut ws);
}

/// A text frame echoed, then the close handshake.
fn echo_then_close(ws: &mut (impl Read + Write)) {
    ws.write_all(&client_frame(0x1, b"hello")).unwrap();
    let mut echo = [0_u8; 7];
    ws.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"\x81\x05hello");
    ws.write_all(&client_frame(0x8, &1000_u16.to_be_bytes()))
        .unwrap();
    let mut close = [0_u8; 4];
    ws.read_exact(&mut close).unwrap();
    assert_eq!(close[0], 0x88);
}

/// Close handshake, then the client keeps sending: the upstream has closed,
/// so edge ends the tunnel (EOF to the client), and releases it.
#[test]
fn websocket_frames_after_close_end_the_tunnel() {
    let frames_read = Arc::new(AtomicUsize::new(0));
    let upstream = websocket_upstream(Arc::clone(&frames_read), true);
    let edge = Edge::start(&EdgeSpec {
        servers: format!("{{ address = \"{}\" }}", upstream.addr),
        ..EdgeSpec::default()
    });
    let mut ws = upgrade(edge.addr());
    echo_then_close(&mut ws);
    // Frames after close.
    let started = Instant::now();
    let mut eof = false;
    for _ in 0..20 {
        if ws.write_all(&client_frame(0x1, b"after close")).is_err() {
            eof = true;
            break;
        }
        ws.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0_u8; 64];
        match ws.read(&mut buf) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => panic!("data after close: {:?}", &buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                eof = true;
                break;
            }
        }
    }
    assert!(eof, "the tunnel stayed open after the close handshake");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        frames_read.load(Ordering::SeqCst),
        2,
        "frames after close reached the upstream"
    );
    drop(ws);
    assert!(eventually(Duration::from_secs(3), || {
        edge.metric("edge_connections_open") == 0
            && edge.server_metric("edge_upstream_active", upstream.addr) == 0
    }));
}

/// nginx closes a tunnel with no traffic either way for
/// `proxy_read_timeout`; a client that goes silent (or never closes after
/// the upstream has) must not hold a connection and its `limit_conn` slot
/// forever.
#[test]
fn an_idle_websocket_tunnel_is_closed_by_the_read_timeout() {
    let frames_read = Arc::new(AtomicUsize::new(0));
    let upstream = websocket_upstream(Arc::clone(&frames_read), false);
    let edge = Edge::start(&EdgeSpec {
        servers: format!("{{ address = \"{}\" }}", upstream.addr),
        ..EdgeSpec::default()
    });
    let mut ws = upgrade(edge.addr());
    // Both sides silent: read_timeout is 800 ms.
    let answer = read_all(&mut ws, Duration::from_secs(4));
    assert!(answer.closed, "an idle tunnel is still open after 4 s");
    assert!(eventually(Duration::from_secs(2), || edge
        .metric("edge_connections_open")
        == 0));
}
