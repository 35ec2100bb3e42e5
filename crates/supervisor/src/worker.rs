//! The worker side: what a worker process (or the single process when there
//! is no master) gets, and the tasks that talk to the master.

use std::future::Future;
use std::net::TcpListener;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, watch};
use wharf_telemetry::metrics::Snapshot;

use crate::stats::WorkerStats;
use crate::sys;
use crate::SupervisorError;

mod env;

use env::{
    bound_addrs, test_fail_before_ready, test_hook, ENV_TEST_BLOCK_ONCE_FILE, ENV_TEST_BLOCK_SLOT,
    ENV_TEST_EXIT_AFTER_MS,
};
pub(crate) use env::{
    decode_addrs, encode_addrs, WorkerEnv, ENV_ADDRS, ENV_LISTENERS, ENV_MASTER_PID, ENV_SLOT,
};

/// How often a worker's runtime reports to the master.
pub(crate) const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(500);
/// How often a worker sends its metrics to the master.
pub(crate) const METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// Messages from a worker to its master, one line each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Report {
    Ready,
    Heartbeat {
        requests: u64,
        in_flight: u64,
    },
    /// Asks the master to send the instance's aggregated metrics from now on.
    WantMetrics,
}

impl Report {
    pub(crate) fn encode(self) -> String {
        match self {
            Self::Ready => "ready\n".to_owned(),
            Self::Heartbeat {
                requests,
                in_flight,
            } => format!("hb {requests} {in_flight}\n"),
            Self::WantMetrics => "want-metrics\n".to_owned(),
        }
    }

    pub(crate) fn decode(line: &str) -> Option<Self> {
        let mut parts = line.split_whitespace();
        match parts.next()? {
            "ready" => Some(Self::Ready),
            "want-metrics" => Some(Self::WantMetrics),
            "hb" => Some(Self::Heartbeat {
                requests: parts.next()?.parse().ok()?,
                in_flight: parts.next()?.parse().ok()?,
            }),
            _ => None,
        }
    }
}

/// The line a master sends to ask a worker to drain and exit.
pub(crate) const DRAIN: &str = "drain\n";

/// Header of a worker's metrics block (its [`Snapshot`] as one line of
/// JSON, [`Snapshot::to_wire`]): `<tag> <bytes>\n` followed by exactly that
/// many bytes.
pub(crate) const METRICS_TAG: &str = "metrics";
/// Header of the instance-wide metrics text the master sends to subscribed
/// workers, framed the same way.
pub(crate) const INSTANCE_METRICS_TAG: &str = "instance-metrics";

/// A process's metrics, as values: the worker sends them to its master,
/// which adds up every worker's.
pub type MetricsSource = Arc<dyn Fn() -> Snapshot + Send + Sync>;

/// The whole instance's metrics (all workers summed, plus the supervisor's),
/// for a worker that must serve `/metrics` itself (one public port).
#[derive(Clone)]
pub struct InstanceMetrics {
    latest: Arc<std::sync::Mutex<String>>,
    local: Arc<std::sync::Mutex<Option<MetricsSource>>>,
    /// With no master: this process's listening sockets, whose accept
    /// queues it reports itself.
    listening: Arc<Vec<TcpListener>>,
    from_master: bool,
}

impl std::fmt::Debug for InstanceMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceMetrics")
            .field("from_master", &self.from_master)
            .finish_non_exhaustive()
    }
}

impl InstanceMetrics {
    /// The latest text: from the master (refreshed every second) in a worker,
    /// or this process's own metrics, with its listeners' accept queues,
    /// when there is no master.
    pub fn text(&self) -> String {
        use std::os::fd::AsFd as _;
        if self.from_master {
            return self.latest.lock().map(|t| t.clone()).unwrap_or_default();
        }
        let mut snapshot = self
            .local
            .lock()
            .ok()
            .and_then(|source| source.as_ref().map(|f| f()))
            .unwrap_or_default();
        snapshot.extend(crate::listen_metrics(
            self.listening.iter().map(|l| (l.as_fd(), None)),
        ));
        snapshot.encode()
    }
}

/// What the service function receives: its listeners, a shutdown signal, a
/// way to say it is ready, and the counters its heartbeats carry.
pub struct WorkerContext {
    listeners: Vec<TcpListener>,
    /// The address each of `listeners` was configured as.
    addrs: Vec<std::net::SocketAddr>,
    /// With no master: copies of `listeners` (the same sockets), for their
    /// accept queues in [`InstanceMetrics`]. Empty in a worker.
    listening: Arc<Vec<TcpListener>>,
    shared: Vec<Arc<crate::SharedMemory>>,
    slot: Option<usize>,
    stats: Arc<WorkerStats>,
    shutdown: watch::Receiver<bool>,
    ready: Option<mpsc::UnboundedSender<Report>>,
    reports: Option<mpsc::UnboundedSender<Report>>,
    metrics_source: Arc<std::sync::Mutex<Option<MetricsSource>>>,
    instance_metrics: Arc<std::sync::Mutex<String>>,
    block_runtime_for_tests: bool,
}

