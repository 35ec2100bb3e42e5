//! edge's `[[limit_req]]` against real nginx: the same zones (a nodelay one
//! hit back to back, one with `delay=` and one delaying its whole burst hit
//! all at once, a nodelay one fed at a steady pace so tokens fall due between
//! requests), the same worker count (2, then 4) and the same requests, sent
//! to both side by side, each on a new connection so they spread over the
//! workers. Each zone must admit the
//! same number of requests in both (within one: a token may fall due between
//! two requests), and delay the ones nginx delays by about as long.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::reliability::raw;
use crate::support::{
    children, find_tool, free_port, is_root, require_tool, served, start, supervised_edge,
    wait_until, Process,
};

/// How a zone serves its burst.
#[derive(Clone, Copy)]
enum Mode {
    /// nginx `nodelay`: the whole burst at once.
    Nodelay,
    /// nginx `delay=N`: N excess requests at once, the rest delayed.
    Delay(u32),
    /// Neither: every excess request delayed.
    Delayed,
}

/// How a zone's requests are sent.
#[derive(Clone, Copy)]
enum Trace {
    /// One after the other, each sent once the previous one was answered.
    BackToBack(usize),
    /// One every so many milliseconds (tokens fall due meanwhile).
    Paced(usize, u64),
    /// All at once, on connections opened beforehand.
    AtOnce(usize),
}

/// One zone, configured alike in both servers and limiting `/fixed/<name>`.
struct Zone {
    name: &'static str,
    /// Requests per second.
    rate: u32,
    burst: u32,
    mode: Mode,
    trace: Trace,
}

const ZONES: [Zone; 4] = [
    Zone {
        name: "a",
        rate: 1,
        burst: 10,
        mode: Mode::Nodelay,
        trace: Trace::BackToBack(60),
    },
    Zone {
        name: "b",
        rate: 10,
        burst: 5,
        mode: Mode::Delay(2),
        trace: Trace::AtOnce(20),
    },
    Zone {
        name: "c",
        rate: 10,
        burst: 5,
        mode: Mode::Delayed,
        trace: Trace::AtOnce(20),
    },
    Zone {
        name: "d",
        rate: 10,
        burst: 2,
        mode: Mode::Nodelay,
        trace: Trace::Paced(40, 25),
    },
];

impl Zone {
    fn path(&self) -> String {
        format!("/fixed/{}", self.name)
    }

    /// Excess requests served without delay.
    fn undelayed(&self) -> u32 {
        match self.mode {
            Mode::Nodelay => self.burst,
            Mode::Delay(n) => n,
            Mode::Delayed => 0,
        }
    }

    /// What a fresh key's last admitted request of a burst waits: its
    /// excess beyond the undelayed ones, at one interval each.
    fn longest_delay(&self) -> Duration {
        Duration::from_secs(u64::from(self.burst - self.undelayed())) / self.rate
    }

    fn edge_toml(&self) -> String {
        let mode = match self.mode {
            Mode::Nodelay => "nodelay = true\n".to_owned(),
            Mode::Delay(n) => format!("delay = {n}\n"),
            Mode::Delayed => String::new(),
        };
        format!(
            "[[limit_req]]\nzone = \"{}\"\nrate = \"{}r/s\"\nburst = {}\n{mode}path_prefix = \"{}\"\n\n",
            self.name,
            self.rate,
            self.burst,
            self.path()
        )
    }

    /// The `limit_req_zone` line and the location limiting `path()`.
    fn nginx_conf(&self) -> (String, String) {
        let mode = match self.mode {
            Mode::Nodelay => " nodelay".to_owned(),
            Mode::Delay(n) => format!(" delay={n}"),
            Mode::Delayed => String::new(),
        };
        (
            format!(
                "limit_req_zone $binary_remote_addr zone={}:1m rate={}r/s;",
                self.name, self.rate
            ),
            format!(
                "location = {} {{ limit_req zone={} burst={}{mode}; }}",
                self.path(),
                self.name,
                self.burst
            ),
        )
    }
}

/// nginx with `workers` worker processes, the zones and a static `/fixed/*`
/// (a `return` would answer in the rewrite phase, before `limit_req` runs),
/// unprivileged in a temporary prefix. Stopped with a TERM (a KILL would
/// leave its workers serving).
struct Nginx {
    proc: Option<Process>,
    prefix: PathBuf,
}

