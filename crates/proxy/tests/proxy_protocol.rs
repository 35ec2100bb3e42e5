//! Property tests of the PROXY protocol parser (docs/reliability.md,
//! "Fuzzing and property tests"): it never panics, agrees with the streaming
//! reader byte for byte, decides a header from its own bytes only, reads
//! back every header a sender can write, and accepts exactly the v1 grammar
//! of a reference model.

// Test code: a failed unwrap is a failed test with a line number.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use futures_util::FutureExt;
use proptest::prelude::*;
use wharf_proxy::proxy_protocol::{parse_header, read_header, Parsed, ProxyProtocolError};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// What the parser said, comparable.
fn parse(buf: &[u8]) -> Result<Parsed, String> {
    parse_header(buf).map_err(|e| e.to_string())
}

/// `read_header` over `buf` (a slice never makes it wait): its result and
/// how many bytes it consumed.
fn read(buf: &[u8]) -> (Result<Option<SocketAddr>, ProxyProtocolError>, usize) {
    let mut rest = buf;
    let result = read_header(&mut rest)
        .now_or_never()
        .expect("reading a slice never waits");
    (result, buf.len() - rest.len())
}

fn v1(client: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        client.ip(),
        dst.ip(),
        client.port(),
        dst.port()
    )
    .into_bytes()
}

fn v2(client: Option<SocketAddr>, dst_port: u16, tlvs: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    let (command, family) = match client {
        None => (0x20, 0x00),
        Some(SocketAddr::V4(a)) => {
            payload.extend_from_slice(&a.ip().octets());
            payload.extend_from_slice(&Ipv4Addr::LOCALHOST.octets());
            payload.extend_from_slice(&a.port().to_be_bytes());
            payload.extend_from_slice(&dst_port.to_be_bytes());
            (0x21, 0x11)
        }
        Some(SocketAddr::V6(a)) => {
            payload.extend_from_slice(&a.ip().octets());
            payload.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
            payload.extend_from_slice(&a.port().to_be_bytes());
            payload.extend_from_slice(&dst_port.to_be_bytes());
            (0x21, 0x21)
        }
    };
    payload.extend_from_slice(tlvs);
    let mut header = V2_SIGNATURE.to_vec();
    header.push(command);
    header.push(family);
    header.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
    header.extend_from_slice(&payload);
    header
}

fn any_socket_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(o, p)| SocketAddr::from((o, p))),
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(o, p)| SocketAddr::from((o, p))),
    ]
}

/// Bytes that start like a header more often than chance would.
fn header_like() -> impl Strategy<Value = Vec<u8>> {
    let tail = prop::collection::vec(any::<u8>(), 0..140);
    prop_oneof![
        tail.clone(),
        tail.clone()
            .prop_map(|t| [b"PROXY ".as_slice(), &t].concat()),
        (tail.clone(), any::<[u8; 4]>()).prop_map(|(t, fixed)| [
            V2_SIGNATURE.as_slice(),
            &fixed,
            &t
        ]
        .concat()),
        // v2 with a small declared length, so whole headers come up.
        (tail, any::<u8>(), any::<u8>(), 0u8..40).prop_map(|(t, vc, fam, len)| {
            [V2_SIGNATURE.as_slice(), &[vc, fam, 0, len], &t].concat()
        }),
    ]
}

/// The reference model of a v1 line (without CRLF): split on single spaces;
/// `PROXY UNKNOWN` and anything after it; or `PROXY TCP4|TCP6 src dst sport
/// dport` with both addresses of the family and ports as digits ≤ 65535.
/// `None`: rejected; `Some(None)`: a header without an address (`UNKNOWN`).
#[allow(clippy::option_option)]
fn model_v1(line: &str) -> Option<Option<SocketAddr>> {
    let fields: Vec<&str> = line.split(' ').collect();
    if fields.len() >= 2 && fields[0] == "PROXY" && fields[1] == "UNKNOWN" {
        return Some(None);
    }
    if fields.len() != 6 || fields[0] != "PROXY" {
        return None;
    }
    let v4 = match fields[1] {
        "TCP4" => true,
        "TCP6" => false,
        _ => return None,
    };
    let ip = |s: &str| s.parse::<IpAddr>().ok().filter(|ip| ip.is_ipv4() == v4);
    let port = |s: &str| -> Option<u16> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let digits = s.trim_start_matches('0');
        match digits.len() {
            0 => Some(0),
            1..=5 => u16::try_from(digits.parse::<u32>().ok()?).ok(),
            _ => None,
        }
    };
    let src = ip(fields[2])?;
    ip(fields[3])?;
    let sport = port(fields[4])?;
    port(fields[5])?;
    Some(Some(SocketAddr::new(src, sport)))
}

fn v1_token() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "PROXY",
            "TCP4",
            "TCP6",
            "UNKNOWN",
            "UDP4",
            "tcp4",
            "",
            "0",
            "65535",
            "65536",
            "+80",
            "-1",
            "080",
            "00000000443",
            "1.2.3.4",
            "::1",
            "::ffff:1.2.3.4",
            "[::1]",
            "01.2.3.4",
            "1.2.3.4:80",
            "fe80::1%1",
        ])
        .prop_map(str::to_owned),
        any::<Ipv4Addr>().prop_map(|ip| ip.to_string()),
        any::<Ipv6Addr>().prop_map(|ip| ip.to_string()),
        any::<u16>().prop_map(|p| p.to_string()),
        "[0-9a-fA-F:.]{0,8}",
    ]
}

