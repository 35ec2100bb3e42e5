//! Closing a listening socket without resetting a connection.
//!
//! Closing the last descriptor of a listening socket resets every connection
//! waiting in its accept queue and every handshake under way: a client that
//! was told "connected" gets a reset instead of an answer. A stopping
//! supervisor first makes the socket refuse new connections — a socket
//! filter that drops SYNs, or, where the kernel refuses filters to processes
//! without `CAP_NET_ADMIN`, an accept queue shrunk to one connection. A
//! draining server then closes its listener once the kernel reports nothing
//! is left to lose, not after a guessed delay:
//!
//! 1. Take everything queued (the caller's `sweep`).
//! 2. Ask the kernel (`NETLINK_SOCK_DIAG`, what `ss` reads) for this socket's
//!    accept queue (by inode) and the handshakes under way on its port
//!    (`SYN_RECV`). Not both empty: wait a millisecond, go to 1.
//! 3. Connect a *probe* to the socket. Not answered: the filter drops SYNs,
//!    nothing more can arrive; close (unless something was queued
//!    meanwhile: go to 1). Answered: the socket still completes handshakes
//!    (a shrunk queue, or one other processes still serve, as in a reload):
//!    take the queue once more and close at once, leaving the smallest
//!    window there is for a client to land between the two.
//!
//! A socket that stays busy for [`SETTLE_LIMIT`] (a SYN flood's half-open
//! handshakes) is closed anyway, with a warning naming what was left.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

/// The longest a draining listener waits for the kernel to report it idle.
pub(crate) const SETTLE_LIMIT: Duration = Duration::from_secs(1);

/// How often the kernel's view is read while connections are still arriving.
const POLL: Duration = Duration::from_millis(1);

/// Takes whatever `listener`'s queue holds with `sweep` (which returns how
/// many it took) until the kernel reports nothing more can arrive, then
/// closes the listener. Returns the number of connections swept.
pub(crate) async fn close_listener(
    listener: TcpListener,
    mut sweep: impl FnMut(&TcpListener) -> usize,
) -> usize {
    let local = listener.local_addr().ok();
    let inode = local.and_then(|_| socket_inode(&listener));
    let started = Instant::now();
    let deadline = started + SETTLE_LIMIT;
    let mut swept = 0;
    let mut polls = 0_u32;
    let mut probes = 0_u32;
    // Logged after the close: nothing may run between the last sweep and
    // the close, which is the window a client could land in.
    let closed = |how: &str, view: Option<KernelView>, swept: usize, polls: u32, probes: u32| {
        tracing::debug!(
            listener = ?local,
            last_view = ?view,
            swept,
            polls,
            probes,
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            how,
            "Listener closed"
        );
    };
    loop {
        polls += 1;
        swept += sweep(&listener);
        let view = match (local, inode) {
            (Some(local), Some(inode)) => KernelView::read(local, inode),
            _ => None,
        };
        let idle = view.is_none_or(|v| v.queued == 0 && v.half_open == 0);
        if idle {
            let Some(local) = local else { break };
            probes += 1;
            if let Some(probe) = probe(local).await {
                // Handshakes still complete here: close right after a last
                // sweep. A probe in this socket's queue is taken or reset.
                swept += sweep(&listener);
                drop(listener);
                drop(probe);
                closed("answered", view, swept, polls, probes);
                return swept;
            }
            // The filter drops SYNs. Nothing arrived meanwhile?
            let now = inode.and_then(|i| KernelView::read(local, i));
            if now.is_none_or(|v| v.queued == 0 && v.half_open == 0) {
                drop(listener);
                closed("refusing", now, swept, polls, probes);
                return swept;
            }
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                queued = view.map_or(0, |v| v.queued),
                half_open = view.map_or(0, |v| v.half_open),
                limit_s = SETTLE_LIMIT.as_secs_f64(),
                "Listener still receiving connections after the settle limit; closing it"
            );
            drop(listener);
            closed("settle limit", view, swept, polls, probes);
            return swept;
        }
        tokio::time::sleep(POLL).await;
    }
    drop(listener);
    swept
}

/// How long a probe's SYN gets to be answered. On loopback the handshake
/// completes within the `connect` call; a probe not answered in this time
/// had its SYN dropped.
const PROBE_WAIT: Duration = Duration::from_millis(20);

/// Connects to `local`: the connection when the socket answered, `None`
/// when its SYN was dropped (or refused: the socket no longer listens).
async fn probe(local: SocketAddr) -> Option<TcpStream> {
    let target = SocketAddr::new(reachable(local.ip()), local.port());
    tokio::time::timeout(PROBE_WAIT, TcpStream::connect(target))
        .await
        .ok()?
        .ok()
}

/// The address a probe connects to: the socket's own, or loopback for a
/// socket bound to every address.
fn reachable(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    }
}

