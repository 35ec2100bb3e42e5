//! OTLP protobuf, written straight from the SDK's `SpanData`.
//!
//! opentelemetry-otlp first converts each span into the generated prost
//! structs (a `String` per attribute key and value, a `Vec` per id), then
//! encodes those; measured, that was most of the CPU a sampled request
//! cost. Here a span is encoded once, into a reused buffer, on the thread
//! that ends it. The field numbers are those of
//! `opentelemetry/proto/trace/v1/trace.proto` and `common/v1/common.proto`;
//! the values follow opentelemetry-proto's conversion (flags, status,
//! empty parent id for a root span). A unit test decodes the output with
//! opentelemetry-proto's own types.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{SpanId, SpanKind, Status};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::SpanData;
use opentelemetry_sdk::Resource;

/// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

/// `SpanFlags`: the context says whether the parent is remote, and it is.
const HAS_IS_REMOTE: u32 = 0x100;
const IS_REMOTE: u32 = 0x200;

fn varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        // The low seven bits, with the continuation bit.
        out.push(low_byte(value) | 0x80);
        value >>= 7;
    }
    out.push(low_byte(value));
}

fn low_byte(value: u64) -> u8 {
    value.to_le_bytes()[0]
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, u64::from(field << 3 | u32::from(wire)));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, value: &[u8]) {
    tag(out, field, LEN);
    varint(out, value.len() as u64);
    out.extend_from_slice(value);
}

/// A string field, left out when empty (proto3's default).
fn string_field(out: &mut Vec<u8>, field: u32, value: &str) {
    if !value.is_empty() {
        bytes_field(out, field, value.as_bytes());
    }
}

/// A varint field, left out when zero.
fn varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        tag(out, field, VARINT);
        varint(out, value);
    }
}

fn fixed64_field(out: &mut Vec<u8>, field: u32, value: u64) {
    tag(out, field, FIXED64);
    out.extend_from_slice(&value.to_le_bytes());
}

/// An embedded message: its tag, then what `body` writes, preceded by its
/// length (one byte is reserved; longer lengths move the body up).
fn message(out: &mut Vec<u8>, field: u32, body: impl FnOnce(&mut Vec<u8>)) {
    tag(out, field, LEN);
    let at = out.len();
    out.push(0);
    body(out);
    let len = out.len() - at - 1;
    if len < 0x80 {
        out[at] = low_byte(len as u64);
        return;
    }
    let mut prefix = Vec::with_capacity(10);
    varint(&mut prefix, len as u64);
    let extra = prefix.len() - 1;
    out.resize(out.len() + extra, 0);
    out.copy_within(at + 1..at + 1 + len, at + 1 + extra);
    out[at..at + prefix.len()].copy_from_slice(&prefix);
}

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `AnyValue`'s fields for `value`.
fn any_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Bool(b) => {
            tag(out, 2, VARINT);
            varint(out, u64::from(*b));
        }
        // int64: two's complement as a varint (ten bytes when negative).
        Value::I64(i) => {
            tag(out, 3, VARINT);
            varint(out, i.cast_unsigned());
        }
        Value::F64(f) => {
            tag(out, 4, FIXED64);
            out.extend_from_slice(&f.to_bits().to_le_bytes());
        }
        Value::String(s) => bytes_field(out, 1, s.as_str().as_bytes()),
        Value::Array(array) => message(out, 5, |out| match array {
            Array::Bool(values) => array_values(out, values, |b| Value::Bool(*b)),
            Array::I64(values) => array_values(out, values, |i| Value::I64(*i)),
            Array::F64(values) => array_values(out, values, |f| Value::F64(*f)),
            Array::String(values) => {
                array_values(out, values, |s: &StringValue| Value::String(s.clone()));
            }
            // Kinds added to the API after this was written: as text.
            other => array_values(out, &[other.to_string()], |s| {
                Value::String(s.clone().into())
            }),
        }),
        // Kinds added to the API after this was written: as text.
        other => bytes_field(out, 1, other.as_str().as_bytes()),
    }
}

fn array_values<T>(out: &mut Vec<u8>, values: &[T], value: impl Fn(&T) -> Value) {
    for item in values {
        message(out, 1, |out| any_value(out, &value(item)));
    }
}

fn attributes<'a>(
    out: &mut Vec<u8>,
    field: u32,
    attributes: impl IntoIterator<Item = &'a KeyValue>,
) {
    for kv in attributes {
        message(out, field, |out| {
            string_field(out, 1, kv.key.as_str());
            message(out, 2, |out| any_value(out, &kv.value));
        });
    }
}

