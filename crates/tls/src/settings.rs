//! [`TlsSettings`]: what to serve and how, with defaults.

use std::path::PathBuf;
use std::time::Duration;

/// One certificate chain with its private key, as certbot or cert-manager
/// write them (`fullchain.pem` + `privkey.pem`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificatePair {
    /// PEM file: the end-entity certificate first, then intermediates.
    pub cert: PathBuf,
    /// PEM file: the private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
    /// A DER OCSP response to staple (`ssl_stapling_file`), reloaded with the
    /// pair. Default none.
    pub ocsp: Option<PathBuf>,
    /// Served to clients that send no SNI, or a name no certificate covers.
    /// When no pair is marked, the first pair is the default. An ECDSA and an
    /// RSA pair for the same names may both be marked: each client gets the
    /// one it supports.
    pub default: bool,
    /// `Some(names)`: the files may not exist yet, because a certificate
    /// client (edge's ACME) is obtaining them. While they are missing the
    /// pair is left out rather than refusing the whole set (files that are
    /// there but bad refuse it, as for any pair), and a handshake for one
    /// of `names` fails instead of falling back to the default certificate
    /// (a client is never shown a certificate for another name). The
    /// watcher loads it once the files appear. Default `None`: the files
    /// must load.
    pub awaited: Option<Vec<String>>,
}

impl CertificatePair {
    /// A pair with no OCSP response, not marked default.
    pub fn new(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            cert: cert.into(),
            key: key.into(),
            ocsp: None,
            default: false,
            awaited: None,
        }
    }
}

/// Client-certificate (mutual TLS) verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAuth {
    /// PEM file of the CA certificates client certificates must chain to.
    pub ca: PathBuf,
    /// Refuse clients without a certificate (`ssl_verify_client on`); when
    /// false a certificate is verified if presented (`optional`).
    pub required: bool,
}

/// Everything [`TlsConfig`](crate::TlsConfig) needs. `Default` gives the
/// documented defaults and no certificates (which does not load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificates; SNI picks among them, then the client's signature
    /// algorithms pick ECDSA or RSA. At least one.
    pub certificates: Vec<CertificatePair>,
    /// ALPN protocols offered, in preference order. Default `h2`, `http/1.1`.
    pub alpn: Vec<String>,
    /// TLS 1.2 sessions kept for session-id resumption (`ssl_session_cache`).
    /// 0 disables the cache. Default 20 480 (about what nginx keeps in 5 MB).
    pub session_cache_size: usize,
    /// Stateless session tickets (TLS 1.2 tickets and TLS 1.3 resumption),
    /// encrypted under keys rotated every 6 hours. Default on.
    pub session_tickets: bool,
    /// A client must finish its handshake within this. Default 10 s.
    pub handshake_timeout: Duration,
    /// How often certificate files are checked for changes (a change of
    /// modification time, size or inode, symlinks followed). `None` turns the
    /// watcher off; SIGHUP or [`TlsConfig::reload`](crate::TlsConfig::reload)
    /// still reload. Default 5 s.
    pub watch_interval: Option<Duration>,
    /// Optional client-certificate verification. Default none.
    pub client_auth: Option<ClientAuth>,
    /// Where ticket keys come from. `None`: keys of this process alone
    /// (rustls's ticketer). `Some`: keys derived from this secret and the
    /// time, rotated every [`TICKET_KEY_ROTATION`](crate::TICKET_KEY_ROTATION)
    /// alike in every process and replica that holds it, so any of them
    /// resumes a session another issued. Default `None`.
    pub ticket_secret: Option<crate::TicketSecret>,
    /// Where the session cache lives. `None`: rustls's cache of
    /// [`session_cache_size`](Self::session_cache_size) sessions in this
    /// process. `Some`: this cache, which other processes share (a worker
    /// per CPU then resumes any worker's sessions). Default `None`.
    pub session_store: Option<crate::SharedSessionCache>,
    /// A directory of TLS-ALPN-01 answers (RFC 8737) written by an ACME
    /// client: a `ClientHello` that offers only the `acme-tls/1` protocol for
    /// name N gets the certificate and key in `<dir>/N.pem`, and the
    /// connection ends after the handshake. `acme-tls/1` is then offered
    /// last among the ALPN protocols (no ordinary client asks for it).
    /// Default `None`.
    pub acme_tls_alpn: Option<PathBuf>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            certificates: Vec::new(),
            alpn: vec!["h2".to_owned(), "http/1.1".to_owned()],
            session_cache_size: 20_480,
            session_tickets: true,
            handshake_timeout: Duration::from_secs(10),
            watch_interval: Some(Duration::from_secs(5)),
            client_auth: None,
            ticket_secret: None,
            session_store: None,
            acme_tls_alpn: None,
        }
    }
}

impl TlsSettings {
    /// Default settings serving these pairs.
    pub fn with_certificates(certificates: Vec<CertificatePair>) -> Self {
        Self {
            certificates,
            ..Self::default()
        }
    }
}
