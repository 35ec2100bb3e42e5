//! The `frontend` binary as operators run it.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::{command, curl, free_port, on_ci, served, skipped, start};

const FRONTEND: &str = env!("CARGO_BIN_EXE_frontend");

fn env(port: u16) -> HashMap<&'static str, String> {
    HashMap::from([
        ("PORT", port.to_string()),
        ("WHARF_LOG_FORMAT", "json".into()),
    ])
}

#[test]
fn serves_status_and_health_over_http1_and_h2c() {
    let port = free_port();
    let frontend = start(FRONTEND, &["serve"], &env(port), port);
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let (ok, body) = curl(&[
            version,
            "-w",
            "\n%{http_code} %{http_version}",
            &frontend.url("/_status"),
        ]);
        assert!(ok, "{body}");
        let (json, meta) = body.rsplit_once('\n').unwrap();
        let expected_version = if version == "--http1.1" { "1.1" } else { "2" };
        assert_eq!(meta, format!("200 {expected_version}"));
        let doc: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(doc["status"], "ok");
        assert_eq!(doc["environment"], "development");
        assert!(doc["git_commit"].as_str().is_some_and(|c| !c.is_empty()));
        assert!(doc["build_time"].as_str().is_some_and(|c| !c.is_empty()));
        for path in ["/health/live", "/health/ready"] {
            let (ok, code) = curl(&[
                version,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                &frontend.url(path),
            ]);
            assert!(ok);
            assert_eq!(code, "200", "{path}");
        }
    }
}

