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
/// Longest an order may take, from `newOrder` to the certificate, before it
/// is abandoned (and the lock released) as failed.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest a renewal-information request may take.
const ARI_TIMEOUT: Duration = Duration::from_secs(60);

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
    #[error("the order ended {0:?} instead of ready (a challenge failed validation): {1}")]
    NotReady(OrderStatus, String),
    #[error("the CA asked to validate {0:?}, which this server did not order")]
    Unexpected(String),
    #[error("no answer from the CA within {0:?}")]
    TimedOut(Duration),
    #[error(
        "an order by another process failed ({error}); the next attempt waits for its back-off"
    )]
    Deferred { until: SystemTime, error: String },
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

    /// The stored certificate's leaf (DER), when there is one that covers
    /// every name (a server that gained a name orders again; replicas still
    /// on the old list accept the new certificate, so a rolling change of
    /// `server_name` orders once).
    fn stored(&self) -> Option<Vec<u8>> {
        let pem = fs::read(self.dir().join("certificate.pem")).ok()?;
        let leaf = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
            .next()?
            .ok()?;
        self.names
            .iter()
            .all(|name| wharf_tls::covers(&leaf, name))
            .then(|| leaf.to_vec())
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
    /// due, if any) under the storage lock, unless another process replaced
    /// it meanwhile, or failed and set a time before which nobody tries
    /// again (so a fleet fails once per back-off, not once per process).
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
        let failed = Failure::read(&self.dir());
        if let Some(failed) = failed.as_ref().filter(|f| f.next > SystemTime::now()) {
            return Err(AcmeError::Deferred {
                until: failed.next,
                error: failed.error.clone(),
            });
        }
        let result = match tokio::time::timeout(ORDER_TIMEOUT, self.order(renewing, ari)).await {
            Ok(result) => result,
            Err(_) => Err(AcmeError::TimedOut(ORDER_TIMEOUT)),
        };
        match &result {
            Ok(()) => Failure::clear(&self.dir()),
            Err(error) => {
                let failures = failed.map_or(0, |f| f.failures) + 1;
                Failure {
                    next: SystemTime::now() + backoff(self.retry, failures),
                    failures,
                    error: chain(error),
                }
                .write(&self.dir())?;
            }
        }
        result.map(|()| Outcome::Issued)
    }

    /// One order, from `newOrder` to the stored certificate.
    async fn order(&self, renewing: Option<&[u8]>, ari: bool) -> Result<(), AcmeError> {
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
        result
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
            // The name becomes a file name below: only one we asked for.
            if !self.names.contains(&name) {
                return Err(AcmeError::Unexpected(name));
            }
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
            // The CA's reason is on the failed challenge, not the order.
            let mut reasons = Vec::new();
            let mut authorizations = order.authorizations();
            while let Some(Ok(authorization)) = authorizations.next().await {
                let name = authorization.identifier().to_string();
                for challenge in &authorization.challenges {
                    if let Some(problem) = &challenge.error {
                        reasons.push(format!("{name}: {problem}"));
                    }
                }
            }
            return Err(AcmeError::NotReady(status, reasons.join("; ")));
        }
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(self.names.clone())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let request = params.serialize_request(&key)?;
        order.finalize_csr(request.der()).await?;
        let chain = order.poll_certificate(&retry).await?;
        let dir = self.dir();
        // Chain and key in one file, one rename: whole or not at all.
        let pem = format!("{}\n{}", chain.trim_end(), key.serialize_pem());
        write_private(&dir.join("certificate.pem"), pem.as_bytes())
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

    /// The stored account for this CA, or a new one (stored), made under a
    /// lock so the processes of a fleet make one.
    async fn account(&self) -> Result<Account, AcmeError> {
        let path = self.account_path();
        let builder = || match &self.ca_root {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        };
        let _lock = if path.exists() {
            None
        } else {
            Some(Lock::acquire(&self.storage.join("locks"), "account").await?)
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
/// temporary file (a unique name, created 0600) renamed over it, so a
/// reader never sees half a file.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    private_dir(dir)?;
    let mut file = tempfile::Builder::new()
        .prefix(".tmp")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    file.write_all(bytes).map_err(io(file.path()))?;
    file.as_file().sync_all().map_err(io(path))?;
    file.persist(path)
        .map_err(|error| io(path)(error.error))
        .map(drop)
}

/// Makes `dir` (and its parents) as the owner's alone (0700).
fn private_dir(dir: &Path) -> Result<(), AcmeError> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))
}

