//! Property tests of the parsers in this crate (docs/reliability.md,
//! "Fuzzing and property tests"): rates, key specs, trusted-proxy lists,
//! the forwarded headers behind [`ClientIp`], and key extraction.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::request::Parts;
use http::{HeaderValue, Method};
use proptest::prelude::*;
use serde_json::Value;

use crate::config::{ip_list_parser, rate_parser, KeySpec};
use crate::key::{ClientIp, ForwardedHeader, IpNet, KeySource};
use crate::rate::{Rate, RateError};

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,24}",
        "[ ]{0,1}[+-]?[0-9]{0,12}[ ]{0,1}(r/s|r/m|r/h|/s|r/S|r|)[ ]{0,1}",
        (0u64..100_000_000).prop_map(|n| format!("{n}r/s")),
        (0u64..100_000_000).prop_map(|n| format!("{n}r/m")),
    ]
}

// ---- rates ----

/// The model of the rate grammar: `ws* digits ("r/s" | "r/m") ws*`, with
/// 1 ≤ n ≤ 10^6 per second or 6·10^7 per minute.
fn model_rate(text: &str) -> Result<(u64, bool), RateError> {
    let t = text.trim();
    let (digits, per_second) = if let Some(d) = t.strip_suffix("r/s") {
        (d, true)
    } else if let Some(d) = t.strip_suffix("r/m") {
        (d, false)
    } else {
        return Err(RateError::Syntax);
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RateError::Syntax);
    }
    let max: u128 = if per_second { 1_000_000 } else { 60_000_000 };
    // Compare as a big number: strip leading zeros, then by length.
    let significant = digits.trim_start_matches('0');
    let n = if significant.len() > 20 {
        None
    } else {
        significant.parse::<u128>().ok().or(Some(0))
    };
    match n {
        Some(n) if (1..=max).contains(&n) => Ok((u64::try_from(n).unwrap(), per_second)),
        _ => Err(RateError::OutOfRange),
    }
}

// ---- forwarded headers ----

/// One hop of a forwarded chain, as a proxy would write it.
#[derive(Debug, Clone)]
enum Hop {
    /// An address, with a port or not, in one of the writings.
    Addr(IpAddr, Option<u16>, u8),
    /// Something that names no address: `unknown`, an obfuscated name, garbage.
    Junk(&'static str),
}

impl Hop {
    fn ip(&self) -> Option<IpAddr> {
        match self {
            Self::Addr(ip, ..) => Some(ip.to_canonical()),
            Self::Junk(_) => None,
        }
    }

    /// As an `X-Forwarded-For` entry.
    fn xff(&self) -> String {
        match self {
            Self::Addr(IpAddr::V4(v4), Some(port), _) => format!("{v4}:{port}"),
            Self::Addr(IpAddr::V6(v6), Some(port), _) => format!("[{v6}]:{port}"),
            Self::Addr(IpAddr::V6(v6), None, style) if style % 2 == 1 => format!("[{v6}]"),
            Self::Addr(ip, None, _) => ip.to_string(),
            Self::Junk(text) => (*text).to_owned(),
        }
    }

    /// As an RFC 7239 `Forwarded` element, with other parameters around `for=`.
    fn forwarded(&self) -> String {
        let node = match self {
            Self::Addr(IpAddr::V4(v4), Some(port), _) => format!("\"{v4}:{port}\""),
            Self::Addr(IpAddr::V6(v6), Some(port), _) => format!("\"[{v6}]:{port}\""),
            Self::Addr(IpAddr::V6(v6), None, _) => format!("\"[{v6}]\""),
            Self::Addr(ip, None, _) => ip.to_string(),
            Self::Junk("") => return "proto=https".to_owned(),
            Self::Junk(text) => (*text).to_owned(),
        };
        let style = match self {
            Self::Addr(_, _, style) => *style,
            Self::Junk(_) => 0,
        };
        let name = ["for", "For", "FOR"][usize::from(style % 3)];
        match style / 3 % 3 {
            0 => format!("{name}={node}"),
            1 => format!("by=10.9.9.9;{name}={node};proto=https"),
            _ => format!("proto=http; {name}={node} ;host=example.com"),
        }
    }
}

fn hop_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u8>().prop_map(|b| IpAddr::from([10, 0, 0, b])),
        any::<u8>().prop_map(|b| IpAddr::from([198, 51, 100, b])),
        any::<u16>().prop_map(|s| IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, s])),
        any::<u16>().prop_map(|s| IpAddr::from([0x2001, 0xdb9, 0, 0, 0, 0, 0, s])),
        any::<u8>().prop_map(|b| IpAddr::V6(Ipv4Addr::new(10, 0, 0, b).to_ipv6_mapped())),
        any::<IpAddr>(),
    ]
}

