//! [`IpNet`]: an IP network such as `10.0.0.0/8`, `2001:db8::/32` or a single
//! address, as trusted-proxy lists (`set_real_ip_from`,
//! `WHARF_RATELIMIT_TRUSTED_PROXIES`) write it.
//!
//! It lives here, beside [`ConnectInfo`](crate::ConnectInfo), so that
//! `wharf-proxy` and `wharf-ratelimit` read such a list with one parser and
//! match addresses with one rule.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP network: the addresses whose first `prefix` bits equal those of
/// [`addr`](Self::addr).
///
/// # Grammar
///
/// ```text
/// net    = ws* address ( ws* "/" ws* prefix )? ws*
/// prefix = 1*DIGIT        ; at most 32 for IPv4, 128 for IPv6
/// ```
///
/// `address` is an IPv4 or IPv6 address as [`IpAddr`]'s `FromStr` reads it
/// (no brackets, no zone, no port); `ws` is any Unicode white space. Without a
/// prefix the network is the single address (`/32` or `/128`). Host bits are
/// cleared: `10.1.2.3/8` is `10.0.0.0/8`. An IPv4-mapped IPv6 network with a
/// prefix of 96 or more (`::ffff:10.0.0.0/104`) is the IPv4 network it maps
/// (`10.0.0.0/8`).
///
/// # Matching
///
/// [`contains`](Self::contains) reads an IPv4-mapped IPv6 address
/// (`::ffff:10.1.2.3`, what a dual-stack socket reports for an IPv4 peer) as
/// the IPv4 address it maps, and never matches an IPv4 address against an
/// IPv6 network or the reverse (as nginx's `set_real_ip_from` does): `::/0` is
/// every IPv6 address and no IPv4 one.
///
/// [`Display`](fmt::Display) writes `address/prefix`, which parses back to the
/// same network.
///
/// ```
/// use wharf_http::IpNet;
/// let net: IpNet = "10.1.2.3/8".parse().unwrap();
/// assert_eq!(net.to_string(), "10.0.0.0/8");
/// assert!(net.contains("10.200.0.1".parse().unwrap()));
/// assert!(net.contains("::ffff:10.200.0.1".parse().unwrap()));
/// assert!(!net.contains("11.0.0.1".parse().unwrap()));
/// assert_eq!("::1".parse::<IpNet>().unwrap().to_string(), "::1/128");
/// assert!("10.0.0.0/33".parse::<IpNet>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    /// The network address: host bits cleared, never IPv4-mapped when
    /// `prefix` is 96 or more.
    addr: IpAddr,
    /// At most 32 for IPv4, 128 for IPv6.
    prefix: u8,
}

/// Why a network did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected an IP address or range like 10.0.0.0/8 or 2001:db8::/32, got {0:?}")]
pub struct IpNetError(String);

impl IpNet {
    /// The network of `addr` with its first `prefix` bits fixed; `prefix` is
    /// capped at 32 (IPv4) or 128 (IPv6). An IPv4-mapped `addr` with a prefix
    /// of 96 or more gives the IPv4 network it maps.
    pub fn new(addr: IpAddr, prefix: u8) -> Self {
        let (addr, prefix) = match addr {
            IpAddr::V4(v4) => (IpAddr::V4(v4), prefix.min(32)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix >= 96 => (IpAddr::V4(v4), prefix.min(128) - 96),
                _ => (IpAddr::V6(v6), prefix.min(128)),
            },
        };
        Self {
            addr: mask(addr, prefix),
            prefix,
        }
    }

