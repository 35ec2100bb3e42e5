//! Server spans: one per request, continuing the incoming `traceparent`,
//! current while the request is handled, ended when the body is finished.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context as TaskContext, Poll};

use http::{Request, Response};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::Tracer;
use pin_project_lite::pin_project;

use super::export::TRACER;
use super::{method_name, record_status, EndOnDrop};

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

/// A server span per request; see the [module docs](super).
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
    /// Spans from the process's tracer (none when [`init`](super::init) has
    /// not turned tracing on); `facts` names each request's route and scheme,
    /// and runs only when tracing is on.
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
