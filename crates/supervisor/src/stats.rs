//! [`WorkerStats`]: what a worker reports in its heartbeats.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Counters a worker shares with its heartbeat task.
#[derive(Debug, Default)]
pub struct WorkerStats {
    requests: AtomicU64,
    in_flight: AtomicU64,
}

impl WorkerStats {
    /// Requests started since the worker began.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests whose response is not finished.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request start; the guard counts its end when dropped.
    pub fn start_request(self: &Arc<Self>) -> InFlightGuard {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(Arc::clone(self))
    }
}

/// Ends an in-flight request when dropped.
#[derive(Debug)]
pub struct InFlightGuard(Arc<WorkerStats>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
