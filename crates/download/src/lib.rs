//! The GOV.UK Notify Document Download Frontend as a [`tower::Service`].
//!
//! **What it is for:** serving the pages a recipient of a Notify email goes
//! through to download a file: the landing page (`/d/{service}/{document}?key=…`),
//! the email confirmation form, and the download page linking to the document
//! download API's file; every error page and redirect of the existing Python
//! service, its security headers (a fresh CSP nonce per response), and the
//! fingerprinted GOV.UK Frontend assets under `/static/`. It calls the Notify
//! API (service name and contact link, HS256 token) and the document download
//! API (`/check`, `/authenticate`) through a pooled client with connect and
//! request timeouts, propagating `X-B3-*` and `traceparent`.
//!
//! With no document API configured (development), [`DownloadApp`] also serves a
//! built-in local document API and service directory backed by a directory,
//! seeded with two sample documents ([`DownloadApp::samples`]), so the whole
//! flow runs offline. Deployed environments refuse to start without the real
//! hosts.
//!
//! The app's rate limits live here too, beside the routes they name:
//! [`RateLimitSection`] (the `WHARF_RATELIMIT_*` variables) describes two
//! wharf-ratelimit zones per client IP, the document routes
//! ([`DOCUMENT_PATH_PREFIX`]) and the email-confirmation POST
//! ([`CONFIRM_PATH_SUFFIX`]), and [`RateLimitSection::layer`] builds the layer
//! `frontend` puts in front of the app (in memory, in the instance's shared
//! segment, or through Redis).
//!
//! So are its request metrics: [`route_template`] names every request by the
//! route it matches (bounded label sets for metrics and span names),
//! [`metrics::observer`] feeds wharf-telemetry's `HttpMetrics` with it, and
//! [`metrics::PublicMetrics`] serves `/metrics` on the public port behind a
//! bearer token.
//!
//! **What it is not for:** connections, timeouts of the inbound request, the
//! access log or `/health/*`: serve it with `wharf-http`. Nor the limiter
//! itself (wharf-ratelimit), the metrics' arithmetic and text
//! (wharf-telemetry), nor the document download API in production.
//!
//! ```
//! use http::Request;
//! use tower::ServiceExt;
//! use wharf_download::{Clock, Date, DownloadApp};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let app = DownloadApp::builder()
//!     .local_api(dir.path())
//!     .clock(Clock::fixed(Date::new(2022, 10, 12).unwrap()))
//!     .build()?;
//! let sample = &app.samples()[0];
//! let request = Request::get(&sample.path).body(wharf_http::body::empty())?;
//! let response = app.oneshot(request).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(response.headers()["x-robots-tag"], "noindex, nofollow");
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod api;
mod app;
mod assets;
mod config;
mod csrf;
mod email;
mod html;
mod ids;
mod limits;
mod local;
pub mod metrics;
mod present;
mod random;
mod security;
mod signing;
mod upstream;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use wharf_config::{Environment, Secret};

pub use app::{route_template, DownloadApp};
pub use assets::{Assets, AssetsError};
pub use config::DownloadSection;
pub use email::is_valid_email_address;
pub use ids::{InvalidUuid, Uuid};
pub use limits::{
    frontend_layer, frontend_limiter, RateLimitSection, CONFIRM_PATH_SUFFIX, DOCUMENT_PATH_PREFIX,
};
pub use local::{
    LocalApi, LocalApiError, SampleDocument, SAMPLE_CONFIRM_CONTENT, SAMPLE_EMAIL_ADDRESS,
};
pub use present::{Clock, Date};
pub use signing::verify_notify_api_token;
pub use upstream::UpstreamError;

use api::{DocumentApi, NotifyApi};
use app::Inner;
use upstream::Upstream;

