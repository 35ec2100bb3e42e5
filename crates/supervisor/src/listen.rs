//! Listen queues: how full each listening socket's accept queue is, how much
//! it holds, and how many connections the kernel dropped because a queue was
//! full — as metric values, for the instance's one scrape.
//!
//! A connection whose handshake is complete waits in its socket's accept
//! queue until a process calls `accept`. The queue holds the backlog asked
//! for at `listen` (wharf: `WHARF_BACKLOG`, edge's `[[listen]] backlog`),
//! capped at `net.core.somaxconn`; when it is full the kernel drops the
//! client's SYN (or its final ACK) and counts `TcpExt: ListenOverflows`: the
//! client retries after a second, then three, and so on. Those drops are
//! invisible to the server itself, so these figures are the only sign of them.

use std::io;
use std::os::fd::BorrowedFd;

use socket2::SockRef;
use wharf_telemetry::metrics::{Family, Snapshot};

/// One listening socket's accept queue, as the kernel reports it (what
/// `ss -lnt` shows as Recv-Q and Send-Q).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenQueue {
    /// Connections whose handshake is complete, waiting to be accepted.
    pub length: u32,
    /// The queue's limit: the backlog asked for, capped at
    /// `net.core.somaxconn`. The kernel queues up to one more than this
    /// before it starts dropping.
    pub max: u32,
}

impl ListenQueue {
    /// Reads the queue of a listening TCP socket (`TCP_INFO`); an error for
    /// any other socket.
    pub fn of(socket: BorrowedFd<'_>) -> io::Result<Self> {
        let (length, max) = crate::sys::listen_queue(socket)?;
        Ok(Self { length, max })
    }
}

/// The network namespace's listen-queue counters (`/proc/net/netstat`): one
/// count for every listening socket of the machine or container, wharf's
/// or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenOverflows {
    /// `TcpExt: ListenOverflows`: connections dropped because an accept
    /// queue was full.
    pub overflows: u64,
    /// `TcpExt: ListenDrops`: connection attempts dropped at a listening
    /// socket for any reason, overflows included.
    pub drops: u64,
}

impl ListenOverflows {
    /// The current counts; `None` where `/proc/net/netstat` cannot be read.
    pub fn read() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/net/netstat").ok()?)
    }

    /// Reads the `TcpExt:` pair of lines (names, then values) of
    /// `/proc/net/netstat`.
    fn parse(text: &str) -> Option<Self> {
        let mut lines = text.lines();
        while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
            let (Some(names), Some(values)) = (
                names.strip_prefix("TcpExt:"),
                values.strip_prefix("TcpExt:"),
            ) else {
                continue;
            };
            let field = |wanted: &str| {
                names
                    .split_whitespace()
                    .zip(values.split_whitespace())
                    .find(|(name, _)| *name == wanted)
                    .and_then(|(_, value)| value.parse().ok())
            };
            return Some(Self {
                overflows: field("ListenOverflows")?,
                drops: field("ListenDrops")?,
            });
        }
        None
    }
}

