//! Self-signed certificates for development (and tests), generated with rcgen
//! on aws-lc-rs.

use std::path::Path;

use crate::error::TlsError;
use crate::settings::CertificatePair;

/// The kind of key a generated certificate has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyKind {
    /// ECDSA P-256 with SHA-256 (small, fast handshakes). The default.
    #[default]
    EcdsaP256,
    /// RSA 2048 with SHA-256 (for old clients).
    Rsa2048,
}

/// A generated certificate and its key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct SelfSigned {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// The private key (PKCS#8 PEM).
    pub key_pem: String,
}

impl SelfSigned {
    /// A certificate for `names` (DNS names or IP addresses), valid from now
    /// for about a year, signed by its own key.
    pub fn generate(names: &[&str], kind: KeyKind) -> Result<Self, TlsError> {
        let alg = match kind {
            KeyKind::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyKind::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        };
        let err = |e: rcgen::Error| TlsError::SelfSigned(e.to_string());
        let key = rcgen::KeyPair::generate_for(alg).map_err(err)?;
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .map_err(err)?
            .self_signed(&key)
            .map_err(err)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Writes `<stem>.crt` and `<stem>.key` (mode 0600) into `dir` and
    /// returns the pair naming them.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<CertificatePair, TlsError> {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        let write = |path: &Path, text: &str| {
            std::fs::write(path, text).map_err(|source| TlsError::Read {
                path: path.to_owned(),
                source,
            })
        };
        write(&cert, &self.cert_pem)?;
        write(&key, &self.key_pem)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600));
        }
        Ok(CertificatePair::new(cert, key))
    }
}
