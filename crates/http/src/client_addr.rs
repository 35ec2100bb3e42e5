//! The client's address behind trusted proxies, resolved one way for every
//! part of wharf: the proxy's `X-Forwarded-For` and `X-Real-IP`, the rate
//! limiter's key and the access log all read [`ClientAddr`], or resolve with
//! the same [`ClientAddrResolver`] when nothing put one in the request.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use http::header::{HeaderMap, FORWARDED};

use crate::ipnet::IpNet;

/// The real client address of a request, once resolved (a request
/// extension: see [`ClientAddrResolver::insert`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

/// Which header a trusted proxy puts the client address in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client, for="[2001:db8::1]:4711"`.
    Forwarded,
}

/// Finds the real client address so it cannot be spoofed: the TCP peer
/// (after any PROXY protocol header, which wharf-proxy's acceptor writes into
/// [`ConnectInfo`](crate::ConnectInfo)) unless that peer is a trusted proxy;
/// then the forwarded header's addresses, right to left, skipping trusted
/// proxies: the first untrusted one is the client (nginx `set_real_ip_from`
/// with `real_ip_recursive on`). An entry that does not parse (or a header
/// value that is not text) stops the walk at the last trusted hop.
///
/// ```
/// use wharf_http::{ClientAddrResolver, IpNet};
/// let resolver = ClientAddrResolver::new(["10.0.0.0/8".parse::<IpNet>().unwrap()]);
/// let mut headers = http::HeaderMap::new();
/// headers.insert("x-forwarded-for", "203.0.113.9, 10.1.1.1".parse().unwrap());
/// let peer = "10.0.0.1".parse().unwrap();
/// assert_eq!(resolver.resolve(peer, &headers), "203.0.113.9".parse::<std::net::IpAddr>().unwrap());
/// // An untrusted peer is the client, whatever it claims.
/// assert_eq!(resolver.resolve("198.51.100.1".parse().unwrap(), &headers).to_string(), "198.51.100.1");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientAddrResolver {
    trusted: Vec<IpNet>,
    header: ForwardedHeader,
}

impl ClientAddrResolver {
    /// Believes the forwarded header from peers in `trusted`, `X-Forwarded-For`.
    pub fn new(trusted: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            trusted: trusted.into_iter().collect(),
            header: ForwardedHeader::XForwardedFor,
        }
    }

    /// Reads `header` instead. Default `X-Forwarded-For`.
    #[must_use]
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// The trusted ranges.
    pub fn trusted(&self) -> &[IpNet] {
        &self.trusted
    }

    /// The header read.
    pub fn forwarded_header(&self) -> ForwardedHeader {
        self.header
    }

    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }

    /// The client address of a request from `peer` with `headers`.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        for hop in self.hops(headers).iter().rev() {
            match hop {
                Some(ip) => {
                    client = *ip;
                    if !self.is_trusted(*ip) {
                        break;
                    }
                }
                None => break,
            }
        }
        client
    }

    /// Resolves the request's client from its [`ConnectInfo`](crate::ConnectInfo)
    /// and puts it in its extensions as [`ClientAddr`]; a request without a
    /// `ConnectInfo` is left as it is.
    pub fn insert<B>(&self, request: &mut http::Request<B>) {
        let Some(peer) = request
            .extensions()
            .get::<crate::ConnectInfo>()
            .map(|info| info.peer.ip())
        else {
            return;
        };
        let client = self.resolve(peer, request.headers());
        request.extensions_mut().insert(ClientAddr(client));
    }

    /// Every hop of the forwarded header(s), in order; `None` for one that
    /// does not parse (or is `unknown`/obfuscated, or not text).
    fn hops(&self, headers: &HeaderMap) -> Vec<Option<IpAddr>> {
        let mut hops = Vec::new();
        match self.header {
            ForwardedHeader::XForwardedFor => {
                for value in headers.get_all("x-forwarded-for") {
                    let Ok(text) = value.to_str() else {
                        hops.push(None);
                        continue;
                    };
                    hops.extend(text.split(',').map(|s| parse_node(s.trim())));
                }
            }
            ForwardedHeader::Forwarded => {
                for value in headers.get_all(FORWARDED) {
                    let Ok(text) = value.to_str() else {
                        hops.push(None);
                        continue;
                    };
                    for element in text.split(',') {
                        let node = element.split(';').find_map(|pair| {
                            let (name, value) = pair.trim().split_once('=')?;
                            name.trim()
                                .eq_ignore_ascii_case("for")
                                .then(|| value.trim().trim_matches('"'))
                        });
                        hops.push(node.and_then(parse_node));
                    }
                }
            }
        }
        hops
    }
}

