//! Starting the OTLP/HTTP export: the process's tracer, the guard that
//! flushes it, and the exporter's HTTP client on a runtime of its own.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use opentelemetry_http::{HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};

use super::config::{OtlpProtocol, TraceExporter, TraceSection};

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TraceError {
    /// [`init`] was called twice in one process.
    #[error("tracing is already initialised in this process")]
    AlreadyInitialised,
    /// The exporter's runtime could not start.
    #[error("WHARF_TRACING: cannot start the OTLP export runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// The OTLP exporter refused its configuration.
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The traces URL is not a URI.
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT: not a URL: {0}")]
    Endpoint(String),
}

/// The process's tracer, set by [`init`].
pub(super) static TRACER: OnceLock<Tracer> = OnceLock::new();

/// Whether [`init`] turned tracing on in this process.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// Keeps the exporter running; dropping it flushes the spans not yet sent
/// (for up to five seconds) and stops exporting.
#[derive(Debug, Default)]
#[must_use = "dropping the guard stops exporting"]
pub struct TraceGuard {
    provider: Option<SdkTracerProvider>,
}

impl TraceGuard {
    /// Whether spans are being exported.
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TraceGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(error) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
                tracing::warn!(%error, "Trace export did not finish flushing");
            }
        }
    }
}

/// A runtime of its own for the exporter's HTTP client: the SDK's batch
/// processor exports from a plain thread, and hyper needs tokio. Never
/// dropped (a runtime cannot be dropped inside another's async context).
fn export_runtime() -> Result<&'static tokio::runtime::Runtime, TraceError> {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("wharf-otlp")
        .enable_all()
        .build()
        .map_err(TraceError::Runtime)?;
    Ok(RUNTIME.get_or_init(|| runtime))
}

/// opentelemetry-http's hyper client, driven on [`export_runtime`].
#[derive(Debug, Clone)]
struct RuntimeClient {
    handle: tokio::runtime::Handle,
    inner: Arc<opentelemetry_http::hyper::HyperClient>,
}

#[async_trait::async_trait]
impl HttpClient for RuntimeClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let inner = Arc::clone(&self.inner);
        self.handle
            .spawn(async move { inner.send_bytes(request).await })
            .await
            .map_err(|error| Box::new(error) as HttpError)?
    }
}

/// Starts exporting spans when `section` says so; `default_service` is the
/// `service.name` unless `OTEL_SERVICE_NAME` sets one. Call once per process.
pub fn init(section: &TraceSection, default_service: &str) -> Result<TraceGuard, TraceError> {
    if section.exporter == TraceExporter::Off {
        return Ok(TraceGuard::default());
    }
    if TRACER.get().is_some() {
        return Err(TraceError::AlreadyInitialised);
    }
    let runtime = export_runtime()?;
    let timeout = Duration::from_millis(section.timeout_ms);
    let hyper_client =
        Arc::new(opentelemetry_http::hyper::HyperClient::with_default_connector(timeout, None));
    let service = section
        .service_name
        .clone()
        .unwrap_or_else(|| default_service.to_owned());
    let builder = SdkTracerProvider::builder()
        .with_sampler(section.sampler())
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.clone())
                .build(),
        );
    let builder = match section.protocol {
        // The default: spans encoded as they end (batch.rs).
        OtlpProtocol::HttpProtobuf => {
            let url = section.traces_url();
            let url = url
                .parse::<http::Uri>()
                .map_err(|error| TraceError::Endpoint(format!("{url}: {error}")))?;
            // The variables' headers come after (and so replace) this one.
            let mut headers = vec![(
                http::header::USER_AGENT,
                http::HeaderValue::from_static(concat!("wharf/", env!("CARGO_PKG_VERSION"))),
            )];
            headers.extend(super::batch::headers_from_env());
            builder.with_span_processor(super::batch::OtlpBatch::new(
                super::batch::BatchSettings::from_env(),
                super::batch::Destination {
                    client: hyper_client,
                    runtime: runtime.handle().clone(),
                    url,
                    headers,
                    timeout,
                },
            ))
        }
        // JSON: the SDK's batch processor and opentelemetry-otlp's encoder.
        OtlpProtocol::HttpJson => {
            let client = RuntimeClient {
                handle: runtime.handle().clone(),
                inner: hyper_client,
            };
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_endpoint(section.traces_url())
                .with_protocol(opentelemetry_otlp::Protocol::HttpJson)
                .with_timeout(timeout)
                .build()?;
            builder.with_batch_exporter(exporter)
        }
    };
    let provider = builder.build();
    let scope = opentelemetry::InstrumentationScope::builder("wharf")
        .with_version(env!("CARGO_PKG_VERSION"))
        .build();
    let tracer = opentelemetry::trace::TracerProvider::tracer_with_scope(&provider, scope);
    if TRACER.set(tracer).is_err() {
        let _ = provider.shutdown();
        return Err(TraceError::AlreadyInitialised);
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());
    tracing::info!(
        endpoint = %section.traces_url(),
        service = %service,
        sampler = ?section.sampler,
        "Exporting traces over OTLP/HTTP"
    );
    Ok(TraceGuard {
        provider: Some(provider),
    })
}
