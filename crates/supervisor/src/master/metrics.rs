//! The instance's metrics: worker states, restarts, requests, in-flight
//! requests and memory per slot, the listen queues, and the workers' own
//! metrics summed; rendered for the admin listener and sent to the workers
//! that asked for them.

use std::collections::BTreeMap;
use std::os::fd::AsFd as _;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use wharf_telemetry::metrics::{Family, Snapshot};

use super::{Master, Reason};
use crate::config::AcceptMode;
use crate::worker::INSTANCE_METRICS_TAG;

/// How often subscribed workers get the instance's metrics.
const BROADCAST_EVERY: Duration = Duration::from_secs(1);

impl Master {
    pub(super) fn render_metrics(&mut self) {
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
}
