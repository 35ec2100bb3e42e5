//! [`SupervisorSection`]: worker count, timeouts, recycling limits.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wharf_config::{parse, Var};

/// How the supervisor runs workers. `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorSection {
    /// `WEB_CONCURRENCY`: worker processes. `0` runs the service in this one
    /// process with no master. Unset: one per CPU.
    pub workers: Option<u64>,
    /// `WHARF_WORKER_THREADS`: tokio worker threads per worker process. Unset:
    /// CPUs divided by workers, at least 1.
    pub worker_threads: Option<u64>,
    /// `WHARF_READY_TIMEOUT_SECONDS`: a new worker must report ready within
    /// this, or it is stopped and (on replacement) the old one kept. Default 30.
    pub ready_timeout_seconds: u64,
    /// `WHARF_HEARTBEAT_TIMEOUT_SECONDS`: a worker whose runtime sends no
    /// heartbeat for this long is killed and replaced. Default 30.
    pub heartbeat_timeout_seconds: u64,
    /// `WHARF_MAX_REQUESTS`: recycle a worker after this many requests (plus
    /// jitter); 0 = never. Default 0.
    pub max_requests: u64,
    /// `WHARF_MAX_REQUESTS_JITTER`: up to this many extra requests, random per
    /// worker, so workers do not recycle together. Default 0.
    pub max_requests_jitter: u64,
    /// `WHARF_MAX_MEMORY_BYTES`: recycle a worker whose RSS exceeds this; 0 =
    /// never. Default 0.
    pub max_memory_bytes: u64,
    /// `WHARF_ADMIN_ADDRESS`: the master's admin listener (`/metrics`,
    /// `/health/live`, `/health/ready`), e.g. `127.0.0.1:9101`; unset = none.
    pub admin_address: Option<String>,
    /// `WHARF_ACCEPT`: how workers share a listening address. Default
    /// [`AcceptMode::ReusePort`] (docs/supervisor.md has the measurement).
    pub accept: AcceptMode,
}

/// How worker processes share a listening address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AcceptMode {
    /// One `SO_REUSEPORT` socket per worker slot, held by the master: the
    /// kernel spreads new connections evenly over the slots, and a slot's
    /// queue survives its worker's exit (the replacement accepts it).
    #[default]
    #[serde(rename = "reuseport")]
    ReusePort,
    /// One socket every worker accepts from: whichever worker wakes first
    /// takes the connection (uneven under keep-alive load, but a stalled
    /// worker's share is picked up by the others at once).
    Shared,
}

impl AcceptMode {
    /// The configuration value (`reuseport` or `shared`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReusePort => "reuseport",
            Self::Shared => "shared",
        }
    }
}

impl Default for SupervisorSection {
    fn default() -> Self {
        Self {
            workers: None,
            worker_threads: None,
            ready_timeout_seconds: 30,
            heartbeat_timeout_seconds: 30,
            max_requests: 0,
            max_requests_jitter: 0,
            max_memory_bytes: 0,
            admin_address: None,
            accept: AcceptMode::default(),
        }
    }
}

impl SupervisorSection {
    /// The variables that set this section, with keys under `section`.
    pub fn vars(section: &str) -> Vec<Var> {
        vec![
            Var::new("WEB_CONCURRENCY", "workers", parse::count(0, 256))
                .help("worker processes; 0 = one process, no master"),
            Var::new(
                "WHARF_WORKER_THREADS",
                "worker_threads",
                parse::count(1, 256),
            )
            .help("tokio threads per worker"),
            Var::new(
                "WHARF_READY_TIMEOUT_SECONDS",
                "ready_timeout_seconds",
                parse::seconds(1),
            )
            .help("time a new worker has to become ready"),
            Var::new(
                "WHARF_HEARTBEAT_TIMEOUT_SECONDS",
                "heartbeat_timeout_seconds",
                parse::seconds(1),
            )
            .help("a silent worker is killed after this"),
            Var::new(
                "WHARF_MAX_REQUESTS",
                "max_requests",
                parse::count(0, u64::MAX),
            )
            .help("recycle a worker after this many requests; 0 = never"),
            Var::new(
                "WHARF_MAX_REQUESTS_JITTER",
                "max_requests_jitter",
                parse::count(0, u64::MAX),
            )
            .help("random extra requests before recycling"),
            Var::new(
                "WHARF_MAX_MEMORY_BYTES",
                "max_memory_bytes",
                parse::bytes(0),
            )
            .help("recycle a worker above this RSS; 0 = never"),
            Var::new("WHARF_ADMIN_ADDRESS", "admin_address", parse::text())
                .help("master admin listener for /metrics"),
            Var::new(
                "WHARF_ACCEPT",
                "accept",
                parse::one_of(&["reuseport", "shared"]),
            )
            .help("reuseport: a socket per worker (even spread); shared: one socket"),
        ]
        .into_iter()
        .map(|v| v.under(section))
        .collect()
    }

    /// The worker count to run: configured, else one per CPU.
    pub fn worker_count(&self) -> usize {
        self.workers
            .map_or_else(cpus, |n| usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Tokio threads per worker: configured, else CPUs / workers (at least 1).
    pub fn threads_per_worker(&self) -> usize {
        self.worker_threads.map_or_else(
            || (cpus() / self.worker_count().max(1)).max(1),
            |n| usize::try_from(n).unwrap_or(1),
        )
    }

    /// [`ready_timeout_seconds`](Self::ready_timeout_seconds) as a `Duration`.
    pub fn ready_timeout(&self) -> Duration {
        Duration::from_secs(self.ready_timeout_seconds)
    }

    /// [`heartbeat_timeout_seconds`](Self::heartbeat_timeout_seconds) as a `Duration`.
    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_secs(self.heartbeat_timeout_seconds)
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}
