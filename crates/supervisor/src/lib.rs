//! Master/worker process supervision for Rust services — what gunicorn's
//! arbiter and PM2's cluster mode do, without their dropped requests.
//!
//! **What it is for:** running a network service as several worker
//! processes. The master binds each listener once (or adopts systemd's
//! `LISTEN_FDS`), then starts every worker by **re-executing the current
//! binary** with the listeners and a control channel inherited — it never
//! forks a process that has a runtime. Workers report readiness and
//! heartbeats from inside their tokio runtime; the master
//!
//! - starts replacements **before** draining the workers they replace, and only
//!   once the new one reports ready (reload on SIGHUP, recycling after
//!   `max_requests` or above a memory limit): no capacity dip, no dropped request;
//! - kills a worker whose runtime stops sending heartbeats (blocked runtime),
//!   saying so plainly, and starts another;
//! - restarts crashed workers with exponential back-off (×1.5 up to 15 s,
//!   reset after 30 s of stable uptime), and fails fast if the first workers
//!   never become ready;
//! - handles TERM (graceful), INT/QUIT (fast), HUP (rolling reload), USR2
//!   (binary upgrade: a new master inherits the sockets, and the old one drains
//!   only once the new workers are ready), TTIN/TTOU (one worker more/fewer), reaps every child (it can be PID 1), makes
//!   workers die with it (`PR_SET_PDEATHSIG`), speaks systemd's notify protocol,
//!   and serves one `/metrics` for the whole instance on an admin listener,
//!   with `/health/live` and `/health/ready`, including each listening
//!   socket's accept queue and the kernel's listen overflows
//!   ([`listen_metrics`]);
//! - runs an optional [`reload_check`](Supervisor::reload_check) on HUP first,
//!   so a bad new configuration is refused before any worker is replaced, and
//!   with [`reload_listeners`](Supervisor::reload_listeners) changes the
//!   listen set on HUP: sockets of addresses that stay are kept, new ones
//!   bound (a failure refuses the reload), removed ones closed once the old
//!   workers have drained.
//!
//! With `workers = 0` the service runs in this one process with no master.
//!
//! **What it is not for:** what happens on the sockets — bring an HTTP server
//! (e.g. `wharf-http`) and run it in the function you hand over.
//!
//! ```no_run
//! use wharf_supervisor::{Supervisor, SupervisorSection};
//!
//! fn main() -> Result<(), wharf_supervisor::SupervisorError> {
//!     let config = SupervisorSection { workers: Some(2), ..SupervisorSection::default() };
//!     Supervisor::new(config)
//!         .listen("127.0.0.1:8080".parse().unwrap())
//!         .run(|mut ctx| async move {
//!             let listeners = ctx.take_listeners();
//!             // … start serving on `listeners` …
//!             ctx.ready();
//!             ctx.shutdown_signal().await;
//!             // … drain …
//!             Ok::<(), std::io::Error>(())
//!         })
//! }
//! ```
#![deny(unsafe_code)]

mod admin;
mod config;
mod listen;
mod master;
mod notify;
mod shared;
mod sockets;
mod stats;
mod sys;
mod upgrade;
mod worker;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

pub use config::{AcceptMode, SupervisorSection};
pub use listen::{listen_metrics, ListenOverflows, ListenQueue};
pub use notify::sd_notify;
pub use shared::SharedMemory;
pub use sockets::{diff_listen_set, ListenDiff, ListenSource};
pub use stats::{InFlightGuard, WorkerStats};
pub use worker::{InstanceMetrics, MetricsSource, WorkerContext};

/// The accept backlog of sockets the master binds when none is given
/// ([`Supervisor::listen_with_backlog`]); the kernel caps it at
/// `net.core.somaxconn`.
pub const BACKLOG: u32 = 1024;

