//! The report channel from each worker: reading its lines and metrics
//! blocks into events, and judging its heartbeats.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;
use wharf_telemetry::metrics::Snapshot;

use super::{Event, Reason, Worker};
use crate::sys;
use crate::worker::{Report, METRICS_TAG};

/// A worker silent this long gets a replacement started for its slot at once
/// (readiness-gated, like a reload), well before the heartbeat timeout kills
/// it: the replacement takes the slot's queue, so with a socket per slot new
/// connections do not wait for the kill. Only when shorter than the timeout.
const STALL_REPLACE_AFTER: Duration = Duration::from_secs(5);
/// How long a silent worker has to log its threads before SIGKILL.
const STALL_REPORT_WAIT: Duration = Duration::from_secs(1);

/// Reads a worker's reports: lines, and length-prefixed metrics blocks.
pub(super) async fn read_reports(
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
pub(super) fn check_heartbeat(
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
