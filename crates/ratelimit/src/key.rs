//! What a zone counts requests by: [`KeySource`], and the real client address
//! behind trusted proxies ([`ClientIp`]).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::request::Parts;
use http::HeaderName;
/// An address range (`10.0.0.0/8`, `2001:db8::/32`, one address): wharf-http's,
/// shared with wharf-proxy so `set_real_ip_from` reads the same in both.
pub use wharf_http::{IpNet, IpNetError};

/// A function computing a key from the request head; `None` means "do not
/// limit this request in this zone" (as nginx does for an empty key).
pub type KeyFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// What a zone counts requests by.
#[derive(Clone)]
pub enum KeySource {
    /// The real client IP (see [`ClientIp`]), IPv6 grouped by prefix.
    ClientIp,
    /// The value of a request header; requests without it are not limited.
    Header(HeaderName),
    /// The method and path (without the query): one budget per route for all clients.
    Route,
    /// One key for every request: a global limit.
    Global,
    /// Your function.
    Custom(KeyFn),
}

impl KeySource {
    /// A [`KeySource::Custom`] from a closure.
    pub fn custom(f: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Self {
        Self::Custom(Arc::new(f))
    }

    pub(crate) fn extract(&self, parts: &Parts, client_ip: &ClientIp) -> Option<String> {
        match self {
            Self::ClientIp => client_ip.key(parts),
            Self::Header(name) => parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
                .map(str::to_owned),
            Self::Route => Some(format!("{} {}", parts.method, parts.uri.path())),
            Self::Global => Some(String::new()),
            Self::Custom(f) => f(parts),
        }
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientIp => f.write_str("ClientIp"),
            Self::Header(name) => f.debug_tuple("Header").field(name).finish(),
            Self::Route => f.write_str("Route"),
            Self::Global => f.write_str("Global"),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// A function finding the TCP peer of a request.
pub type PeerFn = Arc<dyn Fn(&Parts) -> Option<IpAddr> + Send + Sync>;

/// Which header a trusted proxy puts the client address in: wharf-http's,
/// so the limiter, the proxy and the access log read the same one.
pub use wharf_http::ForwardedHeader;

/// Finds the real client address of a request, so it cannot be spoofed.
///
/// A [`wharf_http::ClientAddr`] in the request's extensions (put there once
/// per request by whoever resolved it: wharf-http's server, edge) is the
/// answer. Otherwise the TCP peer comes from request extensions: [`wharf_http::ConnectInfo`]
/// (with the default `wharf-http` feature), else a [`SocketAddr`] or an
/// [`IpAddr`] extension (insert one from axum's `ConnectInfo` with a one-line
/// middleware), else the function given to [`ClientIp::peer_from`]. The
/// forwarded header is believed **only when the peer is a trusted proxy**;
/// then its addresses are walked right to left, skipping trusted proxies, and
/// the first untrusted one is the client (nginx `real_ip_recursive on`). An
/// unparsable entry stops the walk at the last trusted hop. The walk is
/// [`wharf_http::ClientAddrResolver`]'s, the one every part of wharf uses.
///
/// Keys group IPv6 clients by prefix (default /64: one household or one VM
/// usually owns a whole /64) and IPv4 clients by address.
///
/// ```
/// use wharf_ratelimit::ClientIp;
/// let client_ip = ClientIp::new().trust("10.0.0.0/8".parse().unwrap());
/// let mut req = http::Request::get("/").header("x-forwarded-for", "203.0.113.9, 10.1.1.1").body(()).unwrap();
/// req.extensions_mut().insert(std::net::SocketAddr::from(([10, 0, 0, 1], 4000)));
/// let (parts, ()) = req.into_parts();
/// assert_eq!(client_ip.resolve(&parts), Some("203.0.113.9".parse().unwrap()));
/// ```
#[derive(Clone)]
pub struct ClientIp {
    resolver: wharf_http::ClientAddrResolver,
    ipv6_prefix: u8,
    peer_from: Option<PeerFn>,
}

impl fmt::Debug for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIp")
            .field("trusted", &self.resolver.trusted())
            .field("header", &self.resolver.forwarded_header())
            .field("ipv6_prefix", &self.ipv6_prefix)
            .finish_non_exhaustive()
    }
}

impl Default for ClientIp {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientIp {
    /// No trusted proxies (the peer is the client), `X-Forwarded-For`, IPv6 /64.
    pub fn new() -> Self {
        Self {
            resolver: wharf_http::ClientAddrResolver::default(),
            ipv6_prefix: 64,
            peer_from: None,
        }
    }

