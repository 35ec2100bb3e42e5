//! When workers are replaced or restarted: the per-tick checks (heartbeat,
//! drain timeout, request and memory limits), the one-at-a-time replacement
//! queue through the readiness gate, and the back-off after crashes.

use std::time::Duration;

use tokio::time::Instant;

use super::reports::check_heartbeat;
use super::{Master, Reason, Replacement, KILL_MARGIN};
use crate::sys::{self, ExitKind};

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(15);
const STABLE_UPTIME: Duration = Duration::from_secs(30);

impl Master {
    pub(super) fn on_exit(&mut self, pid: u32, kind: ExitKind) {
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
                let reason = replacement.reason;
                self.replacing = None;
                self.replacement_failed(reason);
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

    pub(super) fn check(&mut self, now: Instant, sample_memory: bool) {
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
        self.prune_retired();
        if self.reloading && self.replacing.is_none() && self.queue.is_empty() {
            self.reloading = false;
            self.rollback = None;
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
                let reason = replacement.reason;
                self.replacing = None;
                self.replacement_failed(reason);
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
                    Err(error) => {
                        tracing::error!(slot, %error, "Cannot start replacement worker");
                        self.replacement_failed(reason);
                    }
                }
            }
        }
    }
}