/// Parses `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`, `[2001:db8::1]` or `[2001:db8::1]:80`.
fn parse_node(text: &str) -> Option<IpAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some(addr.ip().to_canonical());
    }
    // `[2001:db8::1]` (with a port it parsed as a socket address above).
    let inner = text.strip_prefix('[')?.strip_suffix(']')?;
    inner
        .parse::<Ipv6Addr>()
        .ok()
        .map(|v6| IpAddr::V6(v6).to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &str, values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn walks_right_to_left_past_trusted_hops_and_stops_at_garbage() {
        let r = ClientAddrResolver::new(["10.0.0.0/8".parse().unwrap()]);
        let xff = |v: &[&str]| headers("x-forwarded-for", v);
        assert_eq!(
            r.resolve(ip("10.0.0.1"), &xff(&["1.1.1.1, 2.2.2.2, 10.9.9.9"])),
            ip("2.2.2.2")
        );
        // Two header lines are one list.
        assert_eq!(
            r.resolve(ip("10.0.0.1"), &xff(&["1.1.1.1", "10.2.2.2"])),
            ip("1.1.1.1")
        );
        // Garbage stops the walk at the last trusted hop.
        assert_eq!(
            r.resolve(ip("10.0.0.1"), &xff(&["1.1.1.1, junk, 10.2.2.2"])),
            ip("10.2.2.2")
        );
        // Ports and brackets are addresses too.
        assert_eq!(
            r.resolve(ip("10.0.0.1"), &xff(&["[2001:db8::7]:443"])),
            ip("2001:db8::7")
        );
        assert_eq!(
            r.resolve(ip("10.0.0.1"), &xff(&["192.0.2.1:80"])),
            ip("192.0.2.1")
        );
        // Untrusted peers are the client; mapped IPv4 is canonical.
        assert_eq!(
            r.resolve(ip("::ffff:8.8.8.8"), &xff(&["1.1.1.1"])),
            ip("8.8.8.8")
        );
        // Only trusted hops: the left-most.
        assert_eq!(
            r.resolve(ip("10.0.0.1"), &xff(&["10.3.3.3"])),
            ip("10.3.3.3")
        );
        assert_eq!(r.resolve(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
    }

    #[test]
    fn reads_rfc7239_forwarded_when_told() {
        let r = ClientAddrResolver::new(["10.0.0.0/8".parse().unwrap()])
            .header(ForwardedHeader::Forwarded);
        let fwd = headers(
            "forwarded",
            &["for=192.0.2.60;proto=http, for=\"[2001:db8:cafe::17]:4711\""],
        );
        assert_eq!(r.resolve(ip("10.0.0.1"), &fwd), ip("2001:db8:cafe::17"));
        let hidden = headers("forwarded", &["for=192.0.2.60, for=_hidden"]);
        assert_eq!(r.resolve(ip("10.0.0.1"), &hidden), ip("10.0.0.1"));
        // X-Forwarded-For is not read in this mode.
        let xff = headers("x-forwarded-for", &["1.1.1.1"]);
        assert_eq!(r.resolve(ip("10.0.0.1"), &xff), ip("10.0.0.1"));
    }

    #[test]
    fn insert_puts_the_client_in_the_request() {
        let r = ClientAddrResolver::new(["127.0.0.0/8".parse().unwrap()]);
        let mut request = http::Request::get("/")
            .header("x-forwarded-for", "203.0.113.5")
            .body(())
            .unwrap();
        r.insert(&mut request);
        assert_eq!(
            request.extensions().get::<ClientAddr>(),
            None,
            "no ConnectInfo"
        );
        request.extensions_mut().insert(crate::ConnectInfo {
            peer: "127.0.0.1:5000".parse().unwrap(),
            local: "127.0.0.1:80".parse().unwrap(),
        });
        r.insert(&mut request);
        assert_eq!(
            request.extensions().get::<ClientAddr>(),
            Some(&ClientAddr(ip("203.0.113.5")))
        );
    }
}