    /// Trusts `net` as a proxy whose forwarded header is believed. Default: none.
    #[must_use]
    pub fn trust(self, net: IpNet) -> Self {
        self.trust_all([net])
    }

    /// Trusts every range in `nets`.
    #[must_use]
    pub fn trust_all(mut self, nets: impl IntoIterator<Item = IpNet>) -> Self {
        let header = self.resolver.forwarded_header();
        let trusted = self.resolver.trusted().iter().copied().chain(nets);
        self.resolver = wharf_http::ClientAddrResolver::new(trusted).header(header);
        self
    }

    /// The header trusted proxies set. Default `X-Forwarded-For`.
    #[must_use]
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.resolver = self.resolver.header(header);
        self
    }

    /// The resolver it walks forwarded headers with.
    pub fn resolver(&self) -> &wharf_http::ClientAddrResolver {
        &self.resolver
    }

    /// IPv6 clients are grouped by this many leading bits (1–128). Default 64.
    #[must_use]
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.ipv6_prefix = bits.clamp(1, 128);
        self
    }

    /// Where to find the TCP peer when it is not in a known extension.
    #[must_use]
    pub fn peer_from(
        mut self,
        f: impl Fn(&Parts) -> Option<IpAddr> + Send + Sync + 'static,
    ) -> Self {
        self.peer_from = Some(Arc::new(f));
        self
    }

    /// The TCP peer of the request, if known.
    pub fn peer(&self, parts: &Parts) -> Option<IpAddr> {
        #[cfg(feature = "wharf-http")]
        if let Some(info) = parts.extensions.get::<wharf_http::ConnectInfo>() {
            return Some(info.peer.ip().to_canonical());
        }
        if let Some(addr) = parts.extensions.get::<SocketAddr>() {
            return Some(addr.ip().to_canonical());
        }
        if let Some(ip) = parts.extensions.get::<IpAddr>() {
            return Some(ip.to_canonical());
        }
        self.peer_from
            .as_ref()
            .and_then(|f| f(parts))
            .map(|ip| ip.to_canonical())
    }

    /// The real client address of the request.
    pub fn resolve(&self, parts: &Parts) -> Option<IpAddr> {
        #[cfg(feature = "wharf-http")]
        if let Some(wharf_http::ClientAddr(client)) = parts.extensions.get() {
            return Some(client.to_canonical());
        }
        let peer = self.peer(parts)?;
        Some(self.resolver.resolve(peer, &parts.headers))
    }

    /// The client's key: its address, or its IPv6 prefix as `2001:db8::/64`.
    pub fn key(&self, parts: &Parts) -> Option<String> {
        Some(self.group(self.resolve(parts)?))
    }

    /// The key of a client address: IPv4 as is, IPv6 masked to the prefix.
    pub fn group(&self, ip: IpAddr) -> String {
        match ip.to_canonical() {
            v4 @ IpAddr::V4(_) => wharf_http::ip_text(v4),
            v6 @ IpAddr::V6(_) if self.ipv6_prefix >= 128 => v6.to_string(),
            v6 @ IpAddr::V6(_) => IpNet::new(v6, self.ipv6_prefix).to_string(),
        }
    }
}
