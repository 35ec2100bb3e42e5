//! The master process: starts workers by re-executing this binary, watches
//! them, replaces them through the readiness gate, and handles signals.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::OsString;
use std::net::TcpListener;
use std::os::fd::AsFd as _;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{AcceptMode, SupervisorSection};
use crate::sys::{self, ExitKind};
use crate::worker::{
    Report, DRAIN, ENV_LISTENERS, ENV_MASTER_PID, ENV_SLOT, INSTANCE_METRICS_TAG, METRICS_TAG,
};
use crate::{ReloadCheck, SharedMemory, SupervisorError};
use wharf_telemetry::metrics::{Aggregator, Family, Snapshot};

const TICK: Duration = Duration::from_millis(200);
/// How often subscribed workers get the instance's metrics.
const BROADCAST_EVERY: Duration = Duration::from_secs(1);
const MEMORY_SAMPLE_EVERY: Duration = Duration::from_secs(2);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(15);
const STABLE_UPTIME: Duration = Duration::from_secs(30);
/// Extra time a draining worker gets beyond the graceful timeout before SIGKILL.
const KILL_MARGIN: Duration = Duration::from_secs(2);
/// A worker silent this long gets a replacement started for its slot at once
/// (readiness-gated, like a reload), well before the heartbeat timeout kills
/// it: the replacement takes the slot's queue, so with a socket per slot new
/// connections do not wait for the kill. Only when shorter than the timeout.
const STALL_REPLACE_AFTER: Duration = Duration::from_secs(5);
/// How long a silent worker has to log its threads before SIGKILL.
const STALL_REPORT_WAIT: Duration = Duration::from_secs(1);

/// Why a worker was replaced or restarted (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Reason {
    Crash,
    Blocked,
    Reload,
    MaxRequests,
    Memory,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Self::Crash => "crash",
            Self::Blocked => "blocked",
            Self::Reload => "reload",
            Self::MaxRequests => "max_requests",
            Self::Memory => "memory",
        }
    }
}

#[derive(Debug)]
struct Worker {
    slot: usize,
    started: Instant,
    ready: bool,
    draining_since: Option<Instant>,
    last_heartbeat: Instant,
    requests: u64,
    in_flight: u64,
    rss: u64,
    recycle_at: Option<u64>,
    replacement_queued: bool,
    killed_for: Option<Reason>,
    /// When the master asked this silent worker to log its threads.
    stall_reported: Option<Instant>,
    wants_metrics: bool,
    control: mpsc::UnboundedSender<String>,
}

#[derive(Debug, Default)]
struct Slot {
    backoff: Option<Duration>,
    respawn_at: Option<Instant>,
    /// Requests served by this slot's previous workers: keeps the per-slot
    /// counter monotonic across replacements.
    base_requests: u64,
}

#[derive(Debug)]
struct Replacement {
    slot: usize,
    old: Option<u32>,
    new: u32,
    deadline: Instant,
    reason: Reason,
}

#[derive(Debug)]
enum Event {
    Report(u32, Report),
    Metrics(u32, Snapshot),
    Closed(u32),
}

pub(crate) struct Master {
    config: SupervisorSection,
    graceful_timeout: Duration,
    /// The sockets the master bound or inherited; in `reuseport` mode, slot
    /// 0's.
    listeners: Vec<TcpListener>,
    /// The accept backlog of each of `listeners`' addresses, for the sockets
    /// of slots 1.. (`reuseport`); [`crate::BACKLOG`] past its end.
    backlogs: Vec<u32>,
    /// Shared memory made (or taken over) by this master, inherited by every
    /// worker after its control channel.
    shared: Vec<Arc<SharedMemory>>,
    /// `reuseport` mode: the sockets of slots 1.., siblings of `listeners` in
    /// the kernel's `SO_REUSEPORT` group. Held here so a slot's queue outlives
    /// its worker.
    slot_listeners: HashMap<usize, Vec<TcpListener>>,
    accept: AcceptMode,
    program: PathBuf,
    args: Vec<OsString>,
    pid: u32,
    target: usize,
    workers: HashMap<u32, Worker>,
    slots: Vec<Slot>,
    queue: VecDeque<(usize, Reason)>,
    replacing: Option<Replacement>,
    restarts: HashMap<Reason, u64>,
    events_tx: mpsc::UnboundedSender<Event>,
    events_rx: mpsc::UnboundedReceiver<Event>,
    metrics: Arc<Mutex<String>>,
    /// Whether the instance serves: a worker is ready and no stop has begun
    /// (the admin listener's `/health/ready`).
    ready: Arc<AtomicBool>,
    /// Run on SIGHUP before any worker is replaced: an error refuses the reload.
    reload_check: Option<ReloadCheck>,
    aggregator: Aggregator,
    last_broadcast: Instant,
    reloading: bool,
    jitter_seed: u64,
    /// The new master started by SIGUSR2, until it takes over.
    upgrading: Option<u32>,
    /// systemd's `WatchdogSec`: pinged at half the interval from the main
    /// loop, so a master that stops looping is restarted by systemd.
    watchdog: Option<Duration>,
    last_watchdog: Instant,
}

