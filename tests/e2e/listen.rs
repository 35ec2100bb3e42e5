//! The listen queue (issue 26; seed 003, "TCP Backlog Overflow": under high
//! traffic the kernel's accept queue fills and connections are dropped
//! before the server ever sees them). The backlog is a setting
//! (`WHARF_BACKLOG`, edge's `[[listen]] backlog`), and the instance's one
//! scrape shows each listener's queue, its limit, and the kernel's listen
//! overflows. Here a listener's only worker is stopped (`SIGSTOP`), more
//! connections are opened than its backlog of 4 holds, and the scrape must
//! show the queue at its limit and the overflow counter moving; after
//! `SIGCONT` the queued clients are served and the queue empties.
//!
//! The scenarios and their results are listed in docs/reliability.md.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::reliability::{dead_address, frontend, raw, Edge, EdgeSpec};
use crate::support::{children, wait_for_port, wait_until};

/// The backlog asked for: the kernel queues one connection more than this.
const BACKLOG: u64 = 4;

/// The value of `series` (a metric name with its labels) in a scrape.
fn value(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The scrape of an admin listener.
fn scrape(admin: SocketAddr) -> String {
    raw::get(admin, "/metrics", &[]).body_text()
}

/// The accept queue of the socket listening on 127.0.0.1:`port`, as
/// `/proc/net/tcp` shows it (`rx_queue` of a `LISTEN` line): the kernel's
/// own view, to check the metric against.
fn proc_net_tcp_queue(port: u16) -> Option<u64> {
    let local = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .ok()?
        .lines()
        .map(str::split_whitespace)
        .find_map(|mut fields| {
            let (_, address, _, state, queues) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            (address == local && state == "0A")
                .then(|| u64::from_str_radix(queues.split_once(':')?.1, 16).ok())
                .flatten()
        })
}

/// A process stopped with `SIGSTOP` until this is dropped (`SIGCONT`), so a
/// failing assertion never leaves it stopped.
struct Stopped(u32);

impl Stopped {
    /// Returns once every thread of `pid` has stopped: `kill` only queues
    /// the signal, and a thread running on another CPU stops a moment later
    /// (long enough, on a loaded machine, to accept a few connections).
    fn new(pid: u32) -> Self {
        signal("STOP", pid);
        let stopped = Self(pid);
        wait_until("every thread stopped", Duration::from_secs(2), || {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
            tasks.flatten().all(|task| {
                let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
                // The state follows the ")" that ends the name.
                stat.rsplit_once(") ")
                    .is_some_and(|(_, rest)| rest.starts_with('T'))
            })
        });
        stopped
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal("CONT", self.0);
    }
}

fn signal(name: &str, pid: u32) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// What one run saw.
struct Seen {
    /// Connections the client saw made while the worker was stopped (one
    /// whose final ACK the kernel dropped looks made to the client: it is
    /// queued later, when the server's SYN-ACK is retried).
    connected: usize,
    /// Attempts that timed out: their SYN was dropped.
    timed_out: usize,
    /// The scrape's queue length and limit with the worker stopped.
    length: u64,
    max: u64,
    /// `wharf_listen_overflows_total` before and with the queue full.
    overflows: (u64, u64),
    /// From the stop until the scrape showed the full queue.
    full_after: Duration,
}

/// With the instance serving on `listener` through one worker (a child of
/// `master`) and scraped at `admin`: the scrape shows the queue empty with
/// `BACKLOG` as its limit; with the worker stopped and twice `BACKLOG`
/// connections attempted, `BACKLOG` + 1 queue (the kernel's view and the
/// scrape agree: the backlog is in force, not the default 1024) and the
/// scrape shows the overflows up; once the worker runs again, `request` on
/// every connection the client made is answered 200 and the queue empties.
fn a_full_queue_shows_in_the_scrape(
    listener: SocketAddr,
    master: u32,
    admin: SocketAddr,
    labels: &str,
    request: &str,
) -> Seen {
    let length = format!("wharf_listen_queue_length{{{labels}}}");
    let max = format!("wharf_listen_queue_max{{{labels}}}");
    // Ready, and the start-up probes' connections accepted (in the scrape,
    // rendered every 200 ms, and in the kernel's own view).
    wait_for_port(admin, Duration::from_secs(10));
    let mut text = String::new();
    wait_until(
        "a ready worker and an empty queue",
        Duration::from_secs(20),
        || {
            text = scrape(admin);
            value(&text, "wharf_workers{state=\"ready\"}") == Some(1)
                && value(&text, &length) == Some(0)
                && proc_net_tcp_queue(listener.port()) == Some(0)
        },
    );
    assert_eq!(value(&text, &max), Some(BACKLOG), "{text}");
    let before = value(&text, "wharf_listen_overflows_total").unwrap();
    assert!(value(&text, "wharf_listen_drops_total").unwrap() >= before);

    let workers = children(master);
    assert_eq!(workers.len(), 1, "one worker: {workers:?}");
    let stopped = Stopped::new(workers[0]);
    let start = Instant::now();
    // The kernel queues BACKLOG + 1 connections; past that it drops a new
    // SYN (the attempt times out) or, when the queue filled during the
    // handshake, the final ACK (the client believes it connected).
    let mut connected = Vec::new();
    let mut timed_out = 0;
    for attempt in 0..2 * BACKLOG {
        let wait = if attempt <= BACKLOG { 1000 } else { 300 };
        match TcpStream::connect_timeout(&listener, Duration::from_millis(wait)) {
            Ok(stream) => connected.push(stream),
            Err(error) if attempt > BACKLOG => {
                assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
                timed_out += 1;
            }
            Err(error) => panic!("attempt {attempt} within the backlog: {error}"),
        }
    }
    // The master renders its metrics every 200 ms.
    let deadline = Instant::now() + Duration::from_secs(3);
    let full = loop {
        let text = scrape(admin);
        if value(&text, &length) == Some(BACKLOG + 1)
            && value(&text, "wharf_listen_overflows_total").is_some_and(|n| n > before)
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no full queue and more overflows (than {before}) in the scrape within 3 s; \
             the kernel's queue: {:?}; the scrape: {text}",
            proc_net_tcp_queue(listener.port())
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let full_after = start.elapsed();
    assert_eq!(value(&full, &max), Some(BACKLOG), "{full}");
    assert_eq!(proc_net_tcp_queue(listener.port()), Some(BACKLOG + 1));
    // The clients send their requests now; they are answered once the
    // worker runs again.
    for stream in &mut connected {
        stream.write_all(request.as_bytes()).unwrap();
    }
    drop(stopped);
    for mut stream in &connected {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    }
    wait_until("the queue empties", Duration::from_secs(3), || {
        value(&scrape(admin), &length) == Some(0)
    });
    Seen {
        connected: connected.len(),
        timed_out,
        length: value(&full, &length).unwrap_or(0),
        max: value(&full, &max).unwrap_or(0),
        overflows: (
            before,
            value(&full, "wharf_listen_overflows_total").unwrap_or(0),
        ),
        full_after,
    }
}

impl Seen {
    /// The figures docs/reliability.md records.
    fn report(&self, what: &str) {
        println!(
            "{what}: backlog {BACKLOG}, {} attempts: {} connected, {} timed out; scrape: queue {} of {}, \
             overflows {} -> {} (+{}), seen {} ms after the stop; every connected one answered 200 after SIGCONT",
            2 * BACKLOG,
            self.connected,
            self.timed_out,
            self.length,
            self.max,
            self.overflows.0,
            self.overflows.1,
            self.overflows.1 - self.overflows.0,
            self.full_after.as_millis()
        );
        assert!(u64::try_from(self.connected).unwrap() > BACKLOG);
        assert_eq!((self.length, self.max), (BACKLOG + 1, BACKLOG));
        assert!(self.overflows.1 > self.overflows.0);
    }
}

/// `frontend` with `WHARF_BACKLOG=4` and one worker: the master's scrape
/// shows the socket it holds fill up while the worker is stopped.
#[test]
fn frontend_reports_a_full_listen_queue_and_the_overflows() {
    let admin = SocketAddr::from(([127, 0, 0, 1], crate::support::free_port()));
    let proc = frontend(&[
        ("WEB_CONCURRENCY", "1".to_owned()),
        ("WHARF_BACKLOG", BACKLOG.to_string()),
        ("WHARF_ADMIN_ADDRESS", admin.to_string()),
    ]);
    let labels = format!("address=\"{}\",slot=\"0\"", proc.addr());
    let seen = a_full_queue_shows_in_the_scrape(
        proc.addr(),
        proc.pid(),
        admin,
        &labels,
        "GET /_status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    seen.report("frontend");
    drop(proc);
}

/// `edge` with `[[listen]] backlog = 4` and one worker: the same, on the
/// master's admin listener.
#[test]
fn edge_reports_a_full_listen_queue_and_the_overflows() {
    let edge = Edge::start(&EdgeSpec {
        servers: format!("{{ address = \"{}\" }}", dead_address()),
        listen: format!("backlog = {BACKLOG}"),
        locations: "[[server.location]]\npath = \"/fixed\"\nreturn = { status = 200, body = \"fixed\\n\" }\n\n\
                    [supervisor]\nworkers = 1\nworker_threads = 1\n"
            .to_owned(),
        ..EdgeSpec::default()
    });
    let admin = SocketAddr::from(([127, 0, 0, 1], edge.admin));
    let labels = format!("address=\"{}\",slot=\"0\"", edge.addr());
    let seen = a_full_queue_shows_in_the_scrape(
        edge.addr(),
        edge.proc.pid(),
        admin,
        &labels,
        "GET /fixed HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    seen.report("edge");
}

/// `edge` in one process reports the queue of each listener it bound, with
/// that listener's backlog (1024 when not set).
#[test]
fn edge_in_one_process_reports_each_listeners_backlog() {
    let edge = Edge::start(&EdgeSpec {
        servers: format!("{{ address = \"{}\" }}", dead_address()),
        listen: "backlog = 7".to_owned(),
        tls: true,
        ..EdgeSpec::default()
    });
    let plain = format!("address=\"{}\"", edge.addr());
    let tls = format!("address=\"{}\"", edge.tls_addr());
    // Once the start-up probes' connections are accepted, the queue is empty.
    let mut text = String::new();
    wait_until("an empty queue", Duration::from_secs(5), || {
        text = scrape(SocketAddr::from(([127, 0, 0, 1], edge.admin)));
        value(&text, &format!("wharf_listen_queue_length{{{plain}}}")) == Some(0)
    });
    assert_eq!(
        value(&text, &format!("wharf_listen_queue_max{{{plain}}}")),
        Some(7),
        "{text}"
    );
    assert_eq!(
        value(&text, &format!("wharf_listen_queue_max{{{tls}}}")),
        Some(1024),
        "{text}"
    );
    assert!(
        value(&text, "wharf_listen_overflows_total").is_some(),
        "{text}"
    );
}