/// Why the app could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// A deployed environment lacks a variable the service needs (the local
    /// API is development-only).
    #[error(
        "{variable} must be set in {environment}: the local document API is for development only"
    )]
    NotConfigured {
        /// The missing variable.
        variable: &'static str,
        /// The environment.
        environment: Environment,
    },
    /// The local document API could not open its directory.
    #[error(transparent)]
    Local(#[from] LocalApiError),
    /// The assets directory could not be read.
    #[error(transparent)]
    Assets(#[from] AssetsError),
    /// The upstream client could not be configured.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The operating system's random generator failed while making the
    /// default secret key (none is made up from anything else).
    #[error("secret key: the OS random generator failed: {0}")]
    Random(#[source] getrandom::Error),
}

impl DownloadError {
    /// Whether the operating system's random generator failed (a fault of
    /// the machine, not of the configuration).
    pub fn is_random_failure(&self) -> bool {
        matches!(
            self,
            Self::Random(_) | Self::Local(LocalApiError::Random(_))
        )
    }
}

/// The crate's own `static/` directory, where `scripts/govuk-frontend-assets.sh`
/// installs GOV.UK Frontend for development.
pub fn default_assets_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("static")
}

#[derive(Debug, Clone)]
enum NotifyTarget {
    Local,
    Http { base: String, secret: String },
}

#[derive(Debug, Clone)]
enum DocumentTarget {
    Local,
    Http { public: String, internal: String },
}

/// Builds a [`DownloadApp`]. Defaults: local Notify API and local document
/// API (both need [`local_api`](Self::local_api)), `http`, a random secret
/// key, no assets, the system clock, 5 s connect and 10 s request timeouts.
#[derive(Debug, Clone)]
#[must_use]
pub struct Builder {
    notify: NotifyTarget,
    documents: DocumentTarget,
    local_dir: Option<PathBuf>,
    local_public_base: Option<String>,
    https: bool,
    secret_key: Option<Vec<u8>>,
    assets: Assets,
    clock: Clock,
    connect_timeout: Duration,
    request_timeout: Duration,
    keepalive: usize,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            notify: NotifyTarget::Local,
            documents: DocumentTarget::Local,
            local_dir: None,
            local_public_base: None,
            https: false,
            secret_key: None,
            assets: Assets::empty(),
            clock: Clock::system(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            keepalive: 1000,
        }
    }
}

impl Builder {
    /// Calls the Notify API at `base` (`API_HOST_NAME`), signing tokens with
    /// `secret` (`ADMIN_CLIENT_SECRET`). Default: the local service directory.
    pub fn notify_api(mut self, base: &str, secret: &str) -> Self {
        self.notify = NotifyTarget::Http {
            base: base.trim_end_matches('/').to_owned(),
            secret: secret.to_owned(),
        };
        self
    }

    /// Calls the document API at `internal`; `public` is where old links
    /// redirect and what the access cookie's domain comes from. Default: the
    /// local document API.
    pub fn document_api(mut self, public: &str, internal: &str) -> Self {
        self.documents = DocumentTarget::Http {
            public: public.trim_end_matches('/').to_owned(),
            internal: internal.trim_end_matches('/').to_owned(),
        };
        self
    }

    /// The local API's directory (needed when either API is local).
    pub fn local_api(mut self, dir: &Path) -> Self {
        self.local_dir = Some(dir.to_path_buf());
        self
    }

    /// Makes the local API's file URLs absolute on `base` (when the local API
    /// is served on its own address for another app). Default: relative.
    pub fn local_public_base(mut self, base: &str) -> Self {
        self.local_public_base = Some(base.to_owned());
        self
    }

    /// Whether the app is served over https (`HTTP_PROTOCOL`): cookies get `Secure`.
    pub fn https(mut self, https: bool) -> Self {
        self.https = https;
        self
    }

    /// The key CSRF tokens are signed with (`SECRET_KEY`). Default: random per process.
    pub fn secret_key(mut self, key: &[u8]) -> Self {
        self.secret_key = Some(key.to_vec());
        self
    }

    /// The static assets. Default: none (pages render unstyled).
    pub fn assets(mut self, assets: Assets) -> Self {
        self.assets = assets;
        self
    }

    /// Where "today" comes from. Default: the system clock (UTC).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// Connect timeout to either API. Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whole-request timeout to either API (504 page beyond). Default 10 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Idle connections kept open to each API host for reuse (0: a new
    /// connection per call). Default 1000.
    pub fn upstream_keepalive(mut self, connections: usize) -> Self {
        self.keepalive = connections;
        self
    }

