//! Differential test: the same request sequence against real nginx
//! `limit_req` and against wharf's limiter (in memory and through Redis)
//! gives the same accept/reject sequence.
//!
//! Timing: bursts are sent back-to-back (a few ms), then the test sleeps a
//! whole number of rate intervals plus half of one, so jitter of a few ms
//! never moves a request across an interval boundary. Each request goes to
//! nginx and to both wharf limiters at the same moment.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wharf_ratelimit::{KeySource, Limiter, Rate, StoreKind, Zone};
use wharf_test::{free_port, RedisServer};

use crate::support::{options, parts, redis_limiter};

struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM, not KILL: nginx's master stops its worker on TERM, while a
        // KILLed master leaves the worker running, orphaned, after the test.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> String {
    for candidate in ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"] {
        if Path::new(candidate).exists() {
            return candidate.to_owned();
        }
    }
    panic!("nginx is not installed (apt-get install -y nginx-light; .ci/run installs it)");
}

/// The locations: (path, `limit_req` lines).
const LOCATIONS: [(&str, &str); 4] = [
    ("a", "limit_req zone=ten burst=5 nodelay;"),
    ("b", "limit_req zone=two burst=3 nodelay;"),
    ("c", "limit_req zone=one;"),
    (
        "m",
        "limit_req zone=fast burst=1 nodelay; limit_req zone=slow burst=5 nodelay;",
    ),
];

fn start_nginx() -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("www")).unwrap();
    std::fs::create_dir_all(root.join("logs")).unwrap();
    for (name, _) in LOCATIONS {
        std::fs::write(root.join("www").join(name), "ok").unwrap();
    }
    let port = free_port();
    let locations: String = LOCATIONS
        .iter()
        .map(|(name, limits)| format!("location = /{name} {{ {limits} }}\n"))
        .collect();
    let conf = format!(
        "worker_processes 1;\nerror_log {root}/logs/error.log warn;\npid {root}/nginx.pid;\nevents {{ worker_connections 64; }}\n\
         http {{\n access_log off;\n client_body_temp_path {root}/tmp_body;\n proxy_temp_path {root}/tmp_proxy;\n\
         fastcgi_temp_path {root}/tmp_fcgi;\n uwsgi_temp_path {root}/tmp_uwsgi;\n scgi_temp_path {root}/tmp_scgi;\n\
         limit_req_status 429;\n\
         limit_req_zone $binary_remote_addr zone=ten:1m rate=10r/s;\n\
         limit_req_zone $binary_remote_addr zone=two:1m rate=2r/s;\n\
         limit_req_zone $binary_remote_addr zone=fast:1m rate=10r/s;\n\
         limit_req_zone $binary_remote_addr zone=slow:1m rate=1r/m;\n\
         limit_req_zone $binary_remote_addr zone=one:1m rate=5r/s;\n\
         server {{\n listen 127.0.0.1:{port};\n root {root}/www;\n keepalive_requests 100000;\n{locations} }}\n}}\n",
        root = root.display()
    );
    std::fs::write(root.join("nginx.conf"), conf).unwrap();
    let child = Command::new(nginx_binary())
        .args([
            "-p",
            root.to_str().unwrap(),
            "-c",
            root.join("nginx.conf").to_str().unwrap(),
            "-g",
            "daemon off;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "nginx did not start: {}",
            std::fs::read_to_string(root.join("logs/error.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Nginx {
        child,
        port,
        _dir: dir,
    }
}

/// A keep-alive HTTP/1.1 connection; returns each response's status.
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(port: u16) -> Self {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Self {
            reader: BufReader::new(stream),
        }
    }

    fn get(&mut self, path: &str) -> u16 {
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        self.reader.get_mut().write_all(request.as_bytes()).unwrap();
        let mut status_line = String::new();
        self.reader.read_line(&mut status_line).unwrap();
        let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).unwrap();
        status
    }
}

fn rate(text: &str) -> Rate {
    text.parse().unwrap()
}