#[test]
fn healthcheck_subcommand_reports_up_and_down() {
    let port = free_port();
    let frontend = start(FRONTEND, &["serve"], &env(port), port);
    let up = command(FRONTEND, &env(port))
        .arg("healthcheck")
        .output()
        .unwrap();
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    drop(frontend);
    // The workers drain on their own once the master is killed: poll until
    // they are gone; from then on the healthcheck must fail.
    let deadline = Instant::now() + Duration::from_secs(10);
    let down = loop {
        let down = command(FRONTEND, &env(port))
            .args(["healthcheck", "--timeout", "1"])
            .output()
            .unwrap();
        if !down.status.success() || Instant::now() > deadline {
            break down;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(down.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(stderr.contains("frontend healthcheck: http://"), "{stderr}");
}

#[test]
fn production_without_configuration_exits_78_listing_every_problem() {
    let out = command(
        FRONTEND,
        &HashMap::from([
            ("NOTIFY_ENVIRONMENT", "production".to_owned()),
            ("HTTP_SERVE_TIMEOUT_SECONDS", "3o".to_owned()),
        ]),
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "PORT: required in production, not set",
        "HTTP_SERVE_TIMEOUT_SECONDS: expected a whole number of seconds, got \"3o\"",
        "REDIS_URL: required in production, not set",
        "API_HOST_NAME: required in production, not set",
        "SECRET_KEY: required in production, not set",
        "DANGEROUS_SALT: required in production, not set",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in {stderr}"
        );
    }
    assert_eq!(
        stderr.matches("frontend: invalid configuration").count(),
        1,
        "{stderr}"
    );
}

#[test]
fn config_subcommand_shows_sources_and_redacts_secrets() {
    let mut vars = env(7001);
    vars.insert("SECRET_KEY", "very-secret-value".into());
    vars.insert("HTTP_SERVE_TIMEOUT_SECONDS", "12".into());
    let out = command(FRONTEND, &vars)
        .args(["config", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("very-secret-value"), "{text}");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let find = |name: &str| {
        doc["variables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["variable"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(find("SECRET_KEY")["value"], "\"[redacted]\"");
    assert_eq!(find("SECRET_KEY")["source"]["kind"], "env");
    assert_eq!(find("HTTP_SERVE_TIMEOUT_SECONDS")["value"], "12");
    assert_eq!(find("WHARF_KEEPALIVE_SECONDS")["source"]["kind"], "default");
}

#[test]
fn sigterm_drains_and_exits_zero_and_new_connections_are_refused() {
    let port = free_port();
    let frontend = start(FRONTEND, &["serve"], &env(port), port);
    // An idle keep-alive connection must not hold the shutdown up.
    let mut idle = TcpStream::connect(frontend.addr()).unwrap();
    idle.write_all(b"GET /_status HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut buf = [0_u8; 512];
    assert!(idle.read(&mut buf).unwrap() > 0);
    let addr = frontend.addr();
    let started = Instant::now();
    frontend.signal("TERM");
    let out = frontend.wait_exit(Duration::from_secs(10));
    assert!(out.status.success(), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
    let logs = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.iter().any(|l| l["message"] == "Listening"), "{logs}");
    assert!(lines
        .iter()
        .any(|l| l["message"] == "Shutting down" && l["signal"] == "SIGTERM"));
    assert!(lines.iter().any(|l| l["message"] == "Drained"));
}

/// Every address a process with this port is listening on, from the kernel's
/// own tables (`/proc/net/tcp` and `tcp6`): what is reachable, whatever
/// interfaces the machine has.
fn listening_addresses(port: u16) -> Vec<std::net::IpAddr> {
    let mut found = Vec::new();
    for (table, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT; state 0A is LISTEN.
            let (Some(local), Some(&"0A")) = (fields.get(1), fields.get(3)) else {
                continue;
            };
            let Some((ip, p)) = local.split_once(':') else {
                continue;
            };
            if u16::from_str_radix(p, 16).ok() != Some(port) {
                continue;
            }
            // The kernel prints each 32-bit word in host (little-endian) order.
            let words: Vec<u32> = (0..ip.len() / 8)
                .map(|i| {
                    u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16)
                        .unwrap()
                        .swap_bytes()
                })
                .collect();
            found.push(if v6 {
                let mut octets = [0_u8; 16];
                for (i, word) in words.iter().enumerate() {
                    octets[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
                }
                std::net::IpAddr::from(octets)
            } else {
                std::net::IpAddr::from(words[0].to_be_bytes())
            });
        }
    }
    // One socket per worker in SO_REUSEPORT mode: the addresses matter.
    found.sort();
    found.dedup();
    found
}

/// With no environment at all (as the README's `cargo run` starts it), the
/// frontend is development on 127.0.0.1:7001, loopback only, and serves.
#[test]
fn with_no_environment_it_is_development_on_loopback_port_7001() {
    let out = command(FRONTEND, &HashMap::new())
        .args(["config", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["environment"], "development");
    let port = doc["variables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["variable"] == "PORT")
        .unwrap()["value"]
        .clone();
    assert_eq!(port, "7001");

    // Serving needs 7001 itself: no other test uses it, but the machine may.
    if std::net::TcpListener::bind("0.0.0.0:7001").is_err() {
        assert!(!on_ci(), "port 7001 is taken on this CI machine");
        skipped("serving on the default port", "7001 is taken here");
        return;
    }
    let frontend = start(FRONTEND, &["serve"], &HashMap::new(), 7001);
    let (ok, status) = curl(&["-w", "\n%{http_code}", &frontend_url(7001, "/_status")]);
    assert!(ok && status.ends_with("\n200"), "{status}");
    assert!(
        status.contains("\"environment\":\"development\""),
        "{status}"
    );
    assert_eq!(
        listening_addresses(7001),
        vec![std::net::IpAddr::from([127, 0, 0, 1])],
        "development must listen on loopback only"
    );
    drop(frontend);

    // Any other environment listens on every interface.
    let port = free_port();
    let mut vars = env(port);
    vars.insert("NOTIFY_ENVIRONMENT", "test".into());
    let _test = start(FRONTEND, &["serve"], &vars, port);
    assert_eq!(
        listening_addresses(port),
        vec![std::net::IpAddr::from([0, 0, 0, 0])]
    );
}

fn frontend_url(port: u16, path: &str) -> String {
    format!("http://127.0.0.1:{port}{path}")
}

/// The whole recipient journey on the offline default, across two worker
/// processes: landing page, confirm email address (CSRF), the access cookie,
/// and the file's bytes.
#[test]
#[allow(clippy::too_many_lines)] // one journey, step by step
fn the_download_flow_works_offline_across_workers() {
    let port = free_port();
    let local_dir = tempfile::tempdir().unwrap();
    let mut vars = env(port);
    vars.insert("WEB_CONCURRENCY", "2".into());
    vars.insert(
        "WHARF_DOWNLOAD_LOCAL_DIR",
        local_dir.path().display().to_string(),
    );
    let jar_dir = tempfile::tempdir().unwrap();
    let frontend = start(FRONTEND, &["serve"], &vars, port).keep(local_dir);
    let jar = jar_dir.path().join("cookies");
    let jar = jar.to_str().unwrap();
    let base = frontend_url(port, "");
    let doc = "/d/jTpOLGsfTF6afS8OGzxNXg/fiudTFofSz6cjW8KK0xtjg";
    let key = "key=c2FtcGxlLWtleS1mb3ItdGhlLWNvbmZpcm0tZG9jdW1lbnQ";

    let (ok, landing) = curl(&["-c", jar, "-b", jar, &format!("{base}{doc}?{key}")]);
    assert!(
        ok && landing.contains("You have a file to download"),
        "{landing}"
    );
    assert!(
        landing.contains(&format!("{doc}/confirm-email-address?{key}")),
        "{landing}"
    );

    let confirm = format!("{base}{doc}/confirm-email-address?{key}");
    let (_, form) = curl(&["-c", jar, "-b", jar, &confirm]);
    let token = form
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token in {form}"))
        .to_owned();
    // A wrong address is refused with the form error.
    let (_, wrong) = curl(&[
        "-c",
        jar,
        "-b",
        jar,
        "-w",
        "\n%{http_code}",
        "--data-urlencode",
        "email_address=someone.else@example.gov.uk",
        "--data-urlencode",
        &format!("csrf_token={token}"),
        &confirm,
    ]);
    assert!(wrong.ends_with("\n400"), "{wrong}");
    assert!(wrong.contains("There is a problem"));
    // The right one (with stray whitespace) redirects to the download page.
    let (_, redirect) = curl(&[
        "-c",
        jar,
        "-b",
        jar,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "--data-urlencode",
        "email_address=  test@example.gov.uk ",
        "--data-urlencode",
        &format!("csrf_token={token}"),
        &confirm,
    ]);
    assert_eq!(redirect, format!("302 {base}{doc}/download?{key}"));
    let (_, download) = curl(&["-c", jar, "-b", jar, &format!("{base}{doc}/download?{key}")]);
    assert!(download.contains("Download your file"), "{download}");
    let file_url = download
        .split("href=\"")
        .map(|rest| rest.split('"').next().unwrap_or_default())
        .find(|href| href.contains("/services/"))
        .unwrap_or_else(|| panic!("no file link in {download}"))
        .replace("&amp;", "&");
    let file_url = if file_url.starts_with('/') {
        format!("{base}{file_url}")
    } else {
        file_url
    };
    // The worker that confirmed the address issued the access cookie; fetch
    // the file on new connections until the other worker has verified it too
    // (the kernel hands each connection to either worker).
    // Access-log lines reach stdout within 100 ms (batched by wharf-telemetry).
    let confirm_path = format!("{doc}/confirm-email-address");
    let confirmed = || {
        served(&frontend.logs(), |p| p == confirm_path)
            .into_iter()
            .find(|(status, _)| *status == 302)
    };
    crate::support::wait_until(
        "the confirmation's 302 in the access log",
        Duration::from_secs(5),
        || confirmed().is_some(),
    );
    let issuer = confirmed()
        .unwrap_or_else(|| panic!("no 302 for the confirmation in {}", frontend.logs()))
        .1;
    let file_path = file_url
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or(&file_url)
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    let mut other_worker_served = false;
    for _ in 0..200 {
        let (ok, bytes) = curl(&["-b", jar, &file_url]);
        assert!(ok);
        assert_eq!(
            bytes,
            "This is the sample file that needs email confirmation.\nIt was served by wharf's local document API.\n"
        );
        let pids: Vec<(u64, u64)> = served(&frontend.logs(), |p| p == file_path);
        assert!(pids.iter().all(|(status, _)| *status == 200), "{pids:?}");
        if pids.iter().any(|(_, pid)| *pid != issuer) {
            other_worker_served = true;
            break;
        }
    }
    assert!(
        other_worker_served,
        "200 fetches all reached the worker that issued the cookie: {}",
        frontend.logs()
    );
    // Without the cookie the file is not served: back to the landing page.
    let (ok, refused) = curl(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        &file_url,
    ]);
    assert!(ok);
    assert_eq!(refused, format!("302 {base}{doc}?{key}"));
}
