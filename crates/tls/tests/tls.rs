//! wharf-tls against real clients (curl, `openssl s_client`, a rustls client)
//! through wharf-http: protocol versions, SNI, ECDSA/RSA choice, ALPN,
//! resumption and hot reload.
// Test helpers may unwrap: a failure is a failed test with a line number.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::unused_async)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use http::{Request, Response};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use wharf_http::{body, Body, Listener, ResponseBody, Server, ServerConfig, TlsInfo};
use wharf_tls::{CertificatePair, KeyKind, SelfSigned, TlsConfig, TlsSettings};

async fn app(request: Request<Body>) -> Result<Response<ResponseBody>, Infallible> {
    let info = request.extensions().get::<TlsInfo>().cloned();
    let text = match info {
        Some(info) => format!(
            "{} {} {:?} {}\n",
            wharf_http::request_scheme(&request),
            info.version,
            request.version(),
            info.alpn.unwrap_or_default()
        ),
        None => "plain\n".to_owned(),
    };
    Ok(Response::new(body::full(text)))
}

struct TlsServer {
    addr: SocketAddr,
    tls: TlsConfig,
    _shutdown: oneshot::Sender<()>,
    dir: tempfile::TempDir,
}

fn pair(dir: &Path, stem: &str, names: &[&str], kind: KeyKind) -> CertificatePair {
    SelfSigned::generate(names, kind)
        .unwrap()
        .write(dir, stem)
        .unwrap()
}

async fn start(pairs: impl FnOnce(&Path) -> Vec<CertificatePair>) -> TlsServer {
    start_with(|dir| TlsSettings::with_certificates(pairs(dir))).await
}

