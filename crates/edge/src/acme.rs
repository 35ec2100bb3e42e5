//! Certificates edge obtains and renews itself (ACME, RFC 8555), with
//! `instant-acme` as the protocol client.
//!
//! Everything lives in the `[acme] storage` directory, so every worker
//! process of an instance, and every replica sharing the directory, sees the
//! same state:
//!
//! - `accounts/<directory>.json`: the account key (0600), reused after a
//!   restart;
//! - `certs/<first name>/certificate.pem`: the chain and its key in one file
//!   (0600), replaced in one rename so no reader sees a new key with an old
//!   chain, loaded by wharf-tls as an *awaited* pair, so the file watcher
//!   installs a new one in every process the way it installs certbot's;
//!   `names` beside it says which names it was ordered for;
//! - `http-01/<token>` and `tls-alpn-01/<name>.pem`: challenge answers, read
//!   by whichever process the CA's validation reaches;
//! - `locks/<first name>.lock`: held while ordering, so one process of a
//!   fleet orders and the others find the result.
//!
//! A certificate is renewed at two thirds of its lifetime; a failed order
//! leaves the current certificate serving and is retried after `[acme]
//! retry`, doubling to an hour.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{
    Account, AuthorizationStatus, CertificateIdentifier, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls_pki_types::pem::PemObject;
use wharf_telemetry::metrics::Family;
use wharf_tls::{CertificatePair, TlsConfig};

/// The longest wait after failures, and between two looks at a certificate.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// The shortest wait between two renewal-information requests, whatever
/// the CA's `Retry-After`.
const MIN_ARI_POLL: Duration = Duration::from_secs(60);
/// A lock file older than this was left by a process that died mid-order.
const STALE_LOCK: Duration = Duration::from_secs(600);

/// Orders that produced a certificate, in this process.
static ISSUED: AtomicU64 = AtomicU64::new(0);
/// Orders (or renewals) that failed, in this process.
static FAILED: AtomicU64 = AtomicU64::new(0);

/// The challenge a server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Challenge {
    TlsAlpn01,
    Http01,
}

impl Challenge {
    pub(crate) fn parse(text: &str) -> Option<Self> {
        match text {
            "tls-alpn-01" => Some(Self::TlsAlpn01),
            "http-01" => Some(Self::Http01),
            _ => None,
        }
    }

    fn kind(self) -> ChallengeType {
        match self {
            Self::TlsAlpn01 => ChallengeType::TlsAlpn01,
            Self::Http01 => ChallengeType::Http01,
        }
    }
}

/// One `[[server]]`'s certificate and how to obtain it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AcmeOrder {
    pub(crate) names: Vec<String>,
    pub(crate) directory: String,
    pub(crate) email: Option<String>,
    pub(crate) challenge: Challenge,
    pub(crate) ca_root: Option<PathBuf>,
    pub(crate) storage: PathBuf,
    pub(crate) retry: Duration,
}