impl Nginx {
    fn start(binary: &Path, workers: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().to_path_buf();
        let port = free_port();
        std::fs::create_dir_all(prefix.join("html/fixed")).unwrap();
        for zone in &ZONES {
            std::fs::write(prefix.join("html").join(&zone.path()[1..]), "fixed\n").unwrap();
        }
        let p = prefix.display();
        let mut conf = format!(
            "worker_processes {workers};\npid {p}/nginx.pid;\nerror_log {p}/error.log warn;\n"
        );
        if is_root() {
            conf.push_str("user root;\n");
        }
        conf.push_str("events { worker_connections 1024; }\nhttp {\n");
        writeln!(conf, "  log_format pids '$pid $status $uri';").unwrap();
        writeln!(conf, "  access_log {p}/access.log pids;").unwrap();
        for temp in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            writeln!(conf, "  {temp}_temp_path {p}/{temp};").unwrap();
        }
        writeln!(conf, "  limit_req_status 429;").unwrap();
        let (zones, locations): (Vec<_>, Vec<_>) = ZONES.iter().map(Zone::nginx_conf).unzip();
        for line in zones {
            writeln!(conf, "  {line}").unwrap();
        }
        // reuseport, as edge's workers accept: each worker its own queue.
        writeln!(conf, "  server {{\n    listen 127.0.0.1:{port} reuseport;").unwrap();
        writeln!(conf, "    root {p}/html;\n    default_type text/plain;").unwrap();
        for line in locations {
            writeln!(conf, "    {line}").unwrap();
        }
        conf.push_str("  }\n}\n");
        let path = prefix.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let (config, error_log) = (path.display().to_string(), format!("{p}/error.log"));
        let args = [
            "-p",
            &format!("{p}/"),
            "-c",
            &config,
            "-e",
            &error_log,
            "-g",
            "daemon off;",
        ];
        let proc = start(
            binary.to_str().unwrap(),
            &args,
            &std::collections::HashMap::new(),
            port,
        )
        .keep(dir);
        wait_until("every nginx worker", Duration::from_secs(20), || {
            children(proc.pid()).len() == workers
        });
        Self {
            proc: Some(proc),
            prefix,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.proc.as_ref().unwrap().addr()
    }

