//! Where log lines go: stdout, with access-log lines batched.
//!
//! Writing each access-log line with its own `write(2)` cost a third of a
//! worker's CPU on a `/_status` load (the syscall, the stdout lock, and on
//! a pipe the wake-up of the reader). Here an access-log line (target
//! [`wharf_http::middleware::access_log::ACCESS_LOG_TARGET`]) is appended
//! to a per-process buffer under a mutex that is not held across any
//! syscall; a writer thread writes the buffer out every
//! [`FLUSH_INTERVAL`], or as soon as it holds [`FLUSH_BYTES`]. Every other
//! line (start-up, warnings, errors) is written at once by the thread that
//! logs it, after whatever access lines are buffered, so the order of lines
//! is the order they were logged in and nothing but access lines waits.
//!
//! **A stdout that does not drain** (a stuck log shipper, a full pipe): the
//! buffer holds at most [`MAX_BUFFERED_BYTES`]; a request that finds it full
//! writes the buffer itself and so waits for stdout, as nginx's worker does
//! on its access-log `write(2)` and as every line did before batching. No
//! line is dropped; serving slows to the pace of the log reader.
//!
//! **Atomic lines on pipes.** Several processes (the master and its
//! workers) share one stdout. On a pipe or socket a `write(2)` of more than
//! `PIPE_BUF` (4096) bytes may be interleaved with another process's write,
//! which would cut a JSON line in two; so a batch goes out in writes of at
//! most 4096 bytes that end on a line boundary (a longer line alone), each
//! as atomic as one line's write was. A regular file takes the whole batch
//! in one write (its offset is shared and locked by the kernel).
//!
//! **Exit.** [`LogGuard`] writes what is buffered and stops the thread when
//! dropped; lines logged after that are written at once.
//!
//! **Signals.** The thread starts with the first access-log line, from the
//! thread that logs it (a runtime thread), so it inherits that thread's
//! signal mask: a signal the process blocks everywhere but in one thread of
//! its own (the supervisor's SIGUSR1 stall report) is never delivered to the
//! writer, whose default action would end the process. A process that logs
//! no access line (a master) has no writer thread.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

use wharf_http::middleware::access_log::ACCESS_LOG_TARGET;

/// The longest an access-log line waits in the buffer when the load is light.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Buffered bytes that wake the writer thread before the interval is over.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// Buffered bytes at which a request writes the buffer itself (and waits).
pub const MAX_BUFFERED_BYTES: usize = 1024 * 1024;
/// `PIPE_BUF` on Linux: writes up to this size to a pipe are atomic.
const ATOMIC_WRITE: usize = 4096;

/// The `MakeWriter` of the JSON and pretty layers (see the [module docs](self)).
#[derive(Clone, Debug)]
pub struct LogWriter {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Lines not yet written.
    pending: Mutex<Pending>,
    /// Wakes the writer thread (early flush, or stop).
    wake: Condvar,
    /// How long the writer thread waits between writes ([`FLUSH_INTERVAL`]).
    interval: Duration,
    /// The writer thread, once the first access line started it.
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Held while writing to stdout (so batches and lines go out in the
    /// order they were taken): the output and the spare buffer.
    out: Mutex<Output>,
}

#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The writer thread is gone: every line is written at once.
    stopped: bool,
    /// The writer thread was started (or its start attempted).
    started: bool,
}

struct Output {
    sink: Box<dyn Write + Send>,
    /// Whether one write may carry many lines (a regular file); else writes
    /// are cut at line boundaries to `ATOMIC_WRITE` bytes.
    whole: bool,
    spare: Vec<u8>,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field("whole", &self.whole)
            .field("spare", &self.spare.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a buffer leaves bytes, not a broken invariant.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// Writes everything buffered, then `line` (when given), in order.
    fn flush_with(&self, line: Option<&[u8]>) {
        let mut out = lock(&self.out);
        let out = &mut *out;
        {
            let mut pending = lock(&self.pending);
            if let Some(line) = line {
                pending.bytes.extend_from_slice(line);
            }
            if pending.bytes.is_empty() {
                return;
            }
            std::mem::swap(&mut pending.bytes, &mut out.spare);
        }
        // Errors (a closed stdout) lose the batch, as they lost the line.
        let _ = write_batch(&mut out.sink, &out.spare, out.whole);
        out.spare.clear();
        if out.spare.capacity() > MAX_BUFFERED_BYTES * 2 {
            out.spare = Vec::new();
        }
    }

    /// Buffers an access-log line; writes the buffer itself when it is full.
    fn push(self: &Arc<Self>, line: &[u8]) {
        let (full, start) = {
            let mut pending = lock(&self.pending);
            if pending.stopped {
                drop(pending);
                return self.flush_with(Some(line));
            }
            let start = !pending.started;
            pending.started = true;
            let before = pending.bytes.len();
            pending.bytes.extend_from_slice(line);
            let after = pending.bytes.len();
            if before < FLUSH_BYTES && after >= FLUSH_BYTES {
                self.wake.notify_one();
            }
            (after >= MAX_BUFFERED_BYTES, start)
        };
        if start {
            self.start_thread();
        }
        if full {
            self.flush_with(None);
        }
    }
}

/// Writes `batch` (whole lines) to `sink`: in one write, or in writes of at
/// most `ATOMIC_WRITE` bytes that end on a line boundary.
fn write_batch(sink: &mut dyn Write, batch: &[u8], whole: bool) -> std::io::Result<()> {
    if whole {
        return sink.write_all(batch);
    }
    let mut rest = batch;
    while !rest.is_empty() {
        let cut = if rest.len() <= ATOMIC_WRITE {
            rest.len()
        } else {
            match rest[..ATOMIC_WRITE].iter().rposition(|&b| b == b'\n') {
                Some(newline) => newline + 1,
                // A line longer than ATOMIC_WRITE: alone, to its end.
                None => rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |newline| newline + 1),
            }
        };
        let (chunk, tail) = rest.split_at(cut);
        sink.write_all(chunk)?;
        rest = tail;
    }
    Ok(())
}

