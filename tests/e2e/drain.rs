//! SIGTERM under load, many times over: a stopping `frontend` never resets a
//! connection it let a client open (issue 26). The drain decides when to
//! close its listening socket from what the kernel reports about the socket,
//! not from a timer, so this holds however the scheduler delays it.
//!
//! Each run starts `frontend` with two workers (the access log on, as
//! deployed), loads it from four client threads, sends SIGTERM and counts
//! every connection that was established and then failed. Runs go as root
//! (the socket filter refuses new connections) and, where `setpriv` can drop
//! to `nobody`, unprivileged (the kernel refuses the filter; the master
//! shrinks the queue instead).
//!
//! `WHARF_DRAIN_RUNS` sets the runs per user (default 6), `WHARF_DRAIN_HOGS`
//! how many busy-looping processes compete for the CPUs meanwhile (default
//! 0). The figure in docs/reliability.md: `WHARF_DRAIN_RUNS=200
//! WHARF_DRAIN_HOGS=2 cargo test --release --test e2e drain`.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::load::Load;
use crate::support::{free_port, is_root, skipped, Process};

const FRONTEND: &str = env!("CARGO_BIN_EXE_frontend");

fn setting(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Busy-looping processes, killed on drop.
struct Hogs(Vec<Child>);

impl Hogs {
    fn start(count: u32) -> Self {
        Self(
            (0..count)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .unwrap()
                })
                .collect(),
        )
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for hog in &mut self.0 {
            let _ = hog.kill();
            let _ = hog.wait();
        }
    }
}

/// What one run saw.
struct Run {
    ok: u64,
    failed: u64,
    /// The first failures, printed when a run is bad.
    errors: Vec<String>,
    exited_in: Duration,
    success: bool,
    /// What the server printed.
    log: String,
}

/// One TERM-under-load run of `binary` (as `user`, when given).
fn run(binary: &Path, user: Option<u32>, dir: &Path) -> Run {
    let port = free_port();
    let mut command = match user {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--no-new-privs",
                "--",
            ])
            .arg(binary);
            c
        }
        None => Command::new(binary),
    };
    let mut env = HashMap::from([
        ("PORT", port.to_string()),
        ("WEB_CONCURRENCY", "2".to_owned()),
        ("WHARF_GRACEFUL_TIMEOUT_SECONDS", "5".to_owned()),
        ("WHARF_LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", "info,wharf_http::drain=debug".to_owned()),
        // The local document directory lives in the temp directory; one the
        // run's user owns.
        ("TMPDIR", dir.display().to_string()),
    ]);
    // `WHARF_DRAIN_ACCEPT=shared`: one socket for both workers instead of
    // one per worker (the default, `reuseport`).
    if let Ok(accept) = std::env::var("WHARF_DRAIN_ACCEPT") {
        env.insert("WHARF_ACCEPT", accept);
    }
    command
        .env_clear()
        .envs(std::env::var("PATH").map(|p| ("PATH".to_owned(), p)))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(dir)
        .arg("serve")
        .stdin(Stdio::null());
    let mut process = Process::serve(&mut command, port);
    let load = Load::start(process.addr(), 4, "/_status");
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    process.signal("TERM");
    let deadline = started + Duration::from_secs(10);
    let exit = loop {
        if let Some(exit) = process.try_wait() {
            break Some(exit);
        }
        if Instant::now() > deadline {
            break None; // killed when `process` is dropped
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let exited_in = started.elapsed();
    // Clients still in a SYN retry learn the socket is gone (refused).
    std::thread::sleep(Duration::from_millis(50));
    let (ok, _refused, failed, errors) = load.finish();
    Run {
        ok,
        failed,
        errors,
        exited_in,
        success: exit.is_some_and(|e| e.success()),
        log: process.logs(),
    }
}

fn runs(binary: &Path, user: Option<u32>, runs: u32, dir: &Path) {
    let started = Instant::now();
    let mut served = 0;
    // The run's own temp directory: one user's files are not another's.
    let dir = dir.join(user.map_or_else(|| "current".to_owned(), |u| u.to_string()));
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
    for index in 0..runs {
        let run = run(binary, user, &dir);
        let bad = run.failed > 0 || !run.success || run.exited_in > Duration::from_secs(5);
        if bad {
            let lines: Vec<&str> = run
                .log
                .lines()
                .filter(|l| !l.contains("\"Served request\""))
                .collect();
            panic!(
                "run {index} of {runs} (user {user:?}): {} served, {} failed {:?}, exit {} in {:?}\nlog but the access log:\n{}",
                run.ok,
                run.failed,
                run.errors,
                if run.success { "0" } else { "not 0" },
                run.exited_in,
                lines.join("\n")
            );
        }
        assert!(run.ok > 10, "run {index}: only {} requests served", run.ok);
        served += run.ok;
    }
    eprintln!(
        "drain: {runs} TERM-under-load runs as {}: 0 reset, {served} requests served, {:.0?}",
        user.map_or_else(|| "the current user".to_owned(), |u| format!("uid {u}")),
        started.elapsed()
    );
}

/// A temp directory every user can write, and the runs' settings.
fn setup() -> (tempfile::TempDir, u32, Hogs) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let count = setting("WHARF_DRAIN_RUNS", 6);
    (dir, count, Hogs::start(setting("WHARF_DRAIN_HOGS", 0)))
}

#[test]
fn sigterm_under_load_never_resets_an_accepted_connection() {
    let _cpu = crate::support::quiet_cpu();
    let (dir, count, _hogs) = setup();
    runs(Path::new(FRONTEND), None, count, dir.path());
}

/// As `nobody` with no capabilities, where this kernel refuses the socket
/// filter and the master shrinks the queue to one instead. Ignored: about
/// one run in 60 beside two CPU hogs loses a connection that completed its
/// handshake between the worker's last `accept` and its `close` (nothing
/// but the filter stops the kernel from completing handshakes); see
/// docs/reliability.md.
#[test]
#[ignore = "open: about 1 run in 60 loses a connection as an unprivileged user"]
fn sigterm_under_load_never_resets_an_accepted_connection_unprivileged() {
    let (dir, count, _hogs) = setup();
    if !is_root() {
        // Already unprivileged: the test above is this one.
        runs(Path::new(FRONTEND), None, count, dir.path());
        return;
    }
    if crate::support::find_tool("setpriv").is_none() {
        skipped(
            "drain runs as an unprivileged user",
            "setpriv not found (apt-get install -y util-linux)",
        );
        return;
    }
    // A copy `nobody` can execute: the build tree may be private to root.
    let binary = dir.path().join("frontend");
    std::fs::copy(FRONTEND, &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o555)).unwrap();
    runs(&binary, Some(65534), count, dir.path());
}