/// Why supervision failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SupervisorError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A reload's listen set leaves out an address whose socket systemd
    /// passed (`LISTEN_FDS`): the socket unit holds that socket too, so
    /// closing this process's copy would leave clients queueing for nobody.
    #[error(
        "{addr} is a socket systemd passed (LISTEN_FDS); to stop listening on it, remove it from the .socket unit's ListenStream= and restart the socket unit and the service"
    )]
    SystemdListener {
        /// The address, as configured.
        addr: SocketAddr,
    },
    /// systemd passed sockets that are not usable TCP listeners.
    #[error("LISTEN_FDS: {0}")]
    SystemdSockets(String),
    /// The path of the running binary is unknown, so it cannot re-execute itself.
    #[error("cannot find this program's path to start workers: {0}")]
    Exe(std::io::Error),
    /// A worker process could not be started.
    #[error("cannot start a worker: {0}")]
    Spawn(std::io::Error),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The first workers never became ready.
    #[error("workers failed to start: {0}")]
    Boot(String),
    /// The runtime could not be built or the worker's setup failed.
    #[error("worker setup failed: {0}")]
    Io(#[from] std::io::Error),
    /// The service function returned an error.
    #[error("{0}")]
    Service(String),
}

/// A check the master runs on SIGHUP before replacing any worker (e.g. load
/// and validate the new configuration); an `Err` refuses the reload, logs its
/// text, and the workers keep serving as they are.
pub type ReloadCheck = std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the master runs on SIGHUP, after the [`ReloadCheck`], to learn the
/// new configuration's listen set: every address with its accept backlog,
/// in the order the new workers' service takes them from
/// [`WorkerContext::take_listeners`]. An `Err` refuses the reload as a
/// failed check does. See [`Supervisor::reload_listeners`].
pub type ReloadListeners =
    std::sync::Arc<dyn Fn() -> Result<Vec<(SocketAddr, u32)>, String> + Send + Sync>;

/// Configures and runs supervision. See the [crate docs](crate).
#[derive(Clone)]
pub struct Supervisor {
    config: SupervisorSection,
    graceful_timeout: Duration,
    /// Addresses to listen on, each with its accept backlog.
    addrs: Vec<(SocketAddr, u32)>,
    reload_check: Option<ReloadCheck>,
    reload_listeners: Option<ReloadListeners>,
    shared: Vec<shared::Declared>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("config", &self.config)
            .field("graceful_timeout", &self.graceful_timeout)
            .field("addrs", &self.addrs)
            .field("reload_check", &self.reload_check.is_some())
            .field("reload_listeners", &self.reload_listeners.is_some())
            .field("shared", &self.shared)
            .finish()
    }
}

impl Supervisor {
    /// A supervisor with this configuration. Graceful timeout 30 s.
    pub fn new(config: SupervisorSection) -> Self {
        Self {
            config,
            graceful_timeout: Duration::from_secs(30),
            addrs: Vec::new(),
            reload_check: None,
            reload_listeners: None,
            shared: Vec::new(),
        }
    }

    /// Declares a shared-memory segment of `bytes` bytes: made zeroed by the
    /// master before any worker starts, mapped by every worker (take it with
    /// [`WorkerContext::take_shared_memory`]), kept across worker
    /// replacements (HUP, crashes, `max_requests`) and handed to the new
    /// master on a USR2 upgrade when its size is unchanged. This is how an
    /// instance keeps one state however many workers it runs (nginx's
    /// shared-memory zones). In one process (`workers = 0`) it is that
    /// process's own.
    #[must_use]
    pub fn shared_memory(mut self, name: impl Into<String>, bytes: usize) -> Self {
        self.shared.push(shared::Declared::new(name.into(), bytes));
        self
    }

    /// Runs `check` in the master on SIGHUP before any worker is replaced:
    /// an `Err` refuses the reload (logged with its text) and the running
    /// workers keep serving, as `nginx -s reload` does with a bad file.
    /// Without a check, a replacement that fails to start is what stops a
    /// reload (the old worker is kept).
    #[must_use]
    pub fn reload_check(mut self, check: ReloadCheck) -> Self {
        self.reload_check = Some(check);
        self
    }

