//! [`TlsConfig`]: the loaded TLS configuration, its reloads and its watcher.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{NoServerSessionStorage, ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};

use crate::acceptor::TlsAcceptor;
use crate::error::TlsError;
use crate::settings::{CertificatePair, ClientAuth, TlsSettings};
use crate::store::{load_chain, stamps, CertSet, FileStamp, Resolver, TlsMetrics, TlsStats};

/// A loaded TLS configuration: rustls settings plus certificates that can be
/// replaced while serving. Cheap to clone; clones share everything.
///
/// Reloading (from [`reload`](Self::reload), the [watcher](Self::watch) or
/// [`set_certificates`](Self::set_certificates)) validates every new pair —
/// the chain parses, the key matches the certificate, the OCSP file reads —
/// before swapping the whole set in; on any error the old certificates keep
/// serving, the reason is logged and `reload_failures` counts it. Connections
/// already established are never touched: a reload only changes what the next
/// handshakes see. Session-ticket keys and the session cache survive reloads.
#[derive(Clone)]
pub struct TlsConfig {
    inner: Arc<Inner>,
}

struct Inner {
    certificates: RwLock<Vec<CertificatePair>>,
    provider: Arc<CryptoProvider>,
    resolver: Arc<Resolver>,
    server_config: Arc<ServerConfig>,
    handshake_timeout: Duration,
    watch_interval: Option<Duration>,
    metrics: Arc<TlsMetrics>,
    /// The ticketer when keys come from a [`TicketSecret`](crate::TicketSecret).
    ticketer: Option<Arc<crate::tickets::SharedTicketer>>,
    /// The file stamps of the last reload attempt, good or bad: the watcher
    /// retries only when a file changes again.
    last_stamps: Mutex<Vec<Option<FileStamp>>>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("certificates", &self.certificates())
            .field("alpn", &self.inner.server_config.alpn_protocols.len())
            .field("handshake_timeout", &self.inner.handshake_timeout)
            .finish_non_exhaustive()
    }
}

fn watched_paths(pairs: &[CertificatePair]) -> Vec<PathBuf> {
    pairs
        .iter()
        .flat_map(|p| [Some(p.cert.clone()), Some(p.key.clone()), p.ocsp.clone()])
        .flatten()
        .collect()
}

fn client_verifier(
    auth: &ClientAuth,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_chain(&auth.ca)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::ClientAuth(format!("{}: {e}", auth.ca.display())))?;
    }
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider));
    let builder = if auth.required {
        builder
    } else {
        builder.allow_unauthenticated()
    };
    builder
        .build()
        .map_err(|e| TlsError::ClientAuth(e.to_string()))
}

impl TlsConfig {
    /// Loads and validates every certificate and builds the rustls
    /// configuration: TLS 1.2 and 1.3 only, forward-secret AEAD suites only
    /// (aws-lc-rs), the ALPN list, the session cache and rotating tickets.
    pub fn load(settings: &TlsSettings) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let set = CertSet::load(&settings.certificates, &provider)?;
        let resolver = Arc::new(Resolver {
            current: RwLock::new(Arc::new(set)),
            acme_tls_alpn: settings.acme_tls_alpn.clone(),
            provider: Arc::clone(&provider),
        });
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
        let builder = match &settings.client_auth {
            Some(auth) => builder.with_client_cert_verifier(client_verifier(auth, &provider)?),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(Arc::clone(&resolver) as _);
        config.alpn_protocols = settings
            .alpn
            .iter()
            .map(|p| {
                if p.is_empty() || p.len() > 255 {
                    Err(TlsError::Alpn(p.clone()))
                } else {
                    Ok(p.as_bytes().to_vec())
                }
            })
            .collect::<Result<_, _>>()?;
        if settings.acme_tls_alpn.is_some() {
            config
                .alpn_protocols
                .push(crate::store::ACME_TLS_ALPN.to_vec());
        }
        config.session_storage = if settings.session_cache_size == 0 {
            Arc::new(NoServerSessionStorage {})
        } else if let Some(shared) = &settings.session_store {
            Arc::new(shared.clone())
        } else {
            ServerSessionMemoryCache::new(settings.session_cache_size)
        };
        let mut ticketer = None;
        if settings.session_tickets {
            config.ticketer = match &settings.ticket_secret {
                Some(secret) => {
                    let shared = Arc::new(crate::tickets::SharedTicketer::new(secret));
                    ticketer = Some(Arc::clone(&shared));
                    shared
                }
                None => rustls::crypto::aws_lc_rs::Ticketer::new()?,
            };
        }
        // The client's cipher order wins among our (all strong) suites, as
        // `ssl_prefer_server_ciphers off` in the seeds.
        config.ignore_client_order = false;
        let paths = watched_paths(&settings.certificates);
        Ok(Self {
            inner: Arc::new(Inner {
                certificates: RwLock::new(settings.certificates.clone()),
                provider,
                resolver,
                server_config: Arc::new(config),
                handshake_timeout: settings.handshake_timeout,
                watch_interval: settings.watch_interval,
                metrics: Arc::new(TlsMetrics::default()),
                ticketer,
                last_stamps: Mutex::new(stamps(&paths)),
            }),
        })
    }

