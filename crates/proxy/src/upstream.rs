//! Upstream groups: servers with weights and backups, balancing (smooth
//! weighted round robin as nginx, or least connections), and health (passive
//! from real traffic, active from periodic checks).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// One server of an upstream group (nginx `server addr weight=… backup
/// max_fails=… fail_timeout=…`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Relative share of requests. Default 1.
    pub weight: u32,
    /// Used only while every non-backup server is unavailable. Default false.
    pub backup: bool,
    /// Failures within `fail_timeout` that take the server out for
    /// `fail_timeout`; 0 never takes it out. Default 1 (as nginx).
    pub max_fails: u32,
    /// The window for counting failures and how long the server stays out.
    /// Default 10 s (as nginx).
    pub fail_timeout: Duration,
}

impl UpstreamServer {
    /// A server with nginx's defaults: weight 1, not backup, `max_fails=1`,
    /// `fail_timeout=10s`.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            weight: 1,
            backup: false,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
        }
    }

    /// Sets the weight.
    #[must_use]
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Marks it backup.
    #[must_use]
    pub fn backup(mut self) -> Self {
        self.backup = true;
        self
    }

    /// Sets `max_fails` and `fail_timeout`.
    #[must_use]
    pub fn max_fails(mut self, max_fails: u32, fail_timeout: Duration) -> Self {
        self.max_fails = max_fails;
        self.fail_timeout = fail_timeout;
        self
    }
}

/// How a server is chosen among the available ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Balance {
    /// Smooth weighted round robin, as nginx's default. The default.
    #[default]
    RoundRobin,
    /// Fewest requests in flight relative to weight, ties by round robin
    /// (nginx `least_conn`).
    LeastConn,
}

/// Active health checks (a `GET` of `path` every `interval`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The path requested, e.g. `/_status`. A 2xx or 3xx answer is healthy.
    pub path: String,
    /// Time between checks. Default 5 s.
    pub interval: Duration,
    /// Time a check may take. Default 2 s.
    pub timeout: Duration,
    /// Consecutive passes that bring a server back. Default 2.
    pub rise: u32,
    /// Consecutive failures that take a server out. Default 3.
    pub fall: u32,
}

impl HealthCheck {
    /// Checks of `path` with the default interval, timeout, rise and fall.
    pub fn new(path: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
        }
    }
}

/// Envoy's retry budget: retries in flight to a group are at most `percent`
/// of the requests in flight to it, and always at least `min_concurrent`, so
/// a failing server cannot double the load on the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBudget {
    /// Share of the requests in flight that may be retries. Default 20
    /// (Envoy's).
    pub percent: u8,
    /// Retries always allowed in flight, however few requests there are.
    /// Default 3 (Envoy's).
    pub min_concurrent: usize,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            percent: 20,
            min_concurrent: 3,
        }
    }
}

/// The default [`UpstreamConfig::panic_threshold`]: Envoy's 50 %.
pub const DEFAULT_PANIC_THRESHOLD: u8 = 50;

/// An upstream group's configuration (nginx `upstream name { … }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// The group's name, for logs and metrics.
    pub name: String,
    /// Its servers; at least one.
    pub servers: Vec<UpstreamServer>,
    /// The balancing method. Default round robin.
    pub balance: Balance,
    /// Idle keep-alive connections kept per server (`keepalive 32`). Default 32.
    pub keepalive: usize,
    /// Active health checks; default none (passive health only).
    pub health_check: Option<HealthCheck>,
    /// Panic routing (Envoy's panic threshold), in percent: while fewer than
    /// this share of the primary servers is available (and no backup can
    /// take over), requests go to every primary server, health ignored,
    /// rather than all to the few left or a 502 for everyone. 0 is nginx's
    /// behaviour (only available servers; none: 502). Default 50.
    pub panic_threshold: u8,
    /// Limits retries (to the next server) to a share of the requests in
    /// flight; `None` retries every retryable failure (nginx). Default
    /// Envoy's 20 %, at least 3.
    pub retry_budget: Option<RetryBudget>,
}

impl UpstreamConfig {
    /// A round-robin group of `servers` with a keep-alive pool of 32.
    pub fn new(name: impl Into<String>, servers: Vec<UpstreamServer>) -> Self {
        Self {
            name: name.into(),
            servers,
            balance: Balance::RoundRobin,
            keepalive: 32,
            health_check: None,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
            retry_budget: Some(RetryBudget::default()),
        }
    }
}

