//! [`TlsError`]: why a TLS configuration could not be loaded.

use std::path::PathBuf;

/// Why certificates or settings could not be loaded. The message names the
/// file and the reason, for an operator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// No certificate pair was configured.
    #[error("no certificate configured")]
    NoCertificates,
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// A PEM file does not parse or holds nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A private key does not belong to its certificate, or is unsupported.
    #[error("{key} does not match {cert}: {reason}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
    /// The client-certificate CA file or verifier is unusable.
    #[error("client certificate verification: {0}")]
    ClientAuth(String),
    /// An ALPN protocol name is empty or too long.
    #[error("invalid ALPN protocol {0:?}")]
    Alpn(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// A self-signed certificate could not be generated.
    #[error("cannot generate a self-signed certificate: {0}")]
    SelfSigned(String),
}
