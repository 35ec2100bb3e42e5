//! Loopback ports.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A free loopback TCP port, for the caller's server to bind.
///
/// Chosen below the kernel's ephemeral range (`ip_local_port_range`), from
/// a counter this process walks (offset by its pid), and checked free by
/// binding it: the outgoing connections tests make (curl, clients, Redis)
/// take ephemeral ports, so one of them can no longer take a port between
/// this call and the server's bind, as it could when this asked the kernel
/// for port 0 (seen: `Address already in use` from a server started a few
/// seconds after its port was chosen). Falls back to port 0 when the
/// ephemeral range leaves too little room below it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    let below = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let count = below.saturating_sub(FIRST);
    if count >= 1_000 {
        let start = std::process::id().wrapping_mul(7_919) % count;
        for _ in 0..count {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let Ok(port) = u16::try_from(FIRST + (start + n) % count) else {
                continue;
            };
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits up to `timeout` for `addr` to accept a TCP connection; panics
/// (naming `addr`) if it never does.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "{addr} did not start listening");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free loopback port whose Redis Cluster bus port (+10 000) is free too,
/// so that any [`crate::RedisServer`] can be a cluster node.
pub(crate) fn free_port_with_bus() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_can_be_bound_and_waited_for() {
        let port = free_port();
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        wait_for_port(listener.local_addr().unwrap(), Duration::from_secs(1));
    }

    #[test]
    fn free_ports_are_distinct_and_below_the_ephemeral_range() {
        let below: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        if below > 21_000 {
            assert!(
                ports.iter().all(|p| (20_000..below).contains(p)),
                "{ports:?}"
            );
        }
    }

    #[test]
    fn a_port_with_bus_leaves_room_for_the_bus() {
        let port = free_port_with_bus();
        assert!(port < 55_000);
    }
}