    /// Builds the app.
    pub fn build(self) -> Result<DownloadApp, DownloadError> {
        let needs_local = matches!(self.notify, NotifyTarget::Local)
            || matches!(self.documents, DocumentTarget::Local);
        let local = if needs_local {
            let dir = self
                .local_dir
                .clone()
                .unwrap_or_else(|| std::env::temp_dir().join("wharf-download-local"));
            let mut api = LocalApi::open(&dir, &self.clock)?;
            if let Some(base) = &self.local_public_base {
                api = api.with_public_base(base);
            }
            Some(Arc::new(api))
        } else {
            None
        };
        let upstream = Upstream::new(self.connect_timeout, self.request_timeout, self.keepalive)?;
        let notify = match (&self.notify, &local) {
            (NotifyTarget::Http { base, secret }, _) => NotifyApi::Http {
                upstream: upstream.clone(),
                base: Arc::from(base.as_str()),
                secret: Arc::from(secret.as_str()),
            },
            (NotifyTarget::Local, Some(local)) => NotifyApi::Local(Arc::clone(local)),
            (NotifyTarget::Local, None) => unreachable_local(),
        };
        let (documents, public) = match (&self.documents, &local) {
            (DocumentTarget::Http { public, internal }, _) => (
                DocumentApi::Http {
                    upstream,
                    base: Arc::from(internal.as_str()),
                },
                Some(public.clone()),
            ),
            (DocumentTarget::Local, Some(local)) => (DocumentApi::Local(Arc::clone(local)), None),
            (DocumentTarget::Local, None) => unreachable_local(),
        };
        let serve_local = matches!(self.documents, DocumentTarget::Local)
            || matches!(self.notify, NotifyTarget::Local);
        Ok(DownloadApp {
            inner: Arc::new(Inner {
                notify,
                documents,
                local: local.filter(|_| serve_local),
                cookie_domain: public.as_deref().and_then(app::cookie_domain),
                document_api_public: public,
                secure_cookies: self.https,
                secret_key: match self.secret_key {
                    Some(key) => key,
                    None => crate::random::bytes::<32>()
                        .map_err(DownloadError::Random)?
                        .to_vec(),
                },
                assets: self.assets,
                clock: self.clock,
            }),
        })
    }
}

/// `needs_local` above guarantees a local API whenever a target is local.
#[allow(clippy::panic)]
fn unreachable_local() -> ! {
    panic!("a local target without a local API")
}

impl DownloadApp {
    /// A [`Builder`].
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// The app as `frontend` configures it: `section` plus the top-level
    /// `API_HOST_NAME` and `SECRET_KEY`. In development, a missing
    /// `API_HOST_NAME` or `DOCUMENT_DOWNLOAD_API_HOST_NAME` means the local
    /// service directory / document API; deployed environments refuse that.
    pub fn from_section(
        section: &DownloadSection,
        api_host_name: Option<&str>,
        secret_key: Option<&Secret<String>>,
        environment: Environment,
    ) -> Result<Self, DownloadError> {
        let require = |value: Option<&str>, variable: &'static str| {
            if environment.is_deployed() && value.is_none() {
                Err(DownloadError::NotConfigured {
                    variable,
                    environment,
                })
            } else {
                Ok(())
            }
        };
        require(api_host_name, "API_HOST_NAME")?;
        require(
            section.document_download_api_host_name.as_deref(),
            "DOCUMENT_DOWNLOAD_API_HOST_NAME",
        )?;
        require(
            section
                .admin_client_secret
                .as_ref()
                .map(|s| s.expose().as_str()),
            "ADMIN_CLIENT_SECRET",
        )?;
        require(secret_key.map(|s| s.expose().as_str()), "SECRET_KEY")?;
        let assets_dir = section
            .assets_dir
            .clone()
            .unwrap_or_else(default_assets_dir);
        let assets = Assets::load(&assets_dir)?;
        if assets.is_empty() {
            tracing::warn!(
                dir = %assets_dir.display(),
                "No GOV.UK Frontend assets found; pages render unstyled (run scripts/govuk-frontend-assets.sh)"
            );
        }
        let mut builder = Self::builder()
            .https(section.http_protocol.eq_ignore_ascii_case("https"))
            .assets(assets)
            .connect_timeout(section.connect_timeout())
            .request_timeout(section.upstream_timeout())
            .upstream_keepalive(usize::try_from(section.upstream_keepalive).unwrap_or(usize::MAX));
        if let Some(dir) = &section.local_dir {
            builder = builder.local_api(dir);
        }
        if let Some(key) = secret_key {
            builder = builder.secret_key(key.expose().as_bytes());
        }
        if let Some(base) = api_host_name {
            let secret = section
                .admin_client_secret
                .as_ref()
                .map_or("", |s| s.expose().as_str());
            builder = builder.notify_api(base, secret);
        }
        if let Some(public) = &section.document_download_api_host_name {
            let internal = section
                .document_download_api_host_name_internal
                .as_deref()
                .unwrap_or(public);
            builder = builder.document_api(public, internal);
        }
        builder.build()
    }

    /// The seeded sample documents (paths with their keys) when the local
    /// document API is served; empty otherwise. Log them at start-up.
    pub fn samples(&self) -> Vec<SampleDocument> {
        match (&self.inner.local, &self.inner.documents) {
            (Some(local), api::DocumentApi::Local(_)) => local.samples().to_vec(),
            _ => Vec::new(),
        }
    }

    /// The local API, when this app serves one.
    pub fn local_api(&self) -> Option<&Arc<LocalApi>> {
        self.inner.local.as_ref()
    }
}
