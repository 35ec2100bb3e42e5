//! edge obtaining and renewing its own certificates (`[[server]] acme`)
//! from Pebble, the ACME test CA, with pebble-challtestsrv as its DNS (every
//! name is 127.0.0.1): TLS-ALPN-01 and HTTP-01, `curl --cacert <Pebble's
//! root>` verifying the result, the stored account and certificate reused
//! after a restart, one order for several workers and for two instances
//! sharing a directory, a renewal under load, and a failed renewal.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wharf_test::{free_port, wait_for_port, Process};

use crate::support::{curl, require_tool, start, wait_until};

const EDGE: &str = env!("CARGO_BIN_EXE_edge");
const NAME: &str = "edge.wharf.test";

/// Pebble and its DNS, validating against `http_port` and `tls_port`.
struct Pebble {
    proc: Option<Process>,
    _dns: Process,
    dns_port: u16,
    port: u16,
    management: u16,
    /// Pebble's own HTTPS certificate (what edge's `ca_root` trusts).
    https_root: PathBuf,
}

impl Pebble {
    /// `None` (test skipped) off CI when pebble is not installed.
    fn start(dir: &Path, http_port: u16, tls_port: u16, validity: Option<u64>) -> Option<Self> {
        require_tool("pebble", "apt-get install -y pebble")?;
        let dns_port = free_port();
        let dns = Process::spawn(Command::new("pebble-challtestsrv").args([
            "-dns01",
            &format!("127.0.0.1:{dns_port}"),
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-management",
            &format!("127.0.0.1:{}", free_port()),
        ]));
        let https = pebble_https(dir);
        let (port, management) = (free_port(), free_port());
        let mut config = serde_json::json!({ "pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": https.0,
            "privateKey": https.1,
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        if let Some(seconds) = validity {
            config["pebble"]["certificateValidityPeriod"] = seconds.into();
        }
        let path = dir.join("pebble.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let pebble = Self {
            proc: None,
            _dns: dns,
            dns_port,
            port,
            management,
            https_root: https.2,
        };
        Some(pebble.run(&path))
    }

    fn run(mut self, config: &Path) -> Self {
        let mut command = Command::new("pebble");
        command
            .args(["-config", config.to_str().unwrap(), "-dnsserver"])
            .arg(format!("127.0.0.1:{}", self.dns_port))
            .env("PEBBLE_VA_NOSLEEP", "1")
            // Every order is validated afresh: a renewal really orders.
            .env("PEBBLE_AUTHZREUSE", "0");
        self.proc = Some(Process::serve(&mut command, self.port));
        self
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    /// The root that issued edge's certificates (new at every Pebble start).
    fn issuing_root(&self, dir: &Path) -> PathBuf {
        let path = dir.join("pebble-root.pem");
        let (ok, pem) = curl(&[
            "--cacert",
            self.https_root.to_str().unwrap(),
            &format!("https://127.0.0.1:{}/roots/0", self.management),
        ]);
        assert!(ok && pem.contains("BEGIN CERTIFICATE"), "{pem}");
        std::fs::write(&path, pem).unwrap();
        path
    }

    fn stop(&mut self) {
        if let Some(proc) = self.proc.take() {
            let _ = proc.stop();
        }
    }
}

/// Pebble's own HTTPS (the ACME API): a certificate for 127.0.0.1 from a
/// test CA, as (certificate, key, CA) files. webpki refuses a self-signed
/// end-entity certificate as its own root.
fn pebble_https(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "wharf test CA for Pebble");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let files = (
        dir.join("pebble-https.pem"),
        dir.join("pebble-https.key"),
        dir.join("pebble-ca.pem"),
    );
    std::fs::write(&files.0, leaf.pem()).unwrap();
    std::fs::write(&files.1, key.serialize_pem()).unwrap();
    std::fs::write(&files.2, ca.pem()).unwrap();
    files
}

/// One edge with an ACME server block.
struct AcmeEdge {
    proc: Process,
    https: u16,
    admin: u16,
}

struct Ports {
    http: u16,
    https: u16,
}

impl Ports {
    fn free() -> Self {
        Self {
            http: free_port(),
            https: free_port(),
        }
    }
}

fn start_edge(
    dir: &Path,
    ports: &Ports,
    storage: &Path,
    pebble: &Pebble,
    challenge: &str,
    workers: usize,
) -> AcmeEdge {
    let admin = free_port();
    let supervisor = if workers > 0 {
        format!("[supervisor]\nworkers = {workers}\nworker_threads = 1\n")
    } else {
        String::new()
    };
    let config = format!(
        r#"
[[listen]]
address = "127.0.0.1:{http}"
redirect_to_https = true
https_port = {https}

[[listen]]
address = "127.0.0.1:{https}"
ssl = true

[admin]
address = "127.0.0.1:{admin}"

[acme]
storage = "{storage}"
retry = "1s"

{supervisor}
[[server]]
server_name = ["{NAME}"]
default_server = true
acme = {{ directory = "{directory}", email = "ops@wharf.test", challenge = "{challenge}", terms_of_service_agreed = true, ca_root = "{root}" }}

[[server.location]]
path = "/"
return = {{ status = 200, body = "ok\n" }}
"#,
        http = ports.http,
        https = ports.https,
        storage = storage.display(),
        directory = pebble.directory(),
        root = pebble.https_root.display(),
    );
    let path = dir.join(format!("edge-{}.toml", ports.https));
    std::fs::write(&path, config).unwrap();
    let env = HashMap::from([("RUST_LOG", "info".to_owned())]);
    let proc = start(
        EDGE,
        &["--config", path.to_str().unwrap()],
        &env,
        ports.https,
    );
    wait_for_port(([127, 0, 0, 1], admin).into(), Duration::from_secs(10));
    AcmeEdge {
        proc,
        https: ports.https,
        admin,
    }
}

/// `curl --cacert root` to the ACME name on `https`: (verified and 200, body).
fn get(https: u16, root: &Path) -> (bool, String) {
    curl(&[
        "--fail",
        "--cacert",
        root.to_str().unwrap(),
        "--resolve",
        &format!("{NAME}:{https}:127.0.0.1"),
        &format!("https://{NAME}:{https}/"),
    ])
}

impl AcmeEdge {
    fn get(&self, root: &Path) -> (bool, String) {
        get(self.https, root)
    }

    fn metric(&self, series: &str) -> u64 {
        let (_, text) = curl(&[&format!("http://127.0.0.1:{}/metrics", self.admin)]);
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    fn issued(&self) -> u64 {
        self.metric("edge_acme_orders_total{result=\"issued\"}")
    }

    fn failed(&self) -> u64 {
        self.metric("edge_acme_orders_total{result=\"failed\"}")
    }

    /// The leaf certificate edge serves for the name (PEM), or "" when the
    /// handshake fails.
    fn served(&self) -> String {
        let out = Command::new("openssl")
            .args(["s_client", "-connect"])
            .arg(format!("127.0.0.1:{}", self.https))
            .args(["-servername", NAME])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        match (
            text.find("-----BEGIN CERTIFICATE-----"),
            text.find("-----END CERTIFICATE-----"),
        ) {
            (Some(start), Some(end)) => text[start..end].to_owned(),
            _ => String::new(),
        }
    }
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// TLS-ALPN-01 with two worker processes. Until Pebble runs, the order fails
/// (counted) and a handshake for the name fails rather than showing another
/// certificate; then one order (not one per worker) gives a certificate curl
/// verifies against Pebble's root, kept 0600; a restart serves it at once
/// and places no order.
#[test]
fn tls_alpn_01_obtains_a_verified_certificate_once_and_a_restart_reuses_it() {
    let _cpu = crate::support::busy_cpu();
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::free();
    let storage = dir.path().join("acme");
    // Pebble is set up (its ports known) but started after edge.
    let Some(mut pebble) = Pebble::start(dir.path(), ports.http, ports.https, None) else {
        return;
    };
    pebble.stop();
    let edge = start_edge(dir.path(), &ports, &storage, &pebble, "tls-alpn-01", 2);
    wait_until("a failed order", Duration::from_secs(20), || {
        edge.failed() >= 1
    });
    assert_eq!(
        edge.served(),
        "",
        "no certificate before the order succeeds"
    );
    assert!(
        edge.metric(&format!(
            "edge_tls_certificate_awaited{{server_name=\"{NAME}\"}}"
        )) >= 1,
        "the name is shown as awaited"
    );
    let pebble = pebble.run(&dir.path().join("pebble.json"));
    let root = pebble.issuing_root(dir.path());
    wait_until("a verified certificate", Duration::from_secs(60), || {
        edge.get(&root).0
    });
    // Every worker installs it (a worker that was waiting out a failure
    // finds it with the certificate watcher, within its 5 s), and only one
    // ordered.
    wait_until(
        "every worker serves the certificate",
        Duration::from_secs(10),
        || (0..8).all(|_| edge.get(&root).0),
    );
    assert_eq!(edge.get(&root).1, "ok\n");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        edge.issued(),
        1,
        "one order for the instance, not one per worker"
    );
    let cert_dir = storage.join("certs").join(NAME);
    assert_eq!(mode(&cert_dir.join("certificate.pem")), 0o600);
    assert_eq!(mode(&cert_dir), 0o700);
    let accounts: Vec<_> = std::fs::read_dir(storage.join("accounts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    assert_eq!(mode(&accounts[0]), 0o600);
    assert!(
        std::fs::read_dir(storage.join("tls-alpn-01"))
            .unwrap()
            .next()
            .is_none(),
        "challenge answers are removed after the order"
    );
    let first = edge.served();
    let _ = edge.proc.stop();

    let edge = start_edge(dir.path(), &ports, &storage, &pebble, "tls-alpn-01", 0);
    assert!(edge.get(&root).0, "the stored certificate serves at once");
    assert_eq!(edge.served(), first);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(edge.issued(), 0, "a restart places no order");
    assert_eq!(edge.failed(), 0);
}

/// HTTP-01, answered on the plain listener before its redirect to HTTPS, by
/// two instances sharing one storage directory, both retrying while the CA
/// is down: one order between them once it is up (the other finds the
/// certificate under the lock, or waits out the failure it recorded), and
/// both serve it. Pebble
/// validates on the first instance's port only, so when the second one
/// orders, the answer the first serves comes from the shared directory.
#[test]
fn http_01_two_instances_sharing_a_directory_place_one_order() {
    let _cpu = crate::support::busy_cpu();
    let dir = tempfile::tempdir().unwrap();
    let (a_ports, b_ports) = (Ports::free(), Ports::free());
    let storage = dir.path().join("acme");
    let Some(mut pebble) = Pebble::start(dir.path(), a_ports.http, a_ports.https, None) else {
        return;
    };
    // Both instances are up and retrying before the CA is: their attempts
    // meet at the lock.
    pebble.stop();
    let a = start_edge(dir.path(), &a_ports, &storage, &pebble, "http-01", 0);
    let b = start_edge(dir.path(), &b_ports, &storage, &pebble, "http-01", 0);
    wait_until("a failed order", Duration::from_secs(20), || {
        a.failed() + b.failed() >= 1
    });
    let pebble = pebble.run(&dir.path().join("pebble.json"));
    let root = pebble.issuing_root(dir.path());
    wait_until(
        "both serve a verified certificate",
        Duration::from_secs(60),
        || a.get(&root).0 && b.get(&root).0,
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        a.issued() + b.issued(),
        1,
        "one order for the two instances"
    );
    assert_eq!(a.served(), b.served());
    // Other paths on the plain listener still redirect, and so does another
    // host's challenge (an application's own ACME); an unknown token for
    // the ACME name is 404.
    let (_, head) = curl(&["-i", &format!("http://127.0.0.1:{}/x", a_ports.http)]);
    assert!(head.starts_with("HTTP/1.1 301"), "{head}");
    let challenge = format!(
        "http://127.0.0.1:{}/.well-known/acme-challenge/unknown",
        a_ports.http
    );
    let (_, other) = curl(&["-i", "-H", "Host: other.wharf.test", &challenge]);
    assert!(other.starts_with("HTTP/1.1 301"), "{other}");
    let (_, missing) = curl(&["-i", "-H", &format!("Host: {NAME}"), &challenge]);
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
}

/// Certificates valid for 45 s: renewed at two thirds (30 s) while clients
/// connect continuously, none failing; with Pebble stopped, the next renewal
/// fails, is counted, and the current certificate keeps serving.
#[test]
fn a_renewal_replaces_the_certificate_under_load_and_a_failed_one_keeps_it() {
    let _cpu = crate::support::busy_cpu();
    let dir = tempfile::tempdir().unwrap();
    let ports = Ports::free();
    let storage = dir.path().join("acme");
    let Some(mut pebble) = Pebble::start(dir.path(), ports.http, ports.https, Some(45)) else {
        return;
    };
    let root = pebble.issuing_root(dir.path());
    let edge = start_edge(dir.path(), &ports, &storage, &pebble, "tls-alpn-01", 2);
    wait_until(
        "every worker serves a certificate",
        Duration::from_secs(60),
        || (0..8).all(|_| edge.get(&root).0),
    );
    let first = edge.served();
    assert!(!first.is_empty());

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
        let (root, https) = (root.clone(), edge.https);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if get(https, &root).0 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                // A new TLS client every 60 ms or so: continuous, without
                // a curl process per millisecond starving the other tests.
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    wait_until("a renewed certificate", Duration::from_secs(60), || {
        // An openssl process per look: twice a second is enough.
        std::thread::sleep(Duration::from_millis(500));
        let now = edge.served();
        !now.is_empty() && now != first
    });
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert!(ok > 20, "{ok} requests during the renewal");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during the renewal; edge's log:\n{}",
        ok + failed,
        edge.proc.logs()
    );
    // Two orders in all, whichever workers made them (a worker's counts
    // reach the master's scrape with its next report).
    wait_until("both orders counted", Duration::from_secs(10), || {
        edge.issued() >= 2
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(edge.issued(), 2, "one renewal, not one per worker");

    let renewed = edge.served();
    pebble.stop();
    // Due 30 s after the renewal; the certificate expires 15 s later.
    wait_until("a failed renewal", Duration::from_secs(40), || {
        edge.failed() >= 1
    });
    assert_eq!(
        edge.served(),
        renewed,
        "the current certificate keeps serving"
    );
    assert!(edge.get(&root).0, "and still verifies");
    assert!(
        edge.proc.logs().contains("ACME: order failed"),
        "the failure is logged"
    );
}
