//! Client spans: one per outgoing request, child of the current context,
//! its `traceparent` injected into the request.

use http::{HeaderMap, Method, StatusCode, Uri};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, TraceId, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::HeaderInjector;
use opentelemetry_sdk::propagation::TraceContextPropagator;

use super::export::TRACER;
use super::{method_name, record_status, EndOnDrop};

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
