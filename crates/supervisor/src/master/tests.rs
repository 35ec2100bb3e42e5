use super::*;

pub(super) fn worker(slot: usize, in_flight: u64, rss: u64, draining: bool) -> Worker {
    let (control, _) = mpsc::unbounded_channel();
    Worker {
        slot,
        started: Instant::now(),
        ready: true,
        draining_since: draining.then(Instant::now),
        last_heartbeat: Instant::now(),
        requests: 0,
        in_flight,
        rss,
        recycle_at: None,
        replacement_queued: false,
        killed_for: None,
        stall_reported: None,
        wants_metrics: false,
        control,
        sockets: Vec::new(),
    }
}

/// Slot 0 mid-replacement (its old worker draining beside the new one):
/// still one series per slot, and each per-slot family in one group.
#[test]
fn per_slot_gauges_are_one_group_each_with_one_series_per_slot() {
    let mut master = Master::new(
        SupervisorSection::default(),
        Duration::from_secs(1),
        Vec::new(),
    )
    .unwrap();
    master.workers.insert(10, worker(0, 2, 100, true));
    master.workers.insert(11, worker(0, 1, 50, false));
    master.workers.insert(12, worker(1, 0, 70, false));
    master.render_metrics();
    let text = master.metrics.lock().unwrap().clone();
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("wharf_worker_in_flight") || l.contains("wharf_worker_rss"))
        .collect();
    assert_eq!(
        lines,
        [
            "# HELP wharf_worker_in_flight Requests in flight per worker slot.",
            "# TYPE wharf_worker_in_flight gauge",
            "wharf_worker_in_flight{slot=\"0\"} 3",
            "wharf_worker_in_flight{slot=\"1\"} 0",
            "# HELP wharf_worker_rss_bytes Resident memory per worker slot.",
            "# TYPE wharf_worker_rss_bytes gauge",
            "wharf_worker_rss_bytes{slot=\"0\"} 150",
            "wharf_worker_rss_bytes{slot=\"1\"} 70",
        ],
        "{text}"
    );
    assert!(text.contains("\nwharf_workers_rss_bytes 220\n"), "{text}");
}
