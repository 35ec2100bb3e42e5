//! CPU per traced request, the server span alone: `ServerSpanLayer` around a
//! service that answers at once, driven in a loop on one thread.
//!
//! `cargo bench -p wharf-telemetry --bench span_cost -- MODE [N]`, MODE one
//! of `off` (no tracer), `noop` (spans made, then dropped), `otlp` (the real
//! export to `OTEL_EXPORTER_OTLP_ENDPOINT`, which must answer). Prints the
//! process's CPU (every thread: the export's too) per request.

// A measuring tool: a failure to start is a panic with its message.
#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use std::time::Instant;

use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{SdkTracerProvider, Span, SpanData, SpanProcessor};
use tower::{Layer, Service, ServiceExt};
use wharf_telemetry::trace::{self, RequestFacts, ServerSpanLayer, TraceExporter, TraceSection};

#[derive(Debug)]
struct Noop;

impl SpanProcessor for Noop {
    fn on_start(&self, _: &mut Span, _: &opentelemetry::Context) {}
    fn on_end(&self, _: SpanData) {}
    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(
        &self,
        _: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// utime + stime of every thread of this process, in seconds.
fn process_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().unwrap_or(0) + fields[12].parse::<u64>().unwrap_or(0);
    ticks as f64 / 100.0
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let mode = args.next().unwrap_or_else(|| "off".to_owned());
    let n: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut guard = None;
    let mut provider = None;
    let tracer = match mode.as_str() {
        "off" => None,
        "noop" => {
            let p = SdkTracerProvider::builder()
                .with_span_processor(Noop)
                .build();
            let t = p.tracer("bench");
            provider = Some(p);
            Some(t)
        }
        "otlp" => {
            let section = TraceSection {
                exporter: TraceExporter::Otlp,
                endpoint: std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok(),
                ..TraceSection::default()
            };
            guard = Some(trace::init(&section, "bench").unwrap());
            None
        }
        other => panic!("unknown mode {other}"),
    };
    let layer = ServerSpanLayer::new(|parts: &http::request::Parts| {
        RequestFacts::new(if parts.uri.path() == "/security.txt" {
            "/security.txt"
        } else {
            "/d/{service}/{document}"
        })
    });
    let layer = if mode == "otlp" {
        layer
    } else {
        layer.with_tracer(tracer)
    };
    let app = tower::service_fn(|_request: Request<Full<bytes::Bytes>>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Full::new(bytes::Bytes::from_static(
            b"ok",
        ))))
    });
    let mut service = layer.layer(app);
    let cpu0 = process_cpu();
    let wall = Instant::now();
    runtime.block_on(async {
        for i in 0..n {
            let request = Request::builder()
                .uri("/security.txt")
                .header("host", "localhost:7001")
                .header("x-request-id", format!("req-{i}"))
                .body(Full::new(bytes::Bytes::new()))
                .unwrap();
            let response = service.ready().await.unwrap().call(request).await.unwrap();
            let _ = response.into_body().collect().await;
        }
    });
    let loop_wall = wall.elapsed().as_secs_f64();
    let cpu1 = process_cpu();
    drop(guard); // flushes what is queued
    drop(provider);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let cpu2 = process_cpu();
    let per = |s: f64| s * 1e6 / f64::from(n);
    println!(
        "{mode}: {n} requests, loop wall {:.2} µs/req, CPU during loop {:.2} µs/req, CPU incl. flush {:.2} µs/req",
        per(loop_wall),
        per(cpu1 - cpu0),
        per(cpu2 - cpu0)
    );
}
