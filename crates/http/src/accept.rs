//! The transport seam: an [`Acceptor`] turns an accepted TCP stream into the
//! byte stream HTTP is spoken over (a TLS session, a stream after a PROXY
//! protocol header, or the TCP stream itself), before any HTTP is read.
//!
//! wharf-http does not depend on any TLS library: `wharf-tls` implements
//! [`Acceptor`] with rustls. An acceptor's failures (a bad handshake, a client
//! that goes away) are logged at debug level and close that one connection;
//! they are never fatal to the server. Whatever the acceptor needs to tell the
//! application goes into [`Accepted::extensions`], copied into every request
//! of the connection (for TLS, a [`TlsInfo`], which is how a handler knows the
//! scheme is `https`).

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::conn::ConnectInfo;

/// A connection ready for HTTP.
#[derive(Debug)]
pub struct Accepted<Io> {
    /// The stream HTTP is read from and written to.
    pub io: Io,
    /// Facts about the connection, copied into each of its requests'
    /// extensions (e.g. a [`TlsInfo`]).
    pub extensions: http::Extensions,
    /// The client's address when it is not the TCP peer (a PROXY protocol
    /// header from a trusted load balancer); `None` keeps the TCP peer.
    pub peer: Option<SocketAddr>,
}

impl<Io> Accepted<Io> {
    /// The stream alone, with no extensions and the TCP peer.
    pub fn new(io: Io) -> Self {
        Self {
            io,
            extensions: http::Extensions::new(),
            peer: None,
        }
    }
}

/// Turns an accepted TCP stream into the stream HTTP is served over.
///
/// Implementations must bound their own work in time (a TLS handshake
/// timeout); as a backstop the server drops an accept that takes longer than
/// [`ServerConfig::header_read_timeout`](crate::ServerConfig::header_read_timeout).
pub trait Acceptor: Clone + Send + Sync + 'static {
    /// The stream HTTP is spoken over.
    type Io: AsyncRead + AsyncWrite + Send + Unpin + 'static;
    /// The accept (handshake) in progress.
    type Future: Future<Output = io::Result<Accepted<Self::Io>>> + Send + 'static;

    /// Starts accepting `stream`, which came from `info.peer` on `info.local`.
    fn accept(&self, stream: TcpStream, info: ConnectInfo) -> Self::Future;
}

/// The identity acceptor: plain HTTP over the TCP stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainAcceptor;

impl Acceptor for PlainAcceptor {
    type Io = TcpStream;
    type Future = std::future::Ready<io::Result<Accepted<TcpStream>>>;

    fn accept(&self, stream: TcpStream, _info: ConnectInfo) -> Self::Future {
        std::future::ready(Ok(Accepted::new(stream)))
    }
}

/// Present in the extensions of every request that arrived over TLS. Cheap
/// to clone (it is copied into every request of its connection): no field
/// allocates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsInfo {
    /// The negotiated protocol version, e.g. `TLSv1.3`.
    pub version: &'static str,
    /// The ALPN protocol agreed, e.g. `h2` or `http/1.1`, if any.
    pub alpn: Option<std::sync::Arc<str>>,
    /// The server name (SNI) the client asked for, if any.
    pub server_name: Option<std::sync::Arc<str>>,
    /// The negotiated cipher suite, e.g. `TLS13_AES_128_GCM_SHA256`.
    pub cipher_suite: &'static str,
    /// Whether the session was resumed (ticket or session id).
    pub resumed: bool,
}

/// The scheme a request arrived with: `https` when its connection carried a
/// [`TlsInfo`], else `http`.
pub fn request_scheme<B>(request: &http::Request<B>) -> &'static str {
    if request.extensions().get::<TlsInfo>().is_some() {
        "https"
    } else {
        "http"
    }
}