    /// Lets a SIGHUP change what the instance listens on, as nginx applies
    /// `listen` changes on reload. After the [reload check](Self::reload_check)
    /// passes, the master runs `listeners` (off its event loop; it may read
    /// files) for the new configuration's addresses and backlogs, then:
    ///
    /// - keeps the socket of every address it already holds (the same
    ///   socket, so no connection waiting in its accept queue is lost; a
    ///   changed backlog is applied to it with `listen`);
    /// - binds every new address itself (with one `SO_REUSEPORT` sibling per
    ///   worker slot in `reuseport` mode) — if one cannot be bound, the
    ///   reload is refused, logged with the address and the error, and
    ///   nothing changes: the old workers keep serving;
    /// - gives the replacement workers the new set, in the new order;
    /// - lets go of the sockets no longer listed: the old workers keep
    ///   theirs until they have drained, then the address refuses
    ///   connections. Until then the master keeps them aside, so a later
    ///   set that lists the address again takes the same socket;
    /// - if a new worker of that reload fails to become ready, goes back to
    ///   the previous set (logged, naming it) and replaces no more workers.
    ///
    /// Addresses are matched as configured, not as bound: a socket from
    /// systemd's `LISTEN_FDS` stands for the address in its position at
    /// start (as its backlog does) and is kept while that address stays in
    /// the list; a set that leaves it out is refused
    /// ([`SupervisorError::SystemdListener`]: the socket unit holds it too;
    /// edit the unit). The `/metrics` listen-queue series follow the new
    /// set, and a USR2 upgrade hands over the sockets with the addresses
    /// they stand for, which the new master matches to its own
    /// configuration. Without this callback a HUP keeps the sockets the
    /// master started with.
    #[must_use]
    pub fn reload_listeners(mut self, listeners: ReloadListeners) -> Self {
        self.reload_listeners = Some(listeners);
        self
    }

    /// How long a draining worker gets before it is killed (match the HTTP
    /// server's own graceful timeout). Default 30 s.
    #[must_use]
    pub fn graceful_timeout(mut self, timeout: Duration) -> Self {
        self.graceful_timeout = timeout;
        self
    }

    /// Adds a TCP address to listen on (ignored when systemd passes sockets),
    /// with an accept backlog of [`BACKLOG`].
    #[must_use]
    pub fn listen(self, addr: SocketAddr) -> Self {
        self.listen_with_backlog(addr, BACKLOG)
    }

    /// Adds a TCP address to listen on with an accept backlog of `backlog`
    /// connections (the kernel caps it at `net.core.somaxconn`). The backlog
    /// applies to every socket of that address: the one bound here, a worker
    /// slot's own (`reuseport`), and one inherited instead of bound (a binary
    /// upgrade's, or systemd's `LISTEN_FDS`, the n-th address's backlog going
    /// to the n-th socket), which get `listen` again with it, as nginx does.
    #[must_use]
    pub fn listen_with_backlog(mut self, addr: SocketAddr, backlog: u32) -> Self {
        self.addrs.push((addr, backlog));
        self
    }

    /// In a worker process, the segment declared as `name` with
    /// [`shared_memory`](Self::shared_memory), available before
    /// [`run`](Self::run) (for state built before the service starts, such
    /// as a rate limiter made while loading configuration). The same memory
    /// as [`WorkerContext::take_shared_memory`] gives. `None` in a master, in
    /// one process without a master, or when none has that name.
    pub fn inherited_shared_memory(name: &str) -> Option<std::sync::Arc<SharedMemory>> {
        worker::worker_segments()
            .ok()?
            .into_iter()
            .find(|segment| segment.name() == name)
    }

    /// Whether this process was started by a master as a worker.
    pub fn is_worker() -> bool {
        worker::WorkerEnv::detect().is_some()
    }

