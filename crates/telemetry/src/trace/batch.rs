//! The span processor behind `http/protobuf` export: each span is encoded
//! when it ends, on the thread that ends it, and appended to a per-process
//! queue of batches; a thread of its own posts each batch as one OTLP
//! request.
//!
//! The SDK's batch processor sends every `SpanData` through a channel to its
//! thread, where opentelemetry-otlp copies it into prost structs and encodes
//! those: that thread cost more CPU per request than the request itself on
//! a small page, and every span was freed on a thread other than the one
//! that allocated it. Here the span is dropped where it was made, and what
//! crosses threads is one byte buffer per batch.
//!
//! The `OTEL_BSP_*` settings keep the SDK's meaning: a request carries at
//! most `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` spans, and exporting starts when
//! that many are queued or `OTEL_BSP_SCHEDULE_DELAY` has passed; a span that
//! finds `OTEL_BSP_MAX_QUEUE_SIZE` spans queued is dropped (counted, and
//! logged), never waited for.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};
use opentelemetry::{Context, InstrumentationScope};
use opentelemetry_http::HttpClient;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;

use super::proto::{self, Frame};

/// The `OTEL_BSP_*` settings this processor honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BatchSettings {
    /// `OTEL_BSP_SCHEDULE_DELAY` (milliseconds), default 5000.
    pub delay: Duration,
    /// `OTEL_BSP_MAX_QUEUE_SIZE`, default 2048.
    pub max_queue: usize,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, default 512 (at most the queue).
    pub max_batch: usize,
}

impl BatchSettings {
    /// From the environment, as the SDK reads it: a value that is not a
    /// number leaves the default.
    pub(super) fn from_env() -> Self {
        let number = |name: &str| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        let delay =
            number("OTEL_BSP_SCHEDULE_DELAY").map_or(Duration::from_secs(5), Duration::from_millis);
        let max_queue = number("OTEL_BSP_MAX_QUEUE_SIZE")
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n > 0)
            .unwrap_or(2048);
        let max_batch = number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE")
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n > 0)
            .unwrap_or(512)
            .min(max_queue);
        Self {
            delay,
            max_queue,
            max_batch,
        }
    }
}

/// Where and how batches are posted.
pub(super) struct Destination {
    pub client: Arc<dyn HttpClient>,
    pub runtime: tokio::runtime::Handle,
    pub url: http::Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub timeout: Duration,
}

