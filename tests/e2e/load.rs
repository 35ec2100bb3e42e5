//! A bounded load generator for loopback: threads that each open a
//! connection, send one request with `Connection: close`, and read the whole
//! answer, counting what failed and how.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Counts {
    pub ok: AtomicU64,
    /// Connection refused: never accepted (not a lost request).
    pub refused: AtomicU64,
    /// Accepted (connected) but no complete 200 answer.
    pub failed: AtomicU64,
    pub errors: Mutex<Vec<String>>,
}

pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub counts: Arc<Counts>,
}

impl Load {
    pub fn start(addr: SocketAddr, threads: usize, path: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let request = format!("GET {path} HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n");
        let threads = (0..threads)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let counts = Arc::clone(&counts);
                let request = request.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        one(addr, &request, &counts);
                    }
                })
            })
            .collect();
        Self {
            stop,
            threads,
            counts,
        }
    }

    /// Stops the generator and returns (ok, refused, failed, first errors).
    pub fn finish(self) -> (u64, u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            let _ = thread.join();
        }
        let errors = self.counts.errors.lock().unwrap().clone();
        (
            self.counts.ok.load(Ordering::Relaxed),
            self.counts.refused.load(Ordering::Relaxed),
            self.counts.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

fn one(addr: SocketAddr, request: &str, counts: &Counts) {
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            counts.refused.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(5));
            return;
        }
        Err(e) => return fail(counts, format!("connect: {e}")),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return fail(counts, format!("write: {e}"));
    }
    let mut answer = Vec::with_capacity(512);
    match stream.read_to_end(&mut answer) {
        Ok(_) if answer.starts_with(b"HTTP/1.1 200") => {
            counts.ok.fetch_add(1, Ordering::Relaxed);
        }
        Ok(_) => fail(
            counts,
            format!(
                "answer: {:?}",
                String::from_utf8_lossy(&answer[..answer.len().min(80)])
            ),
        ),
        Err(e) => fail(counts, format!("read: {e}")),
    }
}

fn fail(counts: &Counts, error: String) {
    counts.failed.fetch_add(1, Ordering::Relaxed);
    let mut errors = counts.errors.lock().unwrap();
    if errors.len() < 10 {
        errors.push(error);
    }
}