    /// The network address (host bits cleared).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length: 0–32 for IPv4, 0–128 for IPv6.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network (an IPv4-mapped IPv6 address counts
    /// as the IPv4 address it maps).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || IpNetError(text.to_owned());
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix.trim())),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(digits) => {
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                // Only digits: parsing fails on overflow alone, which is out of range too.
                digits
                    .parse::<u8>()
                    .ok()
                    .filter(|p| *p <= max)
                    .ok_or_else(bad)?
            }
        };
        Ok(Self::new(addr, prefix))
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// `ip` with all but its first `prefix` bits cleared.
fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let keep = u32::MAX
                .checked_shl(32 - u32::from(prefix.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & keep))
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX
                .checked_shl(128 - u32::from(prefix.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & keep))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_match() {
        let n = net("10.0.0.0/8");
        assert!(n.contains(ip("10.1.2.3")));
        assert!(n.contains(ip("::ffff:10.1.2.3")));
        assert!(!n.contains(ip("11.0.0.1")));
        assert!(net("::1").contains(ip("::1")));
        assert!(net("0.0.0.0/0").contains(ip("8.8.8.8")));
        assert!(!net("0.0.0.0/0").contains(ip("::1")));
        assert!(!net("::/0").contains(ip("8.8.8.8")));
        assert!(net("::/0").contains(ip("2001:db8::1")));
        let n = net("192.168.0.0/16");
        assert!(n.contains(ip("192.168.3.4")));
        assert!(!n.contains(ip("192.169.0.1")));
    }

    #[test]
    fn host_bits_are_cleared_and_display_round_trips() {
        assert_eq!(net("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(net("2001:db8::1/32").to_string(), "2001:db8::/32");
        assert_eq!(net("1.2.3.4").to_string(), "1.2.3.4/32");
        assert_eq!(net("::").to_string(), "::/128");
        assert_eq!(net(" 10.0.0.0 / 8 ").to_string(), "10.0.0.0/8");
        for text in ["10.0.0.0/8", "::/0", "2001:db8::/32", "1.2.3.4/32"] {
            assert_eq!(net(text).to_string(), text);
        }
    }

    #[test]
    fn ipv4_mapped_networks_are_ipv4() {
        assert_eq!(net("::ffff:10.0.0.0/104"), net("10.0.0.0/8"));
        assert_eq!(net("::ffff:1.2.3.4"), net("1.2.3.4"));
        assert!(net("::ffff:10.0.0.0/104").contains(ip("10.9.9.9")));
        // Below /96 it is an IPv6 network (mapped peers are read as IPv4).
        assert_eq!(net("::ffff:0:0/80").to_string(), "::/80");
    }

    #[test]
    fn malformed_networks_are_errors() {
        for bad in [
            "",
            "nonsense",
            "10.0.0.0/33",
            "::/129",
            "1.2.3.4/",
            "/8",
            "1.2.3.4/+8",
            "1.2.3.4/-1",
            "1.2.3.4/8/8",
            "1.2.3.4/256",
            "[::1]",
            "[::1]/128",
            "1.2.3.4:80",
            "fe80::1%eth0",
            "1.2.3",
            "010.0.0.1",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "x".parse::<IpNet>().unwrap_err().to_string(),
            "expected an IP address or range like 10.0.0.0/8 or 2001:db8::/32, got \"x\""
        );
    }

    #[test]
    fn new_caps_the_prefix() {
        assert_eq!(IpNet::new(ip("10.1.2.3"), 40), net("10.1.2.3/32"));
        assert_eq!(IpNet::new(ip("::1"), 200), net("::1/128"));
        assert_eq!(IpNet::new(ip("10.1.2.3"), 8).addr(), ip("10.0.0.0"));
        assert_eq!(IpNet::new(ip("10.1.2.3"), 8).prefix(), 8);
    }
}

/// An address as text, exactly as `Display` writes it; IPv4 (the common case
/// in forwarding headers, log lines and rate-limit keys) without the
/// formatting machinery, which costs over a thousand instructions per address.
pub fn ip_text(ip: IpAddr) -> String {
    let IpAddr::V4(ip) = ip else {
        return ip.to_string();
    };
    let mut out = String::with_capacity(15);
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

#[cfg(test)]
mod ip_text_tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::ip_text;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for octet in 0..=255_u8 {
            for ip in [
                Ipv4Addr::new(octet, 0, 9, 255),
                Ipv4Addr::new(10, octet, 99, 100),
                Ipv4Addr::new(192, 168, octet, 1),
                Ipv4Addr::new(1, 20, 200, octet),
            ] {
                assert_eq!(ip_text(IpAddr::V4(ip)), ip.to_string());
            }
        }
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(ip_text(v6), "2001:db8::1");
    }
}