fn hop() -> impl Strategy<Value = Hop> {
    prop_oneof![
        4 => (hop_ip(), proptest::option::of(any::<u16>()), any::<u8>())
            .prop_map(|(ip, port, style)| Hop::Addr(ip, port, style)),
        1 => prop::sample::select(vec!["unknown", "_hidden", "", "garbage", "[1.2.3.4]", "1.2.3.4/8"])
            .prop_map(Hop::Junk),
    ]
}

fn trusted_client_ip() -> ClientIp {
    ClientIp::new()
        .trust("10.0.0.0/8".parse().unwrap())
        .trust("2001:db8::/32".parse().unwrap())
}

fn parts(peer: IpAddr, lines: &[(bool, Vec<u8>)], header: ForwardedHeader) -> Parts {
    let name = match header {
        ForwardedHeader::XForwardedFor => http::header::HeaderName::from_static("x-forwarded-for"),
        ForwardedHeader::Forwarded => http::header::FORWARDED,
    };
    let mut req = http::Request::get("/").body(()).unwrap();
    for (_, line) in lines {
        req.headers_mut()
            .append(name.clone(), HeaderValue::from_bytes(line).unwrap());
    }
    req.extensions_mut().insert(peer);
    req.into_parts().0
}

/// A header line's bytes, and whether it holds a byte that is not visible ASCII.
type Line = (bool, Vec<u8>);

