//! testssl.sh against edge's TLS listener: protocols, cipher suites, known
//! vulnerabilities and HSTS. The JSON report is kept as a build artifact in
//! `target/testssl/edge.json`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::stub::{Reply, Stub};
use super::{Edge, EdgeSpec};
use crate::support::{find_tool, require_tool};

/// The testssl.sh executable: Debian's package installs it as `testssl`,
/// upstream as `testssl.sh`.
fn testssl() -> Option<PathBuf> {
    find_tool("testssl.sh").or_else(|| require_tool("testssl", "apt-get install -y testssl.sh"))
}

/// `target/testssl/edge.json` (honouring `CARGO_TARGET_DIR`).
fn report_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
        PathBuf::from,
    );
    let dir = target.join("testssl");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("edge.json")
}

/// One finding of testssl.sh's flat JSON output.
struct Finding {
    id: String,
    severity: String,
    text: String,
}

fn findings(report: &serde_json::Value) -> Vec<Finding> {
    let field = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    report
        .as_array()
        .unwrap_or_else(|| panic!("the report is not a JSON array: {report}"))
        .iter()
        .map(|v| Finding {
            id: field(v, "id"),
            severity: field(v, "severity"),
            text: field(v, "finding"),
        })
        .collect()
}

/// A cipher suite's OpenSSL name is forward secret and AEAD: TLS 1.3 (all
/// five suites are), or ECDHE/DHE with GCM or ChaCha20-Poly1305.
fn forward_secret_aead(name: &str) -> bool {
    let tls13 = name.starts_with("TLS_");
    let fs = name.starts_with("ECDHE-") || name.starts_with("DHE-");
    let aead = name.contains("GCM") || name.contains("CHACHA20-POLY1305");
    tls13 || (fs && aead)
}

/// Runs testssl.sh against `https://localhost:<https>/` (loopback only);
/// its findings and the report's text.
fn scan(testssl: &Path, https: u16) -> (Vec<Finding>, String) {
    let report = report_path();
    let _ = std::fs::remove_file(&report);
    let started = Instant::now();
    // -p protocols, -E every offered suite per protocol, -f forward secrecy,
    // -U vulnerabilities, -h headers (HSTS). No --severity filter: the
    // "not offered" and "HSTS ok" findings are what is asserted.
    let out = Command::new(testssl)
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "--nodns",
            "none",
            "--ip",
            "127.0.0.1",
            "--connect-timeout",
            "5",
            "--openssl-timeout",
            "5",
            "-p",
            "-E",
            "-f",
            "-U",
            "-h",
            "--jsonfile",
        ])
        .arg(&report)
        .arg(format!("https://localhost:{https}/"))
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!(
        "testssl.sh took {elapsed:?}; report in {}",
        report.display()
    );
    let text = std::fs::read_to_string(&report)
        .unwrap_or_else(|e| panic!("no report ({e}); testssl.sh said: {stdout}"));
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    (findings(&report), text)
}

#[test]
fn testssl_finds_only_modern_protocols_fs_aead_suites_no_vulnerability_and_hsts() {
    let Some(testssl) = testssl() else {
        return;
    };
    let upstream = Stub::start(|_| Reply::text(200, "ok"));
    let edge = Edge::start(&EdgeSpec {
        servers: format!("{{ address = \"{}\" }}", upstream.addr),
        tls: true,
        http: "hsts = \"max-age=63072000; includeSubDomains\"".to_owned(),
        ..EdgeSpec::default()
    });
    let https = edge.https.unwrap();
    let (findings, text) = scan(&testssl, https);
    let by_id = |id: &str| {
        findings
            .iter()
            .find(|f| f.id == id)
            .unwrap_or_else(|| panic!("no finding {id} in {text}"))
    };

    for old in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
        let f = by_id(old);
        assert!(f.text.starts_with("not offered"), "{old}: {}", f.text);
    }
    for modern in ["TLS1_2", "TLS1_3"] {
        let f = by_id(modern);
        assert!(f.text.starts_with("offered"), "{modern}: {}", f.text);
    }

    // -E lists every accepted suite as `cipher-<proto>_x<hex>`; the finding
    // reads "TLS 1.2   xc02b   ECDHE-ECDSA-AES128-GCM-SHA256 ...".
    let suites: Vec<&str> = findings
        .iter()
        .filter(|f| f.id.starts_with("cipher-") && f.id.contains("_x"))
        .filter_map(|f| f.text.split_whitespace().nth(3))
        .collect();
    assert!(
        suites.iter().any(|s| s.starts_with("TLS_"))
            && suites.iter().any(|s| s.starts_with("ECDHE-")),
        "no TLS 1.3 or TLS 1.2 suite listed: {suites:?}"
    );
    let weak: Vec<&&str> = suites.iter().filter(|s| !forward_secret_aead(s)).collect();
    assert!(
        weak.is_empty(),
        "suites without FS or AEAD: {weak:?} (all: {suites:?})"
    );
    // testssl.sh 3.0 calls it "PFS", 3.1 "FS".
    let fs = findings
        .iter()
        .find(|f| f.id == "FS" || f.id == "PFS")
        .unwrap_or_else(|| panic!("no forward secrecy finding in {text}"));
    assert!(fs.text.starts_with("offered"), "{}", fs.text);

    // Nothing HIGH or CRITICAL anywhere (the vulnerability checks included),
    // and no check that could not run (a scan error must not pass).
    let bad: Vec<String> = findings
        .iter()
        .filter(|f| matches!(f.severity.as_str(), "HIGH" | "CRITICAL" | "FATAL"))
        .map(|f| format!("{} [{}]: {}", f.id, f.severity, f.text))
        .collect();
    assert!(bad.is_empty(), "{bad:#?}");
    for vulnerability in [
        "heartbleed",
        "CCS",
        "ticketbleed",
        "ROBOT",
        "secure_renego",
        "CRIME_TLS",
        "POODLE_SSL",
        "SWEET32",
        "FREAK",
        "LOGJAM",
        "BEAST",
        "LUCKY13",
        "RC4",
    ] {
        let f = by_id(vulnerability);
        assert!(
            matches!(f.severity.as_str(), "OK" | "INFO" | "LOW"),
            "{vulnerability} [{}]: {}",
            f.severity,
            f.text
        );
    }

    let hsts = by_id("HSTS_time");
    assert_eq!(hsts.severity, "OK", "{}", hsts.text);
    assert!(hsts.text.contains("63072000"), "{}", hsts.text);
    drop(edge);
}