async fn start_with(settings: impl FnOnce(&Path) -> TlsSettings) -> TlsServer {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.watch_interval = None;
    let tls = TlsConfig::load(&settings).unwrap();
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let acceptor = tls.acceptor();
    tokio::spawn(async move {
        Server::new(ServerConfig {
            access_log: false,
            ..ServerConfig::default()
        })
        .serve_with(vec![listener], acceptor, tower::service_fn(app), async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    TlsServer {
        addr,
        tls,
        _shutdown: tx,
        dir,
    }
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "curl {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `openssl s_client` with `args`, sending `input`; returns (success, all output).
fn s_client(addr: SocketAddr, args: &[&str], input: &str) -> (bool, String) {
    let mut child = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn first_pem_cert(text: &str) -> String {
    let start = text.find("-----BEGIN CERTIFICATE-----").unwrap();
    let end = text[start..].find("-----END CERTIFICATE-----").unwrap() + start;
    text[start..end].to_owned()
}

fn file_cert(path: &PathBuf) -> String {
    first_pem_cert(&std::fs::read_to_string(path).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_speaks_http2_and_http11_over_tls13() {
    let server = start(|dir| vec![pair(dir, "site", &["localhost"], KeyKind::EcdsaP256)]).await;
    let url = format!("https://localhost:{}/", server.addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", server.addr.port());
    let (u, r) = (url.clone(), resolve.clone());
    let h2 = blocking(move || curl(&["--http2", "--resolve", &r, &u])).await;
    assert_eq!(h2, "https TLSv1.3 HTTP/2.0 h2\n");
    let h1 = blocking(move || curl(&["--http1.1", "--resolve", &resolve, &url])).await;
    assert_eq!(h1, "https TLSv1.3 HTTP/1.1 http/1.1\n");
    let tls12 = {
        let url = format!("https://127.0.0.1:{}/", server.addr.port());
        blocking(move || curl(&["--tlsv1.2", "--tls-max", "1.2", &url])).await
    };
    assert_eq!(tls12, "https TLSv1.2 HTTP/2.0 h2\n");
    assert_eq!(server.tls.stats().handshakes, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls10_and_tls11_are_refused_and_counted() {
    let server = start(|dir| vec![pair(dir, "site", &["localhost"], KeyKind::EcdsaP256)]).await;
    let addr = server.addr;
    for flag in ["-tls1", "-tls1_1"] {
        let (ok, out) =
            blocking(move || s_client(addr, &[flag, "-cipher", "ALL:@SECLEVEL=0"], "")).await;
        assert!(!ok, "{flag} was accepted: {out}");
        assert!(!out.contains("BEGIN CERTIFICATE"), "{out}");
    }
    let (ok, out) = blocking(move || s_client(addr, &["-tls1_2"], "")).await;
    assert!(ok, "{out}");
    assert!(out.contains("Protocol  : TLSv1.2"), "{out}");
    assert!(server.tls.stats().handshake_failures >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_unknown_names_get_the_default() {
    let server = start(|dir| {
        vec![
            pair(dir, "a", &["a.test"], KeyKind::EcdsaP256),
            pair(dir, "b", &["b.test", "*.b.test"], KeyKind::EcdsaP256),
        ]
    })
    .await;
    let addr = server.addr;
    let a = file_cert(&server.dir.path().join("a.crt"));
    let b = file_cert(&server.dir.path().join("b.crt"));
    for (name, expected) in [
        ("b.test", &b),
        ("www.b.test", &b),
        ("a.test", &a),
        ("other.test", &a),
    ] {
        let (ok, out) = blocking(move || s_client(addr, &["-servername", name], "")).await;
        assert!(ok, "{out}");
        assert_eq!(&first_pem_cert(&out), expected, "SNI {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecdsa_and_rsa_side_by_side_each_client_gets_one_it_supports() {
    let server = start(|dir| {
        vec![
            pair(dir, "rsa", &["localhost"], KeyKind::Rsa2048),
            pair(dir, "ecdsa", &["localhost"], KeyKind::EcdsaP256),
        ]
    })
    .await;
    let addr = server.addr;
    let rsa = file_cert(&server.dir.path().join("rsa.crt"));
    let ecdsa = file_cert(&server.dir.path().join("ecdsa.crt"));
    let (_, out) = blocking(move || s_client(addr, &["-servername", "localhost"], "")).await;
    assert_eq!(first_pem_cert(&out), ecdsa, "a modern client gets ECDSA");
    let (_, out) = blocking(move || {
        s_client(
            addr,
            &[
                "-servername",
                "localhost",
                "-sigalgs",
                "rsa_pss_rsae_sha256:rsa_pkcs1_sha256",
            ],
            "",
        )
    })
    .await;
    assert_eq!(first_pem_cert(&out), rsa, "an RSA-only client gets RSA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_is_reported_and_sessions_resume() {
    let server = start(|dir| vec![pair(dir, "site", &["localhost"], KeyKind::EcdsaP256)]).await;
    let addr = server.addr;
    let (_, out) = blocking(move || s_client(addr, &["-alpn", "h2"], "")).await;
    assert!(out.contains("ALPN protocol: h2"), "{out}");
    let (_, out) = blocking(move || s_client(addr, &["-alpn", "http/1.1"], "")).await;
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");

    for version in ["-tls1_3", "-tls1_2"] {
        let sess = server.dir.path().join(format!("session{version}.pem"));
        let sess = sess.to_str().unwrap().to_owned();
        let request = "GET / HTTP/1.0\r\n\r\n";
        let s = sess.clone();
        let (ok, out) =
            blocking(move || s_client(addr, &[version, "-ign_eof", "-sess_out", &s], request))
                .await;
        assert!(ok, "{out}");
        assert!(out.contains("New, TLSv1."), "{out}");
        let (ok, out) =
            blocking(move || s_client(addr, &[version, "-ign_eof", "-sess_in", &sess], request))
                .await;
        assert!(ok, "{out}");
        assert!(out.contains("Reused, TLSv1."), "{version}: {out}");
    }
    assert!(server.tls.stats().resumed >= 2);
}

/// A client that accepts any certificate and remembers the one it saw.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn rustls_connect(
    addr: SocketAddr,
) -> (
    tokio_rustls::client::TlsStream<TcpStream>,
    CertificateDer<'static>,
) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let cert = stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    (stream, cert)
}

async fn get_over(stream: &mut tokio_rustls::client::TlsStream<TcpStream>) -> String {
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn pem_to_der(path: &Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_is_served_to_new_handshakes_and_a_broken_one_refused() {
    let server = start(|dir| vec![pair(dir, "site", &["localhost"], KeyKind::EcdsaP256)]).await;
    let cert_path = server.dir.path().join("site.crt");
    let old = pem_to_der(&cert_path);
    let (mut open, seen) = rustls_connect(server.addr).await;
    assert_eq!(seen.as_ref(), old.as_slice());
    assert!(get_over(&mut open).await.starts_with("HTTP/1.1 200"));

    // certbot renews: new files in place, then a reload (SIGHUP or the watcher).
    let _ = pair(
        server.dir.path(),
        "site",
        &["localhost"],
        KeyKind::EcdsaP256,
    );
    let new = pem_to_der(&cert_path);
    assert_ne!(old, new);
    server.tls.reload().unwrap();
    assert!(
        get_over(&mut open).await.starts_with("HTTP/1.1 200"),
        "the open connection keeps working"
    );
    let (_, seen) = rustls_connect(server.addr).await;
    assert_eq!(
        seen.as_ref(),
        new.as_slice(),
        "new handshakes see the new certificate"
    );

    // A key that does not match its certificate is refused; serving goes on.
    let other = SelfSigned::generate(&["localhost"], KeyKind::EcdsaP256).unwrap();
    std::fs::write(server.dir.path().join("site.key"), other.key_pem).unwrap();
    let error = server.tls.reload().unwrap_err();
    assert!(error.to_string().contains("does not match"), "{error}");
    std::fs::write(
        &cert_path,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    assert!(server.tls.reload().is_err());
    let (mut fresh, seen) = rustls_connect(server.addr).await;
    assert_eq!(
        seen.as_ref(),
        new.as_slice(),
        "the last good certificate keeps serving"
    );
    assert!(get_over(&mut fresh).await.starts_with("HTTP/1.1 200"));
    let stats = server.tls.stats();
    assert_eq!((stats.reloads, stats.reload_failures), (1, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watcher_reloads_changed_files() {
    let dir = tempfile::tempdir().unwrap();
    let first = pair(dir.path(), "site", &["localhost"], KeyKind::EcdsaP256);
    let mut settings = TlsSettings::with_certificates(vec![first]);
    settings.watch_interval = Some(std::time::Duration::from_millis(100));
    let tls = TlsConfig::load(&settings).unwrap();
    let watcher = tls.watch().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let _ = pair(dir.path(), "site", &["localhost"], KeyKind::EcdsaP256);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while tls.stats().reloads == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the watcher did not reload"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // A broken file is tried once, refused, and not retried until it changes.
    std::fs::write(dir.path().join("site.key"), "garbage").unwrap();
    while tls.stats().reload_failures == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the watcher did not try"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(tls.stats().reload_failures, 1);
    drop(tls);
    tokio::time::timeout(std::time::Duration::from_secs(2), watcher)
        .await
        .expect("the watcher stops with its configuration")
        .unwrap();
}

#[test]
fn loading_reports_the_file_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let good = pair(dir.path(), "good", &["localhost"], KeyKind::EcdsaP256);
    let missing = CertificatePair::new(dir.path().join("nope.crt"), good.key.clone());
    let err = TlsConfig::load(&TlsSettings::with_certificates(vec![missing])).unwrap_err();
    assert!(err.to_string().contains("nope.crt"), "{err}");
    let other = pair(dir.path(), "other", &["localhost"], KeyKind::Rsa2048);
    let mismatched = CertificatePair::new(good.cert.clone(), other.key);
    let err = TlsConfig::load(&TlsSettings::with_certificates(vec![mismatched])).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(TlsConfig::load(&TlsSettings::default()).is_err());
}

/// A pair an ACME client has not written yet: the set loads without it, its
/// name gets a failed handshake (never the default certificate), other names
/// the default; once the files exist, a reload serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_awaited_pair_fails_its_name_until_its_files_appear() {
    let server = start_with(|dir| {
        let mut awaited = CertificatePair::new(dir.join("acme.crt"), dir.join("acme.key"));
        awaited.awaited = Some(vec!["Acme.Example.test".to_owned()]);
        let mut fallback = pair(dir, "other", &["other.test"], KeyKind::EcdsaP256);
        fallback.default = true;
        TlsSettings::with_certificates(vec![awaited, fallback])
    })
    .await;
    assert_eq!(server.tls.awaited(), ["acme.example.test"]);
    let addr = server.addr;
    let (ok, text) =
        blocking(move || s_client(addr, &["-servername", "acme.example.test", "-brief"], "")).await;
    assert!(!ok, "a handshake for the awaited name must fail: {text}");
    assert!(!text.contains("other.test"), "{text}");
    let (ok, text) =
        blocking(move || s_client(addr, &["-servername", "else.test", "-showcerts"], "")).await;
    assert!(ok, "{text}");
    assert_eq!(
        first_pem_cert(&text),
        file_cert(&server.dir.path().join("other.crt"))
    );

    let written = pair(
        server.dir.path(),
        "acme",
        &["acme.example.test"],
        KeyKind::EcdsaP256,
    );
    server.tls.reload().unwrap();
    assert!(server.tls.awaited().is_empty());
    let (ok, text) = blocking(move || {
        s_client(
            addr,
            &["-servername", "acme.example.test", "-showcerts"],
            "",
        )
    })
    .await;
    assert!(ok, "{text}");
    assert_eq!(first_pem_cert(&text), file_cert(&written.cert));
}

/// An awaited pair listed first and not written yet passes the default on
/// to the next pair; once written, a name it was not issued for (added to
/// the server since) still fails rather than getting the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_awaited_first_pair_passes_the_default_on_and_its_new_names_wait() {
    let server = start_with(|dir| {
        let mut awaited = CertificatePair::new(dir.join("acme.pem"), dir.join("acme.pem"));
        awaited.awaited = Some(vec!["a.test".to_owned(), "new.a.test".to_owned()]);
        let other = pair(dir, "other", &["other.test"], KeyKind::EcdsaP256);
        TlsSettings::with_certificates(vec![awaited, other])
    })
    .await;
    let addr = server.addr;
    let (ok, text) =
        blocking(move || s_client(addr, &["-servername", "else.test", "-showcerts"], "")).await;
    assert!(ok, "no-name clients get the pair that loaded: {text}");
    assert_eq!(
        first_pem_cert(&text),
        file_cert(&server.dir.path().join("other.crt"))
    );
    // Obtained for a.test only; the file holds chain and key, as edge's ACME writes it.
    let issued = pair(server.dir.path(), "issued", &["a.test"], KeyKind::EcdsaP256);
    let combined = format!(
        "{}{}",
        std::fs::read_to_string(&issued.cert).unwrap(),
        std::fs::read_to_string(&issued.key).unwrap()
    );
    std::fs::write(server.dir.path().join("acme.pem"), combined).unwrap();
    server.tls.reload().unwrap();
    assert_eq!(server.tls.awaited(), ["new.a.test"]);
    let (ok, text) =
        blocking(move || s_client(addr, &["-servername", "a.test", "-showcerts"], "")).await;
    assert!(ok, "{text}");
    assert_eq!(first_pem_cert(&text), file_cert(&issued.cert));
    let (ok, text) =
        blocking(move || s_client(addr, &["-servername", "new.a.test", "-brief"], "")).await;
    assert!(!ok, "a name the certificate does not cover waits: {text}");
}

/// Only awaited pairs, none written: the configuration still loads (edge
/// starts and orders), and every handshake for the name fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_of_only_awaited_pairs_loads_and_refuses_their_names() {
    let server = start_with(|dir| {
        let mut awaited = CertificatePair::new(dir.join("a.crt"), dir.join("a.key"));
        awaited.awaited = Some(vec!["a.test".to_owned()]);
        TlsSettings::with_certificates(vec![awaited])
    })
    .await;
    let addr = server.addr;
    let (ok, text) =
        blocking(move || s_client(addr, &["-servername", "a.test", "-brief"], "")).await;
    assert!(!ok, "{text}");
    // An awaited pair whose file is there but bad refuses the set, as any
    // pair's would (a reload then keeps what it served).
    let junk = server.dir.path().join("a.crt");
    std::fs::write(&junk, "not a certificate").unwrap();
    std::fs::write(server.dir.path().join("a.key"), "not a key").unwrap();
    assert!(server.tls.reload().is_err());
    // Pairs that are not awaited still must load.
    let dir = tempfile::tempdir().unwrap();
    let missing = CertificatePair::new(dir.path().join("x.crt"), dir.path().join("x.key"));
    assert!(TlsConfig::load(&TlsSettings::with_certificates(vec![missing])).is_err());
}

/// TLS-ALPN-01 (RFC 8737): a `ClientHello` offering only `acme-tls/1` gets the
/// answer certificate from the directory and `acme-tls/1` negotiated; an
/// ordinary client still gets the site's certificate; a name with no answer
/// file fails rather than getting the site's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_validations_get_the_answer_certificate() {
    let server = start_with(|dir| {
        std::fs::create_dir(dir.join("alpn")).unwrap();
        let mut settings = TlsSettings::with_certificates(vec![pair(
            dir,
            "site",
            &["site.test"],
            KeyKind::EcdsaP256,
        )]);
        settings.acme_tls_alpn = Some(dir.join("alpn"));
        settings
    })
    .await;
    // As RFC 8737 has it: the name, and the critical acmeIdentifier
    // extension (the key authorization's digest).
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["site.test".to_owned()]).unwrap();
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&[7; 32])];
    let answer = params.self_signed(&key).unwrap();
    let answer_pem = answer.pem();
    std::fs::write(
        server.dir.path().join("alpn/site.test.pem"),
        format!("{answer_pem}{}", key.serialize_pem()),
    )
    .unwrap();
    let addr = server.addr;
    let (_, text) = blocking(move || {
        s_client(
            addr,
            &[
                "-servername",
                "site.test",
                "-alpn",
                "acme-tls/1",
                "-showcerts",
            ],
            "",
        )
    })
    .await;
    assert!(text.contains("ALPN protocol: acme-tls/1"), "{text}");
    assert_eq!(first_pem_cert(&text), first_pem_cert(&answer_pem));
    let (ok, text) = blocking(move || {
        s_client(
            addr,
            &["-servername", "site.test", "-alpn", "h2", "-showcerts"],
            "",
        )
    })
    .await;
    assert!(ok, "{text}");
    assert_eq!(
        first_pem_cert(&text),
        file_cert(&server.dir.path().join("site.crt"))
    );
    let (_, text) = blocking(move || {
        s_client(
            addr,
            &[
                "-servername",
                "other.test",
                "-alpn",
                "acme-tls/1",
                "-showcerts",
            ],
            "",
        )
    })
    .await;
    assert!(!text.contains("BEGIN CERTIFICATE"), "{text}");
}
