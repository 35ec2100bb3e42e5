//! Bytes on a socket: a hand-written HTTP/1.1 client that sends exactly what
//! a test says (malformed on purpose) and reads every response that comes
//! back, so a test can count them.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What came back on one connection.
#[derive(Debug)]
pub struct Exchange {
    pub bytes: Vec<u8>,
    /// The server closed the connection (EOF or reset) before the wait ended.
    pub closed: bool,
    /// Time from the last byte sent to the first byte received.
    pub first_byte: Option<Duration>,
}

impl Exchange {
    pub fn responses(&self) -> Vec<Response> {
        parse_responses(&self.bytes)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The statuses of every response, in order.
    pub fn statuses(&self) -> Vec<u16> {
        self.responses().iter().map(|r| r.status).collect()
    }
}

/// Sends `bytes` on a new connection and reads until the server closes or
/// `wait` passes.
pub fn exchange(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Exchange {
    let mut stream = TcpStream::connect(addr).unwrap();
    // A server may answer and close before reading everything: a failed write
    // is then part of the answer, not a test failure.
    let _ = stream.write_all(bytes);
    read_all(&mut stream, wait)
}

/// Reads until EOF, reset or `wait`.
pub fn read_all(stream: &mut TcpStream, wait: Duration) -> Exchange {
    let sent = Instant::now();
    let deadline = sent + wait;
    let mut out = Vec::new();
    let mut first_byte = None;
    let mut chunk = vec![0_u8; 64 * 1024];
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => {
                first_byte.get_or_insert_with(|| sent.elapsed());
                out.extend_from_slice(&chunk[..n]);
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                break false
            }
            Err(_) => break true,
        }
    };
    Exchange {
        bytes: out,
        closed,
        first_byte,
    }
}

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Every complete or partial response in a byte stream, in order (bodies
/// delimited by `Content-Length` or chunked encoding; otherwise to the end).
pub fn parse_responses(mut bytes: &[u8]) -> Vec<Response> {
    let mut out = Vec::new();
    while bytes.starts_with(b"HTTP/") {
        let Some(end) = find(bytes, b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut response = Response {
            status,
            head,
            body: Vec::new(),
        };
        let rest = &bytes[end + 4..];
        let informational = (100..200).contains(&status) && status != 101;
        if informational {
            out.push(response);
            bytes = rest;
            continue;
        }
        if let Some(length) = response
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok())
        {
            let length = length.min(rest.len());
            response.body = rest[..length].to_vec();
            bytes = &rest[length..];
        } else if response
            .header("transfer-encoding")
            .is_some_and(|v| v.contains("chunked"))
        {
            let mut body = Vec::new();
            let mut cursor = rest;
            loop {
                let Some(line_end) = find(cursor, b"\r\n") else {
                    cursor = &[];
                    break;
                };
                let size = usize::from_str_radix(
                    String::from_utf8_lossy(&cursor[..line_end])
                        .split(';')
                        .next()
                        .unwrap_or_default()
                        .trim(),
                    16,
                )
                .unwrap_or(0);
                cursor = &cursor[line_end + 2..];
                if size == 0 {
                    cursor = cursor.get(2..).unwrap_or_default();
                    break;
                }
                let take = size.min(cursor.len());
                body.extend_from_slice(&cursor[..take]);
                cursor = cursor.get(take + 2..).unwrap_or_default();
            }
            response.body = body;
            bytes = cursor;
        } else {
            response.body = rest.to_vec();
            bytes = &[];
        }
        out.push(response);
    }
    out
}

/// `GET path` with `Connection: close` and extra header lines
/// (`"Name: value"`); the one response.
pub fn get(addr: SocketAddr, path: &str, headers: &[&str]) -> Response {
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let exchange = exchange(addr, request.as_bytes(), Duration::from_secs(15));
    exchange
        .responses()
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no response to GET {path}: {:?}", exchange.text()))
}

/// A request with a body and `Connection: close`; the one response.
pub fn send(addr: SocketAddr, method: &str, path: &str, headers: &[&str], body: &[u8]) -> Response {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for header in headers {
        request.push_str(header);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    let exchange = exchange(addr, &bytes, Duration::from_secs(15));
    exchange
        .responses()
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("no response to {method} {path}: {:?}", exchange.text()))
}

/// The p-th percentile (0–100) of `samples`.
pub fn percentile(samples: &[Duration], p: usize) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let index = (sorted.len() * p / 100).min(sorted.len().saturating_sub(1));
    sorted[index]
}

/// `n` sequential `GET path` requests, each on its own connection; their
/// latencies and how many did not come back 200.
pub fn latencies(addr: SocketAddr, path: &str, n: usize) -> (Vec<Duration>, usize) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let mut samples = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        let started = Instant::now();
        let exchange = exchange(addr, request.as_bytes(), Duration::from_secs(10));
        samples.push(started.elapsed());
        if exchange.statuses() != [200] {
            failed += 1;
        }
    }
    (samples, failed)
}
