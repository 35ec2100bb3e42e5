//! PROXY protocol v1/v2: `parse_header` never panics, agrees with the
//! streaming `read_header` (which consumes exactly the header), and decides a
//! header from its own bytes only.
#![no_main]

use futures_util::FutureExt;
use libfuzzer_sys::fuzz_target;
use wharf_proxy::proxy_protocol::{parse_header, read_header, Parsed, ProxyProtocolError};

fuzz_target!(|data: &[u8]| {
    let parsed = parse_header(data);
    let mut rest = data;
    let read = read_header(&mut rest)
        .now_or_never()
        .expect("reading a slice never waits");
    let consumed = data.len() - rest.len();
    match parsed {
        Ok(Parsed::Header { client, len }) => {
            assert!(len <= data.len() && len <= 16 + 65_535);
            assert_eq!(consumed, len);
            assert_eq!(read.ok(), Some(client));
            assert_eq!(
                parse_header(&data[..len]).ok(),
                Some(Parsed::Header { client, len })
            );
            if let Some(client) = client {
                // v1 is text: the address it carries is one it wrote.
                if data.starts_with(b"PROXY ") {
                    let line = std::str::from_utf8(&data[..len]).expect("v1 is text");
                    assert!(line.contains(&client.ip().to_string()) || client.ip().is_ipv6());
                }
            }
        }
        Ok(Parsed::Incomplete { needed }) => {
            assert!(needed >= 1);
            assert!(data.len() + needed <= 16 + 65_535);
            assert!(matches!(
                read,
                Err(ProxyProtocolError::Io(ref e)) if e.kind() == std::io::ErrorKind::UnexpectedEof
            ));
        }
        Err(e) => {
            let message = e.to_string();
            match read {
                Err(ProxyProtocolError::Invalid(_)) => {
                    assert_eq!(read.unwrap_err().to_string(), message);
                }
                // The reader reads 8 bytes before judging them.
                Err(ProxyProtocolError::Io(e)) => {
                    assert!(data.len() < 8 && e.kind() == std::io::ErrorKind::UnexpectedEof);
                }
                other => panic!("parse said {message}, read said {other:?}"),
            }
            // An error is final: a longer input is the same error.
            let mut longer = data.to_vec();
            longer.extend_from_slice(b"\r\n");
            assert_eq!(
                parse_header(&longer).err().map(|e| e.to_string()),
                Some(message)
            );
        }
    }
});
