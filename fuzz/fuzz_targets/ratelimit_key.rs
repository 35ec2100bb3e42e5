//! wharf-ratelimit's parsers: the client address behind trusted proxies
//! (`X-Forwarded-For` and RFC 7239 `Forwarded`), client keys, key specs,
//! trusted-proxy lists and rates. Never panics; the client is the peer or an
//! address in the header; an untrusted peer is its own client; IPv6 keys are
//! networks containing the client; specs and rates print as text that parses
//! back to them.
#![no_main]

use std::net::IpAddr;

use http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use wharf_ratelimit::config::{ip_list_parser, rate_parser};
use wharf_ratelimit::{ClientIp, ForwardedHeader, IpNet, KeySpec, Rate, RateError};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if let Ok(text) = std::str::from_utf8(rest) {
        text_parsers(text);
    }

    let header = if selector & 1 == 0 {
        ForwardedHeader::XForwardedFor
    } else {
        ForwardedHeader::Forwarded
    };
    let peer: IpAddr = match (selector >> 1) % 4 {
        0 => IpAddr::from([10, 0, 0, selector]),
        1 => IpAddr::from([198, 51, 100, selector]),
        2 => "2001:db8::7".parse().unwrap(),
        _ => "::ffff:10.0.0.9".parse().unwrap(),
    };
    let prefix = selector % 129;
    let nets: [IpNet; 2] = [
        "10.0.0.0/8".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ];
    let client_ip = ClientIp::new()
        .trust_all(nets)
        .header(header)
        .ipv6_prefix(prefix);
    let name = match header {
        ForwardedHeader::XForwardedFor => "x-forwarded-for",
        _ => "forwarded",
    };
    let mut req = http::Request::get("/").body(()).unwrap();
    for line in rest.split(|b| *b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            req.headers_mut().append(name, value);
        }
    }
    req.extensions_mut().insert(peer);
    let (parts, ()) = req.into_parts();
    let client = client_ip.resolve(&parts).expect("the peer is known");
    let peer = peer.to_canonical();
    if !nets.iter().any(|n| n.contains(peer)) {
        assert_eq!(client, peer);
    }
    if client != peer {
        // An address the header carried: its text is in the input.
        let text = String::from_utf8_lossy(rest).to_ascii_lowercase();
        let v6_or_mapped = client.is_ipv6() || text.contains("ffff");
        assert!(
            v6_or_mapped || text.contains(&client.to_string()),
            "{client}"
        );
    }
    let key = client_ip.key(&parts).expect("a key");
    match client {
        IpAddr::V4(v4) => assert_eq!(key, v4.to_string()),
        IpAddr::V6(v6) if client_ip.group(client) == v6.to_string() => {}
        IpAddr::V6(_) => {
            let net: IpNet = key.parse().expect("an IPv6 key is a network");
            assert!(net.contains(client));
            assert_eq!(net.to_string(), key);
        }
    }
});

fn text_parsers(text: &str) {
    // Key specs: exactly the words or header:<token>; print and parse back.
    if let Ok(spec) = KeySpec::try_from(text.to_owned()) {
        let written = String::from(spec.clone());
        assert_eq!(KeySpec::try_from(written.clone()), Ok(spec));
        assert!(
            matches!(text, "client_ip" | "route" | "global")
                || written.eq_ignore_ascii_case(text) && text.starts_with("header:"),
            "{text:?}"
        );
    }
    // Trusted-proxy lists: every non-blank item a network.
    let items: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    match ip_list_parser()(text) {
        Ok(serde_json::Value::Array(list)) => {
            assert_eq!(list.len(), items.len());
            for (value, item) in list.iter().zip(&items) {
                let net: IpNet = item.parse().expect("accepted items parse");
                assert_eq!(value.as_str(), Some(net.to_string().as_str()));
            }
        }
        Ok(other) => panic!("not a list: {other}"),
        Err(_) => assert!(items.iter().any(|i| i.parse::<IpNet>().is_err())),
    }
    // Rates: `digits r/s|r/m`, within range; print and parse back.
    match text.parse::<Rate>() {
        Ok(rate) => {
            let t = text.trim();
            assert!(t.ends_with("r/s") || t.ends_with("r/m"));
            assert!(t[..t.len() - 3].bytes().all(|b| b.is_ascii_digit()));
            assert_eq!(rate.to_string().parse::<Rate>(), Ok(rate));
            assert!(rate.interval_micros() >= 1);
            assert!(rate.requests() >= 1);
            assert_eq!(
                rate_parser()(text).ok(),
                Some(serde_json::Value::from(rate.to_string()))
            );
        }
        Err(RateError::OutOfRange) => {
            let t = text.trim();
            let digits = &t[..t.len() - 3];
            assert!(!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
        }
        Err(_) => assert!(rate_parser()(text).is_err()),
    }
}