/// Wharf's zones mirroring the nginx locations.
fn zones(store: StoreKind) -> Vec<Zone> {
    let on = |path: &'static str| move |p: &http::request::Parts| p.uri.path() == path;
    vec![
        Zone::new("ten", rate("10r/s"))
            .burst(5)
            .nodelay()
            .store(store)
            .when(on("/a")),
        Zone::new("two", rate("2r/s"))
            .burst(3)
            .nodelay()
            .store(store)
            .when(on("/b")),
        Zone::new("one", rate("5r/s")).store(store).when(on("/c")),
        Zone::new("fast", rate("10r/s"))
            .burst(1)
            .nodelay()
            .store(store)
            .key(KeySource::ClientIp)
            .when(on("/m")),
        Zone::new("slow", rate("1r/m"))
            .burst(5)
            .nodelay()
            .store(store)
            .when(on("/m")),
    ]
}

/// (path, burst size, then sleep in ms) steps.
fn plan() -> Vec<(&'static str, usize, u64)> {
    vec![
        // 10r/s burst 5 nodelay: 6 of 9 pass; after 250 ms, 2 more; after 1050 ms, 6.
        ("/a", 9, 250),
        ("/a", 4, 1_050),
        ("/a", 8, 0),
        // 2r/s burst 3 nodelay: 4 of 6; after 750 ms, 1; after 1250 ms, 2.
        ("/b", 6, 750),
        ("/b", 3, 1_250),
        ("/b", 4, 0),
        // 5r/s burst 0 (no burst): 1 of 3; after 250 ms 1; after 450 ms 2 of... 1 (no burst).
        ("/c", 3, 250),
        ("/c", 3, 450),
        ("/c", 2, 0),
        // Two zones, all or nothing: "fast" (10r/s burst 1) rejects 6 of 8;
        // had "slow" (1r/m burst 5) been charged for them it would be spent,
        // but it still admits 2 + 2 more later, then is spent.
        ("/m", 8, 250),
        ("/m", 3, 300),
        ("/m", 4, 0),
    ]
}

#[tokio::test]
async fn nginx_limit_req_and_wharf_agree_request_by_request() {
    let nginx = start_nginx();
    let redis = RedisServer::start();
    let memory = {
        let mut b = Limiter::builder();
        for z in zones(StoreKind::Memory) {
            b = b.zone(z);
        }
        b.build().unwrap()
    };
    let shared = redis_limiter(&options(&redis.url()), zones(StoreKind::Shared)).await;
    let mut conn = Conn::open(nginx.port);
    let (mut from_nginx, mut from_memory, mut from_redis) = (Vec::new(), Vec::new(), Vec::new());
    for (path, burst, sleep_ms) in plan() {
        let p = parts("127.0.0.1", path);
        for _ in 0..burst {
            let status = conn.get(path);
            assert!(status == 200 || status == 429, "nginx answered {status}");
            from_nginx.push((path, status == 200));
            from_memory.push((path, memory.check(&p).await.allowed));
            from_redis.push((path, shared.check(&p).await.allowed));
        }
        tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    }
    let render = |seq: &[(&str, bool)]| {
        seq.iter()
            .map(|(p, ok)| format!("{p}:{}", if *ok { '+' } else { '-' }))
            .collect::<Vec<_>>()
            .join(" ")
    };
    eprintln!("nginx : {}", render(&from_nginx));
    assert_eq!(
        render(&from_memory),
        render(&from_nginx),
        "in-memory limiter vs nginx"
    );
    assert_eq!(
        render(&from_redis),
        render(&from_nginx),
        "Redis limiter vs nginx"
    );
    // The sequence exercised both outcomes on every location.
    for (path, _) in LOCATIONS {
        let path = format!("/{path}");
        assert!(from_nginx.iter().any(|(p, ok)| *p == path && *ok));
        assert!(from_nginx.iter().any(|(p, ok)| *p == path && !*ok));
    }
}
