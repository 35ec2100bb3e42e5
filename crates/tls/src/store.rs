//! Certificates in memory: loading and validating pairs, choosing one per
//! handshake (SNI, then the client's signature algorithms), and swapping in a
//! new set on reload.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureAlgorithm;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::error::TlsError;
use crate::settings::CertificatePair;

/// Counters for an operator (exposed by `edge` on `/metrics`).
#[derive(Debug, Default)]
pub struct TlsMetrics {
    pub(crate) handshakes: AtomicU64,
    pub(crate) resumed: AtomicU64,
    pub(crate) handshake_failures: AtomicU64,
    pub(crate) handshake_timeouts: AtomicU64,
    pub(crate) reloads: AtomicU64,
    pub(crate) reload_failures: AtomicU64,
}

/// A snapshot of [`TlsMetrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TlsStats {
    /// Completed handshakes.
    pub handshakes: u64,
    /// Of those, resumed sessions (ticket or session id).
    pub resumed: u64,
    /// Handshakes that failed (bad client, unsupported version, reset).
    pub handshake_failures: u64,
    /// Handshakes abandoned at the handshake timeout.
    pub handshake_timeouts: u64,
    /// Certificate reloads that swapped in new certificates.
    pub reloads: u64,
    /// Reloads refused because a new file was invalid (the old set stayed).
    pub reload_failures: u64,
}

impl TlsMetrics {
    /// The current counts.
    pub fn snapshot(&self) -> TlsStats {
        TlsStats {
            handshakes: self.handshakes.load(Ordering::Relaxed),
            resumed: self.resumed.load(Ordering::Relaxed),
            handshake_failures: self.handshake_failures.load(Ordering::Relaxed),
            handshake_timeouts: self.handshake_timeouts.load(Ordering::Relaxed),
            reloads: self.reloads.load(Ordering::Relaxed),
            reload_failures: self.reload_failures.load(Ordering::Relaxed),
        }
    }
}

/// One loaded pair.
struct Entry {
    key: Arc<CertifiedKey>,
    default: bool,
    /// The certificate file it came from (a metric label).
    source: String,
}

/// The certificates served at one time; replaced whole on reload.
pub(crate) struct CertSet {
    /// ECDSA (and Ed25519) pairs before RSA, so a client that supports both
    /// gets the smaller, faster one.
    entries: Vec<Entry>,
    /// Names (lower case) of awaited pairs that did not load: a handshake
    /// for one of them fails rather than falling back to the default.
    awaited: Vec<String>,
}

impl fmt::Debug for CertSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertSet")
            .field("entries", &self.entries.len())
            .field("awaited", &self.awaited)
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses a PEM certificate chain (at least one certificate).
pub(crate) fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: format!("not a PEM certificate chain: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            reason: "no CERTIFICATE section".to_owned(),
        });
    }
    for (i, cert) in chain.iter().enumerate() {
        webpki::EndEntityCert::try_from(cert).map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: format!("certificate {} of the chain does not parse: {e}", i + 1),
        })?;
    }
    Ok(chain)
}

fn load_pair(
    pair: &CertificatePair,
    provider: &CryptoProvider,
) -> Result<(CertifiedKey, SignatureAlgorithm), TlsError> {
    let chain = load_chain(&pair.cert)?;
    let key_pem = read(&pair.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        path: pair.key.clone(),
        reason: format!("no usable private key: {e}"),
    })?;
    let mismatch = |reason: String| TlsError::KeyMismatch {
        cert: pair.cert.clone(),
        key: pair.key.clone(),
        reason,
    };
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| mismatch(e.to_string()))?;
    let algorithm = signing_key.algorithm();
    let mut certified = CertifiedKey::new(chain, signing_key);
    // Unlike `CertifiedKey::from_der`, an unknown consistency is an error too:
    // a key that cannot be checked is not swapped in.
    certified
        .keys_match()
        .map_err(|e| mismatch(e.to_string()))?;
    if let Some(ocsp) = &pair.ocsp {
        let response = read(ocsp)?;
        if response.is_empty() {
            return Err(TlsError::Pem {
                path: ocsp.clone(),
                reason: "empty OCSP response".to_owned(),
            });
        }
        certified.ocsp = Some(response);
    }
    Ok((certified, algorithm))
}

