//! HTTP/2 abuse, written frame by frame: over plain TCP (h2c with prior
//! knowledge, which `frontend` and edge's plain listener both speak) rapid
//! reset, CONTINUATION flood, SETTINGS and PING floods, the stream limit,
//! and a request head that never ends; over TLS (ALPN h2, a rustls client)
//! against edge's TLS listener, rapid reset, CONTINUATION flood and the
//! SETTINGS and PING floods again.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use super::raw::get;
use super::stub::{Reply, Stub};
use super::{api_env, document_path, frontend, tls_client, Edge, EdgeSpec};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const REFUSED_STREAM: u32 = 0x7;
const ENHANCE_YOUR_CALM: u32 = 0xb;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap();
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK "literal header field without indexing, new name", no Huffman
/// (names and values shorter than 127 bytes).
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0, u8::try_from(name.len()).unwrap()];
    out.extend_from_slice(name.as_bytes());
    out.push(u8::try_from(value.len()).unwrap());
    out.extend_from_slice(value.as_bytes());
    out
}

fn request_block(method: &str, path: &str) -> Vec<u8> {
    head_block("http", method, path)
}

fn head_block(scheme: &str, method: &str, path: &str) -> Vec<u8> {
    [
        literal(":method", method),
        literal(":scheme", scheme),
        literal(":path", path),
        literal(":authority", "localhost"),
    ]
    .concat()
}

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn word(&self, at: usize) -> u32 {
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// What an [`H2`] connection runs over: plain TCP (h2c) or TLS on TCP.
trait Socket: Read + Write {
    /// The TCP stream underneath (for its timeouts).
    fn tcp(&self) -> &TcpStream;

    /// Reads what the server sent, whatever this side still has to write.
    fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.read(buf)
    }
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

/// A TLS client connection, driven synchronously.
type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

impl Socket for Tls {
    fn tcp(&self) -> &TcpStream {
        &self.sock
    }

    /// `StreamOwned::read` first flushes what is left to write, and fails if
    /// the server closed meanwhile, before the GOAWAY it sent is read: read
    /// records off the socket instead, plaintext first, then EOF.
    fn read_some(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.conn.reader().read(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // Ok(0) after close_notify; UnexpectedEof after a bare close.
                other => return other,
            }
            self.conn.read_tls(&mut self.sock)?;
            self.conn
                .process_new_packets()
                .map_err(std::io::Error::other)?;
        }
    }
}

/// A client connection that has sent the preface and an empty SETTINGS.
struct H2<S: Socket = TcpStream> {
    stream: S,
    buffer: Vec<u8>,
}

impl H2 {
    /// h2c with prior knowledge.
    fn connect(addr: SocketAddr) -> Self {
        Self::over(TcpStream::connect(addr).unwrap())
    }
}

impl H2<Tls> {
    /// TLS to edge's TLS listener (SNI `localhost`), trusting only its
    /// generated certificate, offering ALPN h2 alone; the handshake done and
    /// h2 chosen.
    fn connect_tls(edge: &Edge) -> Self {
        let tcp = TcpStream::connect(edge.tls_addr()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let config = tls_client(edge.cert_pem.as_deref().unwrap(), b"h2");
        let name = ServerName::try_from("localhost").unwrap();
        let mut tls = Tls::new(rustls::ClientConnection::new(config, name).unwrap(), tcp);
        while tls.conn.is_handshaking() {
            tls.conn.complete_io(&mut tls.sock).unwrap();
        }
        assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]), "ALPN");
        tls.sock.set_read_timeout(None).unwrap();
        tls.sock.set_write_timeout(None).unwrap();
        Self::over(tls)
    }
}