    /// The pids of the workers that logged a request.
    fn worker_pids(&self) -> BTreeSet<u64> {
        std::fs::read_to_string(self.prefix.join("access.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().next()?.parse().ok())
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(proc) = self.proc.take() {
            let logs = proc.stop();
            if std::thread::panicking() {
                eprintln!("nginx said: {logs}");
            }
        }
    }
}

/// What one server answered to one zone's trace.
#[derive(Default)]
struct Answers {
    statuses: Vec<u16>,
    /// From sending a request to the end of its response, per request.
    latencies: Vec<Duration>,
}

impl Answers {
    fn push(&mut self, status: u16, latency: Duration) {
        self.statuses.push(status);
        self.latencies.push(latency);
    }

    fn admitted(&self) -> usize {
        self.statuses.iter().filter(|s| **s == 200).count()
    }

    /// The admitted requests' latencies, shortest first.
    fn admitted_latencies(&self) -> Vec<Duration> {
        let mut out: Vec<Duration> = self
            .statuses
            .iter()
            .zip(&self.latencies)
            .filter(|(s, _)| **s == 200)
            .map(|(_, l)| *l)
            .collect();
        out.sort();
        out
    }

    /// Admitted requests answered after at least half an interval: the
    /// delayed ones.
    fn delayed(&self, zone: &Zone) -> usize {
        let half = Duration::from_secs(1) / zone.rate / 2;
        self.admitted_latencies()
            .iter()
            .filter(|l| **l >= half)
            .count()
    }

    fn slowest_admitted(&self) -> Duration {
        self.admitted_latencies()
            .last()
            .copied()
            .unwrap_or_default()
    }

    fn summary(&self) -> String {
        let ms: Vec<u128> = self
            .admitted_latencies()
            .iter()
            .map(Duration::as_millis)
            .collect();
        format!(
            "{} of {} admitted, admitted in {ms:?} ms",
            self.admitted(),
            self.statuses.len()
        )
    }
}

fn request(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
}

/// `n` requests for `zone`, to each server in turn, a round every `every`
/// (or as soon as the last one was answered).
fn paced(zone: &Zone, servers: &[SocketAddr], n: usize, every: Duration, answers: &mut [Answers]) {
    let start = Instant::now();
    for round in 0..n {
        let due = start + every * u32::try_from(round).unwrap();
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        for (server, answers) in servers.iter().zip(answers.iter_mut()) {
            let sent = Instant::now();
            let response = raw::get(*server, &zone.path(), &[]);
            answers.push(response.status, sent.elapsed());
        }
    }
}

/// Sends `zone`'s trace to every address in `servers` alike: back to back,
/// request by request in turn; or at once, all servers' connections opened
/// first and every request written at the same moment.
fn run(zone: &Zone, servers: &[SocketAddr]) -> Vec<Answers> {
    let mut answers: Vec<Answers> = servers.iter().map(|_| Answers::default()).collect();
    match zone.trace {
        Trace::BackToBack(n) => paced(zone, servers, n, Duration::ZERO, &mut answers),
        Trace::Paced(n, ms) => paced(zone, servers, n, Duration::from_millis(ms), &mut answers),
        Trace::AtOnce(n) => {
            let streams: Vec<(usize, TcpStream)> = (0..n)
                .flat_map(|_| servers.iter().enumerate())
                .map(|(i, addr)| (i, TcpStream::connect(addr).unwrap()))
                .collect();
            let start = Arc::new(Barrier::new(streams.len()));
            let bytes = request(&zone.path());
            let threads: Vec<_> = streams
                .into_iter()
                .map(|(i, mut stream)| {
                    let (start, bytes) = (Arc::clone(&start), bytes.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        let sent = Instant::now();
                        stream.write_all(bytes.as_bytes()).unwrap();
                        let exchange = raw::read_all(&mut stream, Duration::from_secs(15));
                        let latency = sent.elapsed();
                        let statuses = exchange.statuses();
                        assert_eq!(statuses.len(), 1, "{:?}", exchange.text());
                        (i, statuses[0], latency)
                    })
                })
                .collect();
            for thread in threads {
                let (i, status, latency) = thread.join().unwrap();
                answers[i].push(status, latency);
            }
        }
    }
    answers
}

/// Both servers with `workers` workers, every zone's trace to both;
/// asserts what the module documentation says.
fn compare(nginx_binary: &Path, workers: usize) {
    let tables: String = ZONES.iter().map(Zone::edge_toml).collect();
    let edge = supervised_edge(workers, false, "", &tables);
    let nginx = Nginx::start(nginx_binary, workers);
    for zone in &ZONES {
        let answers = run(zone, &[nginx.addr(), edge.addr()]);
        let (n, e) = (&answers[0], &answers[1]);
        eprintln!(
            "{workers} workers, zone {} ({}r/s burst {} {}): nginx {}; edge {}",
            zone.name,
            zone.rate,
            zone.burst,
            match zone.mode {
                Mode::Nodelay => "nodelay".to_owned(),
                Mode::Delay(d) => format!("delay={d}"),
                Mode::Delayed => "delayed".to_owned(),
            },
            n.summary(),
            e.summary()
        );
        for (server, answers) in [("nginx", n), ("edge", e)] {
            assert!(
                answers.statuses.iter().all(|s| [200, 429].contains(s)),
                "{server}, zone {}: {:?}",
                zone.name,
                answers.statuses
            );
        }
        // The trace exceeds the burst: both must have refused some.
        assert!(
            n.admitted() > zone.burst as usize && n.admitted() < n.statuses.len(),
            "nginx, zone {}: {} admitted (burst {}): the trace shows nothing",
            zone.name,
            n.admitted(),
            zone.burst
        );
        assert!(
            e.admitted().abs_diff(n.admitted()) <= 1,
            "{workers} workers, zone {}: edge admitted {}, nginx {}\nedge:  {:?}\nnginx: {:?}",
            zone.name,
            e.admitted(),
            n.admitted(),
            e.statuses,
            n.statuses
        );
        if zone.undelayed() < zone.burst {
            // nginx delays the burst's last request by about the nominal
            // delay; edge must delay it about as long (two busy cores:
            // generous bounds, but a limiter that does not delay, or delays
            // everything by the whole burst, falls outside them).
            assert!(
                e.delayed(zone).abs_diff(n.delayed(zone)) <= 1,
                "{workers} workers, zone {}: edge delayed {} requests, nginx {}",
                zone.name,
                e.delayed(zone),
                n.delayed(zone)
            );
            let (ns, es) = (n.slowest_admitted(), e.slowest_admitted());
            let nominal = zone.longest_delay();
            assert!(
                ns >= nominal.mul_f64(0.7),
                "nginx, zone {}: slowest admitted {ns:?}, expected about {nominal:?}",
                zone.name
            );
            assert!(
                es >= ns.mul_f64(0.6) && es <= ns.mul_f64(1.5) + Duration::from_millis(250),
                "{workers} workers, zone {}: edge's slowest admitted took {es:?}, nginx's {ns:?}",
                zone.name
            );
        }
    }
    // Every request was a new connection: both spread them over workers.
    std::thread::sleep(Duration::from_millis(200));
    let edge_pids: BTreeSet<u64> = served(&edge.proc.logs(), |p| p.starts_with("/fixed/"))
        .into_iter()
        .map(|(_, pid)| pid)
        .collect();
    let nginx_pids = nginx.worker_pids();
    eprintln!(
        "{workers} workers: edge answered from {} workers, nginx from {}",
        edge_pids.len(),
        nginx_pids.len()
    );
    assert!(
        edge_pids.len() >= 2 && nginx_pids.len() >= 2,
        "one worker took every request (edge {edge_pids:?}, nginx {nginx_pids:?}): the test shows nothing"
    );
}

/// With 2 and with 4 workers, edge's zones admit what nginx's admit (within
/// one request) and delay about as long.
#[test]
fn limit_req_admits_and_delays_as_nginx_does_2_and_4_workers() {
    let Some(nginx) = find_tool("/usr/sbin/nginx")
        .or_else(|| require_tool("nginx", "apt-get install -y nginx-light"))
    else {
        return;
    };
    for workers in [2, 4] {
        compare(&nginx, workers);
    }
}
