//! Test support: real redis-server processes on free ports, a tiny RESP
//! client for test-side commands, request builders.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wharf_ratelimit::{Limiter, RedisOptions, RedisStore, Zone};

/// A free loopback port (and, for Cluster, its bus port + 10000 too).
pub fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// One redis-server child, killed on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let mut redis = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--dir", self.dir.path().to_str().unwrap()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is not installed: apt-get install -y redis-server (.ci/run installs it)");
        self.child = Some(child);
        wait_for_pong(self.port, Duration::from_secs(10));
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL: the server vanishes, connections reset.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A new, empty server on the same port (no data, no scripts).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn cmd(&self, args: &[&str]) -> String {
        cmd(self.port, args)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A stopped server ignores SIGKILL until... no: SIGKILL always works; CONT for tidiness.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
    }
}

fn wait_for_pong(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(reply) = try_cmd(port, &["PING"]) {
            if reply == "PONG" {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on port {port} did not answer PING");
}

/// Sends one command; returns a simple rendering of the reply.
pub fn cmd(port: u16, args: &[&str]) -> String {
    try_cmd(port, args).unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
}

fn try_cmd(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    stream.write_all(out.as_bytes())?;
    let mut reader = BufReader::new(stream);
    read_reply(&mut reader)
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end().to_owned();
    let (kind, rest) = line.split_at(1);
    Ok(match kind {
        "+" | ":" => rest.to_owned(),
        "-" => format!("ERR {rest}"),
        "$" => {
            let n: i64 = rest.parse().unwrap();
            if n < 0 {
                "(nil)".to_owned()
            } else {
                let mut buf = vec![0; usize::try_from(n).unwrap() + 2];
                reader.read_exact(&mut buf)?;
                String::from_utf8_lossy(&buf[..buf.len() - 2]).into_owned()
            }
        }
        "*" => {
            let n: i64 = rest.parse().unwrap();
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(read_reply(reader)?);
            }
            items.join(" ")
        }
        _ => line.clone(),
    })
}

/// Test options: the defaults with a fast breaker for tests.
pub fn options(url: &str) -> RedisOptions {
    let mut options = RedisOptions::new(url);
    options.timeout = Duration::from_millis(50);
    options
}

/// A Redis-backed limiter, connected.
pub async fn redis_limiter(options: &RedisOptions, zones: Vec<Zone>) -> Limiter {
    let store = RedisStore::connect(options).unwrap();
    assert!(
        store.wait_connected(Duration::from_secs(5)).await,
        "fred connects"
    );
    let mut builder = Limiter::builder();
    for zone in zones {
        builder = builder.zone(zone);
    }
    builder.redis(store).build().unwrap()
}

/// A request head from `peer` for `path`.
pub fn parts(peer: &str, path: &str) -> http::request::Parts {
    parts_with(peer, http::Method::GET, path)
}

pub fn parts_with(peer: &str, method: http::Method, path: &str) -> http::request::Parts {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .unwrap();
    let addr: SocketAddr = format!("{peer}:40000").parse().unwrap();
    req.extensions_mut().insert(addr);
    req.into_parts().0
}

/// How many of `n` back-to-back checks pass.
pub async fn admitted(limiter: &Limiter, parts: &http::request::Parts, n: usize) -> usize {
    let mut passed = 0;
    for _ in 0..n {
        if limiter.check(parts).await.allowed {
            passed += 1;
        }
    }
    passed
}