/// Run-time state of one server.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) config: UpstreamServer,
    /// `config.addr` as a URI authority, made once rather than per request.
    pub(crate) authority: Option<http::uri::Authority>,
    /// Requests in flight (for least-conn and metrics).
    pub(crate) active: AtomicUsize,
    /// Idle keep-alive connections (`keepalive N`).
    pub(crate) pool: crate::pool::Pool,
    /// Passive health: failures in the current window and when it started.
    fails: Mutex<(u32, Option<Instant>)>,
    /// Passive health: out until this instant.
    down_until: Mutex<Option<Instant>>,
    /// Active health verdict.
    pub(crate) healthy: AtomicBool,
    pub(crate) requests: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) check_passes: AtomicU32,
    pub(crate) check_fails: AtomicU32,
}

impl Peer {
    fn new(config: UpstreamServer, keepalive: usize) -> Self {
        Self {
            authority: http::uri::Authority::try_from(config.addr.to_string()).ok(),
            config,
            active: AtomicUsize::new(0),
            pool: crate::pool::Pool::new(keepalive),
            fails: Mutex::new((0, None)),
            down_until: Mutex::new(None),
            healthy: AtomicBool::new(true),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            check_passes: AtomicU32::new(0),
            check_fails: AtomicU32::new(0),
        }
    }

    /// Up: not taken out by passive or active health.
    pub(crate) fn available(&self, now: Instant) -> bool {
        if !self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        self.down_until
            .lock()
            .map_or(true, |until| until.is_none_or(|t| t <= now))
    }

    /// Records a failed attempt (connection error, timeout, 502/503/504).
    pub(crate) fn failed(&self, upstream: &str) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let max = self.config.max_fails;
        if max == 0 {
            return;
        }
        let window = self.config.fail_timeout;
        let now = Instant::now();
        let tripped = match self.fails.lock() {
            Ok(mut fails) => {
                let (count, since) = &mut *fails;
                if since.is_none_or(|s| now.duration_since(s) > window) {
                    *count = 0;
                    *since = Some(now);
                }
                *count += 1;
                if *count >= max {
                    *count = 0;
                    *since = None;
                    true
                } else {
                    false
                }
            }
            Err(_) => false,
        };
        if tripped {
            if let Ok(mut until) = self.down_until.lock() {
                *until = Some(now + window);
            }
            tracing::warn!(
                upstream,
                server = %self.config.addr,
                out_for_s = window.as_secs_f64(),
                "Upstream server failed {max} time(s); taking it out"
            );
        }
    }

    /// Records a good answer: the failure window starts over.
    pub(crate) fn succeeded(&self) {
        if let Ok(mut fails) = self.fails.lock() {
            if fails.0 != 0 {
                *fails = (0, None);
            }
        }
    }
}

/// A state snapshot of one server, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// The server's address.
    pub addr: SocketAddr,
    /// Whether it is a backup.
    pub backup: bool,
    /// Whether it currently takes requests.
    pub available: bool,
    /// Requests in flight.
    pub active: usize,
    /// Attempts sent to it.
    pub requests: u64,
    /// Attempts that failed.
    pub failures: u64,
    /// Connections opened to it (one per request without keep-alive).
    pub connections_opened: u64,
    /// Requests sent over a kept-alive connection: with
    /// `connections_opened`, the reuse rate (`reused / (reused + opened)`).
    pub connections_reused: u64,
}

/// A group's own counters, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct GroupStats {
    /// Whether the group is in panic routing now.
    pub panicking: bool,
    /// Requests routed while in panic (health ignored).
    pub panic_routed: u64,
    /// Retries started (a request sent to another server after a failure).
    pub retries: u64,
    /// Retries not started because the retry budget was spent, or the
    /// `next_upstream_timeout` had passed.
    pub retries_refused: u64,
}

/// An upstream group at run time: its servers' state and the balancer.
#[derive(Debug)]
pub struct Upstream {
    pub(crate) name: String,
    pub(crate) peers: Vec<Peer>,
    balance: Balance,
    pub(crate) health_check: Option<HealthCheck>,
    /// Smooth weighted round robin's current weights, one per peer.
    current: Mutex<Vec<i64>>,
    panic_threshold: u8,
    retry_budget: Option<RetryBudget>,
    panicking: AtomicBool,
    panic_routed: AtomicU64,
    /// Requests (not attempts) in flight to the group.
    pub(crate) in_flight: AtomicUsize,
    /// Retries in flight (second and later attempts of a request).
    pub(crate) retries_in_flight: AtomicUsize,
    retries: AtomicU64,
    retries_refused: AtomicU64,
}