/// An exclusive `flock` on `<dir>/<stem>.lock`: between the workers of an
/// instance and between replicas sharing the directory. The kernel releases
/// it when the holder exits, however it exits, so a dead holder never
/// blocks an order; the file itself stays.
struct Lock {
    _file: fs::File,
}

impl Lock {
    async fn acquire(dir: &Path, stem: &str) -> Result<Self, AcmeError> {
        private_dir(dir)?;
        let path = dir.join(format!("{stem}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self { _file: file }),
                Err(fs::TryLockError::WouldBlock) => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(fs::TryLockError::Error(error)) => return Err(io(&path)(error)),
            }
        }
    }
}

/// The last failed order, kept beside the certificate (`failed`): when the
/// next attempt may start, how many failed in a row, and why.
#[derive(Debug, Clone, PartialEq)]
struct Failure {
    next: SystemTime,
    failures: u32,
    error: String,
}

impl Failure {
    fn read(dir: &Path) -> Option<Self> {
        let text = fs::read_to_string(dir.join("failed")).ok()?;
        let mut lines = text.splitn(3, '\n');
        let next = lines.next()?.parse().ok()?;
        let failures = lines.next()?.parse().ok()?;
        Some(Self {
            next: UNIX_EPOCH + Duration::from_secs(next),
            failures,
            error: lines.next().unwrap_or_default().to_owned(),
        })
    }

    fn write(&self, dir: &Path) -> Result<(), AcmeError> {
        let next = self
            .next
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let text = format!("{next}\n{}\n{}", self.failures, self.error);
        write_private(&dir.join("failed"), text.as_bytes())
    }

    fn clear(dir: &Path) {
        let _ = fs::remove_file(dir.join("failed"));
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
            match tokio::time::timeout(ARI_TIMEOUT, order.suggested(leaf)).await {
                Ok(Ok(Some((suggested, again)))) => {
                    due = due.map(|due| due.min(suggested));
                    ask_again = again.clamp(MIN_ARI_POLL, MAX_WAIT);
                }
                Ok(Ok(None)) => {}
                Ok(Err(AcmeError::Protocol(instant_acme::Error::Unsupported(_)))) => ari = false,
                Ok(Err(error)) => {
                    tracing::warn!(error = %chain(&error), "ACME: no renewal information; renewing at two thirds of the lifetime");
                }
                Err(_) => tracing::warn!("ACME: the renewal information did not come in time"),
            }
        }
        let wait = due
            .and_then(|due| due.duration_since(SystemTime::now()).ok())
            .unwrap_or_default();
        if !wait.is_zero() {
            tokio::time::sleep(wait.min(ask_again)).await;
            continue;
        }
        let pause = match order.obtain(stored.as_deref(), ari).await {
            Ok(outcome) => {
                failures = 0;
                if outcome == Outcome::Issued {
                    ISSUED.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(names = ?order.names, "ACME: certificate obtained");
                }
                let _ = tls.reload();
                // A certificate due again at once (a clock far off, an ARI
                // window in the past) must not become an order loop.
                let still_due = order
                    .stored()
                    .as_deref()
                    .and_then(two_thirds)
                    .is_none_or(|due| due <= SystemTime::now());
                still_due.then(|| order.retry.max(MIN_ARI_POLL))
            }
            // Another process's order failed: wait out the shared back-off.
            Err(AcmeError::Deferred { until, error }) => {
                tracing::info!(names = ?order.names, %error, "ACME: an order by another process failed; waiting out its back-off");
                Some(until.duration_since(SystemTime::now()).unwrap_or_default())
            }
            Err(error) => {
                failures += 1;
                FAILED.fetch_add(1, Ordering::Relaxed);
                let delay = Failure::read(&order.dir()).map_or_else(
                    || backoff(order.retry, failures),
                    |f| f.next.duration_since(SystemTime::now()).unwrap_or_default(),
                );
                let error = chain(&error);
                tracing::error!(%error, names = ?order.names, retry_in_ms = delay.as_millis(), "ACME: order failed; the current certificate (if any) keeps serving");
                Some(delay)
            }
        };
        if let Some(pause) = pause {
            tokio::time::sleep(pause.max(Duration::from_millis(100))).await;
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
        let traversal = FILE.replace("\"documents.example.gov.uk\"", "\"../../x.y\"");
        let error = crate::check_toml(&traversal).unwrap_err();
        assert!(error.message.contains("only full DNS names"), "{error}");
        let hot = format!("{FILE}\n[acme]\nretry = \"0s\"\n");
        let error = crate::check_toml(&hot).unwrap_err();
        assert!(error.message.contains("[acme] retry"), "{error}");
    }

