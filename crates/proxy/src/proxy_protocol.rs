//! PROXY protocol v1 (text) and v2 (binary) headers, as load balancers send
//! them before the client's bytes, and [`ProxyProtocolAcceptor`], which reads
//! one from trusted peers only before handing the stream on (to TLS, say).
//!
//! A peer that is not trusted is not asked for a header: whatever it sends is
//! treated as the client's own bytes, so a client cannot claim an address.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;
use wharf_http::{Accepted, Acceptor, ConnectInfo};

use crate::forwarded::TrustedProxies;

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_MAX: usize = 107;

/// A malformed or missing PROXY protocol header.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyProtocolError {
    /// Reading the header failed.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a PROXY protocol header.
    #[error("invalid PROXY header: {0}")]
    Invalid(&'static str),
}

/// What [`parse_header`] found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header: the first `len` bytes of the buffer. `client` is the
    /// source address it carries, `None` for `UNKNOWN`/`LOCAL`/unspecified
    /// (a health check of the balancer).
    Header {
        /// The client's address.
        client: Option<SocketAddr>,
        /// The header's length in bytes; the client's own bytes follow it.
        len: usize,
    },
    /// The buffer is the start of a header: read `needed` more bytes (never
    /// more than the rest of the header) and parse again.
    Incomplete {
        /// At least 1.
        needed: usize,
    },
}

/// Parses the PROXY protocol header (v1 text or v2 binary) at the start of
/// `buf` without reading anything: the whole header, an
/// [`Incomplete`](Parsed::Incomplete) start of one, or an error as soon as
/// the bytes cannot begin a header. Bytes after the header are not looked at.
///
/// v1 is `PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\r\n` (addresses of the
/// named family, ports 0–65535 in decimal digits) or `PROXY UNKNOWN…\r\n`,
/// 107 bytes at most. v2 is the 12-byte signature, version 2, command LOCAL
/// or PROXY, family UNSPEC, TCP over IPv4 or TCP over IPv6, and a length;
/// TLVs after the addresses are skipped.
///
/// ```
/// use wharf_proxy::proxy_protocol::{parse_header, Parsed};
/// let input = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
/// assert_eq!(
///     parse_header(input).unwrap(),
///     Parsed::Header { client: Some("203.0.113.7:51234".parse().unwrap()), len: 43 },
/// );
/// assert_eq!(parse_header(b"PROXY TC").unwrap(), Parsed::Incomplete { needed: 1 });
/// assert!(parse_header(b"GET / HTTP/1.1\r\n").is_err());
/// ```
pub fn parse_header(buf: &[u8]) -> Result<Parsed, ProxyProtocolError> {
    let invalid = ProxyProtocolError::Invalid;
    if buf.len() < START {
        let v1 = b"PROXY ".starts_with(&buf[..buf.len().min(6)]);
        let v2 = V2_SIGNATURE.starts_with(buf);
        return if v1 || v2 {
            Ok(Parsed::Incomplete {
                needed: START - buf.len(),
            })
        } else {
            Err(invalid("no PROXY signature"))
        };
    }
    if buf[..START] == V2_SIGNATURE[..START] {
        parse_v2(buf)
    } else if buf.starts_with(b"PROXY ") {
        parse_v1(buf)
    } else {
        Err(invalid("no PROXY signature"))
    }
}

/// Bytes read before the version is known: no valid header is shorter.
const START: usize = 8;
/// The fixed part of a v2 header: signature, version/command, family, length.
const V2_FIXED: usize = 16;

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyProtocolError> {
    let invalid = ProxyProtocolError::Invalid;
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(invalid("v1 header too long"))
        } else {
            Ok(Parsed::Incomplete { needed: 1 })
        };
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| invalid("v1 header is not text"))?;
    let client = parse_v1_line(text)?;
    Ok(Parsed::Header {
        client,
        len: end + 2,
    })
}