impl std::fmt::Debug for WorkerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerContext")
            .field("listeners", &self.listeners)
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

impl WorkerContext {
    /// The listeners to serve on (bound once by the master, shared by all
    /// workers). Taking them leaves none behind.
    pub fn take_listeners(&mut self) -> Vec<TcpListener> {
        std::mem::take(&mut self.listeners)
    }

    /// The address each of [`take_listeners`](Self::take_listeners)' sockets
    /// was configured as, in the same order: the master's listen set when it
    /// started this worker (after a HUP, the one
    /// [`Supervisor::reload_listeners`](crate::Supervisor::reload_listeners)
    /// gave). Not necessarily the bound address (port 0, systemd's sockets).
    /// A service that reads its configuration itself can compare its own
    /// list with this one and refuse to start (the master then keeps the old
    /// worker) when the file changed after the master read it. With no
    /// master, the addresses the sockets are bound to.
    pub fn listen_addresses(&self) -> &[std::net::SocketAddr] {
        &self.addrs
    }

    /// The shared-memory segment declared as `name` with
    /// [`Supervisor::shared_memory`](crate::Supervisor::shared_memory): the
    /// same memory in every worker of the instance. `None` when none was
    /// declared by that name.
    pub fn take_shared_memory(&mut self, name: &str) -> Option<Arc<crate::SharedMemory>> {
        let i = self.shared.iter().position(|s| s.name() == name)?;
        Some(self.shared.swap_remove(i))
    }

    /// This worker's slot (0-based, stable across replacements); `None` when
    /// running in one process without a master.
    pub fn slot(&self) -> Option<usize> {
        self.slot
    }

    /// Counters to feed: call [`WorkerStats::start_request`] per request (for
    /// wharf-http, from `Server::with_request_hook`, which sees every route).
    pub fn stats(&self) -> Arc<WorkerStats> {
        Arc::clone(&self.stats)
    }

    /// Resolves when the worker should drain and stop: the master asked, the
    /// master went away, or SIGTERM/SIGINT arrived.
    pub fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.shutdown.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }

    /// Sets what this process reports as its metrics: the master sums every
    /// worker's into one scrape (`/metrics` on its admin listener), keeping
    /// counters monotonic when a worker is replaced.
    pub fn set_metrics_source(&self, source: MetricsSource) {
        if let Ok(mut slot) = self.metrics_source.lock() {
            *slot = Some(source);
        }
    }

    /// The instance's metrics, for serving `/metrics` from a worker (when the
    /// platform gives one public port). Asks the master to start sending them.
    pub fn instance_metrics(&self) -> InstanceMetrics {
        if let Some(reports) = &self.reports {
            let _ = reports.send(Report::WantMetrics);
        }
        InstanceMetrics {
            latest: Arc::clone(&self.instance_metrics),
            local: Arc::clone(&self.metrics_source),
            listening: Arc::clone(&self.listening),
            from_master: self.reports.is_some(),
        }
    }

    /// Tells the master this worker is serving. Call it once the listeners are
    /// being accepted on; the master counts the worker only from then.
    pub fn ready(&mut self) {
        if let Some(tx) = self.ready.take() {
            let _ = tx.send(Report::Ready);
        } else if self.slot.is_none() {
            crate::notify::sd_notify("READY=1");
        }
        if let Some(ms) = test_hook(ENV_TEST_EXIT_AFTER_MS).and_then(|v| v.parse::<u64>().ok()) {
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(ms));
                std::process::exit(3);
            });
        }
        if self.block_runtime_for_tests {
            tracing::warn!("Test hook: blocking this worker's runtime");
            // Deliberately blocks every runtime worker thread to exercise the
            // master's heartbeat timeout (debug builds only; see
            // ENV_TEST_BLOCK_SLOT).
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                for _ in 0..handle.metrics().num_workers() {
                    handle.spawn(async {
                        // Let the ready report reach the master first.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        std::thread::sleep(Duration::from_secs(3600));
                    });
                }
            }
        }
    }
}

