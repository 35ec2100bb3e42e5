//! `[[listen]]` changes on SIGHUP (issue 25, "edge beyond nginx"; nginx
//! applies `listen` changes on reload, pingora#690 asks for it): a HUP that
//! adds a listener makes it answer, one that removes a listener makes it
//! refuse new connections once the requests it holds have finished, the
//! listeners that stay keep their sockets (no connection refused while the
//! reload runs, and a keep-alive connection on them keeps working), and a
//! new address that cannot be bound refuses the whole reload. Each scenario
//! runs against `edge` in one process and as a master with two workers.
//! What goes wrong around it (a failed reload, systemd's sockets, a binary
//! upgrade after the file changed) is in `recovery`.

mod recovery;

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::reliability::raw::{self, parse_responses, Response};
use crate::reliability::stub::{Reply, Stub};
use crate::support::{free_port, start, wait_for_port, wait_until, Process};

const EDGE: &str = env!("CARGO_BIN_EXE_edge");
/// How long the upstream takes to answer `/slow`: long enough for a
/// request to be in flight across a reload.
const SLOW: Duration = Duration::from_millis(2500);

pub(crate) fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The file: a plain listener on each of `ports`, `/fixed` answering
/// `body`, `/` proxied to `upstream`, and `workers` worker processes (none:
/// one process) with `supervisor` added to their section.
fn write_config(
    path: &Path,
    ports: &[u16],
    admin: u16,
    upstream: SocketAddr,
    body: &str,
    workers: Option<usize>,
    supervisor: &str,
) {
    let listen = ports
        .iter()
        .map(|port| format!("[[listen]]\naddress = \"127.0.0.1:{port}\"\n"))
        .collect::<Vec<_>>()
        .join("\n");
    let supervisor = workers.map_or_else(String::new, |workers| {
        format!("\n[supervisor]\nworkers = {workers}\nworker_threads = 1\n{supervisor}")
    });
    let text = format!(
        r#"{listen}
[admin]
address = "127.0.0.1:{admin}"

[http]
access_log = false
shutdown_timeout = "8s"

[proxy]
connect_timeout = "1s"
read_timeout = "10s"

[[upstream]]
name = "app"
servers = [{{ address = "{upstream}" }}]

[[server]]
server_name = ["localhost"]
default_server = true

[[server.location]]
path = "/"
proxy_pass = "app"

[[server.location]]
path = "/fixed"
return = {{ status = 200, body = "{body}\n" }}
{supervisor}"#
    );
    std::fs::write(path, text).unwrap();
}

pub(crate) struct Edge {
    pub(crate) proc: Process,
    pub(crate) config: PathBuf,
    pub(crate) admin: u16,
    upstream: Stub,
    workers: Option<usize>,
    /// Added to the `[supervisor]` section.
    supervisor: String,
    _dir: tempfile::TempDir,
}

impl Edge {
    /// Edge listening on `ports`, with an upstream answering `/slow` after
    /// [`SLOW`]; returned once every listener (and every worker) is up.
    fn start(ports: &[u16], workers: Option<usize>) -> Self {
        Self::start_with(ports, workers, "", &[], None)
    }