/// The listen-queue families for `sockets` (each a listening socket and,
/// when its address has one socket per worker slot, that slot), plus the
/// namespace's overflow counters:
///
/// - `wharf_listen_queue_length{address[,slot]}` (gauge): connections waiting
///   to be accepted;
/// - `wharf_listen_queue_max{address[,slot]}` (gauge): the queue's limit;
/// - `wharf_listen_overflows_total` and `wharf_listen_drops_total`
///   (counters): `TcpExt: ListenOverflows` and `ListenDrops`.
///
/// A socket whose queue cannot be read is left out.
pub fn listen_metrics<'a>(
    sockets: impl IntoIterator<Item = (BorrowedFd<'a>, Option<usize>)>,
) -> Snapshot {
    let mut queues = Vec::new();
    for (fd, slot) in sockets {
        let Ok(queue) = ListenQueue::of(fd) else {
            continue;
        };
        let Some(address) = SockRef::from(&fd)
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
        else {
            continue;
        };
        queues.push((address.to_string(), slot.map(|s| s.to_string()), queue));
    }
    let mut out = Snapshot::new();
    if !queues.is_empty() {
        let mut length = Family::gauge(
            "wharf_listen_queue_length",
            "Connections waiting in a listening socket's accept queue (handshake done, not yet accepted).",
        );
        let mut max = Family::gauge(
            "wharf_listen_queue_max",
            "A listening socket's accept queue limit: the backlog asked for, capped at net.core.somaxconn.",
        );
        for (address, slot, queue) in &queues {
            let mut labels = vec![("address", address.as_str())];
            if let Some(slot) = slot {
                labels.push(("slot", slot.as_str()));
            }
            length.sample(&labels, queue.length);
            max.sample(&labels, queue.max);
        }
        out.push(length);
        out.push(max);
    }
    if let Some(counts) = ListenOverflows::read() {
        out.push(
            Family::counter(
                "wharf_listen_overflows_total",
                "Connections the kernel dropped because an accept queue was full (TcpExt ListenOverflows, every listening socket of this network namespace).",
            )
            .with(&[], counts.overflows),
        );
        out.push(
            Family::counter(
                "wharf_listen_drops_total",
                "Connection attempts the kernel dropped at a listening socket, overflows included (TcpExt ListenDrops, this network namespace).",
            )
            .with(&[], counts.drops),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_listening_socket_reports_its_queue_and_its_backlog() {
        let listener = crate::bind("127.0.0.1:0".parse().unwrap(), false, 3).unwrap();
        let addr = listener.local_addr().unwrap();
        assert_eq!(
            ListenQueue::of(listener.as_fd()).unwrap(),
            ListenQueue { length: 0, max: 3 }
        );
        // Nobody accepts: the kernel queues one more than the backlog.
        let queued: Vec<TcpStream> = (0..4)
            .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).unwrap())
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while ListenQueue::of(listener.as_fd()).unwrap().length < 4 {
            assert!(std::time::Instant::now() < deadline, "never queued 4");
            std::thread::sleep(Duration::from_millis(10));
        }
        let text = listen_metrics([(listener.as_fd(), Some(2))]).encode();
        assert!(
            text.contains(&format!(
                "\nwharf_listen_queue_length{{address=\"{addr}\",slot=\"2\"}} 4\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "\nwharf_listen_queue_max{{address=\"{addr}\",slot=\"2\"}} 3\n"
            )),
            "{text}"
        );
        assert!(text.contains("\nwharf_listen_overflows_total "), "{text}");
        drop(queued);
    }

    #[test]
    fn a_socket_that_is_not_listening_is_not_a_queue() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(ListenQueue::of(stream.as_fd()).is_err());
        let text = listen_metrics([(stream.as_fd(), None)]).encode();
        assert!(!text.contains("wharf_listen_queue"), "{text}");
    }

    #[test]
    fn the_overflow_counters_come_from_the_tcpext_lines() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPHPHits\n\
                    TcpExt: 0 17 19 4242\n\
                    IpExt: InNoRoutes ListenOverflows\n\
                    IpExt: 0 99\n";
        assert_eq!(
            ListenOverflows::parse(text),
            Some(ListenOverflows {
                overflows: 17,
                drops: 19
            })
        );
        let ip_first =
            "IpExt: InNoRoutes\nIpExt: 3\nTcpExt: ListenDrops ListenOverflows\nTcpExt: 5 2\n";
        assert_eq!(
            ListenOverflows::parse(ip_first),
            Some(ListenOverflows {
                overflows: 2,
                drops: 5
            })
        );
        assert_eq!(
            ListenOverflows::parse("TcpExt: ListenDrops\nTcpExt: 1\n"),
            None
        );
        assert_eq!(ListenOverflows::parse(""), None);
    }
}