impl Master {
    /// Sets the check run before a SIGHUP reload.
    pub(crate) fn with_reload_check(mut self, check: Option<ReloadCheck>) -> Self {
        self.reload_check = check;
        self
    }

    /// The accept backlog of each listener's address, in order.
    pub(crate) fn with_backlogs(mut self, backlogs: Vec<u32>) -> Self {
        self.backlogs = backlogs;
        self
    }

    /// The shared-memory segments every worker inherits.
    pub(crate) fn with_shared_memory(mut self, shared: Vec<Arc<SharedMemory>>) -> Self {
        self.shared = shared;
        self
    }

    pub(crate) fn new(
        config: SupervisorSection,
        graceful_timeout: Duration,
        listeners: Vec<TcpListener>,
    ) -> Result<Self, SupervisorError> {
        let program = std::env::current_exe().map_err(SupervisorError::Exe)?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let target = config.worker_count().max(1);
        Ok(Self {
            graceful_timeout,
            listeners,
            backlogs: Vec::new(),
            shared: Vec::new(),
            slot_listeners: HashMap::new(),
            accept: config.accept,
            program,
            args: std::env::args_os().skip(1).collect(),
            pid: std::process::id(),
            target,
            workers: HashMap::new(),
            slots: (0..target).map(|_| Slot::default()).collect(),
            queue: VecDeque::new(),
            replacing: None,
            restarts: HashMap::new(),
            events_tx,
            events_rx,
            metrics: Arc::new(Mutex::new(String::new())),
            ready: Arc::new(AtomicBool::new(false)),
            reload_check: None,
            aggregator: Aggregator::new(),
            last_broadcast: Instant::now(),
            reloading: false,
            upgrading: None,
            watchdog: crate::notify::watchdog_interval(),
            last_watchdog: Instant::now(),
            jitter_seed: u64::from(std::process::id()).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            config,
        })
    }

    fn next_jitter(&mut self) -> u64 {
        // xorshift: cheap, good enough to spread recycling points.
        let mut x = self.jitter_seed;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter_seed = x;
        if self.config.max_requests_jitter == 0 {
            0
        } else {
            x % (self.config.max_requests_jitter + 1)
        }
    }

    /// The listening sockets the worker in `slot` accepts from: in
    /// `reuseport` mode its own (opened on first use), else the shared ones.
    fn slot_fds(&mut self, slot: usize) -> Vec<i32> {
        if self.accept == AcceptMode::ReusePort && slot > 0 {
            if !self.slot_listeners.contains_key(&slot) {
                let siblings: std::io::Result<Vec<TcpListener>> = self
                    .listeners
                    .iter()
                    .enumerate()
                    .map(|(i, listener)| {
                        let backlog = self.backlogs.get(i).copied().unwrap_or(crate::BACKLOG);
                        crate::bind(listener.local_addr()?, true, backlog)
                    })
                    .collect();
                match siblings {
                    Ok(siblings) => {
                        self.slot_listeners.insert(slot, siblings);
                    }
                    Err(error) => {
                        // E.g. sockets from systemd without `ReusePort=yes`.
                        tracing::warn!(
                            %error,
                            "Cannot open a SO_REUSEPORT socket per worker; workers share one socket (WHARF_ACCEPT=shared)"
                        );
                        self.accept = AcceptMode::Shared;
                    }
                }
            }
            if let Some(listeners) = self.slot_listeners.get(&slot) {
                return listeners.iter().map(sys::raw).collect();
            }
        }
        self.listeners.iter().map(sys::raw).collect()
    }

    /// Closes slot `slot`'s own sockets (`reuseport` mode) without resetting
    /// a connection: new SYNs are dropped first (clients retry and land on
    /// another slot's socket), then the slot's workers are asked to drain;
    /// each takes the queue until the kernel reports nothing more can
    /// arrive, then closes. Does nothing for a slot without sockets of its
    /// own.
    fn close_slot_sockets(&mut self, slot: usize) {
        if let Some(listeners) = self.slot_listeners.remove(&slot) {
            sys::refuse_all(&listeners);
        }
    }

