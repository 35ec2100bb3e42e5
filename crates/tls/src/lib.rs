//! TLS termination for wharf on rustls (aws-lc-rs): certificates from the PEM
//! files certbot or cert-manager write, reloaded while serving.
//!
//! **What it is for:** a [`TlsConfig`] loaded from [`TlsSettings`] gives
//! TLS 1.2 and 1.3 only, with forward-secret AEAD suites only; ECDSA and RSA
//! certificates side by side (each client gets one it supports); SNI across
//! several certificates with a default; ALPN `h2` and `http/1.1`; session
//! resumption (a session cache and stateless tickets under keys rotated every
//! 6 hours); an OCSP response stapled from a file; optional client-certificate
//! verification; a handshake timeout. Certificates are re-read when their files
//! change ([`TlsConfig::watch`]) or on demand ([`TlsConfig::reload`], e.g. on
//! SIGHUP): a new pair is validated before it is swapped in, a bad one keeps
//! the old certificates serving (logged, counted in [`TlsStats`]), and open
//! connections are never touched. [`TlsConfig::acceptor`] is a
//! [`wharf_http::Acceptor`], so `wharf_http::Server::serve_with` serves TLS;
//! every request then carries a [`wharf_http::TlsInfo`].
//!
//! For an ACME client beside it (edge's `[[server]] acme`): a pair can be
//! *awaited* ([`CertificatePair::awaited`]), so the set loads before its file
//! exists and handshakes for its names fail until it does, rather than
//! showing the default certificate; [`TlsSettings::acme_tls_alpn`] answers
//! TLS-ALPN-01 validations from a directory; [`validity`],
//! [`renewal_identifier`] and [`covers`] read what renewal needs from a
//! certificate.
//!
//! **What it is not for:** talking ACME (edge's `acme` module does, with
//! instant-acme; certbot or cert-manager can renew the files instead), TLS
//! 1.0/1.1, or client-side TLS.
//!
//! ```
//! use wharf_tls::{KeyKind, SelfSigned, TlsConfig, TlsSettings};
//!
//! let dir = tempfile::tempdir()?;
//! let pair = SelfSigned::generate(&["localhost"], KeyKind::EcdsaP256)?.write(dir.path(), "site")?;
//! let tls = TlsConfig::load(&TlsSettings::with_certificates(vec![pair]))?;
//! assert_eq!(tls.server_config().alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
//!
//! // A broken replacement is refused and the old certificate keeps serving.
//! std::fs::write(dir.path().join("site.crt"), "not a certificate")?;
//! assert!(tls.reload().is_err());
//! assert_eq!(tls.stats().reload_failures, 1);
//!
//! // Serving: `wharf_http::Server::new(config).serve_with(listeners, tls.acceptor(), app, shutdown)`.
//! let _acceptor = tls.acceptor();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

mod acceptor;
mod config;
mod error;
mod expiry;
mod selfsigned;
mod sessions;
mod settings;
mod store;
mod tickets;

pub use acceptor::TlsAcceptor;
pub use config::TlsConfig;
pub use error::TlsError;
pub use expiry::{covers, not_after, renewal_identifier, validity};
pub use selfsigned::{KeyKind, SelfSigned};
pub use sessions::SharedSessionCache;
pub use settings::{CertificatePair, ClientAuth, TlsSettings};
pub use store::ACME_TLS_ALPN;
pub use store::{TlsMetrics, TlsStats};
pub use tickets::{TicketSecret, ROTATION as TICKET_KEY_ROTATION};
pub use tokio_rustls::server::TlsStream;
