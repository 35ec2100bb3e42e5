//! Client addresses and forwarding headers: trusted proxies
//! (`set_real_ip_from`), the real client IP, `X-Forwarded-*`, `X-Real-IP`,
//! and hop-by-hop header removal.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
/// An IP network (`10.0.0.0/8`, `::1`): wharf-http's, shared with wharf-ratelimit.
pub use wharf_http::{IpNet, IpNetError};

/// The peers whose forwarding headers are believed (`set_real_ip_from`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(wharf_http::ClientAddrResolver);

impl TrustedProxies {
    /// Trust these networks.
    pub fn new(networks: Vec<IpNet>) -> Self {
        Self(wharf_http::ClientAddrResolver::new(networks))
    }

    /// Whether `ip` is a trusted proxy.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.is_trusted(ip)
    }

    /// The resolver behind it, to resolve a request's client once
    /// ([`wharf_http::ClientAddrResolver::insert`]) for every part of wharf.
    pub fn resolver(&self) -> &wharf_http::ClientAddrResolver {
        &self.0
    }

    /// The client's address: the TCP peer unless it is trusted, in which
    /// case the right-most `X-Forwarded-For` entry that is not itself trusted
    /// (nginx `real_ip_header X-Forwarded-For; real_ip_recursive on`); the
    /// walk is [`wharf_http::ClientAddrResolver`]'s, as the rate limiter's.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        self.0.resolve(peer, headers)
    }
}

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `X-Forwarded-Host`.
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// `X-Real-IP`.
pub const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers: the fixed list and any named in `Connection`.
///
/// `Connection` is read as bytes, element by element, so a value with a byte
/// that is not visible ASCII (obs-text) in one element still has every valid
/// name in the others removed (the `forwarded` fuzz target found that such a
/// byte made the whole header, and so every name in it, ignored).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over the names (no hashing) says so.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// One of the fixed hop-by-hop names (every name `Connection` lists is only
/// looked for when a `Connection` header is there, and it is one of these).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

