//! Distributed traces: OTLP/HTTP export (off by default) and W3C trace
//! context (`traceparent`/`tracestate`) across hops.
//!
//! **What it is for:** one span per request on each service, joined into one
//! trace across `edge` → `frontend` → the document API:
//!
//! 1. [`init`] once per process (per worker), from a [`TraceSection`] loaded
//!    by wharf-config (`WHARF_TRACING=otlp`, the standard `OTEL_*`
//!    variables). It returns a [`TraceGuard`] that flushes on drop.
//! 2. [`ServerSpanLayer`] around the application: extracts the incoming
//!    `traceparent`, starts a server span with the HTTP semantic-convention
//!    attributes (`http.request.method`, `http.route`, `url.path` — never the
//!    query, which holds secrets — `http.response.status_code`), makes it the
//!    current context while the request is handled, ends it when the
//!    response body is finished, and puts its [`TraceId`] in the response
//!    extensions for the access log.
//! 3. [`ClientSpan`] around each outgoing request: a client span, child of
//!    the current context, whose `traceparent` is injected into the request.
//!
//! With tracing off (the default) [`ServerSpanLayer`] passes requests
//! through after one `Option` check, and [`ClientSpan::start`] does one
//! atomic load: no allocation, no clock read.
//!
//! Spans are exported in batches by the OpenTelemetry SDK's batch processor
//! (its own thread; `OTEL_BSP_*` tune it) through a hyper client on a small
//! runtime of its own, so exporting never runs on, or blocks, the server's
//! runtime. Only `http://` collector endpoints are supported: run an
//! OpenTelemetry Collector beside the service for TLS or authentication
//! towards a vendor.
//!
//! ```
//! use wharf_telemetry::trace::{self, ServerSpanLayer, TraceSection};
//!
//! // Off by default: the guard and the layer do nothing.
//! let guard = trace::init(&TraceSection::default(), "my-service").unwrap();
//! assert!(!trace::enabled());
//! let layer = ServerSpanLayer::new(|parts: &http::request::Parts| {
//!     trace::RequestFacts::new(parts.uri.path().to_owned())
//! });
//! # let _ = (guard, layer);
//! ```

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, Tracer};
use pin_project_lite::pin_project;
use serde::{Deserialize, Serialize};
use wharf_config::{parse, Var};

pub use opentelemetry::trace::TraceId;

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

    fn sampler(&self) -> Sampler {
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
}

/// The process's tracer, set by [`init`].
static TRACER: OnceLock<Tracer> = OnceLock::new();

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
    let client = RuntimeClient {
        handle: runtime.handle().clone(),
        inner: Arc::new(
            opentelemetry_http::hyper::HyperClient::with_default_connector(timeout, None),
        ),
    };
    let protocol = match section.protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::Protocol::HttpBinary,
        OtlpProtocol::HttpJson => opentelemetry_otlp::Protocol::HttpJson,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_endpoint(section.traces_url())
        .with_protocol(protocol)
        .with_timeout(timeout)
        .build()?;
    let service = section
        .service_name
        .clone()
        .unwrap_or_else(|| default_service.to_owned());
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(section.sampler())
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.clone())
                .build(),
        )
        .build();
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

/// Normalised method names (arbitrary methods become `_OTHER`, as the
/// semantic conventions say).
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

/// What a service knows of a request that the span needs: its route
/// template (bounded: never the raw path) and scheme.
#[derive(Debug, Clone)]
pub struct RequestFacts {
    /// `http.route`: the route template, e.g. `/d/{service}/{document}`.
    pub route: Cow<'static, str>,
    /// `url.scheme`: `http` or `https`.
    pub scheme: &'static str,
}

impl RequestFacts {
    /// Facts with `route` over plain HTTP.
    pub fn new(route: impl Into<Cow<'static, str>>) -> Self {
        Self {
            route: route.into(),
            scheme: "http",
        }
    }

    /// The same over `scheme`.
    #[must_use]
    pub fn scheme(mut self, scheme: &'static str) -> Self {
        self.scheme = scheme;
        self
    }
}

type FactsFn = Arc<dyn Fn(&http::request::Parts) -> RequestFacts + Send + Sync>;

/// A server span per request; see the [module docs](self).
#[derive(Clone)]
pub struct ServerSpanLayer {
    tracer: Option<Tracer>,
    facts: FactsFn,
}