proptest! {
    /// Never panics; agrees with `read_header`, which consumes exactly the
    /// header; a header's outcome depends on its own bytes only.
    #[test]
    fn parse_agrees_with_the_reader_and_never_panics(buf in header_like(), extra in prop::collection::vec(any::<u8>(), 0..8)) {
        let parsed = parse(&buf);
        let (read_result, consumed) = read(&buf);
        match &parsed {
            Ok(Parsed::Header { client, len }) => {
                prop_assert!(*len <= buf.len());
                prop_assert_eq!(consumed, *len);
                prop_assert_eq!(read_result.ok(), Some(*client));
                prop_assert_eq!(parse(&buf[..*len]), parsed.clone());
                let longer = [buf.as_slice(), &extra].concat();
                prop_assert_eq!(parse(&longer), parsed.clone());
            }
            Ok(Parsed::Incomplete { needed }) => {
                prop_assert!(*needed >= 1);
                prop_assert!(
                    matches!(&read_result, Err(ProxyProtocolError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof),
                    "{:?}", read_result
                );
                prop_assert_eq!(consumed, buf.len());
            }
            Err(message) => {
                // The reader reads the first 8 bytes before judging them, so
                // from a shorter input it reports the end of input instead.
                match read_result {
                    Err(ProxyProtocolError::Invalid(_)) => {
                        prop_assert_eq!(&read_result.unwrap_err().to_string(), message);
                    }
                    Err(ProxyProtocolError::Io(e)) => {
                        prop_assert!(buf.len() < 8 && e.kind() == std::io::ErrorKind::UnexpectedEof, "{e}");
                    }
                    other => prop_assert!(false, "{other:?}"),
                }
                // An error is final: more bytes do not make a header of it.
                let longer = [buf.as_slice(), &extra].concat();
                prop_assert_eq!(parse(&longer), parsed.clone());
            }
        }
    }

    /// Every v1 header a sender writes reads back, followed by anything;
    /// every shorter prefix of it asks for more, never for bytes past it.
    #[test]
    fn v1_round_trips(client in any_socket_addr(), dst_port in any::<u16>(), rest in prop::collection::vec(any::<u8>(), 0..32)) {
        let dst = if client.is_ipv4() {
            SocketAddr::from(([10, 0, 0, 1], dst_port))
        } else {
            SocketAddr::from((Ipv6Addr::LOCALHOST, dst_port))
        };
        let header = v1(client, dst);
        let input = [header.as_slice(), &rest].concat();
        prop_assert_eq!(parse(&input), Ok(Parsed::Header { client: Some(client), len: header.len() }));
        for k in 0..header.len() {
            match parse(&header[..k]) {
                Ok(Parsed::Incomplete { needed }) => prop_assert!(k + needed <= header.len()),
                other => prop_assert!(false, "prefix {k}: {other:?}"),
            }
        }
    }

    /// Every v2 header (PROXY over TCP/IPv4 or IPv6, or LOCAL, with TLVs)
    /// reads back, followed by anything; every shorter prefix asks for more,
    /// never for bytes past it.
    #[test]
    fn v2_round_trips(client in proptest::option::of(any_socket_addr()), dst_port in any::<u16>(), tlvs in prop::collection::vec(any::<u8>(), 0..64), rest in prop::collection::vec(any::<u8>(), 0..32)) {
        let header = v2(client, dst_port, &tlvs);
        let input = [header.as_slice(), &rest].concat();
        prop_assert_eq!(parse(&input), Ok(Parsed::Header { client, len: header.len() }));
        let (read_result, consumed) = read(&input);
        prop_assert_eq!(read_result.ok(), Some(client));
        prop_assert_eq!(consumed, header.len());
        for k in 0..header.len() {
            match parse(&header[..k]) {
                Ok(Parsed::Incomplete { needed }) => prop_assert!(k + needed <= header.len()),
                other => prop_assert!(false, "prefix {k}: {other:?}"),
            }
        }
    }

    /// v1 accepts exactly the grammar of the reference model.
    #[test]
    fn v1_matches_the_model(tokens in prop::collection::vec(v1_token(), 0..8), proxy_first in any::<bool>()) {
        let mut tokens = tokens;
        if proxy_first {
            tokens.insert(0, "PROXY".to_owned());
        }
        let line = tokens.join(" ");
        let input = format!("{line}\r\nrest");
        let want = if line.len() + 2 > 107 || !line.starts_with("PROXY ") {
            None
        } else {
            model_v1(&line)
        };
        let got = match parse(input.as_bytes()) {
            Ok(Parsed::Header { client, len }) => {
                prop_assert_eq!(len, line.len() + 2);
                Some(client)
            }
            Ok(Parsed::Incomplete { .. }) => {
                prop_assert!(false, "a whole line is never incomplete: {input:?}");
                None
            }
            Err(_) => None,
        };
        prop_assert_eq!(got, want, "{:?}", line);
    }
}
