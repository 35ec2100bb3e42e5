//! Stopping: draining every worker within the grace period, killing the
//! rest, and the binary upgrade (SIGUSR2) that hands the sockets to a new
//! master instead.

use std::net::TcpListener;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::{Master, KILL_MARGIN};
use crate::sys;

impl Master {
    pub(super) async fn stop_all_now(&mut self) {
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

    /// SIGUSR2: starts a new master from the binary on disk, handing it the
    /// listening sockets. It boots its own workers and, once they are all
    /// ready, sends this master SIGTERM; until then this one keeps serving,
    /// and if the new one fails, nothing changes.
    pub(super) fn upgrade(&mut self) {
        if self.upgrading.is_some() {
            tracing::warn!("SIGUSR2: an upgrade is already in progress");
            return;
        }
        // The current sockets and the retired ones (the new master may take
        // those back), each with the address it stands for.
        let handover = self.handover();
        let mut fds: Vec<i32> = handover.listeners.iter().map(|l| sys::raw(*l)).collect();
        fds.extend(self.shared.iter().map(|s| s.raw_fd()));
        let env = crate::upgrade::env(&handover, &self.shared, self.pid);
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

    pub(super) async fn shutdown(&mut self, fast: bool) {
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
            closing.extend(self.retired_sockets());
        } else {
            tracing::info!("Handing over to the new master");
        }
        // Handshakes already under way complete into the backlog, which the
        // workers take before they close (wharf-http's drain watches the
        // kernel's view of the socket for them).
        sys::refuse_all(closing.iter().copied());
        self.listeners.clear();
        self.slot_listeners.clear();
        self.retired.clear();
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