/// Sets the forwarding headers on a request about to go upstream.
/// From an untrusted peer, incoming `X-Forwarded-*`/`X-Real-IP` are replaced,
/// so a client cannot spoof its address; from a trusted proxy the peer is
/// appended to its `X-Forwarded-For` and its `X-Forwarded-Proto`/`-Host` kept.
pub(crate) fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    peer_trusted: bool,
    client: IpAddr,
    scheme: &str,
    host: Option<&HeaderValue>,
) {
    let peer = peer.to_canonical();
    let previous: Vec<&str> = if peer_trusted {
        headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect()
    } else {
        Vec::new()
    };
    let xff = if previous.is_empty() {
        wharf_http::ip_text(peer)
    } else {
        format!("{}, {}", previous.join(", "), wharf_http::ip_text(peer))
    };
    let xff = HeaderValue::try_from(xff).ok();
    // Most often (an untrusted peer, or no hop before it) the client is the
    // peer, and one value serves both headers.
    let real_ip = match &xff {
        Some(value) if previous.is_empty() && client == peer => Some(value.clone()),
        _ => HeaderValue::try_from(wharf_http::ip_text(client)).ok(),
    };
    if let Some(value) = xff {
        headers.insert(X_FORWARDED_FOR, value);
    }
    if let Some(value) = real_ip {
        headers.insert(X_REAL_IP, value);
    }
    if !(peer_trusted && headers.contains_key(X_FORWARDED_PROTO)) {
        headers.insert(
            X_FORWARDED_PROTO,
            HeaderValue::from_static(scheme_value(scheme)),
        );
    }
    if !(peer_trusted && headers.contains_key(X_FORWARDED_HOST)) {
        match host {
            Some(host) => {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
            None => {
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }
}

fn scheme_value(scheme: &str) -> &'static str {
    if scheme == "https" {
        "https"
    } else {
        "http"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_match() {
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(net.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        let host: IpNet = "::1".parse().unwrap();
        assert!(host.contains("::1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("0.0.0.0/0"
            .parse::<IpNet>()
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
    }

    #[test]
    fn the_client_ip_comes_from_headers_only_through_trusted_proxies() {
        let trusted = TrustedProxies::new(vec!["127.0.0.0/8".parse().unwrap()]);
        let mut headers = HeaderMap::new();
        headers.insert(
            X_FORWARDED_FOR,
            "6.6.6.6, 1.2.3.4, 127.0.0.2".parse().unwrap(),
        );
        assert_eq!(
            trusted.client_ip("127.0.0.1".parse().unwrap(), &headers),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            trusted.client_ip("9.9.9.9".parse().unwrap(), &headers),
            "9.9.9.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        remove_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-kept"));
    }

    /// Found by the `forwarded` fuzz target (input `*1,,.10.0\xd2\x850.,*.2`):
    /// a byte that is not visible ASCII anywhere in `Connection` made every
    /// name in it ignored, so the headers it named were forwarded.
    #[test]
    fn names_in_a_connection_header_with_obs_text_still_go() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"*1,,.10.0\xd2\x850.,*.2, x-secret").unwrap(),
        );
        headers.insert("*1", "1".parse().unwrap());
        headers.insert("x-secret", "1".parse().unwrap());
        headers.insert("x-kept", "1".parse().unwrap());
        remove_hop_by_hop(&mut headers);
        assert!(!headers.contains_key("*1"));
        assert!(!headers.contains_key("x-secret"));
        assert!(headers.contains_key("x-kept"));
        assert_eq!(headers.len(), 1);
    }
}

/// Property tests (docs/reliability.md, "Fuzzing and property tests").
#[cfg(test)]
mod props {
    use std::str::FromStr;

    use super::*;
    use proptest::prelude::*;

    fn trusted() -> TrustedProxies {
        TrustedProxies::new(
            ["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"]
                .iter()
                .map(|n| n.parse().unwrap())
                .collect(),
        )
    }

    /// Addresses from a few pools, so trusted and untrusted ones mix.
    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u8>().prop_map(|b| IpAddr::from([10, 0, 0, b])),
            any::<u8>().prop_map(|b| IpAddr::from([198, 51, 100, b])),
            Just(IpAddr::from([127, 0, 0, 1])),
            any::<u16>().prop_map(|s| IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, s])),
            any::<u16>().prop_map(|s| IpAddr::from([0x2001, 0xdb9, 0, 0, 0, 0, 0, s])),
            // IPv4-mapped: a trusted proxy seen through a dual-stack socket.
            any::<u8>()
                .prop_map(|b| IpAddr::V6(std::net::Ipv4Addr::new(10, 0, 0, b).to_ipv6_mapped())),
            any::<IpAddr>(),
        ]
    }

    /// One `X-Forwarded-For` entry: an address, or something that is not one.
    fn entry() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => any_ip().prop_map(|ip| ip.to_string()),
            1 => prop::sample::select(vec!["unknown", "", "1.2.3.4:80", "[::1]", "_hidden", "10.0.0.1/8"])
                .prop_map(str::to_owned),
            1 => "[ -~]{0,10}",
        ]
    }

    /// `X-Forwarded-For` header lines (comma-separated entries, odd spacing),
    /// sometimes with bytes that are not visible ASCII.
    fn xff_lines() -> impl Strategy<Value = Vec<HeaderValue>> {
        let line = (
            prop::collection::vec(entry(), 0..5),
            "[ ]{0,2}",
            any::<bool>(),
        )
            .prop_map(|(entries, pad, obs_text)| {
                let mut text = entries.join(&format!("{pad},{pad}")).into_bytes();
                if obs_text {
                    text.push(0xe9);
                }
                HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("junk"))
            });
        prop::collection::vec(line, 0..4)
    }

    fn headers(lines: &[HeaderValue]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(X_FORWARDED_FOR, line.clone());
        }
        headers
    }

    /// Every entry of the header lines a proxy reads, in order: the text
    /// lines split on commas; a line that is not text is one entry that does
    /// not parse. An entry is an address, with or without a port, IPv6 with
    /// or without brackets (as nginx's realip reads them).
    fn entries(lines: &[HeaderValue]) -> Vec<Option<IpAddr>> {
        let parse = |e: &str| {
            let e = e.trim();
            e.parse::<IpAddr>()
                .ok()
                .or_else(|| e.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
                .or_else(|| {
                    e.strip_prefix('[')
                        .and_then(|rest| rest.strip_suffix(']'))
                        .and_then(|v6| v6.parse::<std::net::Ipv6Addr>().ok())
                        .map(IpAddr::V6)
                })
                .map(|ip| ip.to_canonical())
        };
        lines
            .iter()
            .flat_map(|v| match v.to_str() {
                Ok(text) => text.split(',').map(parse).collect::<Vec<_>>(),
                Err(_) => vec![None],
            })
            .collect()
    }

    /// The model of nginx `real_ip_recursive on`, written differently: take
    /// the longest run of parsable trusted entries at the right end; the
    /// client is the entry just left of it if that one parses (it is then
    /// untrusted), else the leftmost of the run, else the peer.
    fn model(trusted: &TrustedProxies, peer: IpAddr, lines: &[HeaderValue]) -> IpAddr {
        let peer = peer.to_canonical();
        if !trusted.contains(peer) {
            return peer;
        }
        let entries = entries(lines);
        let run = entries
            .iter()
            .rev()
            .take_while(|e| e.is_some_and(|ip| trusted.contains(ip)))
            .count();
        let left = entries.len() - run;
        match (left.checked_sub(1).and_then(|i| entries[i]), run) {
            (Some(untrusted), _) => untrusted,
            (None, 0) => peer,
            (None, _) => entries[left].unwrap(),
        }
    }

    proptest! {
        #[test]
        fn the_client_ip_matches_the_model(peer in any_ip(), lines in xff_lines()) {
            let trusted = trusted();
            let got = trusted.client_ip(peer, &headers(&lines));
            prop_assert_eq!(got, model(&trusted, peer, &lines));
            // It is always the peer or one of the entries.
            prop_assert!(got == peer.to_canonical() || entries(&lines).contains(&Some(got)));
        }

        /// A peer that is not trusted is the client, whatever it sends.
        #[test]
        fn an_untrusted_peer_cannot_claim_an_address(lines in xff_lines(), last in any::<u8>()) {
            let peer = IpAddr::from([198, 51, 100, last]);
            prop_assert_eq!(trusted().client_ip(peer, &headers(&lines)), peer);
        }

        /// When some entry is untrusted and every entry right of it is a
        /// trusted proxy, that entry is the client: a trusted proxy is never
        /// taken for the client while an untrusted hop is reachable.
        #[test]
        fn a_trusted_proxy_is_never_the_client_when_a_hop_is_reachable(
            client in any::<u8>(),
            hops in prop::collection::vec(any::<u8>(), 0..4),
            peer in any::<u8>(),
            before in xff_lines(),
        ) {
            let mut lines = before;
            let chain: Vec<String> = std::iter::once(format!("198.51.100.{client}"))
                .chain(hops.iter().map(|h| format!("10.1.0.{h}")))
                .collect();
            lines.push(HeaderValue::from_str(&chain.join(", ")).unwrap());
            let got = trusted().client_ip(IpAddr::from([10, 2, 0, peer]), &headers(&lines));
            prop_assert_eq!(got, IpAddr::from([198, 51, 100, client]));
            prop_assert!(!trusted().contains(got));
        }

        /// What goes upstream: from an untrusted peer every forwarding header
        /// is replaced (the client cannot smuggle one through); from a trusted
        /// one the peer is appended to its `X-Forwarded-For`.
        #[test]
        fn forwarding_headers_cannot_be_spoofed(
            peer in any_ip(),
            client in any_ip(),
            lines in xff_lines(),
            proto in proptest::option::of("[a-z]{0,6}"),
            https in any::<bool>(),
        ) {
            let trusted = trusted();
            let peer_trusted = trusted.contains(peer);
            let mut h = headers(&lines);
            if let Some(proto) = &proto {
                h.insert(X_FORWARDED_PROTO, HeaderValue::from_str(proto).unwrap());
            }
            h.insert(X_FORWARDED_HOST, HeaderValue::from_static("spoofed.example"));
            let host = HeaderValue::from_static("real.example");
            set_forwarded(&mut h, peer, peer_trusted, client, if https { "https" } else { "http" }, Some(&host));
            let xff: Vec<&str> = h.get_all(X_FORWARDED_FOR).iter().map(|v| v.to_str().unwrap()).collect();
            let peer_text = peer.to_canonical().to_string();
            prop_assert_eq!(xff.len(), 1);
            prop_assert_eq!(h.get(X_REAL_IP).unwrap().to_str().unwrap(), client.to_string());
            if peer_trusted {
                let previous: Vec<&str> = lines.iter().filter_map(|v| v.to_str().ok()).collect();
                let want = previous.iter().copied().chain([peer_text.as_str()]).collect::<Vec<_>>().join(", ");
                prop_assert_eq!(xff[0], want);
            } else {
                prop_assert_eq!(xff[0], peer_text);
                prop_assert_eq!(h.get(X_FORWARDED_HOST).unwrap(), &host);
                let scheme = if https { "https" } else { "http" };
                prop_assert_eq!(h.get(X_FORWARDED_PROTO).unwrap().to_str().unwrap(), scheme);
            }
        }

        /// No hop-by-hop header survives, nor one that `Connection` names;
        /// every other header does.
        #[test]
        fn hop_by_hop_headers_never_pass(
            named in prop::collection::vec("[a-z][a-z-]{0,8}", 0..4),
            others in prop::collection::vec("x-[a-z]{1,6}", 0..4),
            hop in prop::collection::vec(0usize..HOP_BY_HOP.len(), 0..4),
            obs_text in any::<bool>(),
        ) {
            let mut h = HeaderMap::new();
            let mut connection = named.join(", ").into_bytes();
            if obs_text {
                // An element that is no header name, with a byte that is not
                // visible ASCII: the other names still count.
                connection.extend_from_slice(b", caf\xe9");
            }
            h.append(header::CONNECTION, HeaderValue::from_bytes(&connection).unwrap());
            for name in named.iter().chain(&others) {
                h.append(HeaderName::from_str(name).unwrap(), HeaderValue::from_static("v"));
            }
            for i in hop {
                h.append(HOP_BY_HOP[i].clone(), HeaderValue::from_static("v"));
            }
            remove_hop_by_hop(&mut h);
            for name in &HOP_BY_HOP {
                prop_assert!(!h.contains_key(name));
            }
            for name in &named {
                prop_assert!(!h.contains_key(name.as_str()));
            }
            for name in others.iter().filter(|o| !named.contains(o)) {
                prop_assert!(h.contains_key(name.as_str()));
            }
        }
    }
}
