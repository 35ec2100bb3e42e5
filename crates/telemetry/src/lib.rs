//! Logging for wharf services: one JSON object per line on stdout (the default
//! in deployed environments) or human-readable output (the default in
//! development), filtered by a `RUST_LOG`-style directive.
//!
//! **What it is for:** installing the process-wide `tracing` subscriber once,
//! early in `main`, with settings that come from configuration rather than from
//! the process environment, so it is testable and 12-factor.
//!
//! It also keeps per-process HTTP request metrics ([`metrics::HttpMetrics`])
//! and sums them over worker processes ([`metrics::Aggregator`]) so a
//! supervisor serves one Prometheus scrape per instance.
//!
//! And it carries distributed traces ([`trace`]): OTLP/HTTP export behind
//! configuration (off by default), a server span per request continuing the
//! incoming W3C `traceparent`, and client spans whose `traceparent` goes on
//! to the next hop.
//!
//! ```
//! use wharf_telemetry::{init, LogFormat, LogSettings};
//!
//! let settings = LogSettings { format: LogFormat::Json, filter: "info".into() };
//! // Installs the global subscriber; a second call returns an error. Keep
//! // the guard until exit: dropping it writes the buffered access-log lines.
//! let guard = init(&settings).expect("first init");
//! tracing::info!(port = 7001, "Listening");
//! assert!(init(&settings).is_err());
//! drop(guard);
//! ```
#![forbid(unsafe_code)]

mod json;
pub mod metrics;
pub mod trace;
pub mod writer;

pub use writer::LogGuard;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`
    /// and the event's fields at the top level.
    Json,
    /// Human-readable, coloured when stdout is a terminal.
    Pretty,
}

/// What [`init`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Line format.
    pub format: LogFormat,
    /// A `tracing` filter directive such as `info,wharf_http=debug`.
    pub filter: String,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// The filter directive does not parse.
    #[error("RUST_LOG: invalid log filter {filter:?}: {source}")]
    Filter {
        /// The directive as given.
        filter: String,
        /// What the parser said.
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global subscriber is already installed.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInitialised(#[from] tracing_subscriber::util::TryInitError),
}

/// Installs the global `tracing` subscriber writing to stdout, access-log
/// lines batched by a writer thread ([`writer`]). Keep the guard until the
/// process exits: dropping it writes what is buffered.
pub fn init(settings: &LogSettings) -> Result<LogGuard, TelemetryError> {
    let filter = EnvFilter::try_new(&settings.filter).map_err(|source| TelemetryError::Filter {
        filter: settings.filter.clone(),
        source,
    })?;
    let registry = tracing_subscriber::registry().with(filter);
    let (writer, guard) = writer::LogWriter::stdout();
    match settings.format {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .event_format(json::JsonLines::new(
                        fmt::format()
                            .json()
                            .flatten_event(true)
                            .with_current_span(false)
                            .with_span_list(false),
                    ))
                    .with_writer(writer),
            )
            .try_init()?,
        LogFormat::Pretty => registry
            .with(fmt::layer().compact().with_writer(writer))
            .try_init()?,
    }
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_filter_names_the_variable() {
        let err = init(&LogSettings {
            format: LogFormat::Json,
            filter: "info,[[[".into(),
        })
        .unwrap_err();
        assert!(
            err.to_string().starts_with("RUST_LOG: invalid log filter"),
            "{err}"
        );
    }
}
