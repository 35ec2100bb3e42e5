//! Shared helpers: free ports, spawning binaries, waiting for readiness.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::reliability::{dead_address, Edge, EdgeSpec};

// One copy for every suite (crates/test).
pub use wharf_test::{free_port, wait_for_port, Process};

/// A fresh 256-bit key as 64 hex characters, from `/dev/urandom`. A deployed
/// `frontend` refuses keys that ship in the repository (issue 26), so a test
/// that runs one in production-like environments makes its own.
pub fn strong_key() -> String {
    use std::io::Read;
    let mut bytes = [0_u8; 32];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut bytes)
        .unwrap();
    bytes.iter().fold(String::new(), |mut hex, b| {
        use std::fmt::Write;
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// A command for `binary` with a clean environment plus `env`.
pub fn command(binary: &str, env: &HashMap<&str, String>) -> Command {
    let mut command = Command::new(binary);
    command.env_clear();
    if let Ok(path) = std::env::var("PATH") {
        command.env("PATH", path);
    }
    command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    command.current_dir(std::env::temp_dir());
    command
}

/// Starts `binary serve`-style with `env` and waits until `port` accepts;
/// its output is read all the time and kept ([`Process::logs`]).
pub fn start(binary: &str, args: &[&str], env: &HashMap<&str, String>, port: u16) -> Process {
    Process::serve(command(binary, env).args(args), port)
}

/// Runs curl with `args`, returning (exit success, stdout).
/// Runs `command` with `input` on its standard input (then closed) and
/// collects what it printed.
pub fn output_with_input(command: &mut Command, input: &str) -> Output {
    use std::io::Write;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Whether this run is on CI (`CI` set to anything but empty, `false` or `0`),
/// where every tool a test needs is installed and a missing one is a failure.
pub fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// `tool` (a name looked up on `PATH`, or an absolute path) when it is
/// installed. Otherwise: on CI ([`on_ci`]) a panic naming the `install`
/// command, since a CI run must check everything; elsewhere a `SKIPPED:`
/// line on stderr (shown even when the harness captures output) naming the test, the tool and how to install it, and
/// `None`, so the caller skips what needs the tool and says so.
pub fn require_tool(tool: &str, install: &str) -> Option<PathBuf> {
    if let Some(path) = find_tool(tool) {
        return Some(path);
    }
    assert!(
        !on_ci(),
        "{tool} is not installed: {install} (.ci/run installs it)"
    );
    let current = std::thread::current();
    let test = current.name().unwrap_or("this test");
    skipped(test, &format!("needs {tool} ({install})"));
    None
}

/// Says `SKIPPED: <what>: <reason>` on the process's stderr, past the test
/// harness's capture (which hides what `eprintln!` prints in a passing test).
/// Whether the tests run as root (uid 0).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

pub fn skipped(what: &str, reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED: {what}: {reason}");
}

/// `tool` on `PATH` (or the absolute path itself), if it is an executable file.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &std::path::Path| {
        path.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if tool.contains('/') {
        let path = PathBuf::from(tool);
        return executable(&path).then_some(path);
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(tool))
        .find(|path| executable(path))
}

/// The access-log lines (`Served request`, JSON) in `logs` whose path
/// `matches`, as (status, pid of the worker that served it).
pub fn served(logs: &str, matches: impl Fn(&str) -> bool) -> Vec<(u64, u64)> {
    logs.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "Served request" && l["path"].as_str().is_some_and(&matches))
        .map(|l| (l["status"].as_u64().unwrap(), l["pid"].as_u64().unwrap()))
        .collect()
}

/// The children of `pid`.
pub fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Waits up to `timeout` for `condition`, failing the test (naming `what`)
/// if it never held.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An edge (the reliability suite's configuration: `/` proxied to a dead
/// upstream) with `workers` worker processes, a `/fixed` location, a TLS
/// listener when `tls`, `tls_lines` in `[tls]` and `tables` at the end;
/// returned once every worker is up.
pub fn supervised_edge(workers: usize, tls: bool, tls_lines: &str, tables: &str) -> Edge {
    let edge = Edge::start(&EdgeSpec {
        servers: format!("{{ address = \"{}\" }}", dead_address()),
        tls,
        tls_settings: tls_lines.to_owned(),
        locations: format!(
            "[[server.location]]\npath = \"/fixed\"\nreturn = {{ status = 200, body = \"fixed\\n\" }}\n\n\
             [supervisor]\nworkers = {workers}\nworker_threads = 1\n\n{tables}"
        ),
        ..EdgeSpec::default()
    });
    wait_until("all workers", Duration::from_secs(20), || {
        children(edge.proc.pid()).len() == workers
    });
    edge
}

/// Tests that assert no accepted connection is lost while a server stops
/// hold this exclusively ([`quiet_cpu`]); tests that keep both CPUs busy for
/// a minute (ACME's Pebble, edge workers and client loops) hold it shared
/// ([`busy_cpu`]), so the two never run at once. Under CPU starvation the
/// kernel can complete a handshake between a worker's last accept sweep and
/// its close, and that connection is reset (#26): c6b9329 lost one in 2 of
/// 10 image-contract runs with three busy loops beside it.
static CPU: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// See [`CPU`]: for a test that must not share the CPUs with a heavy one.
pub fn quiet_cpu() -> std::sync::RwLockWriteGuard<'static, ()> {
    CPU.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// See [`CPU`]: for a test that loads both CPUs for long.
pub fn busy_cpu() -> std::sync::RwLockReadGuard<'static, ()> {
    CPU.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// After a USR2: the new master, the child of `old` that is none of its
/// workers `old_workers` (waits up to 10 s for it).
pub fn new_master(old: u32, old_workers: &[u32]) -> u32 {
    let mut new = 0;
    wait_until("a new master", Duration::from_secs(10), || {
        new = children(old)
            .into_iter()
            .find(|p| !old_workers.contains(p))
            .unwrap_or(0);
        new != 0
    });
    new
}

/// Waits up to `timeout` for `pid` to have exited (gone, or a zombie).
pub fn wait_exited(what: &str, pid: u32, timeout: Duration) {
    wait_until(what, timeout, || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s.split_whitespace().nth(2) == Some("Z"))
    });
}