/// Counts one in `counter` while it lives.
#[derive(Debug)]
pub(crate) struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    pub(crate) fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream {
    /// Builds the run-time group; `None` when it has no server.
    pub fn new(config: UpstreamConfig) -> Option<Arc<Self>> {
        if config.servers.is_empty() {
            return None;
        }
        let n = config.servers.len();
        Some(Arc::new(Self {
            name: config.name,
            peers: config
                .servers
                .into_iter()
                .map(|server| Peer::new(server, config.keepalive))
                .collect(),
            balance: config.balance,
            health_check: config.health_check,
            current: Mutex::new(vec![0; n]),
            panic_threshold: config.panic_threshold.min(100),
            retry_budget: config.retry_budget,
            panicking: AtomicBool::new(false),
            panic_routed: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            retries_in_flight: AtomicUsize::new(0),
            retries: AtomicU64::new(0),
            retries_refused: AtomicU64::new(0),
        }))
    }

    /// The group's own counters.
    pub fn group_stats(&self) -> GroupStats {
        GroupStats {
            panicking: self.panicking.load(Ordering::Relaxed),
            panic_routed: self.panic_routed.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            retries_refused: self.retries_refused.load(Ordering::Relaxed),
        }
    }

    /// Whether one more retry fits the budget now; counts it either way.
    /// The caller holds a [`Counted`] on `retries_in_flight` while it runs.
    pub(crate) fn retry_allowed(&self) -> bool {
        let allowed = self.retry_budget.is_none_or(|budget| {
            let in_flight = self.in_flight.load(Ordering::Relaxed);
            let share = in_flight * usize::from(budget.percent) / 100;
            self.retries_in_flight.load(Ordering::Relaxed) < share.max(budget.min_concurrent)
        });
        self.count_retry(allowed);
        allowed
    }

    /// Counts a retry started, or one refused (budget or time spent).
    pub(crate) fn count_retry(&self, started: bool) {
        let counter = if started {
            &self.retries
        } else {
            &self.retries_refused
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes whether the group is in panic now, logging each change.
    fn note_panic(&self, panic: bool, healthy: usize, primaries: usize) {
        // A plain load first: no write to the shared line on every request.
        if self.panicking.load(Ordering::Relaxed) == panic
            || self.panicking.swap(panic, Ordering::Relaxed) == panic
        {
            return;
        }
        if panic {
            tracing::warn!(
                upstream = %self.name,
                healthy,
                servers = primaries,
                threshold_percent = self.panic_threshold,
                "Too few upstream servers are healthy: routing to all of them (panic)"
            );
        } else {
            tracing::info!(upstream = %self.name, healthy, servers = primaries, "Enough upstream servers are healthy again: panic routing over");
        }
    }

    /// The group's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Each server's state.
    pub fn stats(&self) -> Vec<ServerStats> {
        let now = Instant::now();
        self.peers
            .iter()
            .map(|p| ServerStats {
                addr: p.config.addr,
                backup: p.config.backup,
                available: p.available(now),
                active: p.active.load(Ordering::Relaxed),
                requests: p.requests.load(Ordering::Relaxed),
                failures: p.failures.load(Ordering::Relaxed),
                connections_opened: p.pool.opened.load(Ordering::Relaxed),
                connections_reused: p.pool.reused.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Chooses a server not in `tried`: available primaries first, then
    /// available backups. When none is available, `None` (a 502), unless the
    /// group has a single server (which, as in nginx, is always tried).
    ///
    /// Panic routing: while fewer than `panic_threshold` percent of the
    /// primaries are available, and no backup can take over from none, every
    /// primary not tried is a candidate, available or not.
    pub(crate) fn pick(&self, tried: &[usize]) -> Option<usize> {
        // One server: tried once, available or not (as below, without the
        // candidate lists).
        if self.peers.len() == 1 {
            return tried.is_empty().then_some(0);
        }
        let now = Instant::now();
        let usable = |i: usize| self.peers[i].config.weight > 0 && !tried.contains(&i);
        let eligible = |i: usize, backup: bool| {
            let p = &self.peers[i];
            p.config.backup == backup && usable(i) && p.available(now)
        };
        if self.panic_threshold > 0 {
            // One pass, no allocation: the group is in panic rarely, and
            // every request asks.
            let (mut primaries, mut healthy) = (0_usize, 0_usize);
            for p in &self.peers {
                if !p.config.backup && p.config.weight > 0 {
                    primaries += 1;
                    healthy += usize::from(p.available(now));
                }
            }
            let below = healthy * 100 < primaries * usize::from(self.panic_threshold);
            let panic =
                below && !(healthy == 0 && (0..self.peers.len()).any(|i| eligible(i, true)));
            self.note_panic(panic, healthy, primaries);
            if panic {
                let candidates: Vec<usize> = (0..self.peers.len())
                    .filter(|&i| !self.peers[i].config.backup && usable(i))
                    .collect();
                if !candidates.is_empty() {
                    self.panic_routed.fetch_add(1, Ordering::Relaxed);
                    return Some(self.choose(&candidates));
                }
            }
        }
        for backup in [false, true] {
            let candidates: Vec<usize> = (0..self.peers.len())
                .filter(|&i| eligible(i, backup))
                .collect();
            if !candidates.is_empty() {
                return Some(self.choose(&candidates));
            }
        }
        None
    }

    fn choose(&self, candidates: &[usize]) -> usize {
        let candidates: Vec<usize> = match self.balance {
            Balance::RoundRobin => candidates.to_vec(),
            Balance::LeastConn => {
                // Fewest in flight per unit of weight: compare a/w with b/w'
                // as a*w' < b*w to stay in integers.
                let load = |i: usize| {
                    let p = &self.peers[i];
                    (
                        p.active.load(Ordering::Relaxed) as u128,
                        u128::from(p.config.weight),
                    )
                };
                let best = candidates
                    .iter()
                    .copied()
                    .min_by(|&a, &b| {
                        let (la, wa) = load(a);
                        let (lb, wb) = load(b);
                        (la * wb).cmp(&(lb * wa))
                    })
                    .unwrap_or(candidates[0]);
                let (lbest, wbest) = load(best);
                candidates
                    .iter()
                    .copied()
                    .filter(|&i| {
                        let (l, w) = load(i);
                        l * wbest == lbest * w
                    })
                    .collect()
            }
        };
        self.smooth_weighted(&candidates)
    }

    /// nginx's smooth weighted round robin: every candidate's current weight
    /// grows by its weight; the largest wins and loses the total.
    fn smooth_weighted(&self, candidates: &[usize]) -> usize {
        let Ok(mut current) = self.current.lock() else {
            return candidates[0];
        };
        let mut total = 0i64;
        let mut best = candidates[0];
        for &i in candidates {
            let weight = i64::from(self.peers[i].config.weight);
            current[i] += weight;
            total += weight;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn smooth_weighted_round_robin_spreads_like_nginx() {
        let up = Upstream::new(UpstreamConfig::new(
            "u",
            vec![
                UpstreamServer::new(addr(1)).weight(5),
                UpstreamServer::new(addr(2)),
                UpstreamServer::new(addr(3)),
            ],
        ))
        .unwrap();
        let picks: Vec<usize> = (0..7).map(|_| up.pick(&[]).unwrap()).collect();
        // nginx's documented sequence for weights 5,1,1: a a b a c a a.
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }

    /// A group without panic routing, as nginx's.
    fn nginx_like(servers: Vec<UpstreamServer>) -> Arc<Upstream> {
        Upstream::new(UpstreamConfig {
            panic_threshold: 0,
            ..UpstreamConfig::new("u", servers)
        })
        .unwrap()
    }

    #[test]
    fn below_the_panic_threshold_every_primary_takes_requests() {
        let servers = || {
            (1..=4)
                .map(|p| UpstreamServer::new(addr(p)))
                .collect::<Vec<_>>()
        };
        let up = Upstream::new(UpstreamConfig::new("u", servers())).unwrap();
        let nginx = nginx_like(servers());
        for group in [&up, &nginx] {
            for peer in &group.peers[1..] {
                peer.healthy.store(false, Ordering::Relaxed);
            }
        }
        // 1 of 4 healthy (25 % < 50 %): spread over all four.
        let mut picks: Vec<usize> = (0..8).map(|_| up.pick(&[]).unwrap()).collect();
        picks.sort_unstable();
        assert_eq!(picks, [0, 0, 1, 1, 2, 2, 3, 3]);
        let stats = up.group_stats();
        assert!(stats.panicking);
        assert_eq!(stats.panic_routed, 8);
        // A retry still goes to a server not tried.
        assert_ne!(up.pick(&[0, 1]), Some(0));
        // Threshold 0: nginx, the healthy one only.
        assert!((0..8).all(|_| nginx.pick(&[]) == Some(0)));
        assert_eq!(nginx.group_stats(), GroupStats::default());
        // 2 of 4 healthy (50 %): not below, no panic.
        up.peers[1].healthy.store(true, Ordering::Relaxed);
        let mut picks: Vec<usize> = (0..4).map(|_| up.pick(&[]).unwrap()).collect();
        picks.sort_unstable();
        assert_eq!(picks, [0, 0, 1, 1]);
        assert!(!up.group_stats().panicking);
    }

    #[test]
    fn with_every_primary_out_the_backup_serves_then_panic_tries_them() {
        let up = Upstream::new(UpstreamConfig::new(
            "u",
            vec![
                UpstreamServer::new(addr(1)),
                UpstreamServer::new(addr(2)),
                UpstreamServer::new(addr(3)).backup(),
            ],
        ))
        .unwrap();
        up.peers[0].failed("u");
        up.peers[1].failed("u");
        assert_eq!(up.pick(&[]), Some(2));
        assert!(!up.group_stats().panicking);
        // The backup failed too: the primaries, not a 502.
        assert!(matches!(up.pick(&[2]), Some(0 | 1)));
        assert!(up.group_stats().panicking);
    }

    #[test]
    fn the_retry_budget_is_a_share_of_requests_in_flight() {
        let up = Upstream::new(UpstreamConfig {
            retry_budget: Some(RetryBudget {
                percent: 20,
                min_concurrent: 1,
            }),
            ..UpstreamConfig::new("u", vec![UpstreamServer::new(addr(1))])
        })
        .unwrap();
        let requests: Vec<Counted<'_>> = (0..10).map(|_| Counted::new(&up.in_flight)).collect();
        // 20 % of 10 in flight: two retries at once, not three.
        let first = up
            .retry_allowed()
            .then(|| Counted::new(&up.retries_in_flight));
        let second = up
            .retry_allowed()
            .then(|| Counted::new(&up.retries_in_flight));
        assert!(first.is_some() && second.is_some());
        assert!(!up.retry_allowed());
        drop(first);
        assert!(up.retry_allowed());
        let stats = up.group_stats();
        assert_eq!((stats.retries, stats.retries_refused), (3, 1));
        // With one request in flight, the floor of one retry.
        drop(requests);
        drop(second);
        let _one = Counted::new(&up.in_flight);
        assert!(up.retry_allowed());
        let _retry = Counted::new(&up.retries_in_flight);
        assert!(!up.retry_allowed());
    }

    #[test]
    fn backups_only_when_primaries_are_out() {
        let up = nginx_like(vec![
            UpstreamServer::new(addr(1)),
            UpstreamServer::new(addr(2)).backup(),
        ]);
        assert_eq!(up.pick(&[]), Some(0));
        assert_eq!(up.pick(&[0]), Some(1));
        up.peers[0].failed("u");
        assert_eq!(up.pick(&[]), Some(1));
        assert_eq!(up.pick(&[1]), None);
    }

    #[test]
    fn max_fails_within_fail_timeout_takes_a_server_out() {
        let up = Upstream::new(UpstreamConfig::new(
            "u",
            vec![
                UpstreamServer::new(addr(1)).max_fails(2, Duration::from_secs(30)),
                UpstreamServer::new(addr(2)),
            ],
        ))
        .unwrap();
        up.peers[0].failed("u");
        assert!(up.peers[0].available(Instant::now()));
        up.peers[0].failed("u");
        assert!(!up.peers[0].available(Instant::now()));
        assert_eq!(up.pick(&[]), Some(1));
        assert_eq!(up.pick(&[]), Some(1));
    }

    #[test]
    fn least_conn_prefers_the_idle_server() {
        let mut config = UpstreamConfig::new(
            "u",
            vec![UpstreamServer::new(addr(1)), UpstreamServer::new(addr(2))],
        );
        config.balance = Balance::LeastConn;
        let up = Upstream::new(config).unwrap();
        up.peers[0].active.store(3, Ordering::Relaxed);
        for _ in 0..4 {
            assert_eq!(up.pick(&[]), Some(1));
        }
    }
}
