//! Property tests of [`IpNet`]'s parser and matcher against a bit-by-bit
//! reference model (docs/reliability.md, "Fuzzing and property tests").

// Test code: a failed unwrap is a failed test with a line number.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use wharf_http::IpNet;

/// The address as (is IPv4, bits, width).
fn bits(ip: IpAddr) -> (bool, u128, u32) {
    match ip {
        IpAddr::V4(v4) => (true, u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (false, u128::from(v6), 128),
    }
}

/// Bit `i` (0 = most significant) of `ip`.
fn bit(ip: IpAddr, i: u32) -> bool {
    let (_, value, width) = bits(ip);
    (value >> (width - 1 - i)) & 1 == 1
}

/// The model of an IPv4-mapped address: `::ffff:a.b.c.d` is `a.b.c.d`.
fn model_canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let o = v6.octets();
            if o[..10].iter().all(|b| *b == 0) && o[10] == 0xff && o[11] == 0xff {
                IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]))
            } else {
                ip
            }
        }
        IpAddr::V4(_) => ip,
    }
}

/// The model of membership: same family, and the first `prefix` bits equal one by one.
fn model_contains(net: &IpNet, ip: IpAddr) -> bool {
    let ip = model_canonical(ip);
    ip.is_ipv4() == net.addr().is_ipv4()
        && (0..u32::from(net.prefix())).all(|i| bit(ip, i) == bit(net.addr(), i))
}

/// The model of the network a (valid) address and prefix denote.
fn model_network(addr: IpAddr, prefix: u8) -> (IpAddr, u8) {
    let (addr, prefix) = match addr {
        IpAddr::V6(_) if prefix >= 96 && model_canonical(addr).is_ipv4() => {
            (model_canonical(addr), prefix - 96)
        }
        _ => (addr, prefix),
    };
    let (v4, _, width) = bits(addr);
    let mut masked = 0u128;
    for i in 0..u32::from(prefix) {
        if bit(addr, i) {
            masked |= 1 << (width - 1 - i);
        }
    }
    let network = if v4 {
        // Lossless: only the low 32 bits can be set for an IPv4 address.
        IpAddr::V4(Ipv4Addr::from(u32::try_from(masked).unwrap()))
    } else {
        IpAddr::V6(Ipv6Addr::from(masked))
    };
    (network, prefix)
}

fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
        // IPv4-mapped IPv6, which has its own rules.
        any::<[u8; 4]>().prop_map(|o| IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped())),
        // Few distinct values, so networks and addresses often overlap.
        (0u8..4, 0u8..4).prop_map(|(a, b)| IpAddr::V4(Ipv4Addr::new(10, a, 0, b))),
        (0u16..4, 0u16..4)
            .prop_map(|(a, b)| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, a, 0, 0, 0, 0, b))),
    ]
}

/// Ways of writing an address that `IpAddr`'s parser accepts.
fn write_ip(ip: IpAddr, style: u8) -> String {
    match (ip, style % 3) {
        (IpAddr::V6(v6), 1) => v6
            .segments()
            .iter()
            .map(|s| format!("{s:x}"))
            .collect::<Vec<_>>()
            .join(":"),
        (IpAddr::V6(v6), 2) => v6.to_string().to_ascii_uppercase(),
        _ => ip.to_string(),
    }
}

fn ws() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["", " ", "\t", "\n", "\u{a0}"]),
        0..3,
    )
    .prop_map(|parts| parts.concat())
}

/// Prefix texts: numbers in and out of range, leading zeros, and non-numbers.
fn prefix_text() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u16..300).prop_map(|n| n.to_string()),
        (0u16..300).prop_map(|n| format!("00{n}")),
        prop::sample::select(vec!["", "+8", "-1", "8 8", "0x10", "٣", "1e1", "/8"])
            .prop_map(str::to_owned),
    ]
}

proptest! {
    #[test]
    fn parsing_never_panics(text in ".{0,64}") {
        let _ = text.parse::<IpNet>();
    }

    #[test]
    fn parsing_near_misses_never_panics(text in "[0-9a-fA-F:./% \\[\\]+-]{0,48}") {
        if let Ok(net) = text.parse::<IpNet>() {
            prop_assert_eq!(net.to_string().parse::<IpNet>().unwrap(), net);
        }
    }

    /// Parse accepts exactly `ws* address (ws* "/" ws* digits)? ws*` with the
    /// prefix in range, and gives the masked network of the model.
    #[test]
    fn parse_matches_the_grammar_model(
        ip in any_ip(),
        style in any::<u8>(),
        prefix in proptest::option::of(prefix_text()),
        ws in (ws(), ws(), ws(), ws()),
    ) {
        let text = match &prefix {
            Some(p) => format!("{}{}{}/{}{}{}", ws.0, write_ip(ip, style), ws.1, ws.2, p, ws.3),
            None => format!("{}{}{}", ws.0, write_ip(ip, style), ws.3),
        };
        let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
        let expected_prefix = match &prefix {
            None => Some(max),
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse::<u64>().ok().filter(|n| *n <= u64::from(max)).map(|n| u8::try_from(n).unwrap())
            }
            Some(_) => None,
        };
        match (text.parse::<IpNet>(), expected_prefix) {
            (Ok(net), Some(p)) => {
                let (addr, prefix) = model_network(ip, p);
                prop_assert_eq!(net.addr(), addr, "{:?}", text);
                prop_assert_eq!(net.prefix(), prefix, "{:?}", text);
            }
            (Err(_), None) => {}
            (got, want) => prop_assert!(false, "{text:?}: parsed {got:?}, model says prefix {want:?}"),
        }
    }

    #[test]
    fn display_round_trips(ip in any_ip(), prefix in 0u8..=140) {
        let net = IpNet::new(ip, prefix);
        let text = net.to_string();
        prop_assert_eq!(text.parse::<IpNet>(), Ok(net));
        // The written address is the network address: host bits are zero.
        let (addr, p) = text.split_once('/').unwrap();
        let addr: IpAddr = addr.parse().unwrap();
        prop_assert_eq!(model_network(addr, p.parse().unwrap()), (addr, net.prefix()));
    }

    #[test]
    fn contains_matches_the_bitwise_model(net_ip in any_ip(), prefix in 0u8..=128, ip in any_ip()) {
        let net = IpNet::new(net_ip, prefix);
        prop_assert_eq!(net.contains(ip), model_contains(&net, ip), "{} {}", net, ip);
    }

    /// Every address of the network is in it, whatever its host bits; the
    /// address a network was made from is in it (unless it is an IPv4-mapped
    /// address under a prefix shorter than /96, which is an IPv6 network that
    /// mapped addresses, read as IPv4, never match).
    #[test]
    fn a_network_contains_its_own_addresses(net_ip in any_ip(), prefix in 0u8..=128, host in any::<u128>()) {
        let net = IpNet::new(net_ip, prefix);
        let mapped_below_96 = matches!(net_ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()) && prefix < 96;
        prop_assert_eq!(net.contains(net_ip), !mapped_below_96);
        let (_, value, width) = bits(net.addr());
        let host_mask = u128::MAX.checked_shr(u32::from(net.prefix()) + (128 - width)).unwrap_or(0);
        let member = value | (host & host_mask);
        let member = if net.addr().is_ipv4() {
            IpAddr::V4(Ipv4Addr::from(u32::try_from(member).unwrap()))
        } else {
            IpAddr::V6(Ipv6Addr::from(member))
        };
        prop_assert_eq!(net.contains(member), model_canonical(member) == member);
    }
}
