//! Loopback ports.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A free loopback TCP port: bound on 127.0.0.1, then released for the
/// caller's server to take (another process could take it in between, which
/// is rare enough for tests).
pub fn free_port() -> u16 {
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
    fn a_port_with_bus_leaves_room_for_the_bus() {
        let port = free_port_with_bus();
        assert!(port < 55_000);
    }
}