    fn spawn(&mut self, slot: usize) -> Result<u32, SupervisorError> {
        let (ours, theirs) = StdUnixStream::pair().map_err(SupervisorError::Spawn)?;
        let mut fds = self.slot_fds(slot);
        let listener_count = fds.len();
        fds.push(sys::raw(&theirs));
        fds.extend(self.shared.iter().map(|s| s.raw_fd()));
        let env = vec![
            (ENV_SLOT.to_owned(), slot.to_string()),
            (ENV_LISTENERS.to_owned(), listener_count.to_string()),
            (ENV_MASTER_PID.to_owned(), self.pid.to_string()),
            (
                crate::shared::ENV_SHARED.to_owned(),
                crate::shared::encode(&self.shared),
            ),
        ];
        let pid = sys::spawn_with_fds(&self.program, &self.args, &env, &fds, self.pid, true)
            .map_err(SupervisorError::Spawn)?;
        drop(theirs);
        ours.set_nonblocking(true).map_err(SupervisorError::Spawn)?;
        let ours = UnixStream::from_std(ours).map_err(SupervisorError::Spawn)?;
        let (read_half, mut write_half) = ours.into_split();
        let (control_tx, mut control_rx) = mpsc::unbounded_channel::<String>();
        let events = self.events_tx.clone();
        tokio::spawn(async move {
            read_reports(pid, read_half, &events).await;
            let _ = events.send(Event::Closed(pid));
        });
        tokio::spawn(async move {
            while let Some(message) = control_rx.recv().await {
                if write_half.write_all(message.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
        let recycle_at =
            (self.config.max_requests > 0).then(|| self.config.max_requests + self.next_jitter());
        let now = Instant::now();
        self.workers.insert(
            pid,
            Worker {
                slot,
                started: now,
                ready: false,
                draining_since: None,
                last_heartbeat: now,
                requests: 0,
                in_flight: 0,
                rss: 0,
                recycle_at,
                replacement_queued: false,
                killed_for: None,
                stall_reported: None,
                wants_metrics: false,
                control: control_tx,
            },
        );
        tracing::info!(slot, pid, "Started worker");
        Ok(pid)
    }

    fn drain(&mut self, pid: u32) {
        if let Some(worker) = self.workers.get_mut(&pid) {
            if worker.draining_since.is_none() {
                worker.draining_since = Some(Instant::now());
                let _ = worker.control.send(DRAIN.to_owned());
            }
        }
    }

    /// Starts every worker and waits until all are ready; a worker that exits
    /// or does not become ready in time fails the start.
    async fn boot(
        &mut self,
        sigchld: &mut tokio::signal::unix::Signal,
    ) -> Result<(), SupervisorError> {
        let started = Instant::now();
        for slot in 0..self.target {
            self.spawn(slot)?;
        }
        let deadline = started + self.config.ready_timeout();
        loop {
            self.render_metrics();
            if self.workers.values().all(|w| w.ready) {
                tracing::info!(
                    workers = self.target,
                    threads_per_worker = self.config.threads_per_worker(),
                    ready_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "All workers ready"
                );
                return Ok(());
            }
            tokio::select! {
                _ = sigchld.recv() => {
                    if let Some((pid, kind)) = sys::reap().into_iter().find(|(pid, _)| self.workers.contains_key(pid)) {
                        let slot = self.workers.get(&pid).map_or(0, |w| w.slot);
                        self.stop_all_now().await;
                        return Err(SupervisorError::Boot(format!(
                            "worker {slot} (pid {pid}) exited with {kind} before it was ready; its error is in the log above"
                        )));
                    }
                }
                Some(event) = self.events_rx.recv() => self.on_event(event),
                () = tokio::time::sleep_until(deadline) => {
                    self.stop_all_now().await;
                    return Err(SupervisorError::Boot(format!(
                        "workers not ready within {} s",
                        self.config.ready_timeout().as_secs()
                    )));
                }
            }
        }
    }

    async fn stop_all_now(&mut self) {
        for pid in self.workers.keys() {
            sys::kill(*pid, libc::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while !self.workers.is_empty() && Instant::now() < deadline {
            for (pid, _) in sys::reap() {
                self.workers.remove(&pid);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Report(pid, Report::Ready) => {
                if let Some(worker) = self.workers.get_mut(&pid) {
                    worker.ready = true;
                    worker.last_heartbeat = Instant::now();
                    tracing::info!(
                        slot = worker.slot,
                        pid,
                        start_ms =
                            u64::try_from(worker.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "Worker ready"
                    );
                }
                if let Some(replacement) = self.replacing.take() {
                    if replacement.new == pid {
                        if let Some(old) = replacement.old {
                            self.drain(old);
                        }
                        *self.restarts.entry(replacement.reason).or_default() += 1;
                        tracing::info!(
                            slot = replacement.slot,
                            old_pid = replacement.old,
                            new_pid = pid,
                            reason = replacement.reason.as_str(),
                            "Replaced worker: new one ready, old one draining"
                        );
                    } else {
                        self.replacing = Some(replacement);
                    }
                }
            }
            Event::Report(
                pid,
                Report::Heartbeat {
                    requests,
                    in_flight,
                },
            ) => {
                if let Some(worker) = self.workers.get_mut(&pid) {
                    worker.last_heartbeat = Instant::now();
                    worker.requests = requests;
                    worker.in_flight = in_flight;
                }
            }
            Event::Report(pid, Report::WantMetrics) => {
                if let Some(worker) = self.workers.get_mut(&pid) {
                    worker.wants_metrics = true;
                }
            }
            Event::Metrics(pid, snapshot) => {
                if let Some(worker) = self.workers.get(&pid) {
                    self.aggregator
                        .update(u64::from(pid), worker.slot, snapshot);
                }
            }
            Event::Closed(pid) => tracing::debug!(pid, "Worker closed its control channel"),
        }
    }

    fn on_exit(&mut self, pid: u32, kind: ExitKind) {
        let Some(worker) = self.workers.remove(&pid) else {
            if self.upgrading == Some(pid) {
                self.upgrading = None;
                tracing::error!(pid, %kind, "Binary upgrade failed: the new master exited before taking over; this master keeps serving");
            } else {
                tracing::debug!(pid, %kind, "Reaped a process that was not a worker");
            }
            return;
        };
        self.aggregator.retire(u64::from(pid));
        let slot = worker.slot;
        if let Some(state) = self.slots.get_mut(slot) {
            state.base_requests += worker.requests;
        }
        if let Some(replacement) = &self.replacing {
            if replacement.new == pid {
                tracing::error!(slot, pid, %kind, "New worker exited before it was ready; keeping the old one");
                self.replacing = None;
                return;
            }
        }
        if worker.draining_since.is_some() {
            tracing::info!(slot, pid, %kind, "Worker exited after draining");
            return;
        }
        let reason = worker.killed_for.unwrap_or(Reason::Crash);
        if reason == Reason::Crash {
            tracing::warn!(slot, pid, %kind, uptime_s = worker.started.elapsed().as_secs(), "Worker exited unexpectedly");
        }
        *self.restarts.entry(reason).or_default() += 1;
        let has_successor = self
            .workers
            .values()
            .any(|w| w.slot == slot && w.draining_since.is_none())
            || self.replacing.as_ref().is_some_and(|r| r.slot == slot);
        if slot < self.target && !has_successor {
            let state = &mut self.slots[slot];
            // The first crash after a stable spell restarts at once; each
            // further one within it waits 1.5× longer (0.5 s, 0.75 s, … 15 s).
            let backoff = if worker.started.elapsed() >= STABLE_UPTIME {
                None
            } else {
                state.backoff
            };
            state.backoff =
                Some(backoff.map_or(FIRST_BACKOFF, |b| b.mul_f64(1.5).min(MAX_BACKOFF)));
            let backoff = backoff.unwrap_or(Duration::ZERO);
            state.respawn_at = Some(Instant::now() + backoff);
            if !backoff.is_zero() {
                tracing::warn!(
                    slot,
                    delay_ms = u64::try_from(backoff.as_millis()).unwrap_or(0),
                    "Restarting worker after back-off"
                );
            }
        }
    }

    fn check(&mut self, now: Instant, sample_memory: bool) {
        if let Some(every) = self.watchdog {
            if now.saturating_duration_since(self.last_watchdog) >= every {
                self.last_watchdog = now;
                crate::notify::sd_notify("WATCHDOG=1");
            }
        }
        let heartbeat_timeout = self.config.heartbeat_timeout();
        let kill_after = self.graceful_timeout + KILL_MARGIN;
        let max_memory = self.config.max_memory_bytes;
        let mut recycle = Vec::new();
        for (pid, worker) in &mut self.workers {
            if worker.killed_for.is_some() {
                continue;
            }
            if check_heartbeat(*pid, worker, now, heartbeat_timeout, &mut recycle) {
                continue;
            }
            if let Some(since) = worker.draining_since {
                if now.saturating_duration_since(since) > kill_after {
                    tracing::warn!(
                        slot = worker.slot,
                        pid = *pid,
                        "Worker still draining after the graceful timeout; killing it"
                    );
                    sys::kill(*pid, libc::SIGKILL);
                    worker.killed_for = Some(Reason::Crash);
                }
                continue;
            }
            if sample_memory {
                worker.rss = sys::rss_bytes(*pid).unwrap_or(0);
            }
            if !worker.ready || worker.replacement_queued {
                continue;
            }
            if worker
                .recycle_at
                .is_some_and(|limit| worker.requests >= limit)
            {
                worker.replacement_queued = true;
                recycle.push((worker.slot, Reason::MaxRequests));
            } else if max_memory > 0 && worker.rss > max_memory {
                tracing::warn!(
                    slot = worker.slot,
                    pid = *pid,
                    rss = worker.rss,
                    limit = max_memory,
                    "Worker over its memory limit; replacing it"
                );
                worker.replacement_queued = true;
                recycle.push((worker.slot, Reason::Memory));
            }
        }
        self.queue.extend(recycle);
        self.check_replacement(now);
        self.respawn_due(now);
        self.start_next_replacement(now);
        if self.reloading && self.replacing.is_none() && self.queue.is_empty() {
            self.reloading = false;
            crate::notify::sd_notify("READY=1");
            tracing::info!("Reload complete");
        }
        self.render_metrics();
    }

    /// Gives up on a replacement whose new worker missed the ready deadline.
    fn check_replacement(&mut self, now: Instant) {
        if let Some(replacement) = &self.replacing {
            if now >= replacement.deadline {
                tracing::error!(
                    slot = replacement.slot,
                    new_pid = replacement.new,
                    timeout_s = self.config.ready_timeout().as_secs(),
                    "New worker not ready in time; stopping it and keeping the old one"
                );
                sys::kill(replacement.new, libc::SIGKILL);
                if let Some(worker) = self.workers.get_mut(&replacement.new) {
                    worker.draining_since = Some(now);
                }
                if let Some(old) = replacement.old.and_then(|pid| self.workers.get_mut(&pid)) {
                    old.replacement_queued = false;
                }
                self.replacing = None;
            }
        }
    }

    /// Starts crashed workers whose back-off is over; resets back-off for
    /// slots that have been stable.
    fn respawn_due(&mut self, now: Instant) {
        for slot in 0..self.slots.len() {
            if self.slots[slot].respawn_at.is_some_and(|at| now >= at) && slot < self.target {
                self.slots[slot].respawn_at = None;
                if let Err(error) = self.spawn(slot) {
                    tracing::error!(slot, %error, "Cannot start worker; retrying");
                    self.slots[slot].respawn_at = Some(now + MAX_BACKOFF);
                }
            }
        }
        for slot in 0..self.slots.len() {
            let stable = self
                .workers
                .values()
                .any(|w| w.slot == slot && w.ready && w.started.elapsed() >= STABLE_UPTIME);
            if stable {
                self.slots[slot].backoff = None;
            }
        }
    }

    /// Starts the next queued replacement when none is in progress.
    fn start_next_replacement(&mut self, now: Instant) {
        if self.replacing.is_none() {
            while let Some((slot, reason)) = self.queue.pop_front() {
                let old = self
                    .workers
                    .iter()
                    .find(|(_, w)| {
                        w.slot == slot && w.draining_since.is_none() && w.killed_for.is_none()
                    })
                    .map(|(pid, _)| *pid);
                match self.spawn(slot) {
                    Ok(new) => {
                        self.replacing = Some(Replacement {
                            slot,
                            old,
                            new,
                            deadline: now + self.config.ready_timeout(),
                            reason,
                        });
                        break;
                    }
                    Err(error) => tracing::error!(slot, %error, "Cannot start replacement worker"),
                }
            }
        }
    }

    fn render_metrics(&mut self) {
        let mut snapshot = Snapshot::new();
        let ready = self
            .workers
            .values()
            .filter(|w| w.ready && w.draining_since.is_none())
            .count();
        let busy = self.workers.values().filter(|w| w.in_flight > 0).count();
        let mut workers = Family::gauge("wharf_workers", "Worker processes by state.");
        workers
            .sample(&[("state", "ready")], ready)
            .sample(&[("state", "busy")], busy)
            .sample(&[("state", "idle")], ready.saturating_sub(busy))
            .sample(&[("state", "total")], self.workers.len());
        snapshot.push(workers);
        let mut restarts = Family::counter(
            "wharf_worker_restarts_total",
            "Worker restarts and replacements by reason.",
        );
        for reason in [
            Reason::Crash,
            Reason::Blocked,
            Reason::Reload,
            Reason::MaxRequests,
            Reason::Memory,
        ] {
            let n = self.restarts.get(&reason).copied().unwrap_or(0);
            restarts.sample(&[("reason", reason.as_str())], n);
        }
        snapshot.push(restarts);
        let mut requests = Family::counter(
            "wharf_worker_requests_total",
            "Requests started, per worker slot (monotonic across replacements).",
        );
        let mut total = 0;
        for (slot, state) in self.slots.iter().enumerate() {
            let live: u64 = self
                .workers
                .values()
                .filter(|w| w.slot == slot)
                .map(|w| w.requests)
                .sum();
            let n = state.base_requests + live;
            total += n;
            requests.sample(&[("slot", &slot.to_string())], n);
        }
        snapshot.push(requests);
        snapshot.push(
            Family::counter("wharf_requests_total", "Requests started by all workers.")
                .with(&[], total),
        );
        // One series per slot (while a slot's worker is replaced, the old
        // and the new one count together).
        let mut by_slot: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
        for worker in self.workers.values() {
            let (in_flight, rss) = by_slot.entry(worker.slot).or_default();
            *in_flight += worker.in_flight;
            *rss += worker.rss;
        }
        let mut in_flight = Family::gauge(
            "wharf_worker_in_flight",
            "Requests in flight per worker slot.",
        );
        let mut rss = Family::gauge("wharf_worker_rss_bytes", "Resident memory per worker slot.");
        for (slot, (n, bytes)) in &by_slot {
            in_flight.sample(&[("slot", &slot.to_string())], *n);
            rss.sample(&[("slot", &slot.to_string())], *bytes);
        }
        snapshot.push(in_flight);
        snapshot.push(rss);
        let rss_total: u64 = by_slot.values().map(|(_, rss)| rss).sum();
        snapshot.push(
            Family::gauge("wharf_workers_rss_bytes", "Resident memory of all workers.")
                .with(&[], rss_total),
        );
        snapshot.extend(self.listen_metrics());
        snapshot.extend(self.aggregator.snapshot());
        let out = snapshot.encode();
        if self.last_broadcast.elapsed() >= BROADCAST_EVERY {
            self.last_broadcast = Instant::now();
            let block = format!("{INSTANCE_METRICS_TAG} {}\n{out}", out.len());
            for worker in self.workers.values().filter(|w| w.wants_metrics) {
                let _ = worker.control.send(block.clone());
            }
        }
        if let Ok(mut metrics) = self.metrics.lock() {
            *metrics = out;
        }
        self.ready.store(ready > 0, Ordering::Relaxed);
    }

    /// The accept queue of every socket the master holds (in `reuseport`
    /// mode one per address and slot, labelled with the slot) and the
    /// kernel's listen overflows.
    fn listen_metrics(&self) -> Snapshot {
        let per_slot = self.accept == AcceptMode::ReusePort;
        let mut sockets: Vec<(std::os::fd::BorrowedFd<'_>, Option<usize>)> = self
            .listeners
            .iter()
            .map(|l| (l.as_fd(), per_slot.then_some(0)))
            .collect();
        for (slot, listeners) in &self.slot_listeners {
            sockets.extend(listeners.iter().map(|l| (l.as_fd(), Some(*slot))));
        }
        // By address, then slot: a stable order from scrape to scrape.
        sockets.sort_by_cached_key(|(fd, slot)| {
            (
                socket2::SockRef::from(fd)
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket()),
                *slot,
            )
        });
        crate::listen_metrics(sockets)
    }

    /// Runs the reload check, if any; whether it refused the reload (logged).
    /// The check reads files (edge: its configuration and certificates), so
    /// it runs off the loop that reads heartbeats.
    async fn reload_refused(&self) -> bool {
        let Some(check) = self.reload_check.clone() else {
            return false;
        };
        let verdict = tokio::task::spawn_blocking(move || check())
            .await
            .unwrap_or_else(|error| Err(format!("the reload check panicked: {error}")));
        if let Err(why) = &verdict {
            tracing::error!(signal = "SIGHUP", error = %why, "Reload refused; the workers keep serving as they are");
        }
        verdict.is_err()
    }

    /// What the admin listener serves: the text and the flag this master
    /// keeps up to date.
    fn admin_state(&self) -> crate::admin::AdminState {
        crate::admin::AdminState {
            metrics: Arc::clone(&self.metrics),
            ready: Arc::clone(&self.ready),
        }
    }

    /// Runs until a stop signal; returns after every worker has exited.
    pub(crate) async fn run(mut self) -> Result<(), SupervisorError> {
        let mut sigchld = signal(SignalKind::child()).map_err(SupervisorError::Signals)?;
        let mut term = signal(SignalKind::terminate()).map_err(SupervisorError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(SupervisorError::Signals)?;
        let mut quit = signal(SignalKind::quit()).map_err(SupervisorError::Signals)?;
        let mut hup = signal(SignalKind::hangup()).map_err(SupervisorError::Signals)?;
        let mut ttin =
            signal(SignalKind::from_raw(libc::SIGTTIN)).map_err(SupervisorError::Signals)?;
        let mut ttou =
            signal(SignalKind::from_raw(libc::SIGTTOU)).map_err(SupervisorError::Signals)?;
        let mut usr2 = signal(SignalKind::user_defined2()).map_err(SupervisorError::Signals)?;
        if let Some(addr) = &self.config.admin_address {
            crate::admin::start(addr, self.admin_state());
        }
        self.boot(&mut sigchld).await?;
        crate::notify::sd_notify(&format!("READY=1\nMAINPID={}", self.pid));
        if let Some(old) = crate::upgrade::taking_over_from() {
            tracing::info!(
                old_master = old,
                pid = self.pid,
                "Binary upgrade: new workers ready; asking the old master to drain"
            );
            sys::kill(old, libc::SIGTERM);
        }
        let mut tick = tokio::time::interval(TICK);

        let mut last_memory_sample = Instant::now() - MEMORY_SAMPLE_EVERY;
        let fast = loop {
            tokio::select! {
                _ = sigchld.recv() => {
                    for (pid, kind) in sys::reap() {
                        self.on_exit(pid, kind);
                    }
                }
                Some(event) = self.events_rx.recv() => self.on_event(event),
                _ = tick.tick() => {
                    let now = Instant::now();

                    let sample = now.saturating_duration_since(last_memory_sample) >= MEMORY_SAMPLE_EVERY;
                    if sample {
                        last_memory_sample = now;
                    }
                    self.check(now, sample);
                }
                _ = hup.recv() => {
                    if self.reload_refused().await {
                        continue;
                    }
                    tracing::info!(signal = "SIGHUP", "Reloading: replacing workers one by one");
                    crate::notify::sd_notify(&format!("RELOADING=1\n{}", crate::notify::monotonic_usec()));
                    self.reloading = true;
                    let mut slots: Vec<usize> = self.workers.values().filter(|w| w.draining_since.is_none()).map(|w| w.slot).collect();
                    slots.sort_unstable();
                    slots.dedup();
                    for slot in slots {
                        if !self.queue.contains(&(slot, Reason::Reload)) {
                            self.queue.push_back((slot, Reason::Reload));
                        }
                    }
                }
                _ = ttin.recv() => {
                    self.target += 1;
                    if self.slots.len() < self.target {
                        self.slots.push(Slot::default());
                    }
                    let slot = self.target - 1;
                    tracing::info!(workers = self.target, "SIGTTIN: one worker more");
                    if let Err(error) = self.spawn(slot) {
                        tracing::error!(slot, %error, "Cannot start worker");
                    }
                }
                _ = usr2.recv() => self.upgrade(),
                _ = ttou.recv() => {
                    if self.target > 1 {
                        self.target -= 1;
                        let slot = self.target;
                        tracing::info!(workers = self.target, "SIGTTOU: one worker fewer");
                        self.close_slot_sockets(slot);
                        let pids: Vec<u32> = self.workers.iter().filter(|(_, w)| w.slot == slot).map(|(p, _)| *p).collect();
                        for pid in pids {
                            self.drain(pid);
                        }
                    }
                }
                _ = term.recv() => {
                    tracing::info!(signal = "SIGTERM", "Shutting down");
                    break false;
                }
                _ = int.recv() => {
                    tracing::info!(signal = "SIGINT", "Shutting down");
                    break true;
                }
                _ = quit.recv() => {
                    tracing::info!(signal = "SIGQUIT", "Shutting down");
                    break true;
                }
            }
        };
        self.shutdown(fast).await;
        Ok(())
    }

    /// SIGUSR2: starts a new master from the binary on disk, handing it the
    /// listening sockets. It boots its own workers and, once they are all
    /// ready, sends this master SIGTERM; until then this one keeps serving,
    /// and if the new one fails, nothing changes.
    fn upgrade(&mut self) {
        if self.upgrading.is_some() {
            tracing::warn!("SIGUSR2: an upgrade is already in progress");
            return;
        }
        let mut fds: Vec<i32> = self.listeners.iter().map(sys::raw).collect();
        fds.extend(self.shared.iter().map(|s| s.raw_fd()));
        let env = crate::upgrade::env(self.listeners.len(), &self.shared, self.pid);
        match sys::spawn_with_fds(&self.program, &self.args, &env, &fds, self.pid, false) {
            Ok(pid) => {
                tracing::info!(
                    new_master = pid,
                    "SIGUSR2: started a new master from the binary on disk"
                );
                self.upgrading = Some(pid);
            }
            Err(error) => tracing::error!(%error, "SIGUSR2: cannot start a new master"),
        }
    }

    async fn shutdown(&mut self, fast: bool) {
        crate::notify::sd_notify("STOPPING=1");
        self.ready.store(false, Ordering::Relaxed);
        let grace = if fast {
            Duration::from_secs(1)
        } else {
            self.graceful_timeout + KILL_MARGIN
        };
        tracing::info!(
            fast,
            workers = self.workers.len(),
            grace_s = grace.as_secs_f64(),
            "Stopping: draining workers"
        );
        // The workers hold their own copies; once they close them the socket
        // is gone and clients are refused instead of queueing for nobody.
        // A new master from a binary upgrade shares these sockets and serves
        // on: only a real stop refuses new connections.
        // Slot sockets are this master's alone (a new master opens its own);
        // the first ones pass to a new master in a binary upgrade.
        let mut closing: Vec<&TcpListener> = self.slot_listeners.values().flatten().collect();
        if self.upgrading.is_none() {
            closing.extend(&self.listeners);
        } else {
            tracing::info!("Handing over to the new master");
        }
        // Handshakes already under way complete into the backlog, which the
        // workers take before they close (wharf-http's drain watches the
        // kernel's view of the socket for them).
        sys::refuse_all(closing.iter().copied());
        self.listeners.clear();
        self.slot_listeners.clear();
        let pids: Vec<u32> = self.workers.keys().copied().collect();
        for pid in pids {
            self.drain(pid);
        }
        let deadline = Instant::now() + grace;
        while !self.workers.is_empty() && Instant::now() < deadline {
            for (pid, kind) in sys::reap() {
                if let Some(worker) = self.workers.remove(&pid) {
                    tracing::info!(slot = worker.slot, pid, %kind, "Worker stopped");
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !self.workers.is_empty() {
            tracing::warn!(
                workers = self.workers.len(),
                "Workers still running after the grace period; killing them"
            );
            self.stop_all_now().await;
        }
        tracing::info!("Stopped");
    }
}

/// Reads a worker's reports: lines, and length-prefixed metrics blocks.
async fn read_reports(
    pid: u32,
    read_half: tokio::net::unix::OwnedReadHalf,
    events: &mpsc::UnboundedSender<Event>,
) {
    let mut reader = BufReader::new(read_half);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let event = if let Some(len) = line
            .strip_prefix(METRICS_TAG)
            .and_then(|rest| rest.trim().parse::<usize>().ok())
        {
            let mut text = vec![0_u8; len];
            if reader.read_exact(&mut text).await.is_err() {
                return;
            }
            match Snapshot::from_wire(&String::from_utf8_lossy(&text)) {
                Ok(snapshot) => Event::Metrics(pid, snapshot),
                Err(error) => {
                    tracing::warn!(pid, %error, "A worker sent metrics that do not read; kept its last ones");
                    continue;
                }
            }
        } else if let Some(report) = Report::decode(&line) {
            Event::Report(pid, report)
        } else {
            continue;
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

/// The heartbeat checks for one worker: a replacement after a short silence,
/// the two-stage abort after the timeout. Returns whether the worker is dealt
/// with for this tick.
fn check_heartbeat(
    pid: u32,
    worker: &mut Worker,
    now: Instant,
    heartbeat_timeout: Duration,
    recycle: &mut Vec<(usize, Reason)>,
) -> bool {
    let silent = now.saturating_duration_since(worker.last_heartbeat);
    if silent > heartbeat_timeout {
        // Two stages: the worker logs what its threads are doing
        // (a thread outside the runtime answers the signal), then it
        // is killed.
        match worker.stall_reported {
            None => {
                tracing::error!(
                        slot = worker.slot,
                        pid,
                        silent_s = silent.as_secs(),
                        "Worker runtime blocked: no heartbeat from its async runtime for {} s; asking it to log its threads (SIGUSR1), killing it in {} ms",
                        silent.as_secs(),
                        STALL_REPORT_WAIT.as_millis()
                    );
                worker.stall_reported = Some(now);
                sys::kill(pid, sys::STALL_REPORT_SIGNAL);
            }
            Some(at) if now.saturating_duration_since(at) >= STALL_REPORT_WAIT => {
                tracing::error!(
                        slot = worker.slot,
                        pid,
                        silent_s = silent.as_secs(),
                        "Worker runtime blocked: no heartbeat from its async runtime for {} s; killing it (SIGKILL) and starting a new one",
                        silent.as_secs()
                    );
                worker.killed_for = Some(Reason::Blocked);
                sys::kill(pid, libc::SIGKILL);
            }
            Some(_) => {}
        }
        return true;
    }
    if silent > STALL_REPLACE_AFTER
        && STALL_REPLACE_AFTER < heartbeat_timeout
        && worker.ready
        && worker.draining_since.is_none()
        && !worker.replacement_queued
    {
        tracing::warn!(
                slot = worker.slot,
                pid,
                silent_s = silent.as_secs(),
                "Worker runtime stalled: no heartbeat for {} s; starting a replacement for its slot now (it is killed if still silent after WHARF_HEARTBEAT_TIMEOUT_SECONDS)",
                silent.as_secs()
            );
        worker.replacement_queued = true;
        recycle.push((worker.slot, Reason::Blocked));
        return true;
    }
    if worker.stall_reported.take().is_some() {
        tracing::warn!(
            slot = worker.slot,
            pid,
            "Worker runtime answered again after missing heartbeats; keeping it"
        );
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(slot: usize, in_flight: u64, rss: u64, draining: bool) -> Worker {
        let (control, _) = mpsc::unbounded_channel();
        Worker {
            slot,
            started: Instant::now(),
            ready: true,
            draining_since: draining.then(Instant::now),
            last_heartbeat: Instant::now(),
            requests: 0,
            in_flight,
            rss,
            recycle_at: None,
            replacement_queued: false,
            killed_for: None,
            stall_reported: None,
            wants_metrics: false,
            control,
        }
    }

    /// Slot 0 mid-replacement (its old worker draining beside the new one):
    /// still one series per slot, and each per-slot family in one group.
    #[test]
    fn per_slot_gauges_are_one_group_each_with_one_series_per_slot() {
        let mut master = Master::new(
            SupervisorSection::default(),
            Duration::from_secs(1),
            Vec::new(),
        )
        .unwrap();
        master.workers.insert(10, worker(0, 2, 100, true));
        master.workers.insert(11, worker(0, 1, 50, false));
        master.workers.insert(12, worker(1, 0, 70, false));
        master.render_metrics();
        let text = master.metrics.lock().unwrap().clone();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("wharf_worker_in_flight") || l.contains("wharf_worker_rss"))
            .collect();
        assert_eq!(
            lines,
            [
                "# HELP wharf_worker_in_flight Requests in flight per worker slot.",
                "# TYPE wharf_worker_in_flight gauge",
                "wharf_worker_in_flight{slot=\"0\"} 3",
                "wharf_worker_in_flight{slot=\"1\"} 0",
                "# HELP wharf_worker_rss_bytes Resident memory per worker slot.",
                "# TYPE wharf_worker_rss_bytes gauge",
                "wharf_worker_rss_bytes{slot=\"0\"} 150",
                "wharf_worker_rss_bytes{slot=\"1\"} 70",
            ],
            "{text}"
        );
        assert!(text.contains("\nwharf_workers_rss_bytes 220\n"), "{text}");
    }
}
