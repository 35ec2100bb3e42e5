//! A scripted HTTP/1.1 server on loopback: plays the Notify API, the document
//! download API, or one of edge's upstream servers, and misbehaves on demand
//! (slow, silent, garbage, closing, down).

use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// One request as the stub read it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub target: String,
    /// The request head (request line and headers) as received.
    pub head: String,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or_default()
    }

    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// What the stub does with a request.
pub enum Reply {
    /// A complete answer.
    Http {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Waits, then does the inner reply (unless the stub is dropped first).
    Delay(Duration, Box<Reply>),
    /// Writes these bytes (anything, not necessarily HTTP) and closes.
    Raw(Vec<u8>),
    /// Closes the connection without a byte.
    Close,
    /// Never answers (until the stub is dropped).
    Hang,
    /// Sends the head and `sent` of a body announced as `length` bytes, then
    /// stalls.
    Stall {
        status: u16,
        length: usize,
        sent: Vec<u8>,
    },
    /// Hands the connection over (after the request head was read), e.g. for
    /// a WebSocket upgrade.
    Takeover(Box<dyn FnOnce(TcpStream) + Send>),
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Self {
        Self::Http {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    pub fn text(status: u16, body: &str) -> Self {
        Self::Http {
            status,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    pub fn delay(by: Duration, then: Reply) -> Self {
        Self::Delay(by, Box::new(then))
    }
}

pub type Handler = dyn Fn(&Seen) -> Reply + Send + Sync;

struct State {
    handler: RwLock<Arc<Handler>>,
    seen: Mutex<Vec<Seen>>,
    stop: AtomicBool,
    /// Listening (connections accepted) or down (connection refused, and
    /// open connections closed at their next request).
    up: AtomicBool,
    /// Bumped on every "down": connections from before it are closed.
    epoch: AtomicU64,
    /// Connections accepted so far.
    connections: AtomicU64,
}

pub struct Stub {
    pub addr: SocketAddr,
    state: Arc<State>,
    thread: Option<JoinHandle<()>>,
}

impl Stub {
    pub fn start(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            handler: RwLock::new(Arc::new(handler)),
            seen: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            up: AtomicBool::new(true),
            epoch: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let thread = {
            let state = Arc::clone(&state);
            std::thread::spawn(move || accept_loop(Some(listener), addr, &state))
        };
        Self {
            addr,
            state,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:port`
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) {
        *self.state.handler.write().unwrap() = Arc::new(handler);
    }

    /// Every request read so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Connections accepted so far, whether or not a whole request came on
    /// them (a request is in [`seen`](Self::seen) only once read whole).
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    pub fn clear(&self) {
        self.state.seen.lock().unwrap().clear();
    }

    /// Requests read so far whose path starts with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.path().starts_with(prefix))
            .count()
    }

    /// Down: the port refuses connections and open connections are closed
    /// at their next request (a crashed process). Up: listening again on
    /// the same port.
    pub fn set_up(&self, up: bool) {
        self.handle().set_up(up);
    }

    /// A handle for another thread.
    pub fn handle(&self) -> StubHandle {
        StubHandle(Arc::clone(&self.state))
    }
}

/// Switches a [`Stub`] up and down from another thread.
pub struct StubHandle(Arc<State>);

impl StubHandle {
    /// See [`Stub::set_up`].
    pub fn set_up(&self, up: bool) {
        if !up {
            self.0.epoch.fetch_add(1, Ordering::SeqCst);
        }
        self.0.up.store(up, Ordering::SeqCst);
        // Let the accept loop act on it.
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(mut listener: Option<TcpListener>, addr: SocketAddr, state: &Arc<State>) {
    if let Some(l) = &listener {
        l.set_nonblocking(true).unwrap();
    }
    while !state.stop.load(Ordering::SeqCst) {
        let up = state.up.load(Ordering::SeqCst);
        if !up {
            listener = None;
        } else if listener.is_none() {
            // The port was ours a moment ago; std sets SO_REUSEADDR.
            if let Ok(l) = TcpListener::bind(addr) {
                l.set_nonblocking(true).unwrap();
                listener = Some(l);
            }
        }
        let Some(l) = &listener else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        match l.accept() {
            Ok((stream, _)) => {
                state.connections.fetch_add(1, Ordering::SeqCst);
                let state = Arc::clone(state);
                std::thread::spawn(move || serve(stream, &state));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Sleeps up to `by`, returning early (false) when the stub stops.
fn nap(state: &State, by: Duration) -> bool {
    let until = Instant::now() + by;
    while Instant::now() < until {
        if state.stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request; `None` at end of stream, on error, or when stopping.
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>, state: &State) -> Option<Seen> {
    let mut chunk = [0_u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if state.stop.load(Ordering::SeqCst) {
            return None;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut seen = Seen {
        target: head.split(' ').nth(1).unwrap_or_default().to_owned(),
        head,
        body: Vec::new(),
    };
    let length: usize = seen
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let chunked = seen
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    buf.drain(..head_end);
    loop {
        let done = if chunked {
            find(buf, b"0\r\n\r\n").map(|i| i + 5)
        } else {
            (buf.len() >= length).then_some(length)
        };
        if let Some(end) = done {
            seen.body = buf.drain(..end).collect();
            return Some(seen);
        }
        if state.stop.load(Ordering::SeqCst) {
            return None;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return None,
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        410 => "Gone",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

fn serve(mut stream: TcpStream, state: &Arc<State>) {
    let epoch = state.epoch.load(Ordering::SeqCst);
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    while let Some(seen) = read_request(&mut stream, &mut buf, state) {
        if state.epoch.load(Ordering::SeqCst) != epoch || !state.up.load(Ordering::SeqCst) {
            // Crashed while this connection was open.
            return;
        }
        let close = seen
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        state.seen.lock().unwrap().push(seen.clone());
        let handler = Arc::clone(&state.handler.read().unwrap());
        let mut reply = handler(&seen);
        loop {
            match reply {
                Reply::Delay(by, then) => {
                    if !nap(state, by) {
                        return;
                    }
                    reply = *then;
                }
                Reply::Http {
                    status,
                    headers,
                    body,
                } => {
                    let mut out = format!(
                        "HTTP/1.1 {status} {}\r\ncontent-length: {}\r\n",
                        reason(status),
                        body.len()
                    );
                    for (name, value) in headers {
                        let _ = write!(out, "{name}: {value}\r\n");
                    }
                    if close {
                        out.push_str("connection: close\r\n");
                    }
                    out.push_str("\r\n");
                    let mut bytes = out.into_bytes();
                    bytes.extend_from_slice(&body);
                    if stream.write_all(&bytes).is_err() || close {
                        return;
                    }
                    break;
                }
                Reply::Raw(bytes) => {
                    let _ = stream.write_all(&bytes);
                    return;
                }
                Reply::Close => return,
                Reply::Hang => {
                    nap(state, Duration::from_secs(60));
                    return;
                }
                Reply::Stall {
                    status,
                    length,
                    sent,
                } => {
                    let head = format!(
                        "HTTP/1.1 {status} {}\r\ncontent-length: {length}\r\ncontent-type: application/json\r\n\r\n",
                        reason(status)
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&sent);
                    nap(state, Duration::from_secs(60));
                    return;
                }
                Reply::Takeover(take) => {
                    let _ = stream.set_read_timeout(None);
                    take(stream);
                    return;
                }
            }
        }
    }
}
