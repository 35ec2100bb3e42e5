use super::*;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, Uri};
use http_body_util::BodyExt;
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
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