impl std::fmt::Debug for ServerSpanLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSpanLayer")
            .field("enabled", &self.tracer.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerSpanLayer {
    /// Spans from the process's tracer (none when [`init`] has not turned
    /// tracing on); `facts` names each request's route and scheme, and runs
    /// only when tracing is on.
    pub fn new(
        facts: impl Fn(&http::request::Parts) -> RequestFacts + Send + Sync + 'static,
    ) -> Self {
        Self {
            tracer: TRACER.get().cloned(),
            facts: Arc::new(facts),
        }
    }

    /// Uses `tracer` instead of the process's (tests, embedders with their
    /// own provider).
    #[must_use]
    pub fn with_tracer(mut self, tracer: Option<Tracer>) -> Self {
        self.tracer = tracer;
        self
    }
}

impl<S> tower::Layer<S> for ServerSpanLayer {
    type Service = ServerSpan<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerSpan {
            inner,
            tracer: self.tracer.clone(),
            facts: Arc::clone(&self.facts),
        }
    }
}

/// The service made by [`ServerSpanLayer`].
#[derive(Clone)]
pub struct ServerSpan<S> {
    inner: S,
    tracer: Option<Tracer>,
    facts: FactsFn,
}

impl<S> std::fmt::Debug for ServerSpan<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerSpan")
            .field("enabled", &self.tracer.is_some())
            .finish_non_exhaustive()
    }
}

/// Ends the span of a context when dropped.
struct EndOnDrop(Context);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.span().end();
    }
}

fn server_span(tracer: &Tracer, facts: &FactsFn, parts: &http::request::Parts) -> Context {
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(&parts.headers));
    let facts = facts(parts);
    let method = method_name(&parts.method);
    let mut attributes = vec![
        KeyValue::new("http.request.method", method),
        KeyValue::new("http.route", facts.route.clone()),
        // The path alone: the query holds secrets (`key`).
        KeyValue::new("url.path", parts.uri.path().to_owned()),
        KeyValue::new("url.scheme", facts.scheme),
        KeyValue::new(
            "network.protocol.version",
            match parts.version {
                http::Version::HTTP_10 => "1.0",
                http::Version::HTTP_2 => "2",
                http::Version::HTTP_3 => "3",
                _ => "1.1",
            },
        ),
    ];
    if method == "_OTHER" {
        attributes.push(KeyValue::new(
            "http.request.method_original",
            parts.method.as_str().to_owned(),
        ));
    }
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(http::uri::Authority::as_str));
    if let Some(host) = host {
        let name = host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        });
        attributes.push(KeyValue::new("server.address", name.to_owned()));
    }
    if let Some(id) = parts
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
    {
        attributes.push(KeyValue::new("wharf.request_id", id.to_owned()));
    }
    let name = if method == "_OTHER" {
        format!("HTTP {}", facts.route)
    } else {
        format!("{method} {}", facts.route)
    };
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .start_with_context(tracer, &parent);
    parent.with_span(span)
}

fn record_status(cx: &Context, status: StatusCode, server: bool) {
    let span = cx.span();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status.as_u16()),
    ));
    // Server spans are errors on 5xx only (a 4xx is the client's); client
    // spans on any 4xx or 5xx.
    let error = if server {
        status.is_server_error()
    } else {
        status.is_client_error() || status.is_server_error()
    };
    if error {
        span.set_attribute(KeyValue::new("error.type", status.as_u16().to_string()));
        span.set_status(Status::error(""));
    }
}

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for ServerSpan<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<SpanBody<ResB>>;
    type Error = S::Error;
    type Future = ServerSpanFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let Some(tracer) = &self.tracer else {
            return ServerSpanFuture {
                inner: self.inner.call(request),
                span: None,
            };
        };
        let (parts, body) = request.into_parts();
        let cx = server_span(tracer, &self.facts, &parts);
        let request = Request::from_parts(parts, body);
        let inner = {
            let _current = cx.clone().attach();
            self.inner.call(request)
        };
        ServerSpanFuture {
            inner,
            span: Some(EndOnDrop(cx)),
        }
    }
}

pin_project! {
    /// Future of [`ServerSpan`]: the inner future, polled with the span as
    /// the current context.
    pub struct ServerSpanFuture<F> {
        #[pin]
        inner: F,
        span: Option<EndOnDrop>,
    }
}

impl<F, B, E> Future for ServerSpanFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<SpanBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, task: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = {
            let _current = this.span.as_ref().map(|span| span.0.clone().attach());
            ready!(this.inner.poll(task))
        };
        let span = this.span.take();
        Poll::Ready(match result {
            Ok(response) => {
                let (mut parts, inner) = response.into_parts();
                if let Some(span) = &span {
                    record_status(&span.0, parts.status, true);
                    parts
                        .extensions
                        .insert(span.0.span().span_context().trace_id());
                }
                Ok(Response::from_parts(parts, SpanBody { inner, span }))
            }
            Err(error) => {
                if let Some(span) = &span {
                    span.0.span().set_status(Status::error("service error"));
                }
                Err(error)
            }
        })
    }
}