/// One event's writer: an access-log line is buffered, any other written now.
#[derive(Debug)]
pub struct LineWriter<'a> {
    shared: &'a Arc<Shared>,
    batched: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.batched {
            self.shared.push(buf);
        } else {
            self.shared.flush_with(Some(buf));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            batched: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
            batched: meta.target() == ACCESS_LOG_TARGET,
        }
    }
}

/// Writes the buffered lines and stops the writer thread when dropped: keep
/// it until the process is about to exit.
#[must_use = "dropping the guard stops batching (and writes what is buffered)"]
#[derive(Debug)]
pub struct LogGuard {
    shared: Arc<Shared>,
}

impl LogGuard {
    /// Writes the buffered lines now.
    pub fn flush(&self) {
        self.shared.flush_with(None);
    }
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        lock(&self.shared.pending).stopped = true;
        self.shared.wake.notify_one();
        let thread = lock(&self.shared.thread).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
        self.shared.flush_with(None);
    }
}

impl LogWriter {
    /// A writer to this process's stdout, and the guard of its writer thread.
    pub fn stdout() -> (Self, LogGuard) {
        let (sink, whole) = stdout_sink();
        Self::new(sink, whole)
    }

    /// A writer to `sink`; `whole`: one write may carry many lines (else
    /// writes are cut to 4096 bytes at line boundaries). The writer thread
    /// starts with the first access line; without it (the system refused
    /// one), every line is written at once.
    pub fn new(sink: Box<dyn Write + Send>, whole: bool) -> (Self, LogGuard) {
        Self::with_interval(sink, whole, FLUSH_INTERVAL)
    }

    fn with_interval(
        sink: Box<dyn Write + Send>,
        whole: bool,
        interval: Duration,
    ) -> (Self, LogGuard) {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
            interval,
            thread: Mutex::new(None),
            out: Mutex::new(Output {
                sink,
                whole,
                spare: Vec::new(),
            }),
        });
        let guard = LogGuard {
            shared: Arc::clone(&shared),
        };
        (Self { shared }, guard)
    }
}

impl Shared {
    /// Starts the writer thread (from the thread logging the first access
    /// line, whose signal mask it inherits); when it cannot start, lines
    /// are written at once from then on.
    fn start_thread(self: &Arc<Self>) {
        let worker = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || writer_thread(&worker));
        if let Ok(thread) = spawned {
            *lock(&self.thread) = Some(thread);
        } else {
            lock(&self.pending).stopped = true;
            self.flush_with(None);
        }
    }
}

fn writer_thread(shared: &Shared) {
    loop {
        let stop = {
            let pending = lock(&shared.pending);
            if pending.stopped {
                true
            } else {
                let (pending, _) = shared
                    .wake
                    .wait_timeout_while(pending, shared.interval, |p| {
                        !p.stopped && p.bytes.len() < FLUSH_BYTES
                    })
                    .unwrap_or_else(PoisonError::into_inner);
                pending.stopped
            }
        };
        shared.flush_with(None);
        if stop {
            return;
        }
    }
}

