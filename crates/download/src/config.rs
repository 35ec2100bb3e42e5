//! [`DownloadSection`]: the app's variables, in the wharf-config pattern.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wharf_config::{parse, Secret, Var};

/// The Document Download app's configuration (the seed's variable names).
///
/// `API_HOST_NAME` and `SECRET_KEY` are not here: `frontend` already reads
/// them at the top-level keys `api_host_name` and `secret_key`, and passes
/// them to [`DownloadApp::from_section`](crate::DownloadApp::from_section).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DownloadSection {
    /// `ADMIN_CLIENT_SECRET`: signs the Notify API token. Required when deployed.
    pub admin_client_secret: Option<Secret<String>>,
    /// `DOCUMENT_DOWNLOAD_API_HOST_NAME`: the document API's public base URL
    /// (old `/services/…` links redirect there; the access cookie's domain comes
    /// from it). Unset in development: the local document API is served instead.
    pub document_download_api_host_name: Option<String>,
    /// `DOCUMENT_DOWNLOAD_API_HOST_NAME_INTERNAL`: the base URL this app calls.
    /// Default: the public one.
    pub document_download_api_host_name_internal: Option<String>,
    /// `HTTP_PROTOCOL`: `https` marks the access cookie `Secure`. Default `http`.
    pub http_protocol: String,
    /// `WHARF_DOWNLOAD_CONNECT_TIMEOUT_SECONDS`: connect timeout to either API. Default 5.
    pub connect_timeout_seconds: u64,
    /// `WHARF_DOWNLOAD_UPSTREAM_TIMEOUT_SECONDS`: whole-request timeout to either
    /// API (504 page beyond). Default 10.
    pub upstream_timeout_seconds: u64,
    /// `WHARF_DOWNLOAD_UPSTREAM_KEEPALIVE`: idle connections each worker keeps
    /// open to each API host for reuse (nginx's `keepalive` in an upstream
    /// block); 0 opens a connection per call, as the seed app does. Default
    /// 1000 (`WHARF_MAX_CONNECTIONS`' default: every request in flight can
    /// hand its connection back, so a burst of slow API calls does not end
    /// in a connection closed and another opened per call).
    pub upstream_keepalive: u64,
    /// `WHARF_DOWNLOAD_ASSETS_DIR`: the GOV.UK Frontend assets installed by
    /// `scripts/govuk-frontend-assets.sh`. Default: the crate's `static/`
    /// directory when it exists (pages render unstyled without assets).
    pub assets_dir: Option<PathBuf>,
    /// `WHARF_DOWNLOAD_LOCAL_DIR`: the local document API's directory
    /// (development only). Default: `wharf-download-local` in the temp directory.
    pub local_dir: Option<PathBuf>,
}

impl Default for DownloadSection {
    fn default() -> Self {
        Self {
            admin_client_secret: None,
            document_download_api_host_name: None,
            document_download_api_host_name_internal: None,
            http_protocol: "http".to_owned(),
            connect_timeout_seconds: 5,
            upstream_timeout_seconds: 10,
            upstream_keepalive: 1000,
            assets_dir: None,
            local_dir: None,
        }
    }
}

impl DownloadSection {
    /// The variables that set this section, with keys under `section`.
    pub fn vars(section: &str) -> Vec<Var> {
        vec![
            Var::new("ADMIN_CLIENT_SECRET", "admin_client_secret", parse::text())
                .strong_secret()
                .required_when_deployed()
                .help("signs the Notify API token"),
            Var::new(
                "DOCUMENT_DOWNLOAD_API_HOST_NAME",
                "document_download_api_host_name",
                parse::url(&["http", "https"]),
            )
            .required_when_deployed()
            .help("document download API public base URL"),
            Var::new(
                "DOCUMENT_DOWNLOAD_API_HOST_NAME_INTERNAL",
                "document_download_api_host_name_internal",
                parse::url(&["http", "https"]),
            )
            .required_when_deployed()
            .help("document download API base URL this app calls"),
            Var::new(
                "HTTP_PROTOCOL",
                "http_protocol",
                parse::one_of(&["http", "https"]),
            )
            .required_when_deployed()
            .help("https marks the access cookie Secure"),
            Var::new(
                "WHARF_DOWNLOAD_CONNECT_TIMEOUT_SECONDS",
                "connect_timeout_seconds",
                parse::seconds(1),
            )
            .help("connect timeout to the APIs"),
            Var::new(
                "WHARF_DOWNLOAD_UPSTREAM_TIMEOUT_SECONDS",
                "upstream_timeout_seconds",
                parse::seconds(1),
            )
            .help("request timeout to the APIs (504 beyond)"),
            Var::new(
                "WHARF_DOWNLOAD_UPSTREAM_KEEPALIVE",
                "upstream_keepalive",
                parse::count(0, 100_000),
            )
            .help("idle connections kept per API host, per worker (0: one per call)"),
            Var::new("WHARF_DOWNLOAD_ASSETS_DIR", "assets_dir", parse::text())
                .help("GOV.UK Frontend assets directory"),
            Var::new("WHARF_DOWNLOAD_LOCAL_DIR", "local_dir", parse::text())
                .help("local document API directory (development)"),
        ]
        .into_iter()
        .map(|v| v.under(section))
        .collect()
    }

    /// [`connect_timeout_seconds`](Self::connect_timeout_seconds) as a `Duration`.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout_seconds)
    }

    /// [`upstream_timeout_seconds`](Self::upstream_timeout_seconds) as a `Duration`.
    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_secs(self.upstream_timeout_seconds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_config::{EnvMap, Loader};

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default)]
    struct Wrapper {
        download: DownloadSection,
    }

    #[test]
    fn defaults_and_variables() {
        let loaded = Loader::new(DownloadSection::vars("download"))
            .env(EnvMap::from_pairs([
                (
                    "DOCUMENT_DOWNLOAD_API_HOST_NAME",
                    "https://download.example.gov.uk",
                ),
                ("HTTP_PROTOCOL", "HTTPS"),
                ("ADMIN_CLIENT_SECRET", "s3cret"),
            ]))
            .dotenv(None)
            .load::<Wrapper>()
            .unwrap();
        let section = loaded.config.download;
        assert_eq!(section.http_protocol, "https");
        assert_eq!(section.upstream_timeout_seconds, 10);
        assert_eq!(section.upstream_keepalive, 1000);
        assert_eq!(section.admin_client_secret.unwrap().expose(), "s3cret");
        assert_eq!(
            section.document_download_api_host_name.as_deref(),
            Some("https://download.example.gov.uk")
        );
    }

    #[test]
    fn production_names_every_missing_variable() {
        let err = Loader::new(DownloadSection::vars("download"))
            .env(EnvMap::from_pairs([
                ("NOTIFY_ENVIRONMENT", "production"),
                ("HTTP_PROTOCOL", "ftp"),
                ("WHARF_DOWNLOAD_UPSTREAM_KEEPALIVE", "-1"),
            ]))
            .dotenv(None)
            .load::<Wrapper>()
            .unwrap_err()
            .to_string();
        for name in [
            "ADMIN_CLIENT_SECRET: required in production",
            "DOCUMENT_DOWNLOAD_API_HOST_NAME: required in production",
            "DOCUMENT_DOWNLOAD_API_HOST_NAME_INTERNAL: required in production",
            "HTTP_PROTOCOL: expected one of http, https",
            "WHARF_DOWNLOAD_UPSTREAM_KEEPALIVE",
        ] {
            assert!(err.contains(name), "{err}");
        }
    }
}
