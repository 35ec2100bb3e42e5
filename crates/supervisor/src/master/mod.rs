//! The master process: starts workers by re-executing this binary, watches
//! them, replaces them through the readiness gate, and handles signals.
//!
//! The loop and the state it keeps are here; its parts are in submodules,
//! by concern: `spawn` starts workers, `reports` reads what they say,
//! `replace` decides when one is replaced or restarted, `metrics`
//! renders the instance's metrics, `shutdown` stops or hands over.
//! Each submodule extends [`Master`] with an `impl` block of its own.

mod metrics;
mod relisten;
mod replace;
mod reports;
mod shutdown;
mod spawn;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{AcceptMode, SupervisorSection};
use crate::sys;
use crate::worker::{Report, DRAIN};
use crate::{ReloadCheck, ReloadListeners, SharedMemory, SupervisorError};
use wharf_telemetry::metrics::{Aggregator, Snapshot};

const TICK: Duration = Duration::from_millis(200);
const MEMORY_SAMPLE_EVERY: Duration = Duration::from_secs(2);
/// Extra time a draining worker gets beyond the graceful timeout before SIGKILL.
const KILL_MARGIN: Duration = Duration::from_secs(2);

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
    /// The ids of the master's sockets this worker was given
    /// ([`Master::socket_ids`]): what it may still accept on.
    sockets: Vec<u64>,
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
    /// The address each of `listeners` was configured as (not necessarily
    /// the one it is bound to: port 0, or systemd's socket in that
    /// position), which a reload's listen set is matched against.
    addrs: Vec<SocketAddr>,
    /// The accept backlog of each of `listeners`' addresses, for the sockets
    /// of slots 1.. (`reuseport`); [`crate::BACKLOG`] past its end.
    backlogs: Vec<u32>,
    /// Per socket of `listeners`: an id that stays with the socket (and its
    /// slot siblings) across changes of the set, and whether systemd passed
    /// it (the socket unit holds it too, so a HUP may not drop it).
    held: Vec<relisten::Held>,
    next_socket_id: u64,
    /// Sockets of addresses a change of the set dropped, kept while a worker
    /// that was given them still serves: a change back (a revert, or a
    /// failed reload going back) reuses them instead of binding an address
    /// those workers still listen on.
    retired: Vec<relisten::Retired>,
    /// The set before the HUP that changed it, while that reload runs: a
    /// replacement that fails goes back to it.
    rollback: Option<Vec<(SocketAddr, u32)>>,
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
    /// Run on SIGHUP after the check: the new listen set.
    reload_listeners: Option<ReloadListeners>,
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

    /// Sets what gives the new listen set on SIGHUP.
    pub(crate) fn with_reload_listeners(mut self, listeners: Option<ReloadListeners>) -> Self {
        self.reload_listeners = listeners;
        self
    }

    /// The configured address and accept backlog of each listener, in
    /// order; a socket past the end (systemd passed more) stands for the
    /// address it is bound to, with [`crate::BACKLOG`].
    pub(crate) fn with_addresses(mut self, configured: &[(SocketAddr, u32)]) -> Self {
        let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
        self.addrs = self
            .listeners
            .iter()
            .enumerate()
            .map(|(i, listener)| {
                configured.get(i).map_or_else(
                    || listener.local_addr().unwrap_or(unspecified),
                    |(addr, _)| *addr,
                )
            })
            .collect();
        self.backlogs = configured.iter().map(|(_, backlog)| *backlog).collect();
        self
    }

    /// Which of the sockets (in order) systemd passed.
    pub(crate) fn with_systemd(mut self, systemd: &[bool]) -> Self {
        for (held, systemd) in self.held.iter_mut().zip(systemd) {
            held.systemd = *systemd;
        }
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
            addrs: listeners
                .iter()
                .map(|l| {
                    l.local_addr()
                        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
                })
                .collect(),
            held: (0..listeners.len() as u64)
                .map(relisten::Held::new)
                .collect(),
            next_socket_id: listeners.len() as u64,
            retired: Vec::new(),
            rollback: None,
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
            reload_listeners: None,
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

    fn drain(&mut self, pid: u32) {
        if let Some(worker) = self.workers.get_mut(&pid) {
            if worker.draining_since.is_none() {
                worker.draining_since = Some(Instant::now());
                let control = worker.control.clone();
                // Before the worker closes its copies: a retired socket it
                // was the last to serve must not outlive them here.
                self.prune_retired();
                let _ = control.send(DRAIN.to_owned());
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
                    if self.reload_refused().await || !self.reload_listen_set().await {
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
}