    /// [`start`](Self::start) with `supervisor` added to the `[supervisor]`
    /// section, `env` added to the environment, and `command` (given the
    /// file's path) instead of running `edge` itself.
    pub(crate) fn start_with(
        ports: &[u16],
        workers: Option<usize>,
        supervisor: &str,
        env: &[(&'static str, String)],
        command: Option<&dyn Fn(&Path) -> std::process::Command>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let upstream = Stub::start(|seen| {
            if seen.path() == "/slow" {
                Reply::delay(SLOW, Reply::text(200, "slow done\n"))
            } else {
                Reply::text(200, "upstream\n")
            }
        });
        let admin = free_port();
        let config = dir.path().join("edge.toml");
        write_config(
            &config,
            ports,
            admin,
            upstream.addr,
            "fixed",
            workers,
            supervisor,
        );
        let mut env: HashMap<&str, String> = env.iter().cloned().collect();
        env.insert("RUST_LOG", "info".to_owned());
        let proc = match command {
            Some(command) => Process::serve(&mut command(&config), ports[0]),
            None => start(
                EDGE,
                &["--config", config.to_str().unwrap()],
                &env,
                ports[0],
            ),
        };
        let edge = Self {
            proc,
            config,
            admin,
            upstream,
            workers,
            supervisor: supervisor.to_owned(),
            _dir: dir,
        };
        for port in ports {
            wait_for_port(addr(*port), Duration::from_secs(20));
        }
        wait_for_port(addr(admin), Duration::from_secs(20));
        if workers.is_some() {
            // Every worker is ready (a worker's series appear in the
            // master's scrape as soon as it starts, before it has read the
            // file: a test that rewrites the file must wait for this).
            wait_until("workers ready", Duration::from_secs(20), || {
                edge.proc.logs().contains("All workers ready")
            });
        }
        edge
    }

    /// Rewrites the file with these listeners and `/fixed` body, and sends
    /// SIGHUP.
    pub(crate) fn reload(&self, ports: &[u16], body: &str) {
        self.write(ports, body);
        self.proc.signal("HUP");
    }

    /// Rewrites the file with these listeners and `/fixed` body.
    pub(crate) fn write(&self, ports: &[u16], body: &str) {
        write_config(
            &self.config,
            ports,
            self.admin,
            self.upstream.addr,
            body,
            self.workers,
            &self.supervisor,
        );
    }

    pub(crate) fn scrape(&self) -> String {
        raw::get(addr(self.admin), "/metrics", &[]).body_text()
    }

    fn metric(&self, series: &str) -> u64 {
        let text = self.scrape();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Reloads finished: in one process the config counter, with workers
    /// the replacements (one per worker).
    pub(crate) fn reloads(&self) -> u64 {
        match self.workers {
            None => self.metric("edge_config_reloads_total"),
            Some(workers) => {
                self.metric("wharf_worker_restarts_total{reason=\"reload\"}") / workers as u64
            }
        }
    }

    /// Log lines refusing a reload (the master's and the single process's).
    pub(crate) fn refusals(&self) -> Vec<String> {
        self.proc
            .logs()
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains("reload refused"))
            .map(ToOwned::to_owned)
            .collect()
    }
}

/// A keep-alive connection on which requests are sent one at a time.
struct KeepAlive {
    stream: TcpStream,
    buffer: Vec<u8>,
}

impl KeepAlive {
    fn open(port: u16) -> Self {
        let stream = TcpStream::connect(addr(port)).unwrap();
        Self {
            stream,
            buffer: Vec::new(),
        }
    }

    fn send(&mut self, path: &str) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
        self.stream.write_all(request.as_bytes()).unwrap();
    }

    /// Reads one whole response (up to 15 s); `None` if the connection
    /// closed first.
    fn response(&mut self) -> Option<Response> {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut chunk = [0_u8; 16 * 1024];
        loop {
            if let Some(response) = parse_responses(&self.buffer).into_iter().next() {
                let length = response
                    .header("content-length")
                    .and_then(|n| n.parse::<usize>().ok());
                if length.is_some_and(|n| response.body.len() >= n) {
                    self.buffer.clear();
                    return Some(response);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no whole response within 15 s");
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return None,
            }
        }
    }

    /// Whether the server closed this connection while it was at rest (EOF
    /// with nothing sent: a graceful close, not a lost request).
    fn closed_at_rest(&mut self) -> bool {
        self.stream.set_nonblocking(true).unwrap();
        let mut byte = [0_u8; 1];
        let closed = matches!(self.stream.peek(&mut byte), Ok(0));
        self.stream.set_nonblocking(false).unwrap();
        closed
    }

    fn get(&mut self, path: &str) -> Option<Response> {
        self.send(path);
        self.response()
    }
}

/// New connections to `port`, one request each, until stopped: how many
/// were answered with an expected status and how many failed.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Traffic {
    /// Traffic answered 200.
    fn start(port: u16) -> Self {
        Self::expecting(port, &[200])
    }

    /// Traffic answered with any of `statuses` (a listener whose plan
    /// changes answers 200 before and 301 after).
    fn expecting(port: u16, statuses: &'static [u16]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    let exchange = TcpStream::connect(addr(port)).map(|mut stream| {
                        let _ = stream.write_all(
                            b"GET /fixed HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                        );
                        raw::read_all(&mut stream, Duration::from_secs(10))
                    });
                    match exchange {
                        Ok(exchange)
                            if exchange.statuses().len() == 1
                                && statuses.contains(&exchange.statuses()[0]) =>
                        {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(exchange) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            errors.push(exchange.text());
                        }
                        Err(error) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            errors.push(error.to_string());
                        }
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                errors
            })
        };
        Self {
            stop,
            ok,
            failed,
            thread,
        }
    }

    fn stop(self) -> (usize, usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        let errors = self.thread.join().unwrap();
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
            errors,
        )
    }
}