/// Runs `service` in this worker process: adopts the inherited fds, builds
/// the runtime, starts the heartbeat and control tasks.
pub(crate) fn run_worker<F, Fut, E>(
    env: WorkerEnv,
    threads: usize,
    service: F,
) -> Result<(), SupervisorError>
where
    F: FnOnce(WorkerContext) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    if sys::parent_pid() != env.master_pid {
        return Err(std::io::Error::other("master exited before this worker started").into());
    }
    let mut listeners = Vec::with_capacity(env.listeners);
    for i in 0..env.listeners {
        let fd = sys::FIRST_INHERITED_FD + i32::try_from(i).unwrap_or(0);
        let owned = sys::adopt_fd(fd).ok_or_else(|| {
            std::io::Error::other(format!("inherited listener fd {fd} is not open"))
        })?;
        listeners.push(TcpListener::from(owned));
    }
    // A master always says; read the sockets' own addresses if it did not.
    let addrs = std::env::var(ENV_ADDRS)
        .ok()
        .and_then(|text| decode_addrs(&text))
        .filter(|addrs| addrs.len() == listeners.len())
        .unwrap_or_else(|| bound_addrs(&listeners));
    let control_fd = sys::FIRST_INHERITED_FD + i32::try_from(env.listeners).unwrap_or(0);
    let control = sys::adopt_fd(control_fd)
        .ok_or_else(|| std::io::Error::other("inherited control channel is not open"))?;
    let control = StdUnixStream::from(control);
    control.set_nonblocking(true)?;
    let shared = worker_segments().map_err(std::io::Error::other)?;
    // Before the runtime's threads exist, so they inherit the blocked signal.
    if let Err(error) = sys::spawn_stall_reporter() {
        tracing::warn!(%error, "Cannot start the stalled-runtime reporter");
    }

    let runtime = build_runtime(threads)?;
    runtime.block_on(async move {
        let control = UnixStream::from_std(control)?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let stats = Arc::new(WorkerStats::default());
        let (read_half, write_half) = control.into_split();
        let metrics_source: Arc<std::sync::Mutex<Option<MetricsSource>>> = Arc::default();
        let instance_metrics: Arc<std::sync::Mutex<String>> = Arc::default();
        tokio::spawn(read_control(
            read_half,
            shutdown_tx.clone(),
            Arc::clone(&instance_metrics),
        ));
        tokio::spawn(write_reports(
            write_half,
            report_rx,
            report_tx.clone(),
            Arc::clone(&stats),
            Arc::clone(&metrics_source),
        ));
        tokio::spawn(stop_on_signals(shutdown_tx, true, || {}));
        if test_fail_before_ready() {
            return Err(SupervisorError::Service(
                "test hook: failing before ready".to_owned(),
            ));
        }
        let block = test_hook(ENV_TEST_BLOCK_SLOT).and_then(|s| s.parse::<usize>().ok())
            == Some(env.slot)
            && test_hook(ENV_TEST_BLOCK_ONCE_FILE).is_none_or(|path| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .is_ok()
            });
        let context = WorkerContext {
            listeners,
            addrs,
            listening: Arc::default(),
            shared,
            slot: Some(env.slot),
            stats,
            shutdown: shutdown_rx,
            ready: Some(report_tx.clone()),
            reports: Some(report_tx),
            metrics_source,
            instance_metrics,
            block_runtime_for_tests: block,
        };
        service(context)
            .await
            .map_err(|e| SupervisorError::Service(e.to_string()))
    })
}

/// Runs `service` in this process with no master (`workers = 0`).
pub(crate) fn run_single<F, Fut, E>(
    listeners: Vec<TcpListener>,
    shared: Vec<Arc<crate::SharedMemory>>,
    threads: usize,
    service: F,
) -> Result<(), SupervisorError>
where
    F: FnOnce(WorkerContext) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let runtime = build_runtime(threads)?;
    runtime.block_on(async move {
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        // The only process on these sockets: on a stop signal, refuse new
        // connections before draining so none is reset in the backlog.
        let refuse: Vec<TcpListener> = listeners
            .iter()
            .filter_map(|l| l.try_clone().ok())
            .collect();
        // The server's drain then takes the queue and closes once the
        // kernel reports nothing more can arrive.
        tokio::spawn(stop_on_signals(shutdown_tx, false, move || {
            sys::refuse_all(&refuse);
        }));
        let listening = listeners
            .iter()
            .filter_map(|l| l.try_clone().ok())
            .collect();
        let context = WorkerContext {
            addrs: bound_addrs(&listeners),
            listeners,
            listening: Arc::new(listening),
            shared,
            slot: None,
            stats: Arc::new(WorkerStats::default()),
            shutdown: shutdown_rx,
            ready: None,
            reports: None,
            metrics_source: Arc::default(),
            instance_metrics: Arc::default(),
            block_runtime_for_tests: false,
        };
        service(context)
            .await
            .map_err(|e| SupervisorError::Service(e.to_string()))
    })
}

