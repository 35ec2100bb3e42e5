//! `X-Forwarded-For` through wharf-proxy's trusted proxies: never panics; the
//! client is the peer or one of the header's entries; an untrusted peer is
//! always its own client; the result matches nginx `real_ip_recursive on`
//! stated on the chain; hop-by-hop removal leaves none of the headers it names.
#![no_main]

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION};
use libfuzzer_sys::fuzz_target;
use wharf_proxy::{remove_hop_by_hop, IpNet, TrustedProxies, X_FORWARDED_FOR};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let nets: Vec<IpNet> = ["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"]
        .iter()
        .map(|n| n.parse().expect("a valid network"))
        .collect();
    let trusted = TrustedProxies::new(nets);
    // The peer: trusted or not, IPv4, IPv6 or IPv4-mapped.
    let peer: IpAddr = match selector % 5 {
        0 => IpAddr::from([10, 0, 0, selector]),
        1 => IpAddr::from([198, 51, 100, selector]),
        2 => "2001:db8::1".parse().unwrap(),
        3 => "::ffff:10.1.2.3".parse().unwrap(),
        _ => IpAddr::from([127, 0, 0, 1]),
    };
    let mut headers = HeaderMap::new();
    for line in rest.split(|b| *b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(line) {
            headers.append(X_FORWARDED_FOR, value);
        }
    }
    let entries: Vec<Option<IpAddr>> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|e| e.trim().parse::<IpAddr>().ok().map(|ip| ip.to_canonical()))
        .collect();
    let client = trusted.client_ip(peer, &headers);
    let peer = peer.to_canonical();
    assert!(client == peer || entries.contains(&Some(client)));
    if !trusted.contains(peer) {
        assert_eq!(client, peer);
    } else {
        let run = entries
            .iter()
            .rev()
            .take_while(|e| e.is_some_and(|ip| trusted.contains(ip)))
            .count();
        let left = entries.len() - run;
        let want = match (left.checked_sub(1).and_then(|i| entries[i]), run) {
            (Some(untrusted), _) => untrusted,
            (None, 0) => peer,
            (None, _) => entries[left].expect("the run holds addresses"),
        };
        assert_eq!(client, want);
    }

    // Hop-by-hop: the same bytes as a Connection header naming headers.
    let mut hop = HeaderMap::new();
    let names: Vec<HeaderName> = rest
        .split(|b| *b == b',')
        .filter_map(|n| HeaderName::from_bytes(n.trim_ascii()).ok())
        .collect();
    if let Ok(value) = HeaderValue::from_bytes(rest) {
        hop.insert(CONNECTION, value);
        for name in &names {
            hop.append(name.clone(), HeaderValue::from_static("1"));
        }
        hop.append(
            HeaderName::from_static("x-kept-by-fuzz"),
            HeaderValue::from_static("1"),
        );
        remove_hop_by_hop(&mut hop);
        for fixed in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            assert!(!hop.contains_key(fixed));
        }
        // Every comma-separated element that is a header name (OWS trimmed)
        // is gone, whatever the other elements hold; nothing else is.
        for name in &names {
            assert!(!hop.contains_key(name), "{name}");
        }
        let kept_named = names.iter().any(|n| n == "x-kept-by-fuzz");
        assert_eq!(hop.contains_key("x-kept-by-fuzz"), !kept_named);
    }
});
