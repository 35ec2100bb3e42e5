//! Listen-set changes when something goes wrong around them, with two
//! workers: new workers that fail after the master changed its set, an
//! address systemd passed (`LISTEN_FDS`) dropped from the file, and a binary
//! upgrade (USR2) after the file's set changed without a HUP.

use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::{addr, refused, Edge, EDGE};
use crate::reliability::raw;
use crate::support::{children, free_port, wait_until};

/// Waits up to `timeout` for `condition`, failing with `what` and the log.
fn wait(edge: &Edge, what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}\n{}",
            edge.proc.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The body `/fixed` answers on `port` (a new connection); empty if
/// nothing listens there.
fn fixed(port: u16) -> String {
    get(port, "/fixed")
}

/// The body a GET of `path` on `port` gets; empty if the connection is
/// refused.
fn get(port: u16, path: &str) -> String {
    if TcpStream::connect(addr(port)).is_err() {
        return String::new();
    }
    raw::get(addr(port), path, &[]).body_text()
}

/// A HUP that replaces b with c and whose new workers fail before they are
/// ready: the master goes back to [a, b] (it says so, naming the set), the
/// old workers keep serving b, c closes; and once workers can start again,
/// a HUP with b back in the file applies (before the fix the master had
/// dropped b's socket, and binding it again while the old workers still
/// listened on it was refused with EADDRINUSE until a restart).
#[test]
fn with_workers_a_failed_reload_goes_back_to_the_previous_listen_set() {
    let (a, b, c) = (free_port(), free_port(), free_port());
    let fail_dir = tempfile::tempdir().unwrap();
    let fail = fail_dir.path().join("fail");
    let env = [
        ("_WHARF_TEST_HOOKS", "1".to_owned()),
        ("_WHARF_TEST_FAIL_IF_FILE", fail.display().to_string()),
        ("WHARF_READY_TIMEOUT_SECONDS", "10".to_owned()),
    ];
    let edge = Edge::start_with(&[a, b], Some(2), "accept = \"shared\"\n", &env, None);
    assert_eq!(fixed(b), "fixed\n");

    std::fs::write(&fail, "").unwrap();
    edge.reload(&[a, c], "fixed2");
    wait(
        &edge,
        "the master goes back to the previous set",
        Duration::from_secs(20),
        || {
            edge.proc
                .logs()
                .contains("going back to the previous listen set")
        },
    );
    let line = edge
        .proc
        .logs()
        .lines()
        .find(|l| l.contains("going back to the previous listen set"))
        .unwrap()
        .to_owned();
    for port in [a, b] {
        assert!(line.contains(&format!("127.0.0.1:{port}")), "{line}");
    }
    assert_eq!(fixed(a), "fixed\n");
    assert_eq!(fixed(b), "fixed\n", "the old workers serve b");
    wait(&edge, "c closes", Duration::from_secs(10), || refused(c));
    assert_eq!(edge.reloads(), 0);

    // Workers can start again; the file lists b again.
    std::fs::remove_file(&fail).unwrap();
    edge.reload(&[a, b], "fixed3");
    wait(&edge, "the reload applies", Duration::from_secs(30), || {
        edge.reloads() >= 1 && fixed(b) == "fixed3\n"
    });
    assert_eq!(fixed(a), "fixed3\n");
    assert_eq!(edge.refusals(), Vec::<String>::new());
}

/// edge under `systemd-socket-activate` (as a .socket unit passes
/// `LISTEN_FDS`): a HUP whose file drops b is refused, with a log line
/// telling the operator to edit the .socket unit, and b keeps answering
/// (closing the master's copy would leave the unit's queueing for nobody).
#[test]
fn with_workers_an_address_from_systemd_is_not_dropped_on_reload() {
    if Command::new("systemd-socket-activate")
        .arg("--help")
        .output()
        .is_err()
    {
        eprintln!("skipped: systemd-socket-activate not installed (apt-get install -y systemd)");
        return;
    }
    let (a, b) = (free_port(), free_port());
    let activate = |config: &Path| {
        let mut command = Command::new("systemd-socket-activate");
        command
            .arg(format!("--listen=127.0.0.1:{a}"))
            .arg(format!("--listen=127.0.0.1:{b}"))
            .arg("--setenv=RUST_LOG=info")
            .arg(EDGE)
            .arg("--config")
            .arg(config)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default());
        command
    };
    let edge = Edge::start_with(
        &[a, b],
        Some(2),
        "accept = \"shared\"\n",
        &[],
        Some(&activate),
    );
    assert!(
        edge.proc.logs().contains("Using sockets passed by systemd"),
        "{}",
        edge.proc.logs()
    );
    assert_eq!(fixed(b), "fixed\n");

    edge.reload(&[a], "fixed2");
    let needle = format!("127.0.0.1:{b}");
    wait(
        &edge,
        "the refusal is logged",
        Duration::from_secs(10),
        || {
            edge.refusals()
                .iter()
                .any(|l| l.contains(&needle) && l.contains(".socket unit"))
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(edge.reloads(), 0, "a refused reload replaced workers");
    assert_eq!(fixed(b), "fixed\n", "b still served: {}", edge.proc.logs());
    assert_eq!(fixed(a), "fixed\n");
    // A file that keeps b applies.
    edge.reload(&[a, b], "fixed3");
    wait(&edge, "the reload applies", Duration::from_secs(30), || {
        edge.reloads() >= 1 && fixed(b) == "fixed3\n"
    });
}

/// Stops the new master a binary upgrade started (the test's process
/// handle is the old one's).
struct StopOnDrop(u32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.to_string()])
            .status();
    }
}

/// The file goes from [a, b] to [a, c] and the master gets USR2 without a
/// HUP: the new master serves exactly the file's set — c answers with the
/// new file, b refuses once the old workers have drained, and the
/// listen-queue series name a and c (before the fix the socket bound to b
/// was labelled c: b kept answering and c refused).
#[test]
fn with_workers_an_upgrade_serves_the_files_listen_set() {
    let (a, b, c) = (free_port(), free_port(), free_port());
    let edge = Edge::start_with(&[a, b], Some(2), "", &[], None);
    let old = edge.proc.pid();
    let old_workers = children(old);
    assert_eq!(old_workers.len(), 2, "{old_workers:?}");

    edge.write(&[a, c], "fixed2");
    edge.proc.signal("USR2");
    let new = crate::support::new_master(old, &old_workers);
    let _stop = StopOnDrop(new);
    crate::support::wait_exited("the old master exits", old, Duration::from_secs(30));
    wait(&edge, "c answers", Duration::from_secs(10), || {
        fixed(c) == "fixed2\n"
    });
    assert_eq!(fixed(a), "fixed2\n");
    wait(&edge, "b refuses", Duration::from_secs(20), || refused(b));
    let mut scrape = String::new();
    wait_until(
        "the new master's admin listener",
        Duration::from_secs(20),
        || {
            scrape = get(edge.admin, "/metrics");
            scrape.contains(&format!("address=\"127.0.0.1:{c}\""))
        },
    );
    for (port, present) in [(a, true), (c, true), (b, false)] {
        assert_eq!(
            scrape.contains(&format!("address=\"127.0.0.1:{port}\"")),
            present,
            "127.0.0.1:{port} in the new master's listen-queue metrics: {scrape}"
        );
    }
    assert!(
        edge.proc
            .logs()
            .contains("the configuration's listen set differs from the old master's"),
        "{}",
        edge.proc.logs()
    );
}