/// The inode of `listener`'s socket, which the kernel's socket table names
/// it by.
fn socket_inode(listener: &TcpListener) -> Option<u64> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let fd = listener.as_raw_fd();
    std::fs::metadata(format!("/proc/self/fd/{fd}"))
        .ok()
        .map(|m| m.ino())
}

/// A listening socket as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KernelView {
    /// Connections in its accept queue.
    queued: u32,
    /// Handshakes under way on its address and port (`SYN_RECV`).
    half_open: usize,
}

impl KernelView {
    /// The view of the socket bound to `local` with `inode`; `None` when the
    /// kernel cannot be asked or does not list the socket.
    fn read(local: SocketAddr, inode: u64) -> Option<Self> {
        let mut queued = None;
        let mut half_open = 0;
        let states = (1 << diag::LISTEN) | (1 << diag::SYN_RECV);
        let sockets = diag::dump(local, states)
            .inspect_err(
                |error| tracing::debug!(%error, "Cannot ask the kernel for the socket table"),
            )
            .ok()?;
        for socket in sockets {
            if socket.state == diag::LISTEN && u64::from(socket.inode) == inode {
                queued = Some(socket.rqueue);
            } else if socket.state == diag::SYN_RECV && serves(local, socket.local) {
                half_open += 1;
            }
        }
        Some(Self {
            queued: queued?,
            half_open,
        })
    }
}

/// Whether a connection to `to` is one `local` (perhaps bound to every
/// address) accepts.
fn serves(local: SocketAddr, to: SocketAddr) -> bool {
    local.port() == to.port() && (local.ip().is_unspecified() || local.ip() == to.ip())
}

/// The kernel's socket table through `NETLINK_SOCK_DIAG` (what `ss` reads):
/// only the states asked for are sent back, so a host with a hundred
/// thousand connections in `TIME_WAIT` answers as fast as an idle one
/// (`/proc/net/tcp` prints every socket as text: a second under load).
mod diag {
    use std::io::{self, Read as _};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::time::Duration;

    use socket2::{Domain, Protocol, Socket, Type};

    /// `TCP_SYN_RECV`, `TCP_LISTEN` (`tcp_states.h`).
    pub(super) const SYN_RECV: u8 = 3;
    pub(super) const LISTEN: u8 = 10;

    const AF_NETLINK: i32 = 16;
    const NETLINK_SOCK_DIAG: i32 = 4;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_DUMP: u16 = 0x300;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const AF_INET: u8 = 2;
    const AF_INET6: u8 = 10;
    const IPPROTO_TCP: u8 = 6;
    /// `struct nlmsghdr`.
    const HEADER: usize = 16;
    /// `struct inet_diag_msg`.
    const MESSAGE: usize = 72;

    /// One socket of an answer (`struct inet_diag_msg`).
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Entry {
        pub(super) state: u8,
        pub(super) local: SocketAddr,
        /// A listening socket's accept queue.
        pub(super) rqueue: u32,
        pub(super) inode: u32,
    }

    /// Every TCP socket of `local`'s family in one of `states` (a bit per
    /// state).
    pub(super) fn dump(local: SocketAddr, states: u32) -> io::Result<Vec<Entry>> {
        ask(&request(local.is_ipv4(), states))
    }