    /// The acceptor that `wharf_http::Server::serve_with` serves TLS with.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::new(
            Arc::clone(&self.inner.server_config),
            self.inner.handshake_timeout,
            Arc::clone(&self.inner.metrics),
        )
    }

    /// The rustls server configuration (for embedding with another server).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.inner.server_config)
    }

    /// Seals new session tickets with keys from `secret` from now on (a
    /// fleet's secret read again from its file or from Redis); tickets
    /// sealed with the secret it replaces still open. Whether anything
    /// changed: `false` for the same secret, or when keys do not come from a
    /// [`TicketSecret`](crate::TicketSecret) (tickets off, or this process's
    /// own keys).
    pub fn set_ticket_secret(&self, secret: &crate::TicketSecret) -> bool {
        self.inner
            .ticketer
            .as_ref()
            .is_some_and(|ticketer| ticketer.set_secret(secret))
    }

    /// Handshake and reload counters.
    pub fn stats(&self) -> TlsStats {
        self.inner.metrics.snapshot()
    }

    /// Each certificate being served (its file) and when it expires (Unix
    /// seconds): export it and alert well before renewal is late.
    pub fn certificate_expiries(&self) -> Vec<(String, u64)> {
        let set = match self.inner.resolver.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        set.expiries()
    }

    /// Names whose awaited certificate (an ACME client's, say) has not
    /// loaded yet: handshakes for them fail until it does.
    pub fn awaited(&self) -> Vec<String> {
        let set = match self.inner.resolver.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        set.awaited().to_vec()
    }

    /// The certificate pairs currently configured.
    pub fn certificates(&self) -> Vec<CertificatePair> {
        match self.inner.certificates.read() {
            Ok(pairs) => pairs.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Re-reads every certificate file; see the [type docs](Self) for what
    /// happens on error (the old certificates keep serving).
    pub fn reload(&self) -> Result<(), TlsError> {
        let pairs = self.certificates();
        self.swap_in(&pairs)
    }

    /// Replaces the configured pairs (a configuration reload), with the same
    /// validation as [`reload`](Self::reload); on error nothing changes.
    pub fn set_certificates(&self, pairs: Vec<CertificatePair>) -> Result<(), TlsError> {
        self.swap_in(&pairs)?;
        match self.inner.certificates.write() {
            Ok(mut current) => *current = pairs,
            Err(poisoned) => *poisoned.into_inner() = pairs,
        }
        Ok(())
    }

    fn swap_in(&self, pairs: &[CertificatePair]) -> Result<(), TlsError> {
        let inner = &self.inner;
        let before = stamps(&watched_paths(pairs));
        let result = CertSet::load(pairs, &inner.provider);
        if let Ok(mut last) = inner.last_stamps.lock() {
            *last = before;
        }
        match result {
            Ok(set) => {
                match inner.resolver.current.write() {
                    Ok(mut current) => *current = Arc::new(set),
                    Err(poisoned) => *poisoned.into_inner() = Arc::new(set),
                }
                inner
                    .metrics
                    .reloads
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(
                    certificates = pairs.len(),
                    "Certificates reloaded; new handshakes use them"
                );
                Ok(())
            }
            Err(error) => {
                inner
                    .metrics
                    .reload_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(%error, "Certificate reload refused; still serving the previous certificates");
                Err(error)
            }
        }
    }

    /// Whether any watched file changed since the last reload attempt.
    fn files_changed(&self) -> bool {
        let now = stamps(&watched_paths(&self.certificates()));
        self.inner
            .last_stamps
            .lock()
            .map_or(true, |last| *last != now)
    }

    /// Starts the file watcher (when `watch_interval` is set): every interval
    /// it compares the files' modification time, size and inode with the last
    /// reload attempt's and reloads on a change. It stops when every clone of
    /// this configuration is dropped. Must be called inside a tokio runtime.
    pub fn watch(&self) -> Option<tokio::task::JoinHandle<()>> {
        let interval = self.inner.watch_interval?;
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(inner) = weak.upgrade() else { return };
                let config = TlsConfig { inner };
                if config.files_changed() {
                    // Let a writer that replaces several files finish.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    tracing::info!("Certificate files changed; reloading");
                    let _ = config.reload();
                }
            }
        }))
    }

    /// Reloads on every SIGHUP until every clone of this configuration is
    /// dropped (for embedders; `edge` reloads its whole configuration on
    /// SIGHUP instead). Must be called inside a tokio runtime.
    #[cfg(unix)]
    pub fn reload_on_sighup(&self) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangup = signal(SignalKind::hangup())?;
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        Ok(tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                let Some(inner) = weak.upgrade() else { return };
                tracing::info!(signal = "SIGHUP", "Reloading certificates");
                let _ = TlsConfig { inner }.reload();
            }
        }))
    }
}