/// Renders hops into header lines (hops split across lines at `cuts`); a
/// line may carry a byte that is not visible ASCII, making it one unreadable hop.
fn render(
    hops: &[Hop],
    cuts: &[bool],
    obs: &[bool],
    header: ForwardedHeader,
) -> (Vec<Line>, Vec<Option<IpAddr>>) {
    let mut lines: Vec<Vec<&Hop>> = vec![Vec::new()];
    for (i, hop) in hops.iter().enumerate() {
        if i > 0 && cuts.get(i).copied().unwrap_or(false) {
            lines.push(Vec::new());
        }
        lines.last_mut().unwrap().push(hop);
    }
    let mut rendered = Vec::new();
    let mut model = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let text = line
            .iter()
            .map(|h| match header {
                ForwardedHeader::XForwardedFor => h.xff(),
                ForwardedHeader::Forwarded => h.forwarded(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        if obs.get(i).copied().unwrap_or(false) {
            let mut bytes = text.into_bytes();
            bytes.push(0xe9);
            rendered.push((true, bytes));
            model.push(None);
        } else {
            rendered.push((false, text.into_bytes()));
            model.extend(line.iter().map(|h| h.ip()));
        }
    }
    (rendered, model)
}

/// nginx `real_ip_recursive on`, stated on the chain rather than as a walk:
/// the longest run of trusted addresses at the right end; the client is the
/// hop just left of it when that is an address, else the leftmost of the run,
/// else the peer.
fn model_client(trusted: &[IpNet], peer: IpAddr, chain: &[Option<IpAddr>]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer = peer.to_canonical();
    if !is_trusted(peer) {
        return peer;
    }
    let run = chain
        .iter()
        .rev()
        .take_while(|h| h.is_some_and(is_trusted))
        .count();
    let left = chain.len() - run;
    match (left.checked_sub(1).and_then(|i| chain[i]), run) {
        (Some(untrusted), _) => untrusted,
        (None, 0) => peer,
        (None, _) => chain[left].unwrap(),
    }
}

/// Whether bits `0..prefix` of two IPv6 addresses agree.
fn same_prefix(a: Ipv6Addr, b: Ipv6Addr, prefix: u8) -> bool {
    let (a, b) = (u128::from(a), u128::from(b));
    (0..u32::from(prefix)).all(|i| (a >> (127 - i)) & 1 == (b >> (127 - i)) & 1)
}

/// A header-name token (RFC 9110 `tchar`), any case.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

proptest! {
    #[test]
    fn rates_parse_exactly_the_grammar(text in any_text()) {
        let got = text.parse::<Rate>();
        match model_rate(&text) {
            Ok((n, per_second)) => {
                let rate = got.unwrap();
                prop_assert_eq!(u64::from(rate.requests()), n);
                let window: u64 = if per_second { 1_000_000 } else { 60_000_000 };
                prop_assert_eq!(rate.interval_micros(), (window / n).max(1));
                prop_assert_eq!(rate.to_string(), format!("{n}r/{}", if per_second { "s" } else { "m" }));
            }
            Err(e) => prop_assert_eq!(got, Err(e)),
        }
        // The configuration parser stores what `Rate` writes.
        prop_assert_eq!(
            rate_parser()(&text).ok(),
            text.parse::<Rate>().ok().map(|r| Value::from(r.to_string()))
        );
    }

    #[test]
    fn rates_round_trip(n in 1u32..=60_000_000, per_second in any::<bool>()) {
        let rate = if per_second { Rate::per_second(n) } else { Rate::per_minute(n) };
        prop_assert_eq!(rate.is_some(), !per_second || n <= 1_000_000);
        if let Some(rate) = rate {
            prop_assert_eq!(rate.to_string().parse::<Rate>(), Ok(rate));
            let json = serde_json::to_string(&rate).unwrap();
            prop_assert_eq!(serde_json::from_str::<Rate>(&json).unwrap(), rate);
            prop_assert!(rate.interval_micros() >= 1);
        }
    }

    #[test]
    fn key_specs_parse_exactly_the_grammar(text in prop_oneof![
        any_text(),
        "header:[ -~]{0,12}",
        prop::sample::select(vec!["client_ip", "route", "global", "Route", " global", "header:", "header:X-Api-Key"]).prop_map(str::to_owned),
    ]) {
        let got = KeySpec::try_from(text.clone());
        let want = match text.as_str() {
            "client_ip" => Some(KeySpec::ClientIp),
            "route" => Some(KeySpec::Route),
            "global" => Some(KeySpec::Global),
            other => other
                .strip_prefix("header:")
                .filter(|name| is_token(name))
                .map(|name| KeySpec::Header(name.to_ascii_lowercase())),
        };
        prop_assert_eq!(got.clone().ok(), want);
        if let Ok(spec) = got {
            // Round trip through the written form, and a header spec keys by
            // that header (never the silent global fallback).
            prop_assert_eq!(KeySpec::try_from(String::from(spec.clone())), Ok(spec.clone()));
            if let KeySpec::Header(name) = &spec {
                let zone = crate::config::ZoneConfig {
                    zone: "z".to_owned(),
                    key: spec.clone(),
                    rate: Rate::per_second(1).unwrap(),
                    burst: 0,
                    nodelay: false,
                    delay: 0,
                    store: crate::StoreKind::Memory,
                    on_redis_failure: crate::FailureMode::Open,
                    path_prefix: None,
                };
                let zone = format!("{:?}", zone.to_zone());
                prop_assert!(zone.contains(&format!("key: Header({name:?})")), "{}", zone);
            }
        }
    }

    /// `WHARF_RATELIMIT_TRUSTED_PROXIES`: every non-blank comma-separated item
    /// must be a network; each is stored as the network it denotes.
    #[test]
    fn trusted_proxy_lists_parse_item_by_item(items in prop::collection::vec(prop_oneof![
        (hop_ip(), 0u8..=130).prop_map(|(ip, p)| format!("{ip}/{p}")),
        hop_ip().prop_map(|ip| ip.to_string()),
        "[ -~]{0,8}",
    ], 0..5)) {
        let text = items.join(",");
        let nets: Result<Vec<IpNet>, _> = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse::<IpNet>)
            .collect();
        let want = nets.ok().map(|nets| Value::Array(nets.iter().map(|n| Value::from(n.to_string())).collect()));
        prop_assert_eq!(ip_list_parser()(&text).ok(), want);
    }

    /// The client address behind trusted proxies, from `X-Forwarded-For` or
    /// RFC 7239 `Forwarded` written every way a proxy may write a hop.
    #[test]
    fn the_client_ip_matches_the_model(
        peer in hop_ip(),
        hops in prop::collection::vec(hop(), 0..6),
        cuts in prop::collection::vec(any::<bool>(), 6),
        obs in prop::collection::vec(prop::bool::weighted(0.1), 6),
        forwarded in any::<bool>(),
    ) {
        let header = if forwarded { ForwardedHeader::Forwarded } else { ForwardedHeader::XForwardedFor };
        let client_ip = trusted_client_ip().header(header);
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::/32".parse().unwrap()];
        let (lines, chain) = render(&hops, &cuts, &obs, header);
        let parts = parts(peer, &lines, header);
        let got = client_ip.resolve(&parts).unwrap();
        prop_assert_eq!(got, model_client(&trusted, peer, &chain), "{:?}", lines);
        // Always the peer or one of the hops; from an untrusted peer, the peer.
        prop_assert!(got == peer.to_canonical() || chain.contains(&Some(got)));
        if !trusted.iter().any(|n| n.contains(peer)) {
            prop_assert_eq!(got, peer.to_canonical());
        }
        // The zone key of a client-IP zone is the key of that address.
        prop_assert_eq!(KeySource::ClientIp.extract(&parts, &client_ip), Some(client_ip.group(got)));
    }

    /// Header lines of arbitrary bytes never panic the resolver.
    #[test]
    fn arbitrary_forwarded_headers_never_panic(
        peer in hop_ip(),
        lines in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..4),
        forwarded in any::<bool>(),
    ) {
        let header = if forwarded { ForwardedHeader::Forwarded } else { ForwardedHeader::XForwardedFor };
        let lines: Vec<(bool, Vec<u8>)> = lines
            .into_iter()
            .filter(|l| HeaderValue::from_bytes(l).is_ok())
            .map(|l| (false, l))
            .collect();
        let parts = parts(peer, &lines, header);
        let got = trusted_client_ip().header(header).resolve(&parts);
        prop_assert!(got.is_some());
    }

    /// Keys: IPv4 by address; IPv6 by prefix, written as a network that
    /// contains the address; two addresses share a key exactly when they
    /// share the prefix.
    #[test]
    fn client_keys_group_ipv6_by_prefix(a in any::<[u8; 16]>(), b_bits in any::<u128>(), keep in 0u8..=128, prefix in 1u8..=128, v4 in any::<[u8; 4]>()) {
        let client_ip = ClientIp::new().ipv6_prefix(prefix);
        prop_assert_eq!(client_ip.group(IpAddr::from(v4)), Ipv4Addr::from(v4).to_string());
        let a = Ipv6Addr::from(a);
        if a.to_ipv4_mapped().is_some() {
            return Ok(());
        }
        // b shares the first `keep` bits with a.
        let keep_mask = u128::MAX.checked_shl(128 - u32::from(keep)).unwrap_or(0);
        let b = Ipv6Addr::from((u128::from(a) & keep_mask) | (b_bits & !keep_mask));
        let key_a = client_ip.group(IpAddr::V6(a));
        if prefix == 128 {
            prop_assert_eq!(&key_a, &a.to_string());
        } else {
            let net: IpNet = key_a.parse().unwrap();
            prop_assert_eq!(net.prefix(), prefix);
            prop_assert!(net.contains(IpAddr::V6(a)));
            prop_assert_eq!(net.to_string(), key_a.clone());
        }
        if b.to_ipv4_mapped().is_none() {
            let key_b = client_ip.group(IpAddr::V6(b));
            prop_assert_eq!(key_a == key_b, same_prefix(a, b, prefix));
        }
    }

    /// Header, route and global keys.
    #[test]
    fn header_route_and_global_keys(
        value in proptest::option::of(prop::collection::vec(any::<u8>(), 0..20)),
        path in "(/[a-z0-9%._-]{0,6}){1,3}",
        query in proptest::option::of("[a-z0-9=&]{0,10}"),
        post in any::<bool>(),
    ) {
        let uri = match &query {
            Some(q) => format!("{path}?{q}"),
            None => path.clone(),
        };
        let method = if post { Method::POST } else { Method::GET };
        let mut req = http::Request::builder().method(method.clone()).uri(&uri).body(()).unwrap();
        let value = value.and_then(|v| HeaderValue::from_bytes(&v).ok());
        if let Some(v) = &value {
            req.headers_mut().insert("x-api-key", v.clone());
        }
        let (parts, ()) = req.into_parts();
        let client_ip = ClientIp::new();
        let header = KeySource::Header(http::HeaderName::from_static("x-api-key"));
        let want = value
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        prop_assert_eq!(header.extract(&parts, &client_ip), want);
        prop_assert_eq!(KeySource::Route.extract(&parts, &client_ip), Some(format!("{method} {path}")));
        prop_assert_eq!(KeySource::Global.extract(&parts, &client_ip), Some(String::new()));
        // No peer known: a client-IP zone does not limit the request.
        prop_assert_eq!(KeySource::ClientIp.extract(&parts, &client_ip), None);
    }
}