/// One `ScopeSpans.spans` entry (field 2 of `ScopeSpans`) for `span`.
pub(super) fn span_entry(out: &mut Vec<u8>, span: &SpanData) {
    message(out, 2, |out| {
        let context = &span.span_context;
        bytes_field(out, 1, &context.trace_id().to_bytes());
        bytes_field(out, 2, &context.span_id().to_bytes());
        string_field(out, 3, &context.trace_state().header());
        if span.parent_span_id != SpanId::INVALID {
            bytes_field(out, 4, &span.parent_span_id.to_bytes());
        }
        string_field(out, 5, &span.name);
        let kind = match span.span_kind {
            SpanKind::Internal => 1,
            SpanKind::Server => 2,
            SpanKind::Client => 3,
            SpanKind::Producer => 4,
            SpanKind::Consumer => 5,
        };
        varint_field(out, 6, kind);
        fixed64_field(out, 7, nanos(span.start_time));
        fixed64_field(out, 8, nanos(span.end_time));
        attributes(out, 9, &span.attributes);
        varint_field(out, 10, u64::from(span.dropped_attributes_count));
        for event in span.events.iter() {
            message(out, 11, |out| {
                fixed64_field(out, 1, nanos(event.timestamp));
                string_field(out, 2, &event.name);
                attributes(out, 3, &event.attributes);
                varint_field(out, 4, u64::from(event.dropped_attributes_count));
            });
        }
        varint_field(out, 12, u64::from(span.events.dropped_count));
        for link in span.links.iter() {
            message(out, 13, |out| {
                let context = &link.span_context;
                bytes_field(out, 1, &context.trace_id().to_bytes());
                bytes_field(out, 2, &context.span_id().to_bytes());
                string_field(out, 3, &context.trace_state().header());
                attributes(out, 4, &link.attributes);
                varint_field(out, 5, u64::from(link.dropped_attributes_count));
                let flags = flags(context.is_remote(), context.trace_flags().to_u8());
                tag(out, 6, FIXED32);
                out.extend_from_slice(&flags.to_le_bytes());
            });
        }
        varint_field(out, 14, u64::from(span.links.dropped_count));
        message(out, 15, |out| {
            let (code, text) = match &span.status {
                Status::Unset => (0, ""),
                Status::Ok => (1, ""),
                Status::Error { description } => (2, description.as_ref()),
            };
            string_field(out, 2, text);
            varint_field(out, 3, code);
        });
        let flags = flags(span.parent_span_is_remote, context.trace_flags().to_u8());
        tag(out, 16, FIXED32);
        out.extend_from_slice(&flags.to_le_bytes());
    });
}

fn flags(parent_is_remote: bool, trace_flags: u8) -> u32 {
    let mut flags = u32::from(trace_flags) | HAS_IS_REMOTE;
    if parent_is_remote {
        flags |= IS_REMOTE;
    }
    flags
}

/// What an encoded message puts before and after the entries it holds:
/// `ResourceSpans`' resource and schema URL around its `ScopeSpans`,
/// `ScopeSpans`' scope and schema URL around its spans (in field order, as
/// prost writes them).
#[derive(Debug, Clone, Default)]
pub(super) struct Frame {
    head: Vec<u8>,
    tail: Vec<u8>,
}

/// `ResourceSpans.resource` and `schema_url` for `resource`: written once,
/// put around every batch.
pub(super) fn resource(resource: &Resource) -> Frame {
    let mut head = Vec::new();
    message(&mut head, 1, |out| {
        for (key, value) in resource {
            message(out, 1, |out| {
                string_field(out, 1, key.as_str());
                message(out, 2, |out| any_value(out, value));
            });
        }
    });
    let mut tail = Vec::new();
    string_field(&mut tail, 3, resource.schema_url().unwrap_or(""));
    Frame { head, tail }
}

/// `ScopeSpans.scope` and `schema_url` for `scope`.
pub(super) fn scope(scope: &InstrumentationScope) -> Frame {
    let mut head = Vec::new();
    message(&mut head, 1, |out| {
        string_field(out, 1, scope.name());
        string_field(out, 2, scope.version().unwrap_or(""));
        attributes(out, 3, scope.attributes());
    });
    let mut tail = Vec::new();
    string_field(&mut tail, 3, scope.schema_url().unwrap_or(""));
    Frame { head, tail }
}