fn parse_v1_line(text: &str) -> Result<Option<SocketAddr>, ProxyProtocolError> {
    let invalid = ProxyProtocolError::Invalid;
    let port = |field: Option<&str>, what| {
        field
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or(invalid(what))
    };
    let mut fields = text.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(invalid("v1 header must start with PROXY"));
    }
    match fields.next() {
        Some("UNKNOWN") => Ok(None),
        Some(family @ ("TCP4" | "TCP6")) => {
            let v4 = family == "TCP4";
            let address = |field: Option<&str>, what| {
                field
                    .and_then(|s| s.parse::<IpAddr>().ok())
                    .filter(|ip| ip.is_ipv4() == v4)
                    .ok_or(invalid(what))
            };
            let src = address(fields.next(), "v1 source address")?;
            address(fields.next(), "v1 destination address")?;
            let sport = port(fields.next(), "v1 source port")?;
            port(fields.next(), "v1 destination port")?;
            if fields.next().is_some() {
                return Err(invalid("v1 header fields"));
            }
            Ok(Some(SocketAddr::new(src, sport)))
        }
        _ => Err(invalid("v1 protocol family")),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyProtocolError> {
    let invalid = ProxyProtocolError::Invalid;
    if buf.len() < V2_FIXED {
        return Ok(Parsed::Incomplete {
            needed: V2_FIXED - buf.len(),
        });
    }
    if buf[START..12] != V2_SIGNATURE[START..] {
        return Err(invalid("v2 signature"));
    }
    let version_command = buf[12];
    let family = buf[13];
    let len = V2_FIXED + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if version_command >> 4 != 2 {
        return Err(invalid("v2 version"));
    }
    let local = match version_command & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(invalid("v2 command")),
    };
    let Some(payload) = buf.get(V2_FIXED..len) else {
        return Ok(Parsed::Incomplete {
            needed: len - buf.len(),
        });
    };
    let client = match family {
        _ if local => None,
        // TCP over IPv4: src(4) dst(4) sport(2) dport(2)
        0x11 if payload.len() >= 12 => {
            let ip = Ipv4Addr::new(payload[0], payload[1], payload[2], payload[3]);
            let port = u16::from_be_bytes([payload[8], payload[9]]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        // TCP over IPv6: src(16) dst(16) sport(2) dport(2)
        0x21 if payload.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&payload[..16]);
            let port = u16::from_be_bytes([payload[32], payload[33]]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
        }
        0x00 => None,
        _ => return Err(invalid("v2 address family")),
    };
    Ok(Parsed::Header { client, len })
}

/// Reads one PROXY protocol header (v1 or v2) and returns the client address
/// it carries; `None` for `UNKNOWN`/`LOCAL` (a health check of the balancer).
/// Reads exactly the header's bytes, nothing after it (it parses with
/// [`parse_header`], reading only the bytes that asks for).
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyProtocolError> {
    let mut buf = Vec::with_capacity(V1_MAX);
    loop {
        match parse_header(&buf)? {
            Parsed::Header { client, .. } => return Ok(client),
            Parsed::Incomplete { needed } => {
                let start = buf.len();
                buf.resize(start + needed, 0);
                stream.read_exact(&mut buf[start..]).await?;
            }
        }
    }
}

/// Reads a PROXY protocol header from trusted peers, then runs `inner` (TLS,
/// or plain) on the rest of the stream; the client address from the header
/// becomes the connection's peer. Untrusted peers go straight to `inner`.
#[derive(Debug, Clone)]
pub struct ProxyProtocolAcceptor<A> {
    inner: A,
    trusted: TrustedProxies,
    timeout: Duration,
}

impl<A> ProxyProtocolAcceptor<A> {
    /// Wraps `inner`, trusting headers from `trusted`, each read within
    /// `timeout`.
    pub fn new(inner: A, trusted: TrustedProxies, timeout: Duration) -> Self {
        Self {
            inner,
            trusted,
            timeout,
        }
    }
}

impl<A: Acceptor<Io = Io>, Io> Acceptor for ProxyProtocolAcceptor<A>
where
    Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    type Io = Io;
    type Future = Pin<Box<dyn Future<Output = io::Result<Accepted<Io>>> + Send>>;

    fn accept(&self, mut stream: TcpStream, info: ConnectInfo) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if !this.trusted.contains(info.peer.ip()) {
                return this.inner.accept(stream, info).await;
            }
            let header = tokio::time::timeout(this.timeout, read_header(&mut stream))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "PROXY header timed out"))?
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let mut info = info;
            if let Some(client) = header {
                info.peer = client;
            }
            let mut accepted = this.inner.accept(stream, info).await?;
            if let Some(client) = header {
                accepted.peer = Some(client);
            }
            Ok(accepted)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn v1_headers_give_the_client_address_and_nothing_more_is_read() {
        let mut input: &[u8] = b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n";
        let addr = read_header(&mut input).await.unwrap();
        assert_eq!(addr, Some("203.0.113.7:51234".parse().unwrap()));
        assert_eq!(input, b"GET / HTTP/1.1\r\n");
        let mut unknown: &[u8] = b"PROXY UNKNOWN\r\n";
        assert_eq!(read_header(&mut unknown).await.unwrap(), None);
        let mut bad: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
        assert!(read_header(&mut bad).await.is_err());
    }

    #[tokio::test]
    async fn v2_headers_give_the_client_address() {
        let mut header = V2_SIGNATURE.to_vec();
        header.extend_from_slice(&[
            0x21, 0x11, 0, 12, 198, 51, 100, 9, 10, 0, 0, 1, 0x1f, 0x90, 1, 187,
        ]);
        header.extend_from_slice(b"rest");
        let mut input: &[u8] = &header;
        let addr = read_header(&mut input).await.unwrap();
        assert_eq!(addr, Some("198.51.100.9:8080".parse().unwrap()));
        assert_eq!(input, b"rest");
    }
}