/// Up to `max_batch` spans: per scope (its index in `Queue::scopes`), the
/// spans' encoded entries end to end.
#[derive(Debug, Default)]
struct Batch {
    spans: usize,
    parts: Vec<(usize, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct Queue {
    /// Every scope seen in this process, with its encoded framing.
    scopes: Vec<(InstrumentationScope, Arc<Frame>)>,
    /// Batches waiting; the last one is being filled.
    batches: VecDeque<Batch>,
    /// Emptied buffers the export thread hands back, for new batches.
    spare: Vec<Vec<u8>>,
    /// Spans dropped on a full queue since the last report.
    dropped: u64,
    /// Flushes asked for, and the last one done (generation counters;
    /// `u64::MAX` once the thread has ended or could not start).
    flush_asked: u64,
    flush_done: u64,
    /// A span was queued: the export thread is (being) started.
    started: bool,
    /// No more spans; the thread exports what is queued and ends.
    stopping: bool,
}

/// What [`Queue::push`] did with a span.
struct Pushed {
    /// It was the first span: the export thread is to be started.
    first: bool,
    /// It filled the first batch: the export thread is to be woken.
    full: bool,
}

impl Queue {
    /// Appends a span's encoded `entry` of `scope` to the last batch (a new
    /// one when that is full); `None` when stopping or the queue is full
    /// (counted as dropped).
    fn push(
        &mut self,
        scope: &InstrumentationScope,
        entry: &[u8],
        settings: BatchSettings,
    ) -> Option<Pushed> {
        if self.stopping {
            return None;
        }
        let queued: usize = self.batches.iter().map(|b| b.spans).sum();
        if queued >= settings.max_queue {
            self.dropped += 1;
            return None;
        }
        let scope = if let Some(i) = self.scopes.iter().position(|(known, _)| known == scope) {
            i
        } else {
            self.scopes
                .push((scope.clone(), Arc::new(proto::scope(scope))));
            self.scopes.len() - 1
        };
        if self
            .batches
            .back()
            .is_none_or(|b| b.spans >= settings.max_batch)
        {
            self.batches.push_back(Batch::default());
        }
        let batch = self.batches.back_mut()?; // pushed just above
        let at = if let Some(at) = batch.parts.iter().position(|(i, _)| *i == scope) {
            at
        } else {
            let buffer = self.spare.pop().unwrap_or_default();
            batch.parts.push((scope, buffer));
            batch.parts.len() - 1
        };
        let part = &mut batch.parts[at].1;
        part.extend_from_slice(entry);
        batch.spans += 1;
        let pushed = Pushed {
            first: !self.started,
            // Once, when the first batch becomes full.
            full: batch.spans == settings.max_batch && self.batches.len() == 1,
        };
        self.started = true;
        Some(pushed)
    }
}

/// Emptied buffers kept for reuse.
const SPARE_BUFFERS: usize = 8;

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the export thread.
    wake: Condvar,
    /// Tells waiting flushes that an export finished.
    done: Condvar,
    settings: BatchSettings,
    /// The encoded resource, set by the provider before the first span.
    resource: OnceLock<Frame>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A panic while holding the lock leaves the queue consistent (every
        // change under it is a push or a swap), so a poisoned lock is used.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// No export will happen any more: flushes stop waiting.
    fn finished(&self) {
        self.lock().flush_done = u64::MAX;
        self.done.notify_all();
    }
}

/// The processor; see the [module docs](self).
pub(super) struct OtlpBatch {
    shared: Arc<Shared>,
    destination: Mutex<Option<Destination>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for OtlpBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpBatch")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// Where a span is encoded before it is appended (outside the lock).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl OtlpBatch {
    /// A processor posting to `destination`; its thread starts with the
    /// first span.
    pub(super) fn new(settings: BatchSettings, destination: Destination) -> Self {
        Self {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue::default()),
                wake: Condvar::new(),
                done: Condvar::new(),
                settings,
                resource: OnceLock::new(),
            }),
            destination: Mutex::new(Some(destination)),
            thread: Mutex::new(None),
        }
    }

    /// Starts the export thread (from the thread that ends the first span,
    /// so it inherits a runtime thread's signal mask).
    fn start_thread(&self) {
        let Some(destination) = self
            .destination
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new()
            .name("wharf-otlp-batch".to_owned())
            .spawn(move || {
                export_loop(&shared, &destination);
                shared.finished();
            });
        match spawned {
            Ok(handle) => {
                *self.thread.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
            }
            Err(error) => {
                tracing::warn!(%error, "Cannot start the trace export thread: spans are dropped");
                self.shared.finished();
            }
        }
    }

    fn flush_and_wait(&self, stop: bool, timeout: Duration) -> OTelSdkResult {
        let mut queue = self.shared.lock();
        if queue.stopping {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        queue.stopping = stop;
        if !queue.started {
            // No span was ever queued: nothing to export, no thread to stop.
            return Ok(());
        }
        queue.flush_asked += 1;
        let target = queue.flush_asked;
        self.shared.wake.notify_one();
        let deadline = Instant::now() + timeout;
        while queue.flush_done < target {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(OTelSdkError::Timeout(timeout));
            }
            queue = self
                .shared
                .done
                .wait_timeout(queue, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        drop(queue);
        if stop {
            let handle = self
                .thread
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(handle) = handle {
                let _ = handle.join();
            }
        }
        Ok(())
    }
}

impl SpanProcessor for OtlpBatch {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        SCRATCH.with(|scratch| {
            let Ok(mut scratch) = scratch.try_borrow_mut() else {
                return; // re-entered from a span ended while encoding: not possible, but never panic
            };
            scratch.clear();
            proto::span_entry(&mut scratch, &span);
            let Some(pushed) = self.shared.lock().push(
                &span.instrumentation_scope,
                &scratch,
                self.shared.settings,
            ) else {
                return;
            };
            let (first, full) = (pushed.first, pushed.full);
            if first {
                self.start_thread();
            }
            if full {
                self.shared.wake.notify_one();
            }
        });
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.flush_and_wait(false, Duration::from_secs(30))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.flush_and_wait(true, timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        let _ = self.shared.resource.set(proto::resource(resource));
    }
}

/// The export thread: waits for a full batch, the delay, a flush or the
/// stop; posts every batch queued, one request each; tells flushes it is
/// done.
fn export_loop(shared: &Shared, destination: &Destination) {
    let mut failures = Failures::default();
    let no_resource = Frame::default();
    loop {
        // A delay too long to add to now: exports wait for a full batch.
        let deadline = Instant::now().checked_add(shared.settings.delay);
        let mut queue = shared.lock();
        loop {
            let due = queue
                .batches
                .front()
                .is_some_and(|b| b.spans >= shared.settings.max_batch)
                || queue.flush_asked > queue.flush_done
                || queue.stopping;
            if due {
                break;
            }
            queue = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    shared
                        .wake
                        .wait_timeout(queue, left)
                        .map_or_else(|poison| poison.into_inner().0, |(q, _)| q)
                }
                None => shared
                    .wake
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
        let asked = queue.flush_asked;
        let stopping = queue.stopping;
        let dropped = std::mem::take(&mut queue.dropped);
        let batches = std::mem::take(&mut queue.batches);
        let scopes: Vec<Arc<Frame>> = queue.scopes.iter().map(|(_, f)| Arc::clone(f)).collect();
        drop(queue);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "Trace export queue full (OTEL_BSP_MAX_QUEUE_SIZE): spans dropped"
            );
        }
        let resource = shared.resource.get().unwrap_or(&no_resource);
        let mut emptied = Vec::new();
        for batch in batches {
            let mut body = Vec::new();
            proto::request(
                &mut body,
                resource,
                batch
                    .parts
                    .iter()
                    .filter_map(|(i, spans)| Some((&**scopes.get(*i)?, &spans[..]))),
            );
            failures.record(post(destination, Bytes::from(body)), batch.spans);
            emptied.extend(batch.parts.into_iter().map(|(_, mut spans)| {
                spans.clear();
                spans
            }));
        }
        let mut queue = shared.lock();
        let room = SPARE_BUFFERS.saturating_sub(queue.spare.len());
        queue.spare.extend(emptied.into_iter().take(room));
        queue.flush_done = queue.flush_done.max(asked);
        drop(queue);
        shared.done.notify_all();
        if stopping {
            return;
        }
    }
}

