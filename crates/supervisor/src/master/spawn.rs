//! Starting a worker: its listening sockets (in `reuseport` mode a set per
//! slot), the re-exec with its file descriptors, and its report and control
//! channels.

use std::net::TcpListener;
use std::os::unix::net::UnixStream as StdUnixStream;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::reports::read_reports;
use super::{Event, Master, Worker};
use crate::config::AcceptMode;
use crate::sys;
use crate::worker::{encode_addrs, ENV_ADDRS, ENV_LISTENERS, ENV_MASTER_PID, ENV_SLOT};
use crate::SupervisorError;

impl Master {
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
    pub(super) fn slot_fds(&mut self, slot: usize) -> Vec<i32> {
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
    pub(super) fn close_slot_sockets(&mut self, slot: usize) {
        if let Some(listeners) = self.slot_listeners.remove(&slot) {
            sys::refuse_all(&listeners);
        }
    }

    pub(super) fn spawn(&mut self, slot: usize) -> Result<u32, SupervisorError> {
        let (ours, theirs) = StdUnixStream::pair().map_err(SupervisorError::Spawn)?;
        let mut fds = self.slot_fds(slot);
        let listener_count = fds.len();
        fds.push(sys::raw(&theirs));
        fds.extend(self.shared.iter().map(|s| s.raw_fd()));
        let env = vec![
            (ENV_SLOT.to_owned(), slot.to_string()),
            (ENV_LISTENERS.to_owned(), listener_count.to_string()),
            (ENV_MASTER_PID.to_owned(), self.pid.to_string()),
            (ENV_ADDRS.to_owned(), encode_addrs(&self.addrs)),
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
                sockets: self.held.iter().map(|held| held.id).collect(),
            },
        );
        tracing::info!(slot, pid, "Started worker");
        Ok(pid)
    }
}
