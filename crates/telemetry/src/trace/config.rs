//! The trace settings: which exporter, where, how encoded, which sampler;
//! loaded by wharf-config from `WHARF_TRACING` and the `OTEL_*` variables.

use std::sync::Arc;

use opentelemetry_sdk::trace::Sampler;
use serde::{Deserialize, Serialize};
use wharf_config::{parse, Var};

/// The `WHARF_TRACING` switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceExporter {
    /// No spans (the default): `traceparent` headers are still passed on.
    #[default]
    Off,
    /// Spans exported over OTLP/HTTP.
    Otlp,
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP (`http/protobuf`, the default).
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// JSON over HTTP (`http/json`).
    #[serde(rename = "http/json")]
    HttpJson,
}

/// `OTEL_TRACES_SAMPLER`: the standard sampler names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamplerName {
    /// Every trace.
    AlwaysOn,
    /// No trace.
    AlwaysOff,
    /// A fraction (`OTEL_TRACES_SAMPLER_ARG`) of traces, by trace id.
    #[serde(rename = "traceidratio")]
    TraceIdRatio,
    /// The parent's decision; every root trace (the default).
    #[default]
    ParentbasedAlwaysOn,
    /// The parent's decision; no root trace.
    ParentbasedAlwaysOff,
    /// The parent's decision; a fraction of root traces.
    #[serde(rename = "parentbased_traceidratio")]
    ParentbasedTraceIdRatio,
}

/// Trace settings, loaded by wharf-config from the variables of
/// [`TraceSection::vars`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TraceSection {
    /// `WHARF_TRACING`: `off` (default) or `otlp`.
    pub exporter: TraceExporter,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`: the collector's base URL; traces go to
    /// its `/v1/traces`. Default `http://localhost:4318`.
    pub endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the full traces URL, used as is
    /// (wins over `endpoint`).
    pub traces_endpoint: Option<String>,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf` (default) or `http/json`.
    pub protocol: OtlpProtocol,
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`: milliseconds per export. Default 10000.
    pub timeout_ms: u64,
    /// `OTEL_SERVICE_NAME`: default the binary's name.
    pub service_name: Option<String>,
    /// `OTEL_TRACES_SAMPLER`. Default `parentbased_always_on`.
    pub sampler: SamplerName,
    /// `OTEL_TRACES_SAMPLER_ARG`: the ratio for the `*traceidratio`
    /// samplers, 0 to 1. Default 1.
    pub sampler_arg: Option<f64>,
}

impl Default for TraceSection {
    fn default() -> Self {
        Self {
            exporter: TraceExporter::Off,
            endpoint: None,
            traces_endpoint: None,
            protocol: OtlpProtocol::HttpProtobuf,
            timeout_ms: 10_000,
            service_name: None,
            sampler: SamplerName::ParentbasedAlwaysOn,
            sampler_arg: None,
        }
    }
}

/// The default collector base URL (the OTLP/HTTP standard port).
pub const DEFAULT_ENDPOINT: &str = "http://localhost:4318";

fn collector_url() -> wharf_config::Parser {
    Arc::new(|text: &str| {
        let text = text.trim();
        if text.len() > 8 && text[..8].eq_ignore_ascii_case("https://") {
            return Err(
                "https:// is not supported: export to a local OpenTelemetry Collector over http://"
                    .to_owned(),
            );
        }
        parse::url(&["http"])(text)
    })
}

fn ratio() -> wharf_config::Parser {
    Arc::new(|text: &str| {
        text.trim()
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .map(serde_json::Value::from)
            .ok_or_else(|| "expected a number from 0 to 1".to_owned())
    })
}

impl TraceSection {
    /// The variables that set this section, with keys under `section`.
    pub fn vars(section: &str) -> Vec<Var> {
        vec![
            Var::new("WHARF_TRACING", "exporter", parse::one_of(&["off", "otlp"]))
                .help("export traces: off or otlp"),
            Var::new("OTEL_EXPORTER_OTLP_ENDPOINT", "endpoint", collector_url())
                .help("OTLP/HTTP collector base URL"),
            Var::new(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "traces_endpoint",
                collector_url(),
            )
            .help("OTLP/HTTP traces URL, used as is"),
            Var::new(
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                "protocol",
                parse::one_of(&["http/protobuf", "http/json"]),
            )
            .help("OTLP encoding"),
            Var::new(
                "OTEL_EXPORTER_OTLP_TIMEOUT",
                "timeout_ms",
                parse::count(1, 600_000),
            )
            .help("export timeout, milliseconds"),
            Var::new("OTEL_SERVICE_NAME", "service_name", parse::text())
                .help("service.name of the spans"),
            Var::new(
                "OTEL_TRACES_SAMPLER",
                "sampler",
                parse::one_of(&[
                    "always_on",
                    "always_off",
                    "traceidratio",
                    "parentbased_always_on",
                    "parentbased_always_off",
                    "parentbased_traceidratio",
                ]),
            )
            .help("trace sampler"),
            Var::new("OTEL_TRACES_SAMPLER_ARG", "sampler_arg", ratio())
                .help("sampling ratio for the traceidratio samplers"),
        ]
        .into_iter()
        .map(|v| v.under(section))
        .collect()
    }

    /// The URL spans are posted to.
    pub fn traces_url(&self) -> String {
        if let Some(url) = &self.traces_endpoint {
            return url.clone();
        }
        let base = self.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT);
        format!("{}/v1/traces", base.trim_end_matches('/'))
    }

    pub(super) fn sampler(&self) -> Sampler {
        let ratio = self.sampler_arg.unwrap_or(1.0);
        match self.sampler {
            SamplerName::AlwaysOn => Sampler::AlwaysOn,
            SamplerName::AlwaysOff => Sampler::AlwaysOff,
            SamplerName::TraceIdRatio => Sampler::TraceIdRatioBased(ratio),
            SamplerName::ParentbasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            SamplerName::ParentbasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            SamplerName::ParentbasedTraceIdRatio => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
            }
        }
    }
}