pub(crate) fn refused(port: u16) -> bool {
    matches!(
        TcpStream::connect_timeout(&addr(port), Duration::from_secs(1)),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused
    )
}

pub(crate) fn body(response: Option<Response>) -> String {
    response.map(|r| r.body_text()).unwrap_or_default()
}

/// Two listeners, `a` (stays) and `b` (removed), and a HUP that removes `b`
/// and adds `c`.
fn added_removed_and_kept(workers: Option<usize>) {
    let (a, b, c) = (free_port(), free_port(), free_port());
    let edge = Edge::start(&[a, b], workers);
    let mut on_a = KeepAlive::open(a);
    assert_eq!(body(on_a.get("/fixed")), "fixed\n");
    let mut on_b = KeepAlive::open(b);
    assert_eq!(body(on_b.get("/fixed")), "fixed\n");
    assert!(refused(c), "{c} is not listened on yet, so nothing answers");
    // A request in flight on the listener about to be removed.
    on_b.send("/slow");
    wait_until(
        "the slow request reached the upstream",
        Duration::from_secs(5),
        || edge.upstream.seen().iter().any(|s| s.path() == "/slow"),
    );
    let traffic = Traffic::start(a);
    std::thread::sleep(Duration::from_millis(200));

    edge.reload(&[a, c], "fixed2");
    // At once, while the reload runs: the kept listener's keep-alive
    // connection is answered.
    let during = on_a
        .get("/fixed")
        .expect("the kept listener's connection answered");
    assert_eq!(during.status, 200, "{during:?}");

    // (a) The added listener answers, with the new file.
    wait_until(
        "the added listener answers",
        Duration::from_secs(20),
        || TcpStream::connect(addr(c)).is_ok(),
    );
    wait_until(
        "the new configuration answers",
        Duration::from_secs(20),
        || raw::get(addr(c), "/fixed", &[]).body_text() == "fixed2\n",
    );
    // (b) The request in flight on the removed listener completes.
    let slow = on_b.response().expect("the in-flight request was answered");
    assert_eq!(slow.status, 200, "{slow:?}");
    assert_eq!(slow.body_text(), "slow done\n");
    wait_until("the reload finished", Duration::from_secs(30), || {
        edge.reloads() >= 1
    });
    // The keep-alive connection on the listener that stays: in one process
    // its task was never touched; with workers the old worker that holds
    // it has drained, which closes an idle connection (at rest, so no
    // request is lost) — the client opens another, on the same socket.
    if workers.is_none() || !on_a.closed_at_rest() {
        let again = on_a
            .get("/fixed")
            .expect("the kept listener's connection answered");
        assert_eq!(again.status, 200, "{again:?}");
    }
    // (c) The removed listener refuses new connections, once what it held
    // has finished.
    wait_until(
        "the removed listener refuses",
        Duration::from_secs(20),
        || refused(b),
    );
    // The kept listener never refused anyone meanwhile: same socket.
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed, errors) = traffic.stop();
    assert_eq!(
        failed, 0,
        "requests to the kept listener failed: {errors:?}"
    );
    assert!(ok > 10, "{ok} requests only");
    assert_eq!(raw::get(addr(a), "/fixed", &[]).body_text(), "fixed2\n");
    // The listen-queue series follow the new set.
    let scrape = edge.scrape();
    for (port, present) in [(a, true), (c, true), (b, false)] {
        assert_eq!(
            scrape.contains(&format!("address=\"127.0.0.1:{port}\"")),
            present,
            "127.0.0.1:{port} in the listen-queue metrics: {scrape}"
        );
    }
    assert_eq!(edge.refusals(), Vec::<String>::new());
}