/// A worker's runtime. One thread (nginx's model: a process per CPU) gets
/// tokio's current-thread scheduler: the same single thread, without the
/// work-stealing queues, their atomics and the cross-thread wake-ups of the
/// multi-thread scheduler (fewer instructions per request on every task
/// switch). More threads get the multi-thread scheduler.
fn build_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
}

async fn read_control(
    read_half: tokio::net::unix::OwnedReadHalf,
    shutdown: watch::Sender<bool>,
    instance_metrics: Arc<std::sync::Mutex<String>>,
) {
    use tokio::io::AsyncReadExt;
    let mut reader = BufReader::new(read_half);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => {
                tracing::warn!("Control channel to the master closed; draining");
                let _ = shutdown.send(true);
                return;
            }
            Ok(_) => {}
        }
        if line.trim() == DRAIN.trim() {
            tracing::info!("Master asked this worker to drain");
            let _ = shutdown.send(true);
        } else if let Some(len) = line
            .strip_prefix(INSTANCE_METRICS_TAG)
            .and_then(|rest| rest.trim().parse::<usize>().ok())
        {
            let mut text = vec![0_u8; len];
            if reader.read_exact(&mut text).await.is_err() {
                continue;
            }
            if let Ok(mut latest) = instance_metrics.lock() {
                *latest = String::from_utf8_lossy(&text).into_owned();
            }
        }
    }
}

async fn write_reports(
    mut write_half: tokio::net::unix::OwnedWriteHalf,
    mut reports: mpsc::UnboundedReceiver<Report>,
    heartbeat_tx: mpsc::UnboundedSender<Report>,
    stats: Arc<WorkerStats>,
    metrics_source: Arc<std::sync::Mutex<Option<MetricsSource>>>,
) {
    // The heartbeat is produced by a task on this runtime: if the runtime is
    // blocked, heartbeats stop and the master notices.
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
        loop {
            tick.tick().await;
            let report = Report::Heartbeat {
                requests: stats.requests(),
                in_flight: stats.in_flight(),
            };
            if heartbeat_tx.send(report).is_err() {
                return;
            }
        }
    });
    let mut metrics_tick = tokio::time::interval(METRICS_INTERVAL);
    loop {
        tokio::select! {
            report = reports.recv() => {
                let Some(report) = report else { return };
                if write_half.write_all(report.encode().as_bytes()).await.is_err() {
                    return;
                }
            }
            _ = metrics_tick.tick() => {
                let source = metrics_source.lock().ok().and_then(|s| s.clone());
                if let Some(source) = source {
                    let wire = source().to_wire();
                    let block = format!("{METRICS_TAG} {}\n{wire}", wire.len());
                    if write_half.write_all(block.as_bytes()).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Waits for SIGTERM/SIGINT, then runs `before_stop` and signals shutdown.
/// A worker (`worker: true`) also takes SIGHUP, which its master acts on (it
/// replaces the workers): a HUP sent to the whole process group (`kill -HUP
/// -<pgid>`, `pkill -HUP`) is noted, not left to its default, which would
/// kill the worker.
async fn stop_on_signals(shutdown: watch::Sender<bool>, worker: bool, before_stop: impl FnOnce()) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("Cannot install signal handlers");
        return;
    };
    let mut hangup = if worker {
        signal(SignalKind::hangup()).ok()
    } else {
        None
    };
    loop {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!(signal = "SIGTERM", "Shutting down");
                break;
            }
            _ = int.recv() => {
                tracing::info!(signal = "SIGINT", "Shutting down");
                break;
            }
            Some(()) = async { hangup.as_mut()?.recv().await } => {
                tracing::debug!(signal = "SIGHUP", "SIGHUP in a worker: the master reloads");
            }
        }
    }
    before_stop();
    let _ = shutdown.send(true);
}

/// A worker's inherited segments, adopted once for the process: the master
/// puts them after the listeners and the control channel. Empty outside a
/// worker. Both [`crate::Supervisor::inherited_shared_memory`] (before the
/// service runs) and the worker's context read them from here.
pub(crate) fn worker_segments() -> Result<Vec<Arc<crate::SharedMemory>>, String> {
    static SEGMENTS: std::sync::OnceLock<Result<Vec<Arc<crate::SharedMemory>>, String>> =
        std::sync::OnceLock::new();
    SEGMENTS
        .get_or_init(|| {
            let Some(env) = WorkerEnv::detect() else {
                return Ok(Vec::new());
            };
            let first = sys::FIRST_INHERITED_FD
                + std::os::fd::RawFd::try_from(env.listeners).unwrap_or(0)
                + 1;
            crate::shared::adopt(first)
                .map(|segments| segments.into_iter().map(Arc::new).collect())
                .map_err(|e| e.to_string())
        })
        .clone()
}

#[cfg(test)]
mod tests;
