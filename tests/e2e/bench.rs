//! The benchmark harness's quick path: `bench/run --smoke` drives the `frontend`
//! just built (debug) for one second with its python3 load loop, and must write a
//! well-formed result file, stop every server it started and leave the docs alone.
//! The real runs (release builds, nginx, gunicorn, wrk, minutes of load) stay
//! outside the test suite: see bench/README.md. Needs `python3` (as bench/run does).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

const FRONTEND: &str = env!("CARGO_BIN_EXE_frontend");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `bench/run --smoke --results-dir <results>` with `FRONTEND_BIN=<frontend>`.
fn smoke(results: &Path, frontend: &str) -> Output {
    Command::new(repo().join("bench/run"))
        .arg("--smoke")
        .arg("--results-dir")
        .arg(results)
        .env("FRONTEND_BIN", frontend)
        .env_remove("HYPER_BIN")
        .env_remove("EDGE_BIN")
        .output()
        .unwrap()
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

fn show(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn bench_smoke_writes_a_well_formed_result_file_and_stops_its_servers() {
    let docs = repo().join("docs/benchmarks.md");
    let docs_before = std::fs::read_to_string(&docs).ok();
    let dir = tempfile::tempdir().unwrap();

    let out = smoke(dir.path(), FRONTEND);
    assert!(out.status.success(), "{}", show(&out));

    let files = json_files(dir.path());
    assert_eq!(files.len(), 1, "one result file expected: {files:?}");
    let name = files[0].file_name().unwrap().to_str().unwrap().to_owned();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&name),
        "the summary names the result file\n{}",
        show(&out)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap())
        .unwrap_or_else(|e| panic!("{name} is not JSON: {e}"));

    assert_eq!(report["schema"], 2);
    assert_eq!(report["mode"], "smoke");
    assert_eq!(report["file"], name.as_str());
    let stamp = report["timestamp_utc"].as_str().unwrap();
    assert!(name.starts_with(stamp), "{name} vs {stamp}");
    assert!(report["machine"]["nproc"].as_u64().unwrap() >= 1);
    for key in ["loadavg_start", "loadavg_end"] {
        let load = report["machine"][key].as_array().unwrap();
        assert_eq!(load.len(), 3, "{key}: {load:?}");
        assert!(load
            .iter()
            .all(|x| x.as_str().unwrap().parse::<f64>().is_ok()));
    }
    assert_eq!(report["method"]["load_tool"], "python");
    // Recorded relative to the checkout (results name no machine paths),
    // unless the build directory lies outside it.
    let checkout = concat!(env!("CARGO_MANIFEST_DIR"), "/");
    let expected = FRONTEND.strip_prefix(checkout).unwrap_or(FRONTEND);
    assert_eq!(report["method"]["binaries"]["frontend"], expected);

    // Scenario (1) measured frontend, and only what --smoke promises.
    let status = &report["scenarios"]["status"];
    assert_eq!(status["status"], "ok", "{status:#}");
    let rows = status["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "frontend only without HYPER_BIN: {rows:#?}");
    let row = &rows[0];
    assert_eq!(row["name"], "frontend");
    assert!(row["rps"].as_f64().unwrap() > 0.0, "{row:#}");
    assert_eq!(row["errors_total"], 0, "{row:#}");
    let runs = row["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    assert!(runs[0]["requests"].as_u64().unwrap() > 0);
    let latency = &row["latency_ms"];
    let (p50, p99) = (
        latency["p50"].as_f64().unwrap(),
        latency["p99"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99, "{latency:#}");

    // Targets are listed; the ones whose peers were not run are "not measured".
    let targets = report["targets"].as_array().unwrap();
    let hyper = targets
        .iter()
        .find(|t| t["id"] == "status-hyper")
        .expect("the bare-hyper target is listed");
    assert!(
        hyper["met"].is_null() && hyper["value"].is_null(),
        "{hyper:#}"
    );
    assert!(report["warnings"].is_array());

    // Every server it started is gone: the port frontend served on is closed.
    let url = row["url"].as_str().unwrap();
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "frontend still listening on {addr} after bench/run exited"
    );
    // --smoke never rewrites the published results.
    assert_eq!(std::fs::read_to_string(&docs).ok(), docs_before);
}

#[test]
fn bench_smoke_with_a_missing_binary_fails_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = smoke(dir.path(), "/nonexistent/frontend");
    assert!(!out.status.success(), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FRONTEND_BIN"),
        "{}",
        show(&out)
    );
    assert!(json_files(dir.path()).is_empty());
}