/// Why an order failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AcmeError {
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate request: {0}")]
    Key(#[from] rcgen::Error),
    #[error("account credentials {path}: {source}")]
    Credentials {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the CA offers no {0} challenge for {1}")]
    NoChallenge(&'static str, String),
    #[error("authorization for {name} is {status:?}")]
    Authorization {
        name: String,
        status: AuthorizationStatus,
    },
    #[error("the order ended {0:?} instead of ready (a challenge failed validation)")]
    NotReady(OrderStatus),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AcmeError + '_ {
    move |source| AcmeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What an attempt did.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// This process obtained a certificate.
    Issued,
    /// Another process (or replica) had just renewed it.
    Fresh,
}

impl AcmeOrder {
    fn stem(&self) -> &str {
        self.names.first().map_or("default", String::as_str)
    }

    fn dir(&self) -> PathBuf {
        self.storage.join("certs").join(self.stem())
    }

    /// The pair wharf-tls serves: awaited until the first order finishes.
    pub(crate) fn pair(&self, default: bool) -> CertificatePair {
        let mut pair = CertificatePair::new(
            self.dir().join("certificate.pem"),
            self.dir().join("certificate.pem"),
        );
        pair.default = default;
        pair.awaited = Some(self.names.clone());
        pair
    }

    /// The stored certificate's leaf (DER), when there is one for these
    /// names.
    fn stored(&self) -> Option<Vec<u8>> {
        let names = fs::read_to_string(self.dir().join("names")).ok()?;
        if names.lines().collect::<Vec<_>>() != self.names {
            return None;
        }
        let pem = fs::read(self.dir().join("certificate.pem")).ok()?;
        let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
            .next()?
            .ok()?;
        Some(leaf.to_vec())
    }

    /// The CA's suggested renewal time for `leaf` (ACME Renewal
    /// Information, RFC 9773: a random moment in its window) and when to
    /// ask again. `Ok(None)`: nothing to ask with yet (no stored account,
    /// or no authority key identifier); `Err(Unsupported)`: the CA has no
    /// ARI.
    async fn suggested(&self, leaf: &[u8]) -> Result<Option<(SystemTime, Duration)>, AcmeError> {
        let Some(identifier) = certificate_identifier(leaf) else {
            return Ok(None);
        };
        if !self.account_path().exists() {
            return Ok(None);
        }
        let account = self.account().await?;
        let (info, again) = account.renewal_info(&identifier).await?;
        let (start, end) = (
            SystemTime::from(info.suggested_window.start),
            SystemTime::from(info.suggested_window.end),
        );
        let span = end.duration_since(start).unwrap_or_default();
        // RFC 9773 4.2: a uniformly random moment in the window, so a fleet
        // of certificates does not renew at once.
        let random =
            std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), leaf);
        #[allow(clippy::cast_precision_loss)] // a fraction of the window
        let fraction = (random % 10_000) as f64 / 10_000.0;
        Ok(Some((start + span.mul_f64(fraction), again)))
    }

    /// Obtains a certificate in place of `renewing` (the stored leaf judged
    /// due, if any), unless another process replaced it meanwhile: under the
    /// storage lock. `replaces` names it to a CA with ARI.
    async fn obtain(&self, renewing: Option<&[u8]>, ari: bool) -> Result<Outcome, AcmeError> {
        let _lock = Lock::acquire(&self.storage.join("locks"), self.stem()).await?;
        let now = self.stored();
        if now.as_deref() != renewing
            && now
                .as_deref()
                .and_then(two_thirds)
                .is_some_and(|due| due > SystemTime::now())
        {
            return Ok(Outcome::Fresh);
        }
        let account = self.account().await?;
        let identifiers: Vec<Identifier> =
            self.names.iter().cloned().map(Identifier::Dns).collect();
        let replaced = renewing.filter(|_| ari).and_then(certificate_identifier);
        let mut order = match replaced {
            Some(replaced) => {
                match account
                    .new_order(&NewOrder::new(&identifiers).replaces(replaced))
                    .await
                {
                    Ok(order) => order,
                    // A CA may refuse the replacement (already replaced):
                    // an order without it still renews.
                    Err(error) => {
                        tracing::warn!(error = %chain(&error), "ACME: order with replaces refused; ordering without");
                        account.new_order(&NewOrder::new(&identifiers)).await?
                    }
                }
            }
            None => account.new_order(&NewOrder::new(&identifiers)).await?,
        };
        tracing::info!(names = ?self.names, directory = %self.directory, order = order.url(), "ACME: ordering a certificate");
        let mut answers = Vec::new();
        let result = self.answer(&mut order, &mut answers).await;
        let result = match result {
            Ok(()) => self.finish(&mut order).await,
            Err(error) => Err(error),
        };
        for answer in answers {
            let _ = fs::remove_file(answer);
        }
        result.map(|()| Outcome::Issued)
    }

    /// Writes each pending authorization's answer and tells the CA.
    async fn answer(
        &self,
        order: &mut instant_acme::Order,
        answers: &mut Vec<PathBuf>,
    ) -> Result<(), AcmeError> {
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization?;
            let name = authorization.identifier().to_string();
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                status => return Err(AcmeError::Authorization { name, status }),
            }
            let kind = self.challenge;
            let mut challenge =
                authorization
                    .challenge(kind.kind())
                    .ok_or(AcmeError::NoChallenge(
                        match kind {
                            Challenge::TlsAlpn01 => "tls-alpn-01",
                            Challenge::Http01 => "http-01",
                        },
                        name.clone(),
                    ))?;
            let key_authorization = challenge.key_authorization();
            let path = match kind {
                Challenge::Http01 => {
                    let path = self.storage.join("http-01").join(&challenge.token);
                    write_private(&path, key_authorization.as_str().as_bytes())?;
                    path
                }
                Challenge::TlsAlpn01 => {
                    let path = self.storage.join("tls-alpn-01").join(format!("{name}.pem"));
                    let key = rcgen::KeyPair::generate()?;
                    let mut params = rcgen::CertificateParams::new(vec![name.clone()])?;
                    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(
                        key_authorization.digest().as_ref(),
                    )];
                    let cert = params.self_signed(&key)?;
                    let pem = format!("{}{}", cert.pem(), key.serialize_pem());
                    write_private(&path, pem.as_bytes())?;
                    path
                }
            };
            answers.push(path);
            challenge.set_ready().await?;
        }
        Ok(())
    }

    /// Waits for validation, sends the request and stores the certificate.
    async fn finish(&self, order: &mut instant_acme::Order) -> Result<(), AcmeError> {
        let retry = RetryPolicy::new().timeout(Duration::from_secs(90));
        let status = order.poll_ready(&retry).await?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::NotReady(status));
        }
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(self.names.clone())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let request = params.serialize_request(&key)?;
        order.finalize_csr(request.der()).await?;
        let chain = order.poll_certificate(&retry).await?;
        let dir = self.dir();
        // Chain and key in one file, one rename: whole or not at all. The
        // names after it (still under the lock): a crash between the two
        // only costs a new order.
        let pem = format!("{}\n{}", chain.trim_end(), key.serialize_pem());
        write_private(&dir.join("certificate.pem"), pem.as_bytes())?;
        write_private(&dir.join("names"), self.names.join("\n").as_bytes())?;
        Ok(())
    }

    /// Where the account for this CA is kept.
    fn account_path(&self) -> PathBuf {
        let file: String = self
            .directory
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        self.storage.join("accounts").join(format!("{file}.json"))
    }

    /// The stored account for this CA, or a new one (stored).
    async fn account(&self) -> Result<Account, AcmeError> {
        let path = self.account_path();
        let builder = || match &self.ca_root {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        };
        if let Ok(text) = fs::read(&path) {
            let credentials =
                serde_json::from_slice(&text).map_err(|source| AcmeError::Credentials {
                    path: path.clone(),
                    source,
                })?;
            return Ok(builder()?.from_credentials(credentials).await?);
        }
        let contact = self.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder()?
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.directory.clone(),
                None,
            )
            .await?;
        let text = serde_json::to_vec(&credentials).map_err(|source| AcmeError::Credentials {
            path: path.clone(),
            source,
        })?;
        write_private(&path, &text)?;
        tracing::info!(directory = %self.directory, account = account.id(), "ACME: account created");
        Ok(account)
    }
}