impl<S: Socket> H2<S> {
    fn over(mut stream: S) -> Self {
        stream.write_all(PREFACE).unwrap();
        stream.write_all(&frame(SETTINGS, 0, 0, &[])).unwrap();
        Self {
            stream,
            buffer: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    fn set_write_timeout(&self, timeout: Duration) {
        self.stream.tcp().set_write_timeout(Some(timeout)).unwrap();
    }

    /// Frames received until `wait` passes, `done` says so, or the server
    /// closes; and whether it closed.
    fn read_until(
        &mut self,
        wait: Duration,
        done: impl Fn(&[Frame]) -> bool,
    ) -> (Vec<Frame>, bool) {
        let deadline = Instant::now() + wait;
        let mut frames = Vec::new();
        let mut chunk = vec![0_u8; 256 * 1024];
        loop {
            while self.buffer.len() >= 9 {
                let len = usize::try_from(u32::from_be_bytes([
                    0,
                    self.buffer[0],
                    self.buffer[1],
                    self.buffer[2],
                ]))
                .unwrap();
                if self.buffer.len() < 9 + len {
                    break;
                }
                let bytes: Vec<u8> = self.buffer.drain(..9 + len).collect();
                frames.push(Frame {
                    kind: bytes[3],
                    flags: bytes[4],
                    stream: u32::from_be_bytes(bytes[5..9].try_into().unwrap()) & 0x7fff_ffff,
                    payload: bytes[9..].to_vec(),
                });
            }
            if done(&frames) {
                return (frames, false);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (frames, false);
            }
            self.stream.tcp().set_read_timeout(Some(left)).unwrap();
            match self.stream.read_some(&mut chunk) {
                Ok(0) => return (frames, true),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return (frames, true),
            }
        }
    }
}

/// (last stream id, error code) of the GOAWAY among `frames`.
fn goaway(frames: &[Frame]) -> Option<(u32, u32)> {
    frames
        .iter()
        .find(|f| f.kind == GOAWAY)
        .map(|f| (f.word(0) & 0x7fff_ffff, f.word(4)))
}

fn has_goaway(frames: &[Frame]) -> bool {
    goaway(frames).is_some()
}

/// One GET on a fresh connection (h2c or TLS): the `:status` 200 comes back.
fn h2_get_works<S: Socket>(mut h2: H2<S>, scheme: &str) -> bool {
    h2.send(&frame(
        HEADERS,
        END_STREAM | END_HEADERS,
        1,
        &head_block(scheme, "GET", "/_status"),
    ))
    .unwrap();
    let (frames, _) = h2.read_until(Duration::from_secs(5), |f| {
        f.iter().any(|f| f.kind == HEADERS && f.stream == 1)
    });
    // 0x88 is HPACK's static ":status: 200".
    frames
        .iter()
        .any(|f| f.kind == HEADERS && f.stream == 1 && f.payload.first() == Some(&0x88))
}

/// Rapid reset: 1000 streams opened and cancelled in one burst; the GOAWAY
/// (last stream id, error code) the server answered, if any.
fn rapid_reset<S: Socket>(h2: &mut H2<S>, scheme: &str) -> Option<(u32, u32)> {
    let mut burst = Vec::new();
    for i in 0..1000_u32 {
        let id = 2 * i + 1;
        burst.extend(frame(
            HEADERS,
            END_STREAM | END_HEADERS,
            id,
            &head_block(scheme, "GET", "/_status"),
        ));
        burst.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
    }
    let _ = h2.send(&burst);
    let (frames, _) = h2.read_until(Duration::from_secs(5), has_goaway);
    goaway(&frames)
}

/// CVE-2023-44487: open and cancel 1000 streams in one burst. The server
/// answers with GOAWAY `ENHANCE_YOUR_CALM` long before the end, and everyone
/// else is still served.
#[test]
fn rapid_reset_gets_goaway_enhance_your_calm() {
    let frontend = frontend(&[]);
    let upstream = Stub::start(|_| Reply::text(200, "ok"));
    let edge = Edge::start(&EdgeSpec {
        servers: format!("{{ address = \"{}\" }}", upstream.addr),
        ..EdgeSpec::default()
    });
    for (name, addr) in [("frontend", frontend.addr()), ("edge", edge.addr())] {
        let (last, code) = rapid_reset(&mut H2::connect(addr), "http")
            .unwrap_or_else(|| panic!("{name}: no GOAWAY"));
        assert_eq!(code, ENHANCE_YOUR_CALM, "{name}");
        assert!(last < 1999, "{name}: every stream was accepted ({last})");
        assert!(
            h2_get_works(H2::connect(addr), "http"),
            "{name} stopped serving h2"
        );
        assert_eq!(get(addr, "/_status", &[]).status, 200, "{name}");
    }
    // The upstream saw at most the streams edge accepted.
    assert!(upstream.count("/_status") < 1000);
}

/// edge with a TLS listener (and its plain one) in front of a stub
/// answering 200.
fn tls_edge(upstream: &Stub) -> Edge {
    Edge::start(&EdgeSpec {
        servers: format!("{{ address = \"{}\" }}", upstream.addr),
        tls: true,
        ..EdgeSpec::default()
    })
}

/// Rapid reset over TLS (ALPN h2) to edge's TLS listener: the same GOAWAY
/// `ENHANCE_YOUR_CALM` as over h2c, and h2 over TLS and HTTP/1 still served.
#[test]
fn rapid_reset_over_tls_gets_goaway_enhance_your_calm() {
    let upstream = Stub::start(|_| Reply::text(200, "ok"));
    let edge = tls_edge(&upstream);
    let started = Instant::now();
    let (last, code) = rapid_reset(&mut H2::connect_tls(&edge), "https").expect("no GOAWAY");
    eprintln!(
        "rapid reset over TLS: GOAWAY last stream {last} after {:?}",
        started.elapsed()
    );
    assert_eq!(code, ENHANCE_YOUR_CALM);
    assert!(last < 1999, "every stream was accepted ({last})");
    assert!(
        h2_get_works(H2::connect_tls(&edge), "https"),
        "edge stopped serving h2 over TLS"
    );
    assert_eq!(get(edge.addr(), "/_status", &[]).status, 200);
    assert!(upstream.count("/_status") < 1000);
}

/// HEADERS without `END_HEADERS`, then up to 10 000 CONTINUATION frames of
/// 1 KiB without end (a write blocked 2 s ends it). Returns the bytes the
/// server took, the frames it sent within 3 s after, and whether it closed.
fn continuation_flood<S: Socket>(h2: &mut H2<S>, scheme: &str) -> (usize, Vec<Frame>, bool) {
    h2.send(&frame(
        HEADERS,
        0,
        1,
        &head_block(scheme, "GET", "/_status"),
    ))
    .unwrap();
    let block: Vec<u8> = (0..10)
        .flat_map(|i| literal(&format!("x-flood-{i}"), &"v".repeat(100)))
        .collect();
    let mut sent = 0_usize;
    h2.set_write_timeout(Duration::from_secs(2));
    for _ in 0..10_000 {
        if h2.send(&frame(CONTINUATION, 0, 1, &block)).is_err() {
            break;
        }
        sent += block.len();
    }
    let (frames, closed) = h2.read_until(Duration::from_secs(3), has_goaway);
    (sent, frames, closed)
}

/// HEADERS without `END_HEADERS`, then CONTINUATION frames without end: cut
/// off at the header-list limit, memory unaffected.
#[test]
fn continuation_flood_is_cut_off() {
    let frontend = frontend(&[]);
    let rss_before = frontend.rss_kib();
    let (sent, frames, closed) = continuation_flood(&mut H2::connect(frontend.addr()), "http");
    assert!(
        has_goaway(&frames) || closed,
        "the server took {sent} bytes of one header block"
    );
    let grown = frontend.rss_kib().saturating_sub(rss_before);
    assert!(grown < 20 * 1024, "RSS grew {grown} KiB");
    assert!(h2_get_works(H2::connect(frontend.addr()), "http"));
}

/// The CONTINUATION flood over TLS to edge's TLS listener: cut off the same
/// way, edge's memory unaffected, h2 over TLS still served.
#[test]
fn continuation_flood_over_tls_is_cut_off() {
    let upstream = Stub::start(|_| Reply::text(200, "ok"));
    let edge = tls_edge(&upstream);
    let rss_before = edge.proc.rss_kib();
    let started = Instant::now();
    let (sent, frames, closed) = continuation_flood(&mut H2::connect_tls(&edge), "https");
    let grown = edge.proc.rss_kib().saturating_sub(rss_before);
    eprintln!(
        "CONTINUATION flood over TLS: {sent} bytes taken, GOAWAY {:?}, closed {closed}, \
         {:?}, RSS grew {grown} KiB",
        goaway(&frames),
        started.elapsed()
    );
    assert!(
        has_goaway(&frames) || closed,
        "edge took {sent} bytes of one header block"
    );
    assert!(grown < 20 * 1024, "RSS grew {grown} KiB");
    assert!(h2_get_works(H2::connect_tls(&edge), "https"));
    assert_eq!(
        upstream.count("/_status"),
        1,
        "only the last GET got through"
    );
}

/// 100 copies of `one` written again and again for 2 s on a connection from
/// `connect` that never reads; the frames the server took (a blocked write
/// gives up after 200 ms and tries again) and the connection, still open.
fn flood<S: Socket>(mut h2: H2<S>, one: &[u8]) -> (usize, H2<S>) {
    let burst: Vec<u8> = one.repeat(100);
    h2.set_write_timeout(Duration::from_millis(200));
    let started = Instant::now();
    let mut frames = 0_usize;
    while started.elapsed() < Duration::from_secs(2) {
        match h2.send(&burst) {
            Ok(()) => frames += 100,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    (frames, h2)
}

/// A SETTINGS frame of ten `INITIAL_WINDOW_SIZE` entries, and a PING.
fn flood_frames() -> [Vec<u8>; 2] {
    let settings: Vec<u8> = (0..10)
        .flat_map(|_| {
            let mut s = 0x4_u16.to_be_bytes().to_vec();
            s.extend_from_slice(&65_535_u32.to_be_bytes());
            s
        })
        .collect();
    [
        frame(SETTINGS, 0, 0, &settings),
        frame(PING, 0, 0, b"12345678"),
    ]
}

/// A client that floods SETTINGS or PING and never reads the ACKs: the
/// server stops reading (back-pressure) instead of queueing answers, its
/// memory stays flat, and other clients are served meanwhile.
#[test]
fn settings_and_ping_floods_keep_memory_flat_and_others_served() {
    let frontend = frontend(&[]);
    let addr = frontend.addr();
    let rss_before = frontend.rss_kib();
    let floods: Vec<_> = flood_frames()
        .into_iter()
        .map(|one| std::thread::spawn(move || flood(H2::connect(addr), &one)))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..20 {
        assert_eq!(get(addr, "/_status", &[]).status, 200);
    }
    assert!(h2_get_works(H2::connect(addr), "http"));
    let results: Vec<_> = floods.into_iter().map(|f| f.join().unwrap()).collect();
    let grown = frontend.rss_kib().saturating_sub(rss_before);
    eprintln!(
        "floods: SETTINGS frames {}, PING frames {}, RSS grew {grown} KiB",
        results[0].0, results[1].0
    );
    assert!(results.iter().all(|(frames, _)| *frames >= 100));
    assert!(grown < 30 * 1024, "RSS grew {grown} KiB");
}

/// The SETTINGS and PING floods over TLS to edge's TLS listener: edge stops
/// reading, its memory stays flat, h2 over TLS and HTTP/1 served meanwhile.
#[test]
fn settings_and_ping_floods_over_tls_keep_memory_flat_and_others_served() {
    let upstream = Stub::start(|_| Reply::text(200, "ok"));
    let edge = Arc::new(tls_edge(&upstream));
    let rss_before = edge.proc.rss_kib();
    let floods: Vec<_> = flood_frames()
        .into_iter()
        .map(|one| {
            let edge = Arc::clone(&edge);
            std::thread::spawn(move || flood(H2::connect_tls(&edge), &one))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..20 {
        assert_eq!(get(edge.addr(), "/_status", &[]).status, 200);
    }
    assert!(h2_get_works(H2::connect_tls(&edge), "https"));
    // The flooding connections stay open while memory is read.
    let results: Vec<_> = floods.into_iter().map(|f| f.join().unwrap()).collect();
    let grown = edge.proc.rss_kib().saturating_sub(rss_before);
    eprintln!(
        "floods over TLS: SETTINGS frames {}, PING frames {}, edge RSS grew {grown} KiB",
        results[0].0, results[1].0
    );
    assert!(results.iter().all(|(frames, _)| *frames >= 100));
    assert!(grown < 30 * 1024, "RSS grew {grown} KiB");
}

/// 150 streams at once where the server advertises 100: streams 101–150 are
/// refused (`RST_STREAM` `REFUSED_STREAM`, safe to retry), the first 100 are
/// answered.
#[test]
fn streams_past_the_advertised_limit_are_refused() {
    let api_stub = Stub::start(|seen| {
        super::dependency::api(seen, || {
            Reply::delay(
                Duration::from_millis(1500),
                Reply::json(200, &super::dependency::document_json(false)),
            )
        })
    });
    let mut env = api_env(&api_stub);
    env.push(("WHARF_DOWNLOAD_UPSTREAM_TIMEOUT_SECONDS", "5".to_owned()));
    let frontend = frontend(&env);
    let mut h2 = H2::connect(frontend.addr());
    let path = document_path("c2VjcmV0LWRvY3VtZW50LWtleQ");
    let burst: Vec<u8> = (0..150_u32)
        .flat_map(|i| {
            frame(
                HEADERS,
                END_STREAM | END_HEADERS,
                2 * i + 1,
                &request_block("GET", &path),
            )
        })
        .collect();
    h2.send(&burst).unwrap();
    let answered = |frames: &[Frame]| frames.iter().filter(|f| f.kind == HEADERS).count();
    let (frames, _) = h2.read_until(Duration::from_secs(8), |f| answered(f) >= 100);
    let advertised = frames
        .iter()
        .find(|f| f.kind == SETTINGS && f.flags == 0)
        .map(|f| {
            f.payload
                .chunks(6)
                .find(|s| u16::from_be_bytes([s[0], s[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS)
                .map(|s| u32::from_be_bytes(s[2..6].try_into().unwrap()))
        });
    assert_eq!(advertised, Some(Some(100)));
    let refused = frames
        .iter()
        .filter(|f| f.kind == RST_STREAM && f.word(0) == REFUSED_STREAM)
        .count();
    assert_eq!(refused, 50);
    assert_eq!(answered(&frames), 100);
    assert!(frames
        .iter()
        .filter(|f| f.kind == HEADERS)
        .all(|f| f.payload.first() == Some(&0x88)));
    assert!(!frames.iter().any(|f| f.kind == DATA && f.stream > 199));
}

/// An h2 client that opens a connection and never completes a request head
/// (preface only, or HEADERS without `END_HEADERS`) is closed after the
/// header-read timeout, as an HTTP/1 client is; not held for the keep-alive
/// timeout (90 s frontend, 75 s edge).
#[test]
fn an_h2_head_that_never_ends_is_closed_by_the_header_timeout() {
    let frontend = frontend(&[]);
    let mut partial = H2::connect(frontend.addr());
    partial
        .send(&frame(HEADERS, 0, 1, &request_block("GET", "/_status")))
        .unwrap();
    let silent = H2::connect(frontend.addr());
    let started = Instant::now();
    let (_, closed) = partial.read_until(Duration::from_secs(4), |_| false);
    let partial_closed = started.elapsed();
    assert!(
        closed,
        "partial HEADERS still open after {partial_closed:?}"
    );
    let mut silent = silent;
    let (_, closed) = silent.read_until(Duration::from_secs(1), |_| false);
    let silent_closed = started.elapsed();
    assert!(closed, "preface-only connection still open");
    // Closed by the timeout (1 s here), not at once for some other reason.
    for (which, after) in [
        ("partial HEADERS", partial_closed),
        ("preface-only", silent_closed),
    ] {
        assert!(
            after >= Duration::from_millis(900),
            "{which} closed after {after:?}, before the header-read timeout"
        );
    }
}