pin_project! {
    /// A response body that ends its request's span when it is finished
    /// (or dropped).
    pub struct SpanBody<B> {
        #[pin]
        inner: B,
        span: Option<EndOnDrop>,
    }
}

impl<B> http_body::Body for SpanBody<B>
where
    B: http_body::Body,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            None => drop(this.span.take()),
            Some(Err(_)) => {
                if let Some(span) = this.span.take() {
                    span.0
                        .span()
                        .set_status(Status::error("response body failed"));
                }
            }
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A client span for one outgoing request, child of the current context
/// (the server span of the request being handled); ends when dropped.
///
/// ```
/// use wharf_telemetry::trace::ClientSpan;
///
/// let uri: http::Uri = "http://api.internal:6012/services/s?key=secret".parse().unwrap();
/// let span = ClientSpan::start(&http::Method::GET, &uri);
/// let mut headers = http::HeaderMap::new();
/// span.inject(&mut headers); // `traceparent` when tracing is on
/// span.set_status(http::StatusCode::OK);
/// ```
pub struct ClientSpan(Option<EndOnDrop>);

impl std::fmt::Debug for ClientSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ClientSpan")
            .field(&self.0.is_some())
            .finish()
    }
}

impl ClientSpan {
    /// Starts a span for `method` to `uri` (nothing when tracing is off).
    /// `url.full` leaves out the query: it may hold secrets.
    pub fn start(method: &Method, uri: &Uri) -> Self {
        Self::start_parts(
            method,
            uri.scheme_str().unwrap_or("http"),
            uri.authority(),
            uri.path(),
        )
    }

    /// [`start`](Self::start) from the pieces of the URI, for a caller that
    /// has them apart (a proxy: the server's authority, the client's path):
    /// no URI is built, and nothing at all is done when tracing is off.
    pub fn start_parts(
        method: &Method,
        scheme: &str,
        authority: Option<&http::uri::Authority>,
        path: &str,
    ) -> Self {
        let Some(tracer) = TRACER.get() else {
            return Self(None);
        };
        let parent = Context::current();
        let method_name = method_name(method);
        let mut attributes = vec![
            KeyValue::new("http.request.method", method_name),
            KeyValue::new(
                "url.full",
                format!(
                    "{scheme}://{}{path}",
                    authority.map_or("", http::uri::Authority::as_str),
                ),
            ),
        ];
        if let Some(host) = authority.map(http::uri::Authority::host) {
            attributes.push(KeyValue::new("server.address", host.to_owned()));
        }
        let port = authority
            .and_then(http::uri::Authority::port_u16)
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        attributes.push(KeyValue::new("server.port", i64::from(port)));
        let name = if method_name == "_OTHER" {
            "HTTP"
        } else {
            method_name
        };
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(tracer, &parent);
        Self(Some(EndOnDrop(parent.with_span(span))))
    }

