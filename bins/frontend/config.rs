//! The frontend's configuration: the reusable sections plus the app's own
//! variables, with the seed's names.

use serde::{Deserialize, Serialize};
use wharf_config::{parse, LogSection, RedisSection, Secret, ServerSection, Var};
use wharf_supervisor::SupervisorSection;

/// Everything `frontend` reads from the environment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct FrontendConfig {
    pub(crate) server: ServerSection,
    pub(crate) redis: RedisSection,
    pub(crate) log: LogSection,
    /// `API_HOST_NAME`: the document download API.
    pub(crate) api_host_name: Option<String>,
    /// `SECRET_KEY`: signs session cookies and CSRF tokens.
    pub(crate) secret_key: Option<Secret<String>>,
    /// `DANGEROUS_SALT`: salt for signed tokens.
    pub(crate) dangerous_salt: Option<Secret<String>>,
    /// Worker processes (`WEB_CONCURRENCY`) and their supervision.
    pub(crate) supervisor: SupervisorSection,
    /// The document download app: upstream APIs, assets, local API.
    pub(crate) download: wharf_download::DownloadSection,
    /// `WHARF_METRICS_TOKEN`: serves `/metrics` on the public port to
    /// requests bearing this token (platforms with one port).
    pub(crate) metrics_token: Option<Secret<String>>,
    /// Rate limits on the document routes (Redis-backed when `REDIS_ENABLED`).
    pub(crate) ratelimit: wharf_download::RateLimitSection,
    /// `WHARF_METRICS`: request metrics (default on; `false` only to measure
    /// their cost, see bench `metrics-overhead`).
    pub(crate) metrics: Option<bool>,
    /// `WHARF_TRACING` and the `OTEL_*` variables: OTLP traces.
    pub(crate) tracing: wharf_telemetry::trace::TraceSection,
}

/// The variables, in the order `frontend config` lists them.
pub(crate) fn vars() -> Vec<Var> {
    let mut vars = ServerSection::vars("server");
    vars.extend(RedisSection::vars("redis"));
    vars.extend(LogSection::vars("log"));
    vars.push(
        Var::new(
            "API_HOST_NAME",
            "api_host_name",
            parse::url(&["http", "https"]),
        )
        .required_when_deployed()
        .help("Notify API base URL"),
    );
    vars.push(
        Var::new("SECRET_KEY", "secret_key", parse::text())
            .strong_secret()
            .required_when_deployed()
            .help("key for signed cookies and CSRF tokens"),
    );
    vars.push(
        Var::new("DANGEROUS_SALT", "dangerous_salt", parse::text())
            .strong_secret()
            .required_when_deployed()
            .help("salt for signed tokens"),
    );
    vars.push(
        Var::new("WHARF_METRICS_TOKEN", "metrics_token", parse::text())
            .secret()
            .help("bearer token for /metrics on the public port"),
    );
    vars.push(
        Var::new("WHARF_METRICS", "metrics", parse::boolean())
            .help("keep request metrics (default true)"),
    );
    vars.extend(wharf_telemetry::trace::TraceSection::vars("tracing"));
    vars.extend(SupervisorSection::vars("supervisor"));
    vars.extend(wharf_download::DownloadSection::vars("download"));
    vars.extend(wharf_download::RateLimitSection::vars("ratelimit"));
    vars
}

#[cfg(test)]
mod tests {
    /// docs/configuration.md documents every variable `frontend` reads.
    #[test]
    fn every_variable_is_documented() {
        let doc = include_str!("../../docs/configuration.md");
        for var in super::vars() {
            assert!(
                doc.contains(&format!("| `{}` |", var.name())),
                "{} is missing from docs/configuration.md",
                var.name()
            );
        }
    }

    /// The production-required variables are the ones the docs mark as required.
    #[test]
    fn required_variables_match_the_docs() {
        let doc = include_str!("../../docs/configuration.md");
        for var in super::vars() {
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", var.name())))
                .unwrap();
            let required = row.split('|').nth(3).unwrap().trim() == "yes";
            assert_eq!(
                required,
                var.requirement() == wharf_config::Requirement::Deployed,
                "{}",
                var.name()
            );
        }
    }
}
