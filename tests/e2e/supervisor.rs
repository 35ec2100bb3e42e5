//! `frontend` under wharf-supervisor: real processes, real signals, real load.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::load::Load;
use crate::support::{command, free_port, start, Process};

const FRONTEND: &str = env!("CARGO_BIN_EXE_frontend");

struct Instance {
    running: Process,
    admin: u16,
}

fn instance(workers: u32, extra: &[(&'static str, &str)]) -> Instance {
    let port = free_port();
    let admin = free_port();
    let mut env = HashMap::from([
        ("PORT", port.to_string()),
        ("WEB_CONCURRENCY", workers.to_string()),
        ("WHARF_ADMIN_ADDRESS", format!("127.0.0.1:{admin}")),
        ("WHARF_LOG_FORMAT", "json".to_owned()),
        ("WHARF_ACCESS_LOG", "false".to_owned()),
        ("WHARF_GRACEFUL_TIMEOUT_SECONDS", "5".to_owned()),
    ]);
    for (k, v) in extra {
        env.insert(k, (*v).to_owned());
    }
    let running = start(FRONTEND, &["serve"], &env, port);
    let instance = Instance { running, admin };
    instance.wait_for(Duration::from_secs(10), |i| {
        i.ready_workers() == workers as usize
    });
    instance
}

impl Instance {
    fn metrics(&self) -> String {
        crate::support::curl(&[&format!("http://127.0.0.1:{}/metrics", self.admin)]).1
    }

    fn metric(&self, name: &str) -> u64 {
        let metrics = self.metrics();
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {metrics}"))
    }

    fn ready_workers(&self) -> usize {
        let metrics = self.metrics();
        metrics
            .lines()
            .find(|l| l.starts_with("wharf_workers{state=\"ready\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The master's children (its workers).
    fn workers(&self) -> Vec<u32> {
        let pid = self.running.pid();
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    fn wait_for(&self, timeout: Duration, condition: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !condition(self) {
            assert!(
                Instant::now() < deadline,
                "condition not met within {timeout:?}; metrics:\n{}",
                self.metrics()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn kill(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.split_whitespace()
            .nth(2)
            .is_none_or(|state| state != "Z")
    })
}

#[test]
fn a_killed_worker_is_replaced_within_a_second_and_only_its_requests_fail() {
    let instance = instance(2, &[]);
    let load = Load::start(instance.running.addr(), 4, "/_status");
    std::thread::sleep(Duration::from_millis(500));
    let before = instance.metric("wharf_requests_total");
    let victim = instance.workers()[0];
    kill(victim, "KILL");
    let killed_at = Instant::now();
    instance.wait_for(Duration::from_secs(1), |i| {
        let workers = i.workers();
        workers.len() == 2 && !workers.contains(&victim) && i.ready_workers() == 2
    });
    let replaced_in = killed_at.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let (ok, refused, failed, errors) = load.finish();
    assert!(ok > 100, "ok {ok}");
    assert_eq!(refused, 0);
    // At most the requests the killed worker had in flight: one per load thread.
    assert!(failed <= 4, "failed {failed}: {errors:?}");
    assert!(replaced_in < Duration::from_secs(1), "{replaced_in:?}");
    assert_eq!(
        instance.metric("wharf_worker_restarts_total{reason=\"crash\"}"),
        1
    );
    // Per-slot counters stay monotonic across the replacement.
    assert!(instance.metric("wharf_requests_total") >= before);
}

#[test]
fn sighup_replaces_every_worker_under_load_with_zero_failed_requests() {
    let instance = instance(2, &[]);
    let old = instance.workers();
    let load = Load::start(instance.running.addr(), 4, "/_status");
    std::thread::sleep(Duration::from_millis(300));
    kill(instance.running.pid(), "HUP");
    instance.wait_for(Duration::from_secs(10), |i| {
        i.metric("wharf_worker_restarts_total{reason=\"reload\"}") == 2 && i.workers().len() == 2
    });
    std::thread::sleep(Duration::from_millis(300));
    let (ok, refused, failed, errors) = load.finish();
    let new = instance.workers();
    assert!(
        new.iter().all(|pid| !old.contains(pid)),
        "old {old:?} new {new:?}"
    );
    assert!(ok > 100, "ok {ok}");
    assert_eq!((refused, failed), (0, 0), "{errors:?}");
}

#[test]
fn max_requests_recycles_workers_under_load_with_zero_failed_requests() {
    let instance = instance(
        2,
        &[
            ("WHARF_MAX_REQUESTS", "300"),
            ("WHARF_MAX_REQUESTS_JITTER", "50"),
        ],
    );
    let load = Load::start(instance.running.addr(), 4, "/_status");
    instance.wait_for(Duration::from_secs(20), |i| {
        i.metric("wharf_worker_restarts_total{reason=\"max_requests\"}") >= 2
    });
    let (ok, refused, failed, errors) = load.finish();
    assert!(ok > 600, "ok {ok}");
    assert_eq!((refused, failed), (0, 0), "{errors:?}");
}

#[test]
fn sigterm_under_load_loses_no_accepted_request_and_exits_in_time() {
    let _cpu = crate::support::quiet_cpu();
    let instance = instance(2, &[]);
    let load = Load::start(instance.running.addr(), 4, "/_status");
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let Instance { running, .. } = instance;
    running.signal("TERM");
    let out = running.wait_exit(Duration::from_secs(10));
    let exited_in = started.elapsed();
    std::thread::sleep(Duration::from_millis(100));
    let (ok, _refused, failed, errors) = load.finish();
    assert!(out.status.success(), "{out:?}");
    assert!(exited_in < Duration::from_secs(5), "{exited_in:?}");
    assert!(ok > 100);
    assert_eq!(failed, 0, "accepted requests failed: {errors:?}");
}

#[test]
fn a_worker_with_a_blocked_runtime_is_killed_and_replaced() {
    let instance = instance(
        2,
        &[
            ("_WHARF_TEST_HOOKS", "1"),
            ("_WHARF_TEST_BLOCK_SLOT", "1"),
            ("WHARF_HEARTBEAT_TIMEOUT_SECONDS", "1"),
            ("WHARF_WORKER_THREADS", "1"),
        ],
    );
    instance.wait_for(Duration::from_secs(10), |i| {
        i.metric("wharf_worker_restarts_total{reason=\"blocked\"}") >= 1
    });
    // The replacement for slot 1 blocks too (same hook); slot 0 keeps serving.
    let (ok, body) = crate::support::curl(&[&instance.running.url("/_status")]);
    assert!(ok && body.contains("\"status\":\"ok\""));
    let Instance { running, .. } = instance;
    running.signal("KILL");
    let out = running.wait_exit(Duration::from_secs(5));
    let logs = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = logs.lines().collect();
    let position = |needle: &str| slot_line(&lines, needle, 1, &logs);
    // Two stages: the worker is asked to log its threads, it does (from a
    // thread outside the stuck runtime), and only then is it killed.
    let asked = position("asking it to log its threads");
    let killed = position("killing it (SIGKILL)");
    let report = lines
        .iter()
        .position(|l| l.contains("Runtime blocked: the master saw no heartbeat"))
        .unwrap_or_else(|| panic!("the blocked worker logged no thread report:\n{logs}"));
    assert!(asked < report && report < killed, "{logs}");
    // The report names the runtime's thread asleep in the blocking call. One
    // thread per worker (set above) is tokio's current-thread runtime, which
    // runs on the process's main thread: `frontend[tid] S clock_nanosleep …`.
    assert!(
        lines[report]
            .split(';')
            .any(|thread| thread.contains("frontend[") && thread.contains("nanosleep")),
        "{}",
        lines[report]
    );
}

#[test]
fn a_stalled_worker_is_replaced_before_the_heartbeat_timeout_kills_it() {
    // With a socket per worker slot, a stalled worker's slot keeps receiving
    // new connections: a replacement must take the slot's queue long before
    // the (default, 30 s) heartbeat timeout. Only the first slot-1 worker
    // blocks (the marker file), so its replacement serves.
    let marker = tempfile::tempdir().unwrap();
    let once = marker.path().join("blocked");
    let once = once.to_str().unwrap();
    let instance = instance(
        2,
        &[
            ("_WHARF_TEST_HOOKS", "1"),
            ("_WHARF_TEST_BLOCK_SLOT", "1"),
            ("_WHARF_TEST_BLOCK_ONCE_FILE", once),
            ("WHARF_ACCEPT", "reuseport"),
            // Longer than the 5 s after which a replacement starts.
            ("WHARF_HEARTBEAT_TIMEOUT_SECONDS", "10"),
        ],
    );
    let started = Instant::now();
    instance.wait_for(Duration::from_secs(15), |i| {
        i.metric("wharf_worker_restarts_total{reason=\"blocked\"}") >= 1
    });
    let replaced_after = started.elapsed();
    assert!(
        replaced_after < Duration::from_secs(10),
        "the replacement should be ready before the heartbeat timeout; took {replaced_after:?}"
    );
    // Every new connection is answered now, whichever slot's socket the
    // kernel picks (each curl is a new connection from a new port).
    for i in 0..30 {
        let (ok, body) =
            crate::support::curl(&["--max-time", "3", &instance.running.url("/_status")]);
        assert!(
            ok && body.contains("\"status\":\"ok\""),
            "request {i} failed"
        );
    }
    // The silent worker is still aborted at the heartbeat timeout (it never
    // reads the drain request); wait for that, so nothing outlives the test.
    std::thread::sleep(Duration::from_secs(13).saturating_sub(started.elapsed()));
    let Instance { running, .. } = instance;
    running.signal("TERM");
    let out = running.wait_exit(Duration::from_secs(40));
    let logs = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = logs.lines().collect();
    let position = |needle: &str| slot_line(&lines, needle, 1, &logs);
    // Replaced first, killed only later: the order an operator sees.
    let stalled = position("Worker runtime stalled");
    let replaced = position("Replaced worker");
    let killed = position("killing it (SIGKILL)");
    assert!(stalled < replaced && replaced < killed, "{logs}");
}

#[test]
fn a_crash_loop_backs_off_exponentially() {
    let instance = instance(
        1,
        &[
            ("_WHARF_TEST_HOOKS", "1"),
            ("_WHARF_TEST_EXIT_AFTER_MS", "100"),
        ],
    );
    instance.wait_for(Duration::from_secs(10), |i| {
        i.metric("wharf_worker_restarts_total{reason=\"crash\"}") >= 4
    });
    let Instance { running, .. } = instance;
    running.signal("KILL");
    let out = running.wait_exit(Duration::from_secs(5));
    let logs = String::from_utf8_lossy(&out.stdout);
    let delays: Vec<u64> = logs
        .lines()
        .filter(|l| l.contains("Restarting worker after back-off"))
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["delay_ms"].as_u64())
        .collect();
    assert!(delays.len() >= 3, "{logs}");
    assert_eq!(&delays[..3], &[500, 750, 1125], "{delays:?}");
}

#[test]
fn workers_that_never_become_ready_fail_the_start() {
    let port = free_port();
    let out = command(
        FRONTEND,
        &HashMap::from([
            ("PORT", port.to_string()),
            ("WEB_CONCURRENCY", "2".to_owned()),
            ("_WHARF_TEST_HOOKS", "1".to_owned()),
            ("_WHARF_TEST_FAIL_BEFORE_READY", "1".to_owned()),
            ("WHARF_LOG_FORMAT", "json".to_owned()),
        ]),
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let logs = String::from_utf8_lossy(&out.stdout);
    assert!(logs.contains("test hook: failing before ready"), "{logs}");
    assert!(logs.contains("workers failed to start"), "{logs}");
}

#[test]
fn ttin_and_ttou_change_the_worker_count() {
    let instance = instance(2, &[]);
    let master = instance.running.pid();
    kill(master, "TTIN");
    instance.wait_for(Duration::from_secs(5), |i| {
        i.ready_workers() == 3 && i.workers().len() == 3
    });
    // One at a time: two of the same signal sent back to back can arrive as
    // one (the kernel keeps one pending signal of a kind), as with gunicorn.
    kill(master, "TTOU");
    instance.wait_for(Duration::from_secs(5), |i| i.ready_workers() == 2);
    kill(master, "TTOU");
    instance.wait_for(Duration::from_secs(5), |i| {
        i.ready_workers() == 1 && i.workers().len() == 1
    });
    let (ok, _) = crate::support::curl(&[&instance.running.url("/_status")]);
    assert!(ok);
}

#[test]
fn workers_do_not_outlive_a_killed_master() {
    let instance = instance(2, &[]);
    let workers = instance.workers();
    assert_eq!(workers.len(), 2);
    let Instance { running, .. } = instance;
    running.signal("KILL");
    let _ = running.wait_exit(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(5);
    while workers.iter().any(|pid| alive(*pid)) {
        assert!(
            Instant::now() < deadline,
            "orphaned workers still running: {workers:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn zero_workers_serves_from_one_process() {
    let port = free_port();
    let running = start(
        FRONTEND,
        &["serve", "--workers", "0"],
        &HashMap::from([("PORT", port.to_string())]),
        port,
    );
    let (ok, body) = crate::support::curl(&[&running.url("/_status")]);
    assert!(ok && body.contains("\"status\":\"ok\""));
    let pid = running.pid();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    assert_eq!(children.trim(), "", "no worker processes");
}

#[test]
fn sigusr2_upgrades_the_binary_under_load_with_zero_failed_requests() {
    let instance = instance(2, &[]);
    let old_master = instance.running.pid();
    let old_workers = instance.workers();
    let load = Load::start(instance.running.addr(), 4, "/_status");
    std::thread::sleep(Duration::from_millis(300));
    kill(old_master, "USR2");
    // The new master is the old master's child that is not one of its workers.
    let deadline = Instant::now() + Duration::from_secs(5);
    let new_master = loop {
        if let Some(pid) = instance
            .workers()
            .into_iter()
            .find(|p| !old_workers.contains(p))
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "no new master started");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Whatever happens below, the new master (not our child) is stopped.
    let _new_master_guard = KillOnDrop(new_master);
    let Instance { running, .. } = instance;
    // The old master drains and exits once the new workers are ready.
    let status = running.wait_status(Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(500));
    let (ok, refused, failed, errors) = load.finish();
    assert!(status.success(), "{status:?}");
    // The new master serves, with workers of its own.
    let new_workers: Vec<u32> =
        std::fs::read_to_string(format!("/proc/{new_master}/task/{new_master}/children"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
    kill(new_master, "TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(new_master) {
        assert!(Instant::now() < deadline, "new master did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        new_workers.len(),
        2,
        "new master's workers: {new_workers:?}"
    );
    assert!(ok > 100, "ok {ok}");
    assert_eq!((refused, failed), (0, 0), "{errors:?}");
    assert!(old_workers.iter().all(|pid| !alive(*pid)));
}

/// Kills a process that is not our child (a new master) when dropped.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if alive(self.0) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

#[test]
fn the_master_speaks_sd_notify_ready_and_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let port = free_port();
    let env = HashMap::from([
        ("PORT", port.to_string()),
        ("WEB_CONCURRENCY", "1".to_owned()),
        ("NOTIFY_SOCKET", path.display().to_string()),
        ("WATCHDOG_USEC", "400000".to_owned()),
    ]);
    let running = start(FRONTEND, &["serve"], &env, port);
    let mut messages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0_u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        if messages
            .iter()
            .filter(|m| m.as_str() == "WATCHDOG=1")
            .count()
            >= 2
        {
            break;
        }
    }
    let master = running.pid();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("READY=1") && m.contains(&format!("MAINPID={master}"))),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .filter(|m| m.as_str() == "WATCHDOG=1")
            .count()
            >= 2,
        "{messages:?}"
    );
    running.signal("TERM");
    let _ = running.wait_status(Duration::from_secs(10));
    let mut stopping = false;
    while let Ok(n) = socket.recv(&mut buf) {
        stopping |= String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
    }
    assert!(stopping, "no STOPPING=1");
}

/// Index of the first log line containing `needle` for worker `slot`.
fn slot_line(lines: &[&str], needle: &str, slot: usize, logs: &str) -> usize {
    let tag = format!("\"slot\":{slot}");
    lines
        .iter()
        .position(|l| l.contains(needle) && l.contains(&tag))
        .unwrap_or_else(|| panic!("no {needle:?} line for slot {slot}:\n{logs}"))
}