/// Posts one request body; the error says why it was not accepted.
fn post(destination: &Destination, body: Bytes) -> Result<(), String> {
    let mut request = Request::post(destination.url.clone())
        .body(body)
        .map_err(|e| e.to_string())?;
    // In order: a later header of the same name replaces an earlier one.
    for (name, value) in &destination.headers {
        request.headers_mut().insert(name, value.clone());
    }
    request.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-protobuf"),
    );
    let answer = destination.runtime.block_on(async {
        tokio::time::timeout(destination.timeout, destination.client.send_bytes(request)).await
    });
    match answer {
        Err(_) => Err(format!(
            "no answer in {} ms",
            destination.timeout.as_millis()
        )),
        Ok(Err(error)) => Err(error.to_string()),
        Ok(Ok(response)) if response.status().is_success() => Ok(()),
        Ok(Ok(response)) => Err(format!("the collector answered {}", response.status())),
    }
}

/// Failed exports: the first logged at once, the next ones at most every
/// ten seconds with their count, and the recovery with what was lost.
#[derive(Default)]
struct Failures {
    /// Failures and spans lost since the last line logged.
    since_log: u64,
    spans_lost: u64,
    /// When the last failure was logged, while exports are failing.
    failing_since_log: Option<Instant>,
}

impl Failures {
    fn record(&mut self, result: Result<(), String>, spans: usize) {
        match result {
            Ok(()) => {
                if self.failing_since_log.take().is_some() {
                    tracing::info!(
                        failed_exports = self.since_log,
                        spans_lost = self.spans_lost,
                        "Trace export works again"
                    );
                }
                self.since_log = 0;
                self.spans_lost = 0;
            }
            Err(error) => {
                self.since_log += 1;
                self.spans_lost += spans as u64;
                if self
                    .failing_since_log
                    .is_some_and(|at| at.elapsed() < Duration::from_secs(10))
                {
                    return;
                }
                tracing::warn!(
                    %error,
                    failed_exports = self.since_log,
                    spans_lost = self.spans_lost,
                    "Trace export failed"
                );
                self.since_log = 0;
                self.spans_lost = 0;
                self.failing_since_log = Some(Instant::now());
            }
        }
    }
}