/// (d) A new address that is already taken: the reload is refused, named
/// in the log, and the old listeners keep serving the old file.
fn a_taken_address_refuses_the_reload(workers: Option<usize>) {
    let (a, b) = (free_port(), free_port());
    let edge = Edge::start(&[a, b], workers);
    let taken = TcpListener::bind(addr(0)).unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let mut on_a = KeepAlive::open(a);
    assert_eq!(body(on_a.get("/fixed")), "fixed\n");

    edge.reload(&[a, taken_port], "fixed2");

    let needle = format!("127.0.0.1:{taken_port}");
    wait_until("the refusal is logged", Duration::from_secs(10), || {
        edge.refusals().iter().any(|l| l.contains(&needle))
    });
    if workers.is_none() {
        assert_eq!(edge.metric("edge_config_reload_failures_total"), 1);
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(edge.reloads(), 0, "a refused reload changed something");
    for port in [a, b] {
        assert_eq!(
            raw::get(addr(port), "/fixed", &[]).body_text(),
            "fixed\n",
            "the old configuration serves on {port}"
        );
    }
    assert_eq!(body(on_a.get("/fixed")), "fixed\n");
    // Once the address is free, the same file applies.
    drop(taken);
    edge.proc.signal("HUP");
    wait_until("the second reload applies", Duration::from_secs(30), || {
        edge.reloads() >= 1 && raw::get(addr(taken_port), "/fixed", &[]).body_text() == "fixed2\n"
    });
    wait_until("b refuses", Duration::from_secs(20), || refused(b));
}

#[test]
fn one_process_hup_adds_and_removes_listeners_and_keeps_the_others() {
    added_removed_and_kept(None);
}

#[test]
fn with_workers_hup_adds_and_removes_listeners_and_keeps_the_others() {
    added_removed_and_kept(Some(2));
}

#[test]
fn one_process_a_listener_that_cannot_bind_refuses_the_reload() {
    a_taken_address_refuses_the_reload(None);
}

#[test]
fn with_workers_a_listener_that_cannot_bind_refuses_the_reload() {
    a_taken_address_refuses_the_reload(Some(2));
}

/// One process: a listener whose plan changes (here: it starts redirecting
/// to HTTPS) keeps its socket; a new connection gets the new behaviour and
/// a keep-alive connection accepted before finishes on the old one. New
/// connections to the changed listener in a loop across the HUP: none
/// refused or reset, as a close and rebind would.
#[test]
fn one_process_a_changed_listener_keeps_its_socket() {
    let (a, b) = (free_port(), free_port());
    let edge = Edge::start(&[a, b], None);
    let mut on_b = KeepAlive::open(b);
    assert_eq!(body(on_b.get("/fixed")), "fixed\n");
    let traffic = Traffic::expecting(b, &[200, 301]);
    std::thread::sleep(Duration::from_millis(200));
    let text = std::fs::read_to_string(&edge.config).unwrap().replacen(
        &format!("address = \"127.0.0.1:{b}\"\n"),
        &format!("address = \"127.0.0.1:{b}\"\nredirect_to_https = true\nhttps_port = 8443\n"),
        1,
    );
    std::fs::write(&edge.config, text).unwrap();
    edge.proc.signal("HUP");
    // The connection accepted before the change finishes on the old plan
    // (a drained idle connection gets a second to send its next request).
    std::thread::sleep(Duration::from_millis(100));
    let old = on_b.get("/fixed").expect("the open connection answered");
    assert_eq!(old.status, 200, "{old:?}");
    wait_until("the change applies", Duration::from_secs(10), || {
        raw::get(addr(b), "/fixed", &[]).status == 301
    });
    let response = raw::get(addr(b), "/fixed", &[]);
    assert_eq!(
        response.header("location").as_deref(),
        Some("https://localhost:8443/fixed")
    );
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed, errors) = traffic.stop();
    assert_eq!(
        failed, 0,
        "connections to the changed listener failed: {errors:?}"
    );
    assert!(ok > 5, "{ok} requests only");
    assert!(!refused(b));
}