impl CertSet {
    pub(crate) fn load(
        pairs: &[CertificatePair],
        provider: &CryptoProvider,
    ) -> Result<Self, TlsError> {
        if pairs.is_empty() {
            return Err(TlsError::NoCertificates);
        }
        let any_default = pairs.iter().any(|p| p.default);
        let mut entries = Vec::with_capacity(pairs.len());
        let mut awaited = Vec::new();
        for pair in pairs {
            let (key, algorithm) = match (load_pair(pair, provider), &pair.awaited) {
                (Ok(loaded), _) => loaded,
                // Not written yet: its names wait for it. A file that is
                // there but bad refuses the set as any pair's would (a
                // reload keeps the certificate it served).
                (Err(TlsError::Read { path, source }), Some(names))
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    tracing::debug!(file = %path.display(), "Awaited certificate not written yet");
                    awaited.extend(names.iter().map(|n| n.to_ascii_lowercase()));
                    continue;
                }
                (Err(error), _) => return Err(error),
            };
            let key = Arc::new(key);
            // Names added since it was obtained wait for the next one,
            // rather than getting the default certificate.
            if let Some(names) = &pair.awaited {
                awaited.extend(
                    names
                        .iter()
                        .filter(|n| {
                            key.cert
                                .first()
                                .is_none_or(|leaf| !crate::expiry::covers(leaf, n))
                        })
                        .map(|n| n.to_ascii_lowercase()),
                );
            }
            let rank = u8::from(algorithm == SignatureAlgorithm::RSA);
            entries.push((
                rank,
                Entry {
                    key,
                    default: pair.default,
                    source: pair.cert.display().to_string(),
                },
            ));
        }
        // With none marked, the first pair that loaded is the default (an
        // awaited first pair that is not written yet passes it on).
        if !any_default {
            if let Some((_, first)) = entries.first_mut() {
                first.default = true;
            }
        }
        // Stable: configuration order is kept within ECDSA and within RSA.
        entries.sort_by_key(|(rank, _)| *rank);
        Ok(Self {
            entries: entries.into_iter().map(|(_, e)| e).collect(),
            awaited,
        })
    }

    /// Names whose awaited certificate has not loaded yet.
    pub(crate) fn awaited(&self) -> &[String] {
        &self.awaited
    }

    /// Each served certificate's file and `notAfter` (Unix seconds).
    pub(crate) fn expiries(&self) -> Vec<(String, u64)> {
        self.entries
            .iter()
            .filter_map(|e| {
                let leaf = e.key.cert.first()?;
                Some((e.source.clone(), crate::expiry::not_after(leaf)?))
            })
            .collect()
    }

    fn covers(entry: &Entry, name: &ServerName<'_>) -> bool {
        let Some(cert) = entry.key.cert.first() else {
            return false;
        };
        webpki::EndEntityCert::try_from(cert)
            .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(name).is_ok())
    }

    fn choose(&self, hello: &ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = hello.signature_schemes();
        let usable = |e: &&Entry| e.key.key.choose_scheme(schemes).is_some();
        if let Some(name) = hello
            .server_name()
            .and_then(|n| ServerName::try_from(n).ok())
        {
            let by_name = self
                .entries
                .iter()
                .filter(|e| Self::covers(e, &name))
                .find(usable);
            if let Some(entry) = by_name {
                return Some(Arc::clone(&entry.key));
            }
            let asked = hello.server_name().unwrap_or_default();
            if self.awaited.iter().any(|n| n.eq_ignore_ascii_case(asked)) {
                return None;
            }
        }
        self.entries
            .iter()
            .filter(|e| e.default)
            .find(usable)
            .or_else(|| self.entries.iter().find(|e| e.default))
            .map(|e| Arc::clone(&e.key))
    }
}

/// The rustls certificate resolver over the current [`CertSet`].
#[derive(Debug)]
pub(crate) struct Resolver {
    pub(crate) current: RwLock<Arc<CertSet>>,
    /// TLS-ALPN-01 answers: `<dir>/<name>.pem`.
    pub(crate) acme_tls_alpn: Option<PathBuf>,
    pub(crate) provider: Arc<CryptoProvider>,
}

/// The ALPN protocol of a TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

impl Resolver {
    /// The TLS-ALPN-01 answer for a validation's `ClientHello`: only
    /// `acme-tls/1` offered, a name given, and its answer file present.
    fn acme_answer(&self, hello: &ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let dir = self.acme_tls_alpn.as_ref()?;
        let mut alpn = hello.alpn()?;
        if alpn.next() != Some(ACME_TLS_ALPN) || alpn.next().is_some() {
            return None;
        }
        let name = hello.server_name()?.to_ascii_lowercase();
        // A DNS name only: no path separators or parent references.
        if ServerName::try_from(name.as_str()).is_err()
            || name.contains('/')
            || name.starts_with('.')
        {
            return None;
        }
        let path = dir.join(format!("{name}.pem"));
        // Anyone can send such a hello: a missing answer is not worth a
        // warning each time.
        if !path.exists() {
            tracing::debug!(name, "TLS-ALPN-01 hello for a name with no answer");
            return None;
        }
        match load_answer(&path, &self.provider) {
            Ok(key) => Some(Arc::new(key)),
            Err(error) => {
                tracing::warn!(%error, name, "TLS-ALPN-01 answer does not load");
                None
            }
        }
    }
}

/// A TLS-ALPN-01 answer: certificate and key in one PEM file. Not checked
/// with webpki as served pairs are: its `acmeIdentifier` extension is
/// critical and unknown to webpki, and only the CA's validator sees it.
fn load_answer(path: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let pem = read(path)?;
    let bad = |reason: String| TlsError::Pem {
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
    if chain.is_empty() {
        return Err(bad("no CERTIFICATE section".to_owned()));
    }
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| bad(format!("no usable private key: {e}")))?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad(e.to_string()))?;
    Ok(CertifiedKey::new(chain, key))
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if self.acme_tls_alpn.is_some() {
            if let Some(answer) = self.acme_answer(&hello) {
                return Some(answer);
            }
            if hello
                .alpn()
                .is_some_and(|mut p| p.any(|p| p == ACME_TLS_ALPN))
            {
                return None;
            }
        }
        let set = match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            // A writer never panics while holding the lock (it only assigns),
            // but a poisoned lock still holds a valid set.
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        set.choose(&hello)
    }
}

/// What identifies a file's version: changes when certbot swaps a symlink or
/// a file is rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// The stamps of every file a set was (or would be) loaded from.
pub(crate) fn stamps(paths: &[PathBuf]) -> Vec<Option<FileStamp>> {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| FileStamp {
                modified: m.modified().ok(),
                len: m.len(),
                inode: inode(&m),
            })
        })
        .collect()
}

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_meta: &std::fs::Metadata) -> u64 {
    0
}