    /// `nlmsghdr` + `inet_diag_req_v2`: a dump of every socket in `states`.
    fn request(v4: bool, states: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 56);
        out.extend_from_slice(&u32::try_from(HEADER + 56).unwrap_or(0).to_ne_bytes());
        out.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        out.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        out.extend_from_slice(&1_u32.to_ne_bytes()); // sequence
        out.extend_from_slice(&0_u32.to_ne_bytes()); // port id: the kernel fills it
        out.push(if v4 { AF_INET } else { AF_INET6 });
        out.push(IPPROTO_TCP);
        out.push(0); // no extensions
        out.push(0);
        out.extend_from_slice(&states.to_ne_bytes());
        // inet_diag_sockid, all zero but the cookie: any socket.
        out.extend_from_slice(&[0; 2 + 2 + 16 + 16 + 4]);
        // No cookie: INET_DIAG_NOCOOKIE.
        out.extend_from_slice(&u32::MAX.to_ne_bytes());
        out.extend_from_slice(&u32::MAX.to_ne_bytes());
        out
    }

    /// Sends `request` to the kernel and collects the sockets of its answer.
    fn ask(request: &[u8]) -> io::Result<Vec<Entry>> {
        let socket = Socket::new(
            Domain::from(AF_NETLINK),
            Type::DGRAM,
            Some(Protocol::from(NETLINK_SOCK_DIAG)),
        )?;
        socket.set_read_timeout(Some(Duration::from_secs(1)))?;
        // Unaddressed, a netlink message goes to the kernel.
        socket.send(request)?;
        let mut found = Vec::new();
        let mut buffer = vec![0_u8; 32 * 1024];
        loop {
            let n = (&socket).read(&mut buffer)?;
            if n == 0 {
                return Ok(found);
            }
            let mut rest = buffer.get(..n).unwrap_or_default();
            while rest.len() >= HEADER {
                let len = u32_at(rest, 0) as usize;
                let kind = u16::from_ne_bytes([rest[4], rest[5]]);
                if len < HEADER || len > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "bad netlink message",
                    ));
                }
                match kind {
                    NLMSG_DONE => return Ok(found),
                    NLMSG_ERROR => {
                        // A negated errno; 0 acknowledges.
                        let code = i32::from_ne_bytes([rest[16], rest[17], rest[18], rest[19]]);
                        if code == 0 {
                            return Ok(found);
                        }
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    SOCK_DIAG_BY_FAMILY => {
                        if let Some(socket) = rest.get(HEADER..len).and_then(parse) {
                            found.push(socket);
                        }
                    }
                    _ => {}
                }
                rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
            }
        }
    }

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        let mut word = [0; 4];
        if let Some(slice) = bytes.get(at..at + 4) {
            word.copy_from_slice(slice);
        }
        u32::from_ne_bytes(word)
    }

    /// `struct inet_diag_msg`.
    fn parse(message: &[u8]) -> Option<Entry> {
        if message.len() < MESSAGE {
            return None;
        }
        let port = u16::from_be_bytes([message[4], message[5]]);
        let ip = match message[0] {
            AF_INET => IpAddr::V4(Ipv4Addr::new(
                message[8],
                message[9],
                message[10],
                message[11],
            )),
            AF_INET6 => {
                let mut octets = [0; 16];
                octets.copy_from_slice(&message[8..24]);
                IpAddr::V6(Ipv6Addr::from(octets))
            }
            _ => return None,
        };
        Some(Entry {
            state: message[1],
            local: SocketAddr::new(ip, port),
            rqueue: u32_at(message, 56),
            inode: u32_at(message, 68),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_bound_to_every_address_serves_each_of_them() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let one: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert!(serves(any, one));
        assert!(serves(one, one));
        assert!(!serves(one, "127.0.0.2:8080".parse().unwrap()));
        assert!(!serves(any, "127.0.0.1:8081".parse().unwrap()));
    }

    fn listener(backlog: i32) -> TcpListener {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        socket.listen(backlog).unwrap();
        socket.set_nonblocking(true).unwrap();
        TcpListener::from_std(socket.into()).unwrap()
    }

    #[tokio::test]
    async fn the_kernel_view_counts_the_accept_queue_by_inode() {
        let listener = listener(16);
        let local = listener.local_addr().unwrap();
        let inode = socket_inode(&listener).unwrap();
        let view = KernelView::read(local, inode).unwrap();
        assert_eq!(view.queued, 0);
        let _a = std::net::TcpStream::connect(local).unwrap();
        let _b = std::net::TcpStream::connect(local).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while KernelView::read(local, inode).unwrap().queued < 2 {
            assert!(Instant::now() < deadline, "never saw two queued");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Sweeps with `accept`, keeping what it took.
    fn sweeper(taken: &mut Vec<socket2::Socket>) -> impl FnMut(&TcpListener) -> usize + '_ {
        move |listener| {
            let mut n = 0;
            while let Ok((socket, _)) = socket2::SockRef::from(listener).accept() {
                taken.push(socket);
                n += 1;
            }
            n
        }
    }

    #[tokio::test]
    async fn a_shrunk_queue_closes_with_its_client_taken() {
        // The unprivileged refusal: a queue of one, a client waiting in it.
        let listener = listener(0);
        let local = listener.local_addr().unwrap();
        let waiting = std::net::TcpStream::connect(local).unwrap();
        let mut taken = Vec::new();
        close_listener(listener, sweeper(&mut taken)).await;
        let client = waiting.local_addr().unwrap();
        assert!(
            taken
                .iter()
                .any(|s| s.peer_addr().ok().and_then(|a| a.as_socket()) == Some(client)),
            "the waiting client was not taken"
        );
        // Closed: a new client is refused, not queued for nobody.
        assert!(std::net::TcpStream::connect(local).is_err());
    }

    #[tokio::test]
    async fn a_listener_others_still_serve_closes_at_once() {
        // A normal queue: the probe is answered and queued; this process's
        // descriptor closes. With a second descriptor (another worker) the
        // socket stays open.
        let listener = listener(128);
        let local = listener.local_addr().unwrap();
        let other = listener.into_std().unwrap();
        let ours = TcpListener::from_std(other.try_clone().unwrap()).unwrap();
        let started = Instant::now();
        let swept = close_listener(ours, |_| 0).await;
        assert_eq!(swept, 0);
        assert!(started.elapsed() < SETTLE_LIMIT);
        // The other descriptor still accepts: the probe is in its queue.
        other.set_nonblocking(false).unwrap();
        let _client = std::net::TcpStream::connect(local).unwrap();
        let (_probe_or_client, _) = other.accept().unwrap();
    }
}
