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
//! Spans are exported in batches (`OTEL_BSP_*` tune them) from a thread of
//! their own, through a hyper client on a small runtime of its own, so
//! exporting never blocks the server's runtime. With `http/protobuf` (the
//! default) a span is encoded into the batch as it ends (`batch.rs`,
//! `proto.rs`); with `http/json`, the SDK's batch processor and
//! opentelemetry-otlp's encoder do it. Only `http://` collector endpoints are supported: run an
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

// One way: `config`, `proto` <- `batch` <- `export` <- `server`, `client`;
// the helpers at the end of this file are shared by the server and client
// spans.
mod batch;
mod client;
mod config;
mod export;
mod proto;
mod server;
#[cfg(test)]
mod tests;

use http::{Method, StatusCode};
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};

pub use client::ClientSpan;
pub use config::{OtlpProtocol, SamplerName, TraceExporter, TraceSection, DEFAULT_ENDPOINT};
pub use export::{enabled, init, TraceError, TraceGuard};
pub use opentelemetry::trace::TraceId;
pub use server::{RequestFacts, ServerSpan, ServerSpanFuture, ServerSpanLayer, SpanBody};

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

/// Ends the span of a context when dropped.
struct EndOnDrop(Context);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        self.0.span().end();
    }
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