/// `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, else `OTEL_EXPORTER_OTLP_HEADERS`:
/// `key=value` pairs separated by commas, values percent-decoded, as
/// opentelemetry-otlp reads them. A pair that is not a valid header is
/// skipped with a warning naming the variable.
pub(super) fn headers_from_env() -> Vec<(HeaderName, HeaderValue)> {
    let (name, value) = match std::env::var("OTEL_EXPORTER_OTLP_TRACES_HEADERS") {
        Ok(v) => ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", v),
        Err(_) => match std::env::var("OTEL_EXPORTER_OTLP_HEADERS") {
            Ok(v) => ("OTEL_EXPORTER_OTLP_HEADERS", v),
            Err(_) => return Vec::new(),
        },
    };
    parse_headers(&value)
        .filter_map(|(key, value)| {
            let parsed = HeaderName::try_from(key)
                .ok()
                .zip(HeaderValue::try_from(value.as_str()).ok());
            if parsed.is_none() {
                tracing::warn!(
                    variable = name,
                    header = key,
                    "Not a valid HTTP header: left out"
                );
            }
            parsed
        })
        .collect()
}

fn parse_headers(text: &str) -> impl Iterator<Item = (&str, String)> {
    text.split(',').filter_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        let (key, value) = (key.trim(), value.trim());
        let value = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_or_else(|_| value.to_owned(), std::borrow::Cow::into_owned);
        (!key.is_empty() && !value.is_empty()).then_some((key, value))
    })
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use prost::Message as _;

    use super::*;

    /// A collector in this process: records the spans of each request it
    /// is sent (decoded with opentelemetry-proto's types) and answers 200.
    #[derive(Debug, Default)]
    struct Collector {
        batches: Mutex<Vec<Vec<String>>>,
        /// Requests begun; each waits until `open` (a stalled collector).
        entered: std::sync::atomic::AtomicUsize,
        closed: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl HttpClient for Collector {
        async fn send_bytes(
            &self,
            request: Request<Bytes>,
        ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
            use std::sync::atomic::Ordering::SeqCst;
            self.entered.fetch_add(1, SeqCst);
            while self.closed.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(2));
            }
            assert_eq!(request.headers()["content-type"], "application/x-protobuf");
            assert_eq!(request.headers()["x-token"], "t");
            let decoded = ExportTraceServiceRequest::decode(request.body().clone())?;
            let names = decoded
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
                .map(|s| s.name.clone())
                .collect();
            self.batches.lock().unwrap().push(names);
            Ok(http::Response::new(Bytes::new()))
        }
    }

    fn provider(
        settings: BatchSettings,
    ) -> (SdkTracerProvider, Arc<Collector>, tokio::runtime::Runtime) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let collector = Arc::new(Collector::default());
        let processor = OtlpBatch::new(
            settings,
            Destination {
                client: collector.clone(),
                runtime: runtime.handle().clone(),
                url: "http://collector.invalid/v1/traces".parse().unwrap(),
                headers: vec![(
                    HeaderName::from_static("x-token"),
                    HeaderValue::from_static("t"),
                )],
                timeout: Duration::from_secs(5),
            },
        );
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .build();
        (provider, collector, runtime)
    }

    fn end_spans(provider: &SdkTracerProvider, names: std::ops::Range<usize>) {
        let tracer = provider.tracer("test");
        for i in names {
            tracer.start(format!("span {i}")).end();
        }
    }

    #[test]
    fn a_full_batch_is_sent_at_once_and_the_rest_on_shutdown() {
        let (provider, collector, _runtime) = provider(BatchSettings {
            delay: Duration::from_secs(3600),
            max_queue: 100,
            max_batch: 4,
        });
        end_spans(&provider, 0..4);
        let sent = |n: usize| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while collector.batches.lock().unwrap().len() < n && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            collector.batches.lock().unwrap().clone()
        };
        // Four spans fill a batch: sent without waiting for the hour.
        assert_eq!(sent(1), vec![vec!["span 0", "span 1", "span 2", "span 3"]]);
        end_spans(&provider, 4..6);
        provider.shutdown().unwrap();
        assert_eq!(sent(2)[1], vec!["span 4", "span 5"]);
        // After shutdown (the thread has ended), spans are not queued.
        end_spans(&provider, 6..7);
        assert_eq!(collector.batches.lock().unwrap().len(), 2);
    }

    #[test]
    fn a_request_carries_at_most_a_batch_of_spans() {
        let (provider, collector, _runtime) = provider(BatchSettings {
            delay: Duration::from_secs(3600),
            max_queue: 100,
            max_batch: 4,
        });
        collector
            .closed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Held back by the stalled collector, ten spans queue up behind the
        // first batch; released, they go out four at most per request.
        end_spans(&provider, 0..14);
        collector
            .closed
            .store(false, std::sync::atomic::Ordering::SeqCst);
        provider.force_flush().unwrap();
        let sizes: Vec<usize> = collector
            .batches
            .lock()
            .unwrap()
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes.iter().sum::<usize>(), 14);
        assert!(sizes.iter().all(|&n| n <= 4), "{sizes:?}");
    }

    #[test]
    fn spans_beyond_a_full_queue_are_dropped_not_waited_for() {
        use std::sync::atomic::Ordering::SeqCst;
        let (provider, collector, _runtime) = provider(BatchSettings {
            delay: Duration::from_secs(3600),
            max_queue: 3,
            max_batch: 3,
        });
        collector.closed.store(true, SeqCst);
        // Three spans fill a batch; the thread takes them and the collector
        // stalls on them.
        end_spans(&provider, 0..3);
        let deadline = Instant::now() + Duration::from_secs(10);
        while collector.entered.load(SeqCst) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        // Three more fill the queue; four beyond it are dropped at once.
        let started = Instant::now();
        end_spans(&provider, 3..10);
        assert!(started.elapsed() < Duration::from_secs(2));
        collector.closed.store(false, SeqCst);
        provider.force_flush().unwrap();
        let batches = collector.batches.lock().unwrap().clone();
        assert_eq!(
            batches,
            vec![
                vec!["span 0", "span 1", "span 2"],
                vec!["span 3", "span 4", "span 5"]
            ]
        );
    }

    #[test]
    fn headers_are_read_as_opentelemetry_otlp_reads_them() {
        let parsed: Vec<_> = parse_headers("api-key=a%20b, x = 1 ,empty=,=v,bad%=%zz").collect();
        assert_eq!(
            parsed,
            vec![
                ("api-key", "a b".to_owned()),
                ("x", "1".to_owned()),
                ("bad%", "%zz".to_owned()),
            ]
        );
    }
}