/// An `ExportTraceServiceRequest` with one `ResourceSpans`: `resource`
/// (from [`resource`]) around a `ScopeSpans` per `(scope, spans)`, `spans`
/// being [`span_entry`]s end to end.
pub(super) fn request<'a>(
    out: &mut Vec<u8>,
    resource: &Frame,
    scopes: impl IntoIterator<Item = (&'a Frame, &'a [u8])>,
) {
    message(out, 1, |out| {
        out.extend_from_slice(&resource.head);
        for (scope, spans) in scopes {
            message(out, 2, |out| {
                out.extend_from_slice(&scope.head);
                out.extend_from_slice(spans);
                out.extend_from_slice(&scope.tail);
            });
        }
        out.extend_from_slice(&resource.tail);
    });
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{
        Link, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceState, Tracer,
        TracerProvider as _,
    };
    use opentelemetry::{Array, Context, InstrumentationScope, KeyValue, Value};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::transform::common::tonic::ResourceAttributesWithSchema;
    use opentelemetry_proto::transform::trace::tonic::group_spans_by_resource_and_scope;
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use opentelemetry_sdk::Resource;
    use prost::Message as _;

    use super::*;

    /// Spans using every field: a remote parent with trace state, every
    /// attribute kind (a long string, so lengths take two bytes), an event,
    /// a link, an error status; and a root span of another kind.
    fn spans() -> Vec<SpanData> {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let scope = InstrumentationScope::builder("wharf")
            .with_version("1.2.3")
            .with_schema_url("https://opentelemetry.io/schemas/1.26.0")
            .with_attributes([KeyValue::new("scope.attr", 7)])
            .build();
        let tracer = provider.tracer_with_scope(scope);
        let parent = SpanContext::new(
            0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128.into(),
            0x00f0_67aa_0ba9_02b7_u64.into(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "value")]).unwrap(),
        );
        let cx = Context::new().with_remote_span_context(parent.clone());
        let mut span = tracer
            .span_builder("GET /d/{service}/{document}")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("text", "x".repeat(300)),
                KeyValue::new("unicode", "é\"\\\n"),
                KeyValue::new("int", 200_i64),
                KeyValue::new("negative", -1_i64),
                KeyValue::new("float", 1.5),
                KeyValue::new("bool", true),
                KeyValue::new(
                    "strings",
                    Value::Array(Array::String(vec!["a".into(), "b".into()])),
                ),
                KeyValue::new("ints", Value::Array(Array::I64(vec![1, -2]))),
                KeyValue::new("floats", Value::Array(Array::F64(vec![0.25]))),
                KeyValue::new("bools", Value::Array(Array::Bool(vec![false, true]))),
            ])
            .with_links(vec![Link::with_context(parent.clone())])
            .start_with_context(&tracer, &cx);
        opentelemetry::trace::Span::add_event(
            &mut span,
            "retry",
            vec![KeyValue::new("attempt", 2)],
        );
        opentelemetry::trace::Span::set_status(&mut span, Status::error("upstream failed"));
        opentelemetry::trace::Span::end(&mut span);
        let mut root = tracer
            .span_builder("GET")
            .with_kind(SpanKind::Client)
            .start(&tracer);
        opentelemetry::trace::Span::set_status(&mut root, Status::Ok);
        opentelemetry::trace::Span::end(&mut root);
        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 2);
        spans
    }

    #[test]
    fn the_request_decodes_to_what_opentelemetry_proto_would_send() {
        let spans = spans();
        let resource = Resource::builder()
            .with_schema_url(
                Vec::<KeyValue>::new(),
                "https://opentelemetry.io/schemas/1.27.0",
            )
            .with_service_name("frontend")
            .with_attribute(KeyValue::new("host.name", "h"))
            .build();
        let mut entries = Vec::new();
        for span in &spans {
            span_entry(&mut entries, span);
        }
        let mut body = Vec::new();
        request(
            &mut body,
            &super::resource(&resource),
            [(&scope(&spans[0].instrumentation_scope), &entries[..])],
        );
        let ours = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        let theirs = ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans,
                &ResourceAttributesWithSchema::from(&resource),
            ),
        };
        assert_eq!(ours, theirs);
        // And byte for byte, as prost writes it (same field order).
        assert_eq!(body, theirs.encode_to_vec());
    }

    #[test]
    fn lengths_over_127_bytes_take_more_than_one_byte() {
        for len in [0, 1, 127, 128, 16_383, 16_384, 70_000] {
            let mut out = Vec::new();
            message(&mut out, 3, |out| {
                out.extend(std::iter::repeat_n(b'a', len));
            });
            let mut expected = Vec::new();
            tag(&mut expected, 3, LEN);
            varint(&mut expected, len as u64);
            expected.extend(std::iter::repeat_n(b'a', len));
            assert_eq!(out, expected, "length {len}");
        }
    }
}