    /// A failed order sets when the next may start; every process that
    /// takes the lock before then is told so instead of ordering again.
    #[test]
    fn a_failure_defers_every_process_until_its_back_off_ends() {
        let dir = tempfile::tempdir().unwrap();
        let order = AcmeOrder {
            names: vec!["a.test".to_owned()],
            // Nothing listens here: an order would fail to connect.
            directory: "https://127.0.0.1:9/dir".to_owned(),
            email: None,
            challenge: Challenge::Http01,
            ca_root: None,
            storage: dir.path().to_owned(),
            retry: Duration::from_secs(60),
        };
        let failure = Failure {
            next: UNIX_EPOCH + Duration::from_secs(4_000_000_000),
            failures: 2,
            error: "urn:ietf:params:acme:error:dns: NXDOMAIN\nlooking up a.test".to_owned(),
        };
        failure.write(&order.dir()).unwrap();
        assert_eq!(Failure::read(&order.dir()), Some(failure.clone()));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        match runtime.block_on(order.obtain(None, false)) {
            Err(AcmeError::Deferred { until, error }) => {
                assert_eq!(until, failure.next);
                assert_eq!(error, failure.error);
            }
            other => panic!("expected Deferred, got {other:?}"),
        }
        // Past its time, the next order is made (and fails here: nothing
        // listens), counted on from the failures before.
        Failure {
            next: SystemTime::now() - Duration::from_secs(1),
            ..failure
        }
        .write(&order.dir())
        .unwrap();
        let error = runtime.block_on(order.obtain(None, false)).unwrap_err();
        assert!(!matches!(error, AcmeError::Deferred { .. }), "{error}");
        let after = Failure::read(&order.dir()).unwrap();
        assert_eq!(after.failures, 3);
        assert!(after.next > SystemTime::now() + Duration::from_secs(200));
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
    fn a_held_lock_waits_and_a_dead_holders_is_released() {
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
            drop(third);
            // A holder that dies (SIGKILL, mid-order) releases it.
            // `-o`: flock(1) alone holds it, not the command it runs.
            let mut holder = std::process::Command::new("flock")
                .arg("-o")
                .arg(dir.path().join("a.test.lock"))
                .args(["sleep", "3"])
                .spawn()
                .unwrap();
            let held = async {
                while tokio::time::timeout(
                    Duration::from_millis(50),
                    Lock::acquire(dir.path(), "a.test"),
                )
                .await
                .is_ok()
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(5), held)
                .await
                .unwrap();
            holder.kill().unwrap();
            holder.wait().unwrap();
            let fourth = tokio::time::timeout(
                Duration::from_millis(600),
                Lock::acquire(dir.path(), "a.test"),
            )
            .await;
            assert!(fourth.is_ok(), "a dead holder's lock is taken");
        });
    }
}