/// Two thirds of a certificate's lifetime, when it is renewed unless the
/// CA suggests earlier.
fn two_thirds(leaf: &[u8]) -> Option<SystemTime> {
    let (not_before, not_after) = wharf_tls::validity(leaf)?;
    let renew_at = not_before + not_after.saturating_sub(not_before) * 2 / 3;
    Some(UNIX_EPOCH + Duration::from_secs(renew_at))
}

/// The certificate's ARI identifier (authority key identifier and serial).
fn certificate_identifier(leaf: &[u8]) -> Option<CertificateIdentifier<'static>> {
    let (key_id, serial) = wharf_tls::renewal_identifier(leaf)?;
    Some(CertificateIdentifier::new(key_id.into(), serial.into()).into_owned())
}

/// Writes `bytes` to `path` as the owner's alone (0600), whole: through a
/// temporary file renamed over it, so a reader never sees half a file.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io(&temporary))?;
    file.write_all(bytes).map_err(io(&temporary))?;
    file.sync_all().map_err(io(&temporary))?;
    fs::rename(&temporary, path).map_err(io(path))
}

/// A lock file, taken by creating it: works between the workers of an
/// instance and between replicas sharing the directory. Removed on drop.
struct Lock {
    path: PathBuf,
}

impl Lock {
    async fn acquire(dir: &Path, stem: &str) -> Result<Self, AcmeError> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        let path = dir.join(format!("{stem}.lock"));
        loop {
            match fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut file) => {
                    let _ = writeln!(file, "{}", std::process::id());
                    return Ok(Self { path });
                }
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    let age = fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|m| m.elapsed().ok());
                    if age.is_some_and(|age| age > STALE_LOCK) {
                        tracing::warn!(lock = %path.display(), "ACME: removing a stale lock");
                        let _ = fs::remove_file(&path);
                        continue;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(error) => return Err(io(&path)(error)),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// The wait after `failures` consecutive failures: `retry`, doubling, at
/// most an hour.
fn backoff(retry: Duration, failures: u32) -> Duration {
    let factor = 1_u32 << failures.saturating_sub(1).min(16);
    retry.saturating_mul(factor).min(MAX_WAIT)
}

/// Keeps `order`'s certificate obtained and renewed for as long as the
/// process serves; installs each new one in `tls`.
pub(crate) async fn manage(order: AcmeOrder, tls: TlsConfig) {
    let mut failures = 0;
    // Until the CA says it has no renewal information.
    let mut ari = true;
    loop {
        let stored = order.stored();
        let mut due = stored.as_deref().and_then(two_thirds);
        let mut ask_again = MAX_WAIT;
        if let (Some(leaf), true) = (&stored, ari) {
            match order.suggested(leaf).await {
                Ok(Some((suggested, again))) => {
                    due = due.map(|due| due.min(suggested));
                    ask_again = again.clamp(MIN_ARI_POLL, MAX_WAIT);
                }
                Ok(None) => {}
                Err(AcmeError::Protocol(instant_acme::Error::Unsupported(_))) => ari = false,
                Err(error) => {
                    tracing::warn!(error = %chain(&error), "ACME: no renewal information; renewing at two thirds of the lifetime");
                }
            }
        }
        let wait = due
            .and_then(|due| due.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        if !wait.is_zero() {
            tokio::time::sleep(wait.min(ask_again)).await;
            continue;
        }
        match order.obtain(stored.as_deref(), ari).await {
            Ok(outcome) => {
                failures = 0;
                if outcome == Outcome::Issued {
                    ISSUED.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(names = ?order.names, "ACME: certificate obtained");
                }
                let _ = tls.reload();
            }
            Err(error) => {
                failures += 1;
                FAILED.fetch_add(1, Ordering::Relaxed);
                let delay = backoff(order.retry, failures);
                let error = chain(&error);
                tracing::error!(%error, names = ?order.names, retry_in_ms = delay.as_millis(), "ACME: order failed; the current certificate (if any) keeps serving");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// An error and its sources, each once (hyper's "client error (Connect)"
/// alone does not say that the CA refused the connection).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// Serves an HTTP-01 answer: `GET /.well-known/acme-challenge/<token>`.
pub(crate) fn http01_answer(storage: &Path, path: &str) -> Option<String> {
    let token = path.strip_prefix("/.well-known/acme-challenge/")?;
    // RFC 8555 8.3: base64url characters only (no path traversal).
    if token.is_empty()
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return None;
    }
    fs::read_to_string(storage.join("http-01").join(token)).ok()
}

/// The orders' counters, for `/metrics`.
pub(crate) fn metrics() -> Family {
    let mut orders = Family::counter(
        "edge_acme_orders_total",
        "ACME orders by result: issued, or failed (the current certificate kept serving).",
    );
    orders.sample(&[("result", "issued")], ISSUED.load(Ordering::Relaxed));
    orders.sample(&[("result", "failed")], FAILED.load(Ordering::Relaxed));
    orders
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[listen]]
address = "127.0.0.1:8080"

[[listen]]
address = "127.0.0.1:8443"
ssl = true

[[server]]
server_name = ["documents.example.gov.uk"]
acme = { directory = "https://acme.test/dir", email = "ops@example.gov.uk", terms_of_service_agreed = true }
[[server.location]]
path = "/"
return = { status = 200, body = "ok" }
"#;

    #[test]
    fn a_server_block_with_acme_loads_with_no_certificate_files() {
        crate::check_toml(FILE).unwrap();
        crate::check_toml(&FILE.replace(
            "terms_of_service_agreed",
            "challenge = \"http-01\", terms_of_service_agreed",
        ))
        .unwrap();
    }

    #[test]
    fn each_acme_mistake_names_the_line_and_the_reason() {
        let http01 = |text: String| text.replace("email =", "challenge = \"http-01\", email =");
        // (file, what the message says, the line of `acme`)
        let cases = [
            (
                FILE.replace("= true }", "= false }"),
                "terms_of_service_agreed = true",
                11,
            ),
            (
                FILE.replace("https://acme.test", "http://acme.test"),
                "https://",
                11,
            ),
            (
                FILE.replace("email =", "challenge = \"dns-01\", email ="),
                "expected \"tls-alpn-01\" or \"http-01\"",
                11,
            ),
            (FILE.replace("\"documents.", "\"*."), "wildcard", 11),
            (
                FILE.replace("[\"documents.example.gov.uk\"]", "[]"),
                "needs server_name",
                11,
            ),
            (
                FILE.replace(
                    "acme = {",
                    "ssl_certificate = \"a.pem\"\nssl_certificate_key = \"a.key\"\nacme = {",
                ),
                "keep one",
                13,
            ),
            (
                http01(FILE.replace(":8080\"\n", ":8080\"\nproxy_protocol = true\n")),
                "needs a plain",
                12,
            ),
        ];
        for (text, reason, line) in cases {
            let error = crate::check_toml(&text).unwrap_err();
            assert!(error.message.contains(reason), "{reason}: {error}");
            assert_eq!(error.line, Some(line), "{error}");
        }
    }

    #[test]
    fn backoff_doubles_to_an_hour() {
        let retry = Duration::from_secs(60);
        assert_eq!(backoff(retry, 1), retry);
        assert_eq!(backoff(retry, 2), retry * 2);
        assert_eq!(backoff(retry, 4), retry * 8);
        assert_eq!(backoff(retry, 40), MAX_WAIT);
    }

    #[test]
    fn http01_answers_only_tokens() {
        let dir = tempfile::tempdir().unwrap();
        write_private(&dir.path().join("http-01/abc_DEF-1"), b"abc_DEF-1.thumb").unwrap();
        assert_eq!(
            http01_answer(dir.path(), "/.well-known/acme-challenge/abc_DEF-1").as_deref(),
            Some("abc_DEF-1.thumb")
        );
        assert_eq!(
            http01_answer(dir.path(), "/.well-known/acme-challenge/../x"),
            None
        );
        assert_eq!(
            http01_answer(dir.path(), "/.well-known/acme-challenge/"),
            None
        );
        assert_eq!(
            http01_answer(dir.path(), "/.well-known/acme-challenge/nope"),
            None
        );
        assert_eq!(http01_answer(dir.path(), "/abc_DEF-1"), None);
    }

    #[test]
    fn stored_files_are_private_and_whole() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("certs/a.test/certificate.pem");
        write_private(&path, b"one").unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn due_is_two_thirds_of_the_lifetime_for_the_same_names() {
        let dir = tempfile::tempdir().unwrap();
        let order = AcmeOrder {
            names: vec!["a.test".to_owned()],
            directory: "https://ca.test/dir".to_owned(),
            email: None,
            challenge: Challenge::Http01,
            ca_root: None,
            storage: dir.path().to_owned(),
            retry: Duration::from_secs(1),
        };
        assert_eq!(order.stored().as_deref().and_then(two_thirds), None);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2030, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 31);
        let cert = params.self_signed(&key).unwrap();
        write_private(&order.dir().join("certificate.pem"), cert.pem().as_bytes()).unwrap();
        write_private(&order.dir().join("names"), b"a.test").unwrap();
        // 2030-01-01 + 20 days.
        assert_eq!(
            order.stored().as_deref().and_then(two_thirds),
            Some(UNIX_EPOCH + Duration::from_secs(1_893_456_000 + 20 * 86_400))
        );
        let mut more = order.clone();
        more.names.push("b.test".to_owned());
        assert_eq!(
            more.stored().as_deref().and_then(two_thirds),
            None,
            "a name was added: order again"
        );
    }

    #[test]
    fn a_held_lock_waits_and_a_stale_one_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let first = Lock::acquire(dir.path(), "a.test").await.unwrap();
            let second = tokio::time::timeout(
                Duration::from_millis(600),
                Lock::acquire(dir.path(), "a.test"),
            )
            .await;
            assert!(second.is_err(), "a held lock must make the second wait");
            drop(first);
            let third = tokio::time::timeout(
                Duration::from_millis(600),
                Lock::acquire(dir.path(), "a.test"),
            )
            .await;
            assert!(third.is_ok(), "a released lock is taken");
            // Left by a process that died mid-order: taken once stale.
            std::mem::forget(third);
            let file = fs::File::options()
                .write(true)
                .open(dir.path().join("a.test.lock"))
                .unwrap();
            file.set_modified(SystemTime::now() - STALE_LOCK - Duration::from_secs(1))
                .unwrap();
            let fourth = tokio::time::timeout(
                Duration::from_millis(600),
                Lock::acquire(dir.path(), "a.test"),
            )
            .await;
            assert!(fourth.is_ok(), "a stale lock is taken");
        });
    }
}
