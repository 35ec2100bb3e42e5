//! A `redis-server` of a test's own, and a tiny RESP client to talk to it.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::net::free_port_with_bus;

/// One `redis-server` child on 127.0.0.1 and a free port (its cluster bus
/// port, +10 000, free too), killed on drop.
///
/// It keeps nothing (`--save ""`, `--appendonly no`), writes what it must
/// (a cluster node's `nodes.conf`) in a temporary directory of its own,
/// allows `DEBUG` (`DEBUG SLEEP` makes a slow server) and is handed over
/// once it answers `PING`.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts one and waits until it answers.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// With more `redis-server` arguments (`--requirepass …`,
    /// `--cluster-enabled yes`, say).
    pub fn start_with(extra: &[&str]) -> Self {
        let mut redis = Self {
            child: None,
            port: free_port_with_bus(),
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
                "--enable-debug-command",
                "yes",
            ])
            .args(["--dir", self.dir.path().to_str().unwrap()])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server is not installed: apt-get install -y redis-server (.ci/run installs it)",
            );
        self.child = Some(child);
        wait_for_ping(self.port, Duration::from_secs(10));
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its process id (while it runs).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("redis-server is not running")
            .id()
    }

    /// SIGKILL: the server vanishes, connections reset, no goodbye to the
    /// clients. [`restart`](Self::restart) brings one back.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A new, empty server (no data, no scripts) on the same port with the
    /// same arguments, killing the old one first if it still runs.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Sends it a signal by name (`STOP` freezes it, `CONT` thaws it).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Sends one command and renders the reply: simple strings and integers
    /// as they are, errors as `ERR <text>`, a nil bulk string as `(nil)`,
    /// arrays as their items joined with spaces.
    pub fn cmd(&self, args: &[&str]) -> String {
        try_cmd(self.port, args).unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // SIGKILL works on a stopped server too; CONT for tidiness.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
        }
        self.kill();
    }
}

/// Waits until the server on `port` answers `PING`: `PONG`, or the refusal
/// of a server with `--requirepass` (it is up, it wants a password).
fn wait_for_ping(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(reply) = try_cmd(port, &["PING"]) {
            if reply == "PONG" || reply.starts_with("ERR NOAUTH") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server on port {port} did not answer PING");
}

fn try_cmd(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = format!("*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n{a}\r\n", a.len());
    }
    stream.write_all(out.as_bytes())?;
    let mut reader = BufReader::new(stream);
    read_reply(&mut reader)
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end().to_owned();
    if line.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_render_as_the_suites_expect() {
        let render = |wire: &str| read_reply(&mut wire.as_bytes()).unwrap();
        assert_eq!(render("+PONG\r\n"), "PONG");
        assert_eq!(render(":42\r\n"), "42");
        assert_eq!(
            render("-NOAUTH Authentication required.\r\n"),
            "ERR NOAUTH Authentication required."
        );
        assert_eq!(render("$-1\r\n"), "(nil)");
        assert_eq!(render("$5\r\nhello\r\n"), "hello");
        assert_eq!(render("*2\r\n:1\r\n$1\r\nx\r\n"), "1 x");
        assert!(read_reply(&mut "".as_bytes()).is_err());
    }

    #[test]
    fn a_server_answers_restarts_empty_on_its_port_and_dies_on_drop() {
        let mut redis = RedisServer::start();
        let port = redis.port();
        assert_eq!(redis.url(), format!("redis://127.0.0.1:{port}"));
        assert_eq!(redis.cmd(&["SET", "k", "v"]), "OK");
        assert_eq!(redis.cmd(&["GET", "k"]), "v");
        assert_eq!(redis.cmd(&["CONFIG", "GET", "save"]), "save ");
        redis.kill();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
        redis.restart();
        assert_eq!(redis.port(), port);
        assert_eq!(redis.cmd(&["GET", "k"]), "(nil)");
        redis.signal("STOP");
        redis.signal("CONT");
        assert_eq!(redis.cmd(&["PING"]), "PONG");
        drop(redis);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }

    #[test]
    fn a_server_with_a_password_counts_as_up() {
        let redis = RedisServer::start_with(&["--requirepass", "secret"]);
        assert!(redis.cmd(&["PING"]).starts_with("ERR NOAUTH"));
    }
}
