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

/// Reads one PROXY protocol header (v1 or v2) and returns the client address
/// it carries; `None` for `UNKNOWN`/`LOCAL` (a health check of the balancer).
/// Reads exactly the header's bytes, nothing after it.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyProtocolError> {
    let mut start = [0u8; 8];
    stream.read_exact(&mut start).await?;
    if start == V2_SIGNATURE[..8] {
        read_v2(stream, start).await
    } else if &start[..6] == b"PROXY " {
        read_v1(stream, start).await
    } else {
        Err(ProxyProtocolError::Invalid("no PROXY signature"))
    }
}

async fn read_v1<S: AsyncRead + Unpin>(
    stream: &mut S,
    start: [u8; 8],
) -> Result<Option<SocketAddr>, ProxyProtocolError> {
    let mut line = start.to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(ProxyProtocolError::Invalid("v1 header too long"));
        }
        line.push(stream.read_u8().await?);
    }
    let text = std::str::from_utf8(&line[..line.len() - 2])
        .map_err(|_| ProxyProtocolError::Invalid("v1 header is not text"))?;
    parse_v1(text)
}

fn parse_v1(text: &str) -> Result<Option<SocketAddr>, ProxyProtocolError> {
    let invalid = ProxyProtocolError::Invalid;
    let mut fields = text.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(invalid("v1 header must start with PROXY"));
    }
    match fields.next() {
        Some("UNKNOWN") => Ok(None),
        Some(family @ ("TCP4" | "TCP6")) => {
            let src: IpAddr = fields
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or(invalid("v1 source address"))?;
            let _dst: IpAddr = fields
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or(invalid("v1 destination address"))?;
            let port: u16 = fields
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or(invalid("v1 source port"))?;
            let _dport: u16 = fields
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or(invalid("v1 destination port"))?;
            if fields.next().is_some() || (family == "TCP4") != src.is_ipv4() {
                return Err(invalid("v1 header fields"));
            }
            Ok(Some(SocketAddr::new(src, port)))
        }
        _ => Err(invalid("v1 protocol family")),
    }
}

async fn read_v2<S: AsyncRead + Unpin>(
    stream: &mut S,
    start: [u8; 8],
) -> Result<Option<SocketAddr>, ProxyProtocolError> {
    let mut rest = [0u8; 8];
    stream.read_exact(&mut rest).await?;
    if rest[..4] != V2_SIGNATURE[8..] {
        return Err(ProxyProtocolError::Invalid("v2 signature"));
    }
    let _ = start;
    let version_command = rest[4];
    let family = rest[5];
    let len = usize::from(u16::from_be_bytes([rest[6], rest[7]]));
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await?;
    if version_command >> 4 != 2 {
        return Err(ProxyProtocolError::Invalid("v2 version"));
    }
    match version_command & 0x0f {
        0 => return Ok(None), // LOCAL
        1 => {}
        _ => return Err(ProxyProtocolError::Invalid("v2 command")),
    }
    match family {
        // TCP over IPv4: src(4) dst(4) sport(2) dport(2)
        0x11 if len >= 12 => {
            let ip = Ipv4Addr::new(payload[0], payload[1], payload[2], payload[3]);
            let port = u16::from_be_bytes([payload[8], payload[9]]);
            Ok(Some(SocketAddr::new(IpAddr::V4(ip), port)))
        }
        // TCP over IPv6: src(16) dst(16) sport(2) dport(2)
        0x21 if len >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&payload[..16]);
            let port = u16::from_be_bytes([payload[32], payload[33]]);
            Ok(Some(SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                port,
            )))
        }
        0x00 => Ok(None),
        _ => Err(ProxyProtocolError::Invalid("v2 address family")),
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