    /// Whether there is a span (tracing is on).
    pub fn is_recording(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.0.span().is_recording())
    }

    /// Writes this span's `traceparent` (and `tracestate`) into `headers`,
    /// replacing any; does nothing when tracing is off.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Some(span) = &self.0 {
            TraceContextPropagator::new().inject_context(&span.0, &mut HeaderInjector(headers));
        }
    }

    /// Records the response status.
    pub fn set_status(&self, status: StatusCode) {
        if let Some(span) = &self.0 {
            record_status(&span.0, status, false);
        }
    }

    /// Records a failure with no response (`error.type`, e.g. `timeout`).
    pub fn set_error(&self, error_type: &'static str) {
        if let Some(span) = &self.0 {
            let span = span.0.span();
            span.set_attribute(KeyValue::new("error.type", error_type));
            span.set_status(Status::error(error_type));
        }
    }

    /// The trace id, when tracing is on.
    pub fn trace_id(&self) -> Option<TraceId> {
        self.0
            .as_ref()
            .map(|s| s.0.span().span_context().trace_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
    use tower::{Layer, ServiceExt};

    fn provider() -> (SdkTracerProvider, InMemorySpanExporter) {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        (provider, exporter)
    }

    fn attribute(span: &SpanData, key: &str) -> Option<String> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const PARENT: &str = "00f067aa0ba902b7";

    #[tokio::test]
    async fn a_server_span_continues_the_incoming_trace_without_the_query() {
        let (provider, exporter) = provider();
        let layer = ServerSpanLayer::new(|_parts: &http::request::Parts| {
            RequestFacts::new("/d/{service}/{document}")
        })
        .with_tracer(Some(provider.tracer("test")));
        // The app runs with the server span as the current context (so a
        // ClientSpan it starts is its child); it answers with its span id.
        let app = tower::service_fn(|_request: Request<String>| async {
            let cx = Context::current();
            let current = cx.span().span_context().clone();
            assert!(current.is_valid());
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .status(503)
                    .body(http_body_util::Full::new(Bytes::from(
                        current.span_id().to_string(),
                    )))
                    .unwrap(),
            )
        });
        let request = Request::builder()
            .uri("/d/abc/def?key=SECRET")
            .header("traceparent", format!("00-{TRACE}-{PARENT}-01"))
            .header("x-request-id", "req-1")
            .header("host", "example.gov.uk:443")
            .body(String::new())
            .unwrap();
        let response = layer.layer(app).oneshot(request).await.unwrap();
        assert_eq!(
            response.extensions().get::<TraceId>().unwrap().to_string(),
            TRACE
        );
        // Not ended until the body is finished.
        assert!(exporter.get_finished_spans().unwrap().is_empty());
        let current_span_id = response.into_body().collect().await.unwrap().to_bytes();
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        assert_eq!(span.name, "GET /d/{service}/{document}");
        assert_eq!(span.span_kind, SpanKind::Server);
        assert_eq!(span.span_context.trace_id().to_string(), TRACE);
        assert_eq!(span.parent_span_id.to_string(), PARENT);
        assert_eq!(
            span.span_context.span_id().to_string().as_bytes(),
            &current_span_id[..]
        );
        assert_eq!(attribute(span, "url.path").unwrap(), "/d/abc/def");
        assert_eq!(
            attribute(span, "http.route").unwrap(),
            "/d/{service}/{document}"
        );
        assert_eq!(attribute(span, "http.request.method").unwrap(), "GET");
        assert_eq!(attribute(span, "http.response.status_code").unwrap(), "503");
        assert_eq!(attribute(span, "server.address").unwrap(), "example.gov.uk");
        assert_eq!(attribute(span, "wharf.request_id").unwrap(), "req-1");
        assert!(matches!(span.status, Status::Error { .. }));
        for kv in &span.attributes {
            assert!(!kv.value.to_string().contains("SECRET"), "{kv:?}");
        }
    }

    #[tokio::test]
    async fn without_a_tracer_requests_pass_through() {
        let layer = ServerSpanLayer::new(|_: &http::request::Parts| {
            panic!("facts are not computed when tracing is off")
        })
        .with_tracer(None);
        let app = tower::service_fn(|_request: Request<()>| async {
            assert!(!Context::current().span().span_context().is_valid());
            Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Empty::<Bytes>::new()))
        });
        let response = layer.layer(app).oneshot(Request::new(())).await.unwrap();
        assert!(response.extensions().get::<TraceId>().is_none());
        // Off in this process: no client span, no header.
        let span = ClientSpan::start(&Method::GET, &Uri::from_static("http://a/b?key=x"));
        let mut headers = HeaderMap::new();
        span.inject(&mut headers);
        assert!(headers.is_empty());
        assert!(span.trace_id().is_none());
    }

    #[test]
    fn endpoints_and_samplers_follow_the_otel_variables() {
        let mut section = TraceSection::default();
        assert_eq!(section.traces_url(), "http://localhost:4318/v1/traces");
        section.endpoint = Some("http://collector:4318/".into());
        assert_eq!(section.traces_url(), "http://collector:4318/v1/traces");
        section.traces_endpoint = Some("http://other:9999/custom".into());
        assert_eq!(section.traces_url(), "http://other:9999/custom");
        let vars = TraceSection::vars("tracing");
        let var = |name: &str| vars.iter().find(|v| v.name() == name).unwrap();
        assert!(var("OTEL_EXPORTER_OTLP_ENDPOINT")
            .parse("https://vendor.example")
            .unwrap_err()
            .contains("local OpenTelemetry Collector"));
        assert!(var("OTEL_TRACES_SAMPLER_ARG").parse("1.5").is_err());
        assert_eq!(
            var("OTEL_TRACES_SAMPLER_ARG").parse("0.25").unwrap(),
            serde_json::json!(0.25)
        );
        assert!(var("WHARF_TRACING").parse("jaeger").is_err());
        let section: TraceSection = serde_json::from_value(serde_json::json!({
            "exporter": "otlp",
            "protocol": "http/json",
            "sampler": "parentbased_traceidratio",
            "sampler_arg": 0.5,
        }))
        .unwrap();
        assert_eq!(section.exporter, TraceExporter::Otlp);
        assert_eq!(section.protocol, OtlpProtocol::HttpJson);
        assert_eq!(section.sampler, SamplerName::ParentbasedTraceIdRatio);
    }
}
