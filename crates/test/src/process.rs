//! A child process whose output is read all the time.

use std::any::Any;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What a child printed: each stream, and both as they arrived.
#[derive(Default)]
struct Captured {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    both: Vec<u8>,
}

/// A running child whose piped stdout and stderr are read continuously by
/// two threads (a full pipe would block its logging, and a server with it)
/// into memory, where a test reads them; killed (SIGKILL) when dropped.
///
/// A server under test is started with [`Process::serve`], which returns
/// once its port accepts; [`port`](Self::port), [`addr`](Self::addr) and
/// [`url`](Self::url) then name it.
pub struct Process {
    child: Child,
    name: String,
    port: Option<u16>,
    output: Arc<Mutex<Captured>>,
    readers: Vec<JoinHandle<()>>,
    /// Dropped after the child is killed (its directory, say).
    kept: Vec<Box<dyn Any + Send + Sync>>,
}

impl Process {
    /// Spawns `command` with stdout and stderr piped and read.
    pub fn spawn(command: &mut Command) -> Self {
        let child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", command.get_program().display()));
        let mut process = Self::adopt(child);
        process.name = command.get_program().to_string_lossy().into_owned();
        process
    }

    /// Spawns `command` (as [`spawn`](Self::spawn)) and waits up to 20 s
    /// until 127.0.0.1:`port` accepts; panics with what it printed if it
    /// never does.
    pub fn serve(command: &mut Command, port: u16) -> Self {
        let process = Self::spawn(command).with_port(port);
        process.wait_listening(Duration::from_secs(20));
        process
    }

    /// Takes over a child spawned elsewhere, reading whichever of its
    /// stdout and stderr were piped.
    pub fn adopt(mut child: Child) -> Self {
        let output = Arc::new(Mutex::new(Captured::default()));
        let mut readers = Vec::new();
        let stdout = child
            .stdout
            .take()
            .map(|p| (Box::new(p) as Box<dyn Read + Send>, true));
        let stderr = child
            .stderr
            .take()
            .map(|p| (Box::new(p) as Box<dyn Read + Send>, false));
        for (mut pipe, is_stdout) in [stdout, stderr].into_iter().flatten() {
            let output = Arc::clone(&output);
            readers.push(std::thread::spawn(move || {
                let mut chunk = [0_u8; 16 * 1024];
                while let Ok(n) = pipe.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    let mut output = output.lock().unwrap();
                    if is_stdout {
                        output.stdout.extend_from_slice(&chunk[..n]);
                    } else {
                        output.stderr.extend_from_slice(&chunk[..n]);
                    }
                    output.both.extend_from_slice(&chunk[..n]);
                }
            }));
        }
        Self {
            name: format!("process {}", child.id()),
            child,
            port: None,
            output,
            readers,
            kept: Vec::new(),
        }
    }

    /// Names the port it serves on (for [`addr`](Self::addr) and
    /// [`url`](Self::url)), without waiting for it.
    #[must_use]
    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Keeps `value` (a temporary directory it works in, say) until the
    /// process has been killed.
    #[must_use]
    pub fn keep(mut self, value: impl Any + Send + Sync) -> Self {
        self.kept.push(Box::new(value));
        self
    }

    /// Waits up to `timeout` until its port accepts; panics with what it
    /// printed if it never does.
    pub fn wait_listening(&self, timeout: Duration) {
        let addr = self.addr();
        let deadline = Instant::now() + timeout;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} did not listen on {addr} within {timeout:?}:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port it serves on (panics if none was named).
    pub fn port(&self) -> u16 {
        self.port
            .unwrap_or_else(|| panic!("{} was given no port", self.name))
    }

    /// 127.0.0.1:[`port`](Self::port).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port()))
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port())
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends it a signal by name (`TERM`, `HUP`, `USR2`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Everything it printed so far, stdout and stderr as they arrived.
    pub fn logs(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap().both).into_owned()
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap().stdout).into_owned()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap().stderr).into_owned()
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Waits up to `timeout` for its exit (panicking past it) and until its
    /// pipes close; returns its status and everything it printed.
    pub fn wait_exit(mut self, timeout: Duration) -> Output {
        let status = self.exit_within(timeout);
        self.join_readers();
        let output = self.output.lock().unwrap();
        Output {
            status,
            stdout: output.stdout.clone(),
            stderr: output.stderr.clone(),
        }
    }

    /// Waits up to `timeout` for its exit (panicking past it), not for its
    /// pipes (a process it started may hold them open).
    pub fn wait_status(mut self, timeout: Duration) -> ExitStatus {
        self.exit_within(timeout)
    }

    /// SIGTERM, up to 10 s for the exit, then SIGKILL; returns everything it
    /// printed, its last lines included.
    pub fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_wait().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.join_readers();
        self.logs()
    }

    /// Resident memory, KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn exit_within(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chatty_child_is_drained_and_its_output_kept() {
        // 1 MiB on each stream: far more than a pipe holds.
        let process = Process::spawn(Command::new("sh").args([
            "-c",
            "head -c 1048576 /dev/zero | tr '\\0' o; head -c 1048576 /dev/zero | tr '\\0' e >&2; echo done",
        ]));
        let output = process.wait_exit(Duration::from_secs(20));
        assert!(output.status.success());
        assert_eq!(output.stdout.len(), 1_048_576 + 5);
        assert!(output.stdout.ends_with(b"done\n"));
        assert_eq!(output.stderr.len(), 1_048_576);
    }

    #[test]
    fn stop_terminates_and_returns_the_logs() {
        let process = Process::spawn(Command::new("sh").args([
            "-c",
            "trap 'echo bye; exit 0' TERM; echo hello >&2; while :; do sleep 0.05; done",
        ]));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !process.logs().contains("hello") {
            assert!(Instant::now() < deadline, "no hello");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(process.stderr(), "hello\n");
        let logs = process.stop();
        assert!(logs.contains("hello\n") && logs.contains("bye\n"), "{logs}");
    }

    #[test]
    fn serve_waits_for_the_port_and_keeps_what_it_is_given() {
        let port = crate::free_port();
        // The port opens a little after the child starts.
        let listener = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            std::net::TcpListener::bind(("127.0.0.1", port)).unwrap()
        });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let process = Process::serve(Command::new("sleep").arg("60"), port).keep(dir);
        assert_eq!(process.addr(), SocketAddr::from(([127, 0, 0, 1], port)));
        assert_eq!(process.url("/x"), format!("http://127.0.0.1:{port}/x"));
        assert!(process.rss_kib() > 0);
        let pid = process.pid();
        drop(process);
        assert!(!path.exists(), "kept until the process is gone");
        assert!(!std::path::Path::new(&format!("/proc/{pid}/status")).exists());
        drop(listener.join().unwrap());
    }
}
