//! `IpNet`: parsing never panics; a parsed network prints as text that parses
//! back to it, with its host bits clear; `contains` agrees with a bit-by-bit
//! model for an address taken from the input.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use wharf_http::IpNet;

fn bits(ip: IpAddr) -> (u128, u32) {
    match ip {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    }
}

fn model_contains(net: &IpNet, ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    if ip.is_ipv4() != net.addr().is_ipv4() {
        return false;
    }
    let ((a, width), (b, _)) = (bits(ip), bits(net.addr()));
    (0..u32::from(net.prefix())).all(|i| (a >> (width - 1 - i)) & 1 == (b >> (width - 1 - i)) & 1)
}

fuzz_target!(|data: &[u8]| {
    // The first 16 bytes are an address to match; the rest is the text.
    let (ip_bytes, text) = data.split_at(data.len().min(16));
    let mut octets = [0u8; 16];
    octets[..ip_bytes.len()].copy_from_slice(ip_bytes);
    let ips = [
        IpAddr::V6(Ipv6Addr::from(octets)),
        IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3])),
        IpAddr::V6(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]).to_ipv6_mapped()),
    ];
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Ok(net) = text.parse::<IpNet>() else {
        return;
    };
    let max = if net.addr().is_ipv4() { 32 } else { 128 };
    assert!(net.prefix() <= max);
    let printed = net.to_string();
    assert_eq!(printed.parse::<IpNet>(), Ok(net), "{text:?}");
    assert_eq!(IpNet::new(net.addr(), net.prefix()), net);
    // Host bits are clear: the network contains its own address, and masking
    // again changes nothing.
    assert!(net.contains(net.addr()) || net.addr().to_canonical() != net.addr());
    for ip in ips {
        assert_eq!(net.contains(ip), model_contains(&net, ip), "{net} {ip}");
    }
    // The text without white space around it or the prefix is the same network.
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a.trim(), Some(p.trim())),
        None => (text.trim(), None),
    };
    let compact = match prefix {
        Some(p) => format!("{addr}/{p}"),
        None => addr.to_owned(),
    };
    assert_eq!(compact.parse::<IpNet>(), Ok(net));
});