/// This process's stdout as an unbuffered file of its own (a duplicate of
/// fd 1), and whether it is a regular file; `std::io::stdout()` when it
/// cannot be duplicated.
fn stdout_sink() -> (Box<dyn Write + Send>, bool) {
    use std::os::fd::AsFd;
    let Ok(fd) = std::io::stdout().as_fd().try_clone_to_owned() else {
        return (Box::new(std::io::stdout()), false);
    };
    let file = std::fs::File::from(fd);
    let regular = file.metadata().is_ok_and(|m| m.file_type().is_file());
    (Box::new(file), regular)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Records every write(2) it would make.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>, Arc<AtomicUsize>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            self.1.fetch_add(1, Ordering::SeqCst);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Writes {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().concat()).unwrap()
        }
        fn count(&self) -> usize {
            self.1.load(Ordering::SeqCst)
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);

    fn access_line(n: usize) -> Vec<u8> {
        format!(
            "{{\"message\":\"Served request\",\"n\":{n},\"pad\":\"{}\"}}\n",
            "x".repeat(200)
        )
        .into_bytes()
    }

    #[test]
    fn access_lines_wait_and_go_out_together_other_lines_at_once_in_order() {
        let sink = Writes::default();
        // The thread never wakes on its own during the test.
        let (log, guard) = LogWriter::with_interval(Box::new(sink.clone()), true, HOUR);
        for n in 0..50 {
            log.shared.push(&access_line(n));
        }
        assert_eq!(sink.count(), 0, "access lines are buffered");
        log.shared.flush_with(Some(b"{\"message\":\"Drained\"}\n"));
        assert_eq!(sink.count(), 1, "one write for 50 lines and the next");
        let text = sink.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 51);
        assert!(lines[49].contains("\"n\":49"), "{}", lines[49]);
        assert_eq!(lines[50], "{\"message\":\"Drained\"}");
        drop(guard);
    }

    #[test]
    fn the_writer_thread_writes_buffered_lines_within_the_interval() {
        let sink = Writes::default();
        let (log, _guard) = LogWriter::new(Box::new(sink.clone()), true);
        log.shared.push(&access_line(1));
        let deadline = std::time::Instant::now() + FLUSH_INTERVAL * 20;
        while sink.count() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(sink.text().contains("\"n\":1,"), "{}", sink.text());
    }

    #[test]
    fn dropping_the_guard_writes_every_buffered_line_and_later_lines_at_once() {
        let sink = Writes::default();
        let (log, guard) = LogWriter::with_interval(Box::new(sink.clone()), true, HOUR);
        for n in 0..10 {
            log.shared.push(&access_line(n));
        }
        drop(guard);
        assert_eq!(sink.text().lines().count(), 10);
        log.shared.push(&access_line(10));
        assert_eq!(sink.text().lines().count(), 11, "written without a thread");
    }

    /// A sink whose writes wait until it is opened (a stdout nobody reads).
    struct Stuck(Arc<(Mutex<bool>, Condvar)>, Writes);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (open, cond) = &*self.0;
            let _open = cond.wait_while(open.lock().unwrap(), |o| !*o).unwrap();
            self.1.write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stdout_that_does_not_drain_blocks_requests_once_the_buffer_is_full_and_loses_nothing() {
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let sink = Writes::default();
        let (log, guard) = LogWriter::new(Box::new(Stuck(Arc::clone(&gate), sink.clone())), true);
        let line = access_line(0);
        let total = 3 * MAX_BUFFERED_BYTES / line.len();
        let pushed = Arc::new(AtomicUsize::new(0));
        let producer = {
            let (log, pushed) = (log.clone(), Arc::clone(&pushed));
            std::thread::spawn(move || {
                for n in 0..total {
                    log.shared.push(&access_line(n));
                    pushed.store(n + 1, Ordering::SeqCst);
                }
            })
        };
        std::thread::sleep(FLUSH_INTERVAL * 5);
        let stuck_at = pushed.load(Ordering::SeqCst);
        assert!(
            stuck_at < total,
            "every line was accepted by a stdout that takes none"
        );
        assert!(
            lock(&log.shared.pending).bytes.len() <= MAX_BUFFERED_BYTES + line.len(),
            "the buffer is bounded"
        );
        assert_eq!(sink.count(), 0);
        let (open, cond) = &*gate;
        *open.lock().unwrap() = true;
        cond.notify_all();
        producer.join().unwrap();
        drop(guard);
        let text = sink.text();
        let numbers: Vec<usize> = text
            .lines()
            .map(|l| {
                l.split("\"n\":")
                    .nth(1)
                    .unwrap()
                    .split(',')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            numbers,
            (0..total).collect::<Vec<_>>(),
            "every line, in order"
        );
    }

    #[test]
    fn writes_to_a_pipe_end_on_line_boundaries_and_stay_within_pipe_buf() {
        let sink = Writes::default();
        let mut batch = Vec::new();
        for n in 0..100 {
            batch.extend_from_slice(&access_line(n));
        }
        let long = format!("{{\"long\":\"{}\"}}\n", "y".repeat(5000));
        batch.extend_from_slice(long.as_bytes());
        batch.extend_from_slice(&access_line(100));
        let mut sink = sink.clone();
        write_batch(&mut sink, &batch, false).unwrap();
        let chunks = sink.0.lock().unwrap().clone();
        assert!(chunks.len() > 1);
        for chunk in &chunks {
            assert!(chunk.ends_with(b"\n"), "a write ends mid-line");
            assert!(
                chunk.len() <= ATOMIC_WRITE || chunk == long.as_bytes(),
                "{} bytes in one write",
                chunk.len()
            );
        }
        assert_eq!(chunks.concat(), batch);
    }
}
