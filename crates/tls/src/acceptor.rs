//! [`TlsAcceptor`]: the TLS handshake as a `wharf_http::Acceptor`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rustls::{HandshakeKind, ProtocolVersion, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use wharf_http::{Accepted, ConnectInfo, TlsInfo};

use crate::store::TlsMetrics;

/// Performs TLS handshakes with a [`TlsConfig`](crate::TlsConfig)'s settings
/// and current certificates, within the handshake timeout. Cheap to clone.
#[derive(Clone)]
pub struct TlsAcceptor {
    inner: tokio_rustls::TlsAcceptor,
    timeout: Duration,
    metrics: Arc<TlsMetrics>,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn version_name(version: Option<ProtocolVersion>) -> &'static str {
    match version {
        Some(ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(ProtocolVersion::TLSv1_2) => "TLSv1.2",
        // Only 1.2 and 1.3 are ever negotiated (see `TlsConfig`).
        Some(other) => other.as_str().unwrap_or("unknown"),
        None => "unknown",
    }
}

impl TlsAcceptor {
    pub(crate) fn new(
        config: Arc<ServerConfig>,
        timeout: Duration,
        metrics: Arc<TlsMetrics>,
    ) -> Self {
        Self {
            inner: tokio_rustls::TlsAcceptor::from(config),
            timeout,
            metrics,
        }
    }

    /// Runs the server side of a handshake on any stream (a TCP stream, or one
    /// whose PROXY protocol header was already read), within the handshake
    /// timeout. Failures and timeouts are counted and returned as errors.
    pub async fn handshake<Io>(&self, io: Io) -> io::Result<(TlsStream<Io>, TlsInfo)>
    where
        Io: AsyncRead + AsyncWrite + Unpin,
    {
        match tokio::time::timeout(self.timeout, self.inner.accept(io)).await {
            Ok(Ok(stream)) => {
                let conn = stream.get_ref().1;
                if conn.alpn_protocol() == Some(crate::store::ACME_TLS_ALPN) {
                    // RFC 8737 3: the validation is the handshake; nothing
                    // is served on the connection.
                    self.metrics.handshakes.fetch_add(1, Ordering::Relaxed);
                    return Err(io::Error::other(
                        "TLS-ALPN-01 validation answered; connection closed",
                    ));
                }
                let resumed = conn.handshake_kind() == Some(HandshakeKind::Resumed);
                let info = TlsInfo {
                    version: version_name(conn.protocol_version()),
                    alpn: conn
                        .alpn_protocol()
                        .map(|p| Arc::from(String::from_utf8_lossy(p))),
                    server_name: conn.server_name().map(Arc::from),
                    cipher_suite: conn
                        .negotiated_cipher_suite()
                        .and_then(|s| s.suite().as_str())
                        .unwrap_or("unknown"),
                    resumed,
                };
                self.metrics.handshakes.fetch_add(1, Ordering::Relaxed);
                if resumed {
                    self.metrics.resumed.fetch_add(1, Ordering::Relaxed);
                }
                Ok((stream, info))
            }
            Ok(Err(error)) => {
                self.metrics
                    .handshake_failures
                    .fetch_add(1, Ordering::Relaxed);
                Err(error)
            }
            Err(_) => {
                self.metrics
                    .handshake_timeouts
                    .fetch_add(1, Ordering::Relaxed);
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                ))
            }
        }
    }
}

impl wharf_http::Acceptor for TlsAcceptor {
    type Io = TlsStream<TcpStream>;
    type Future = Pin<Box<dyn Future<Output = io::Result<Accepted<Self::Io>>> + Send>>;

    fn accept(&self, stream: TcpStream, _info: ConnectInfo) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (io, info) = this.handshake(stream).await?;
            let mut accepted = Accepted::new(io);
            accepted.extensions.insert(info);
            Ok(accepted)
        })
    }
}