    /// Runs the service. In a worker process: adopt the inherited listeners
    /// and run `service` on a runtime of `threads_per_worker` threads. With
    /// `workers = 0`: bind and run `service` in this process. Otherwise: be
    /// the master until a stop signal. Call it from `main`, before any async
    /// runtime exists.
    pub fn run<F, Fut, E>(self, service: F) -> Result<(), SupervisorError>
    where
        F: FnOnce(WorkerContext) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: std::fmt::Display,
    {
        let threads = self.config.threads_per_worker();
        if let Some(env) = worker::WorkerEnv::detect() {
            return worker::run_worker(env, threads, service);
        }
        let upgrade::StartSet { listeners, systemd } = self.listeners()?;
        let inherited = upgrade::inherited_shared()?;
        let shared = shared::make(&self.shared, inherited)?;
        if self.config.workers == Some(0) {
            let threads = self.config.worker_threads.map_or_else(
                || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
                |n| usize::try_from(n).unwrap_or(1),
            );
            return worker::run_single(listeners, shared, threads, service);
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let master = master::Master::new(self.config, self.graceful_timeout, listeners)?
            .with_addresses(&self.addrs)
            .with_systemd(&systemd)
            .with_reload_check(self.reload_check)
            .with_reload_listeners(self.reload_listeners)
            .with_shared_memory(shared);
        runtime.block_on(master.run())
    }

    /// The sockets to start with, in the order of the configured addresses
    /// (a binary upgrade's matched to them by address, systemd's by
    /// position), and whether each came from systemd.
    fn listeners(&self) -> Result<upgrade::StartSet, SupervisorError> {
        // With a socket per worker slot, the first one must allow siblings.
        let reuse_port =
            self.config.accept == AcceptMode::ReusePort && self.config.workers != Some(0);
        if let Some(inherited) = upgrade::inherited_listeners()? {
            tracing::info!(
                count = inherited.listeners.len(),
                "Binary upgrade: using the old master's sockets"
            );
            let set = inherited.reconcile(&self.addrs, reuse_port)?;
            self.apply_backlogs(&set.listeners);
            return Ok(set);
        }
        if let Some(listeners) = systemd_listeners()? {
            tracing::info!(count = listeners.len(), "Using sockets passed by systemd");
            self.apply_backlogs(&listeners);
            return Ok(upgrade::StartSet {
                systemd: vec![true; listeners.len()],
                listeners,
            });
        }
        let listeners = self
            .addrs
            .iter()
            .map(|(addr, backlog)| {
                bind(*addr, reuse_port, *backlog).map_err(|source| SupervisorError::Bind {
                    addr: *addr,
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(upgrade::StartSet {
            systemd: vec![false; listeners.len()],
            listeners,
        })
    }

    /// Gives inherited sockets the configured backlogs (the n-th address's
    /// to the n-th socket): `listen` on a listening socket changes its
    /// backlog, so a new setting takes effect across an upgrade too.
    fn apply_backlogs(&self, listeners: &[TcpListener]) {
        for (listener, (_, backlog)) in listeners.iter().zip(&self.addrs) {
            let result = socket2::SockRef::from(listener).listen(listen_arg(*backlog));
            if let Err(error) = result {
                tracing::warn!(%error, backlog, "Cannot set the backlog of an inherited socket; it keeps its own");
            }
        }
    }
}

/// A backlog as `listen(2)` takes it.
fn listen_arg(backlog: u32) -> i32 {
    i32::try_from(backlog).unwrap_or(i32::MAX)
}

/// Binds a listening socket on `addr` (`SO_REUSEADDR`; dual-stack for IPv6;
/// `SO_REUSEPORT` when asked, so sibling sockets can join it) with an accept
/// queue of `backlog`.
pub(crate) fn bind(
    addr: SocketAddr,
    reuse_port: bool,
    backlog: u32,
) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() {
        socket.set_only_v6(false)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(listen_arg(backlog))?;
    Ok(socket.into())
}

/// Adopts `LISTEN_FDS` when systemd passed them to this process.
fn systemd_listeners() -> Result<Option<Vec<TcpListener>>, SupervisorError> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        == Some(std::process::id());
    if !for_us {
        return Ok(None);
    }
    let count: usize = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| {
            SupervisorError::SystemdSockets(
                "LISTEN_PID is ours but LISTEN_FDS is not a number".into(),
            )
        })?;
    let mut listeners = Vec::with_capacity(count);
    for i in 0..count {
        let fd = sys::FIRST_INHERITED_FD + i32::try_from(i).unwrap_or(0);
        let owned = sys::adopt_fd(fd)
            .ok_or_else(|| SupervisorError::SystemdSockets(format!("fd {fd} is not open")))?;
        let socket = Socket::from(owned);
        if !socket.is_listener().unwrap_or(false) {
            return Err(SupervisorError::SystemdSockets(format!(
                "fd {fd} is not a listening socket"
            )));
        }
        listeners.push(TcpListener::from(socket));
    }
    Ok(Some(listeners))
}
