//! [`DownloadApp`]: the routes, as one tower service.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use wharf_http::{Body, ResponseBody};

use crate::api::{DocumentApi, NotifyApi, ServiceFailure};
use crate::assets::{Assets, STATIC_PREFIX};
use crate::csrf::{self, CSRF_COOKIE};
use crate::html::{self, url_encode, Chrome, FileView, FormError, ServiceView, Unavailable};
use crate::ids::Uuid;
use crate::local::{cookie, json_content_type, LocalApi, LocalFile, ACCESS_COOKIE};
use crate::present::{self, Clock, Contact, Date, ServiceInfo};
use crate::security;
use crate::upstream::{Answer, RequestTrace, TraceHeaders, UpstreamError};

/// Where `/security.txt` points (the GDS Way vulnerability disclosure policy).
pub(crate) const SECURITY_TXT: &str = "https://vdp.cabinetoffice.gov.uk/.well-known/security.txt";

/// The largest confirm-form body read.
const MAX_FORM_BYTES: usize = 16 * 1024;

pub(crate) struct Inner {
    pub(crate) notify: NotifyApi,
    pub(crate) documents: DocumentApi,
    pub(crate) local: Option<Arc<LocalApi>>,
    /// `DOCUMENT_DOWNLOAD_API_HOST_NAME`, without a trailing slash.
    pub(crate) document_api_public: Option<String>,
    /// The access cookie's `Domain`, when it has one.
    pub(crate) cookie_domain: Option<String>,
    pub(crate) secure_cookies: bool,
    pub(crate) secret_key: Vec<u8>,
    pub(crate) assets: Assets,
    pub(crate) clock: Clock,
}

/// The Document Download Frontend as a `tower::Service`: every page, redirect
/// and error of the existing service, its static assets, and (in development)
/// the local document API. Cheap to clone.
#[derive(Clone)]
pub struct DownloadApp {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for DownloadApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownloadApp")
            .field("local", &self.inner.local.is_some())
            .field("assets", &self.inner.assets.len())
            .finish_non_exhaustive()
    }
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<ResponseBody>, Infallible>> + Send>>;

impl tower::Service<Request<Body>> for DownloadApp {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move { Ok(inner.handle(request).await) })
    }
}

/// The route template a path matches, for metrics and span names: never the
/// raw path, so a scanner cannot create unbounded series. Mirrors
/// `Inner::route` below, plus what `frontend` serves around the app (health
/// routes, `/metrics`).
pub fn route_template(path: &str) -> &'static str {
    // The first six segments, without allocating (every request comes here).
    // Longer paths keep only those: every exact pattern below is shorter, so
    // it cannot match a truncated path either, as with the whole list.
    let mut segments = [""; 6];
    let mut count = 0;
    for (slot, segment) in segments
        .iter_mut()
        .zip(path.trim_start_matches('/').split('/'))
    {
        *slot = segment;
        count += 1;
    }
    match &segments[..count] {
        ["_status"] => "/_status",
        ["health", "live"] => "/health/live",
        ["health", "ready"] => "/health/ready",
        ["metrics"] => "/metrics",
        ["d", _, _] => "/d/{service}/{document}",
        ["d", _, _, "confirm-email-address"] => "/d/{service}/{document}/confirm-email-address",
        ["d", _, _, "download"] => "/d/{service}/{document}/download",
        ["services", _, "documents", _, "check"] => {
            "/services/{service}/documents/{document}/check"
        }
        ["services", _, "documents", _, "authenticate"] => {
            "/services/{service}/documents/{document}/authenticate"
        }
        ["services", ..] => "/services/{service}/documents/{document}",
        ["static", ..] => "/static/{asset}",
        ["security.txt"] | [".well-known", "security.txt"] => "/security.txt",
        _ => "other",
    }
}

/// A response under construction: status, body, extra headers.
struct Reply {
    status: StatusCode,
    body: Bytes,
    headers: HeaderMap,
    cache_control: Option<&'static str>,
}

impl Reply {
    fn html(status: StatusCode, html: String) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        Self {
            status,
            body: Bytes::from(html),
            headers,
            cache_control: None,
        }
    }

    fn redirect(status: StatusCode, location: &str) -> Self {
        let mut reply = Self {
            status,
            body: Bytes::new(),
            headers: HeaderMap::new(),
            cache_control: None,
        };
        if let Ok(value) = HeaderValue::from_str(location) {
            reply.headers.insert(header::LOCATION, value);
        }
        reply
    }

    fn json(status: StatusCode, body: Bytes) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, json_content_type());
        Self {
            status,
            body,
            headers,
            cache_control: None,
        }
    }

    /// The local document API's answer, with its headers (its
    /// `Cache-Control` goes through `cache_control`, which the security
    /// headers write).
    fn answer(mut answer: Answer) -> Self {
        let cache_control = answer
            .headers
            .remove(header::CACHE_CONTROL)
            .and_then(|v| crate::local::CACHE_CONTROLS.into_iter().find(|c| v == *c));
        Self {
            status: answer.status,
            body: answer.body,
            headers: answer.headers,
            cache_control,
        }
    }

    fn with_cookie(mut self, cookie: &str) -> Self {
        if let Ok(value) = HeaderValue::from_str(cookie) {
            self.headers.append(header::SET_COOKIE, value);
        }
        self
    }
}

/// A page that ends a request early.
enum Stop {
    NotFound,
    /// "Page not found" with another status (DDF's `error/400.html`, `410.html`).
    NotFoundAs(StatusCode),
    /// DDF's `views/file-unavailable.html`, with the service's name and contact.
    Unavailable(ServiceInfo, Unavailable),
    ServiceProblem(StatusCode),
    Error(StatusCode),
}

impl From<UpstreamError> for Stop {
    fn from(error: UpstreamError) -> Self {
        if error.is_timeout() {
            tracing::warn!(%error, "Upstream API timed out");
            Self::Error(StatusCode::GATEWAY_TIMEOUT)
        } else {
            // Unreachable, reset, or not HTTP/JSON: the gateway failed.
            tracing::error!(%error, "Upstream API call failed");
            Self::Error(StatusCode::BAD_GATEWAY)
        }
    }
}

/// A document's metadata from `/check`.
struct DocumentMeta {
    direct_file_url: String,
    confirm_email: bool,
    size_in_bytes: u64,
    file_extension: String,
    available_until: Option<Date>,
}

/// The parts of a `/d/{service}/{document}[/…]` request.
struct DocRequest {
    service: Uuid,
    document: Uuid,
    key: String,
    trace: TraceHeaders,
}

impl DocRequest {
    fn path(&self, suffix: &str) -> String {
        format!(
            "/d/{}/{}{suffix}?key={}",
            self.service.to_base64(),
            self.document.to_base64(),
            url_encode(&self.key)
        )
    }
}

/// The first value of `name` in a query string or form body, decoded as
/// `application/x-www-form-urlencoded` (the `form_urlencoded` crate: `+` is a
/// space, invalid UTF-8 becomes U+FFFD).
pub(crate) fn form_value(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Reads a request body of at most `limit` bytes.
async fn read_body(mut body: Body, limit: usize) -> Option<Bytes> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            if out.len() + data.len() > limit {
                return None;
            }
            out.extend_from_slice(&data);
        }
    }
    Some(Bytes::from(out))
}

fn is_hyphenated_uuid(text: &str) -> Option<Uuid> {
    (text.len() == 36).then(|| text.parse().ok()).flatten()
}

impl Inner {
    fn chrome<'a>(&'a self, nonce: &'a str) -> Chrome<'a> {
        Chrome {
            nonce,
            assets: &self.assets,
        }
    }

    async fn handle(self: Arc<Self>, request: Request<Body>) -> Response<ResponseBody> {
        let nonce = security::new_nonce();
        // Notify's B3 ids for this request (notifications-utils' way): on the
        // response, and carried to the APIs.
        let trace = RequestTrace::of(request.headers());
        let (reply, nonce) = match (nonce, &trace) {
            (Ok(nonce), Ok(trace)) => (self.route(request, &nonce, trace).await, Some(nonce)),
            (Ok(nonce), Err(error)) => {
                tracing::error!(%error, "The OS random generator failed: no trace id");
                let reply = self.stop(Stop::Error(StatusCode::INTERNAL_SERVER_ERROR), &nonce);
                (reply, Some(nonce))
            }
            (Err(error), _) => {
                // No nonce, no page: the error page, with no inline code allowed.
                tracing::error!(%error, "The OS random generator failed: no CSP nonce");
                (
                    self.stop(Stop::Error(StatusCode::INTERNAL_SERVER_ERROR), ""),
                    None,
                )
            }
        };
        let mut response = Response::new(wharf_http::body::full(reply.body));
        *response.status_mut() = reply.status;
        *response.headers_mut() = reply.headers;
        security::apply(
            response.headers_mut(),
            nonce.as_deref(),
            reply.cache_control,
        );
        if let Ok(trace) = &trace {
            trace.stamp(response.headers_mut());
        }
        response
    }

    async fn route(
        &self,
        request: Request<Body>,
        nonce: &str,
        request_trace: &RequestTrace,
    ) -> Reply {
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let method = request.method().clone();
        let is_get = method == Method::GET || method == Method::HEAD;
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        match segments.as_slice() {
            ["_status"] if is_get => {
                Reply::json(StatusCode::OK, Bytes::from_static(br#"{"status":"ok"}"#))
            }
            ["security.txt"] | [".well-known", "security.txt"] if is_get => {
                Reply::redirect(StatusCode::FOUND, SECURITY_TXT)
            }
            ["_status" | "security.txt"] | [".well-known", "security.txt"] => {
                self.not_allowed(&method, nonce, "GET, HEAD")
            }
            ["static", ..] => self.static_asset(&path, &method, nonce),
            ["service", id] if is_get && matches!(self.notify, NotifyApi::Local(_)) => {
                self.local_service(id)
            }
            ["services", ..] => self.services(request, &segments, &query, nonce).await,
            ["d", service, document, rest @ ..] => {
                let (Some(service), Some(document)) =
                    (Uuid::from_base64(service), Uuid::from_base64(document))
                else {
                    return self.stop(Stop::NotFound, nonce);
                };
                let (allowed, page) = match rest {
                    [] => ("GET, HEAD", Page::Landing),
                    ["download"] => ("GET, HEAD", Page::Download),
                    ["confirm-email-address"] => ("GET, HEAD, POST", Page::Confirm),
                    _ => return self.stop(Stop::NotFound, nonce),
                };
                if !(is_get || (method == Method::POST && page == Page::Confirm)) {
                    return self.not_allowed(&method, nonce, allowed);
                }
                let key = form_value(&query, "key").filter(|k| !k.is_empty());
                let Some(key) = key else {
                    return self.stop(Stop::NotFound, nonce);
                };
                let trace = match TraceHeaders::onward(request.headers(), request_trace) {
                    Ok(trace) => trace,
                    Err(error) => {
                        tracing::error!(%error, "The OS random generator failed: no trace id");
                        return self.stop(Stop::Error(StatusCode::INTERNAL_SERVER_ERROR), nonce);
                    }
                };
                let doc = DocRequest {
                    service,
                    document,
                    key,
                    trace,
                };
                let result = match page {
                    Page::Landing => self.landing(&doc, nonce).await,
                    Page::Download => self.download(&doc, nonce).await,
                    Page::Confirm => self.confirm(request, &doc, nonce).await,
                };
                result.unwrap_or_else(|stop| self.stop(stop, nonce))
            }
            _ => self.stop(Stop::NotFound, nonce),
        }
    }

    /// `GET /service/{id}` of the local service directory, shaped like the
    /// Notify API's answer (so another app can use it as its `API_HOST_NAME`).
    fn local_service(&self, id: &str) -> Reply {
        let service = is_hyphenated_uuid(id)
            .and_then(|id| self.local.as_ref().and_then(|local| local.service(id)));
        match service {
            Some(service) => Reply::json(
                StatusCode::OK,
                Bytes::from(
                    serde_json::json!({"data": {"name": service.name, "contact_link": service.contact_link}})
                        .to_string(),
                ),
            ),
            None => Reply::json(
                StatusCode::NOT_FOUND,
                Bytes::from_static(br#"{"result":"error","message":"No result found"}"#),
            ),
        }
    }

    /// A matched route asked with a method it does not serve: 405 with
    /// `Allow`, except OPTIONS, which Flask answers on every route itself
    /// (`provide_automatic_options`): 200, no body, `Allow`, and the view
    /// never runs. Both `Allow`s list OPTIONS, as Werkzeug's
    /// `MethodNotAllowed` does for a Flask route (DDF itself turns that 405
    /// into a 500; see docs/compatibility.md).
    fn not_allowed(&self, method: &Method, nonce: &str, allow: &'static str) -> Reply {
        if method == Method::OPTIONS {
            return options(allow);
        }
        let mut reply = Reply::html(
            StatusCode::METHOD_NOT_ALLOWED,
            html::not_found(&self.chrome(nonce)),
        );
        if let Ok(value) = HeaderValue::from_str(&with_options(allow)) {
            reply.headers.insert(header::ALLOW, value);
        }
        reply
    }

    fn stop(&self, stop: Stop, nonce: &str) -> Reply {
        let chrome = self.chrome(nonce);
        match stop {
            Stop::NotFound => Reply::html(StatusCode::NOT_FOUND, html::not_found(&chrome)),
            Stop::NotFoundAs(status) => Reply::html(status, html::not_found(&chrome)),
            Stop::Unavailable(service, why) => {
                let contact = Contact::assess(service.contact_link.as_deref());
                let view = ServiceView {
                    name: &service.name,
                    contact: &contact,
                };
                let status = match why {
                    Unavailable::NotFound => StatusCode::NOT_FOUND,
                    Unavailable::Gone => StatusCode::GONE,
                };
                Reply::html(status, html::file_unavailable(&chrome, &view, why))
            }
            Stop::ServiceProblem(status) => Reply::html(status, html::service_problem(&chrome)),
            Stop::Error(status) => Reply::html(status, html::server_error(&chrome)),
        }
    }

    fn static_asset(&self, path: &str, method: &Method, nonce: &str) -> Reply {
        let name = path.strip_prefix(STATIC_PREFIX).unwrap_or_default();
        // Flask's `/static/<path:filename>` matches any name, known or not.
        if method == Method::OPTIONS && !name.is_empty() {
            return options("GET, HEAD");
        }
        let Some(asset) = self.assets.get(name) else {
            return self.stop(Stop::NotFound, nonce);
        };
        if !(method == Method::GET || method == Method::HEAD) {
            return self.not_allowed(method, nonce, "GET, HEAD");
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        Reply {
            status: StatusCode::OK,
            body: asset.body.clone(),
            headers,
            cache_control: Some(if asset.immutable {
                "public, max-age=31536000, immutable"
            } else {
                "public, max-age=86400"
            }),
        }
    }

    /// `/services/…`: the local document API in development; otherwise old API
    /// links, redirected (301) to the document API with path and query.
    async fn services(
        &self,
        request: Request<Body>,
        segments: &[&str],
        query: &str,
        nonce: &str,
    ) -> Reply {
        let method = request.method().clone();
        let is_get = method == Method::GET || method == Method::HEAD;
        let (service, document, tail) = match segments {
            ["services", "_status"] => {
                if !is_get {
                    return self.not_allowed(&method, nonce, "GET, HEAD");
                }
                return match (&self.local, &self.document_api_public) {
                    (_, Some(public)) => Reply::redirect(
                        StatusCode::MOVED_PERMANENTLY,
                        &old_link(public, request.uri().path(), query),
                    ),
                    _ => Reply::answer(crate::local::LocalApi::status()),
                };
            }
            ["services", service, "documents", document, tail @ ..] => (*service, *document, tail),
            _ => return self.stop(Stop::NotFound, nonce),
        };
        let Some(service) = is_hyphenated_uuid(service) else {
            return self.stop(Stop::NotFound, nonce);
        };
        let (document, extension) = match document.split_once('.') {
            Some((id, ext)) if tail.is_empty() => (id, Some(ext)),
            _ => (document, None),
        };
        let Some(document) = is_hyphenated_uuid(document) else {
            return self.stop(Stop::NotFound, nonce);
        };
        let kind = match (tail, extension) {
            ([], _) => Route::File,
            (["check"], None) => Route::Check,
            (["authenticate"], None) => Route::Authenticate,
            _ => return self.stop(Stop::NotFound, nonce),
        };
        let Some(local) = self.local.clone() else {
            // The old service redirected its own GET routes only.
            return match (&self.document_api_public, kind) {
                (Some(public), Route::File | Route::Check) if is_get => Reply::redirect(
                    StatusCode::MOVED_PERMANENTLY,
                    &old_link(public, request.uri().path(), query),
                ),
                (Some(_), Route::File | Route::Check) => {
                    self.not_allowed(&method, nonce, "GET, HEAD")
                }
                _ => self.stop(Stop::NotFound, nonce),
            };
        };
        let key = form_value(query, "key");
        match kind {
            Route::Check if is_get => Reply::answer(local.check(service, document, key.as_deref())),
            Route::Authenticate if method == Method::POST => {
                let Some(body) = read_body(request.into_body(), MAX_FORM_BYTES).await else {
                    return Reply::json(
                        StatusCode::BAD_REQUEST,
                        Bytes::from_static(br#"{"error":"Invalid request body"}"#),
                    );
                };
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                Reply::answer(local.authenticate(service, document, &json))
            }
            Route::File if is_get => match local
                .file(service, document, key.as_deref(), request.headers())
                .await
            {
                LocalFile::Answer(answer) => Reply::answer(answer),
                LocalFile::Redirect(location) => Reply::redirect(StatusCode::FOUND, &location),
                LocalFile::File { body, headers } => Reply {
                    status: StatusCode::OK,
                    body,
                    headers,
                    cache_control: None,
                },
            },
            Route::Authenticate => self.not_allowed(&method, nonce, "POST"),
            Route::Check | Route::File => self.not_allowed(&method, nonce, "GET, HEAD"),
        }
    }

    async fn service(&self, doc: &DocRequest) -> Result<ServiceInfo, Stop> {
        match self.notify.get_service(doc.service, &doc.trace).await {
            Ok(service) => Ok(service),
            Err(ServiceFailure::Status(status)) => Err(match status.as_u16() {
                // DDF `_get_service_or_raise_error` aborts with the API's
                // status: `error/400.html`, `404.html` and `410.html` are all
                // "Page not found".
                400 | 404 | 410 => Stop::NotFoundAs(status),
                401 | 403 => Stop::ServiceProblem(status),
                _ => {
                    tracing::error!(status = status.as_u16(), "Notify API answered an error");
                    Stop::Error(StatusCode::INTERNAL_SERVER_ERROR)
                }
            }),
            Err(ServiceFailure::Upstream(error)) => Err(error.into()),
        }
    }

    /// Service first, then the document: its metadata, or the page that
    /// ends the request (404, 410, 500, 504).
    async fn service_and_document(
        &self,
        doc: &DocRequest,
    ) -> Result<(ServiceInfo, DocumentMeta), Stop> {
        let service = self.service(doc).await?;
        let answer = self
            .documents
            .check(doc.service, doc.document, &doc.key, &doc.trace)
            .await?;
        match interpret_check(&answer) {
            Check::Document(meta) => {
                let today = self.clock.today();
                if meta
                    .available_until
                    .is_some_and(|d| present::has_expired(d, today))
                {
                    Err(Stop::Unavailable(service, Unavailable::Gone))
                } else {
                    Ok((service, meta))
                }
            }
            Check::Unavailable => Err(Stop::Unavailable(service, Unavailable::Gone)),
            // DDF `_get_document_metadata` aborts 404 and `landing` (and the
            // other views) render `views/file-unavailable.html` for it.
            Check::NotFound => Err(Stop::Unavailable(service, Unavailable::NotFound)),
            Check::Error => {
                tracing::error!(
                    status = answer.status.as_u16(),
                    "Document API answered an error"
                );
                Err(Stop::Error(StatusCode::INTERNAL_SERVER_ERROR))
            }
        }
    }

    async fn landing(&self, doc: &DocRequest, nonce: &str) -> Result<Reply, Stop> {
        let (service, meta) = self.service_and_document(doc).await?;
        let next = doc.path(if meta.confirm_email {
            "/confirm-email-address"
        } else {
            "/download"
        });
        let contact = Contact::assess(service.contact_link.as_deref());
        let view = ServiceView {
            name: &service.name,
            contact: &contact,
        };
        Ok(Reply::html(
            StatusCode::OK,
            html::landing(&self.chrome(nonce), &view, &next),
        ))
    }

    async fn download(&self, doc: &DocRequest, nonce: &str) -> Result<Reply, Stop> {
        let (service, meta) = self.service_and_document(doc).await?;
        let contact = Contact::assess(service.contact_link.as_deref());
        let view = ServiceView {
            name: &service.name,
            contact: &contact,
        };
        let today = self.clock.today();
        let expiry = meta
            .available_until
            .map(|date| present::format_expiry_date(date, today));
        let size = present::pretty_file_size(meta.size_in_bytes);
        let file = FileView {
            url: &meta.direct_file_url,
            type_name: present::file_type_name(&meta.file_extension).unwrap_or("file"),
            size: &size,
            expiry: expiry.as_deref(),
        };
        Ok(Reply::html(
            StatusCode::OK,
            html::download(&self.chrome(nonce), &view, &file),
        ))
    }

    async fn confirm(
        &self,
        request: Request<Body>,
        doc: &DocRequest,
        nonce: &str,
    ) -> Result<Reply, Stop> {
        let (service, meta) = self.service_and_document(doc).await?;
        if !meta.confirm_email {
            return Ok(Reply::redirect(StatusCode::FOUND, &doc.path("/download")));
        }
        let existing_session = cookie(request.headers(), CSRF_COOKIE)
            .filter(|s| !s.is_empty() && s.len() <= 64)
            .map(str::to_owned);
        let session = match &existing_session {
            Some(session) => session.clone(),
            None => csrf::new_session().map_err(|error| {
                tracing::error!(%error, "The OS random generator failed: no CSRF secret");
                Stop::Error(StatusCode::INTERNAL_SERVER_ERROR)
            })?,
        };
        let contact = Contact::assess(service.contact_link.as_deref());
        let view = ServiceView {
            name: &service.name,
            contact: &contact,
        };
        let action = doc.path("/confirm-email-address");
        let render = |status: StatusCode, value: Option<&str>, error: Option<&FormError>| {
            let token = csrf::token(&self.secret_key, &session);
            let page =
                html::confirm_email(&self.chrome(nonce), &view, &action, &token, value, error);
            let reply = Reply::html(status, page);
            if existing_session.is_some() {
                reply
            } else {
                reply.with_cookie(&format!(
                    "{CSRF_COOKIE}={session}; {}HttpOnly; Path=/; SameSite=Lax",
                    if self.secure_cookies { "Secure; " } else { "" }
                ))
            }
        };
        if request.method() != Method::POST {
            return Ok(render(StatusCode::OK, None, None));
        }
        let Some(body) = read_body(request.into_body(), MAX_FORM_BYTES).await else {
            return Ok(render(
                StatusCode::BAD_REQUEST,
                None,
                Some(&FormError::Field("Enter your email address".to_owned())),
            ));
        };
        let form = String::from_utf8_lossy(&body).into_owned();
        let email = form_value(&form, "email_address").unwrap_or_default();
        let email = crate::email::strip_all_whitespace(&email).to_owned();
        let token = form_value(&form, "csrf_token");
        if !csrf::is_valid(
            &self.secret_key,
            existing_session.as_deref(),
            token.as_deref(),
        ) {
            tracing::warn!("CSRF token missing or invalid on the confirm form");
            let error = FormError::FormHtml(
                "Your session has expired. Enter your email address again.".to_owned(),
            );
            return Ok(render(StatusCode::BAD_REQUEST, Some(&email), Some(&error)));
        }
        if is_blank(&email) {
            let error = FormError::Field("Enter your email address".to_owned());
            return Ok(render(StatusCode::BAD_REQUEST, Some(&email), Some(&error)));
        }
        if !crate::email::is_valid_email_address(&email) {
            let error = FormError::Field("Not a valid email address".to_owned());
            return Ok(render(StatusCode::BAD_REQUEST, Some(&email), Some(&error)));
        }
        let answer = self
            .documents
            .authenticate(doc.service, doc.document, &doc.key, &email, &doc.trace)
            .await?;
        match answer.status.as_u16() {
            429 => Ok(Reply::html(
                StatusCode::TOO_MANY_REQUESTS,
                html::too_many_requests(&self.chrome(nonce), &action),
            )),
            400 | 403 => {
                let error = FormError::FormHtml(format!(
                    "This is not the email address the file was sent to.<br><br>To confirm the file was meant for you, enter the email address {} sent the file to.",
                    html::esc(&service.name)
                ));
                Ok(render(StatusCode::BAD_REQUEST, Some(&email), Some(&error)))
            }
            _ => self.authenticated(doc, &answer),
        }
    }

    /// The authenticate answer was neither 429 nor 400/403: set the access
    /// cookie and go to the download page, or fail.
    fn authenticated(&self, doc: &DocRequest, answer: &Answer) -> Result<Reply, Stop> {
        match answer.status.as_u16() {
            200..=299 => {
                let json = answer.json();
                let (Some(signed), Some(file_url)) = (
                    json["signed_data"].as_str(),
                    json["direct_file_url"].as_str(),
                ) else {
                    tracing::error!(
                        "Document API authenticate answer lacks signed_data or direct_file_url"
                    );
                    return Err(Stop::Error(StatusCode::INTERNAL_SERVER_ERROR));
                };
                if !signed
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\'))
                {
                    tracing::error!("Document API signed_data is not a valid cookie value");
                    return Err(Stop::Error(StatusCode::INTERNAL_SERVER_ERROR));
                }
                let mut cookie = format!("{ACCESS_COOKIE}={signed}");
                if let Some(domain) = &self.cookie_domain {
                    cookie.push_str("; Domain=");
                    cookie.push_str(domain);
                }
                if self.secure_cookies {
                    cookie.push_str("; Secure");
                }
                cookie.push_str("; HttpOnly; Path=");
                cookie.push_str(&url_path(file_url));
                Ok(Reply::redirect(StatusCode::FOUND, &doc.path("/download")).with_cookie(&cookie))
            }
            status => {
                tracing::error!(status, "Document API authenticate answered an error");
                Err(Stop::Error(StatusCode::INTERNAL_SERVER_ERROR))
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Page {
    Landing,
    Download,
    Confirm,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    File,
    Check,
    Authenticate,
}

enum Check {
    Document(DocumentMeta),
    Unavailable,
    NotFound,
    Error,
}

fn interpret_check(answer: &Answer) -> Check {
    let json = answer.json();
    match answer.status.as_u16() {
        200 => {
            // Gone only when the API says so: an object whose `document` is
            // null. A body that is not that (a proxy's HTML page, `{}`) is a
            // broken answer, not a missing document.
            let Some(document) = json.as_object().and_then(|o| o.get("document")) else {
                tracing::error!("Document API answered 200 without a document field");
                return Check::Error;
            };
            if document.is_null() {
                return Check::Unavailable;
            }
            let (Some(url), Some(size), Some(extension)) = (
                document["direct_file_url"].as_str(),
                document["size_in_bytes"].as_u64(),
                document["file_extension"].as_str(),
            ) else {
                tracing::error!(
                    "Document API metadata lacks direct_file_url, size_in_bytes or file_extension"
                );
                return Check::Error;
            };
            Check::Document(DocumentMeta {
                direct_file_url: url.to_owned(),
                confirm_email: document["confirm_email"].as_bool().unwrap_or(false),
                size_in_bytes: size,
                file_extension: extension.to_owned(),
                available_until: document["available_until"]
                    .as_str()
                    .and_then(Date::parse_iso_prefix),
            })
        }
        400 => {
            let error = json["error"].as_str().unwrap_or_default();
            if error.contains("decryption key") || error.contains("Forbidden") {
                Check::NotFound
            } else {
                Check::Error
            }
        }
        403 | 404 => Check::NotFound,
        410 => Check::Unavailable,
        _ => Check::Error,
    }
}

/// wtforms' `DataRequired` (3.2.2, as DDF pins it): a string is missing when
/// Python's `str.strip()` leaves nothing (`not field.data.strip()`). DDF's
/// field runs this after its `strip_all_whitespace` filter, which strips
/// fewer characters, so an address of, say, U+3000 alone is "Enter your email
/// address" there, not "Not a valid email address".
fn is_blank(value: &str) -> bool {
    value.chars().all(crate::email::is_python_space)
}

/// Flask's automatic OPTIONS answer for a route serving `allow`: 200, an
/// empty `text/html` body, `Allow` with OPTIONS added.
fn options(allow: &str) -> Reply {
    let mut reply = Reply::html(StatusCode::OK, String::new());
    if let Ok(value) = HeaderValue::from_str(&with_options(allow)) {
        reply.headers.insert(header::ALLOW, value);
    }
    reply
}

/// The `Allow` of a Flask route serving `allow`: its methods plus the
/// OPTIONS Flask adds to every route. (Werkzeug 3.1.8 joins a Python set,
/// so its order changes with `PYTHONHASHSEED`; here it is alphabetical.)
fn with_options(allow: &str) -> String {
    let mut methods: Vec<&str> = allow.split(", ").collect();
    methods.push("OPTIONS");
    methods.sort_unstable();
    methods.join(", ")
}

/// The path of a URL (absolute or relative), without query or fragment.
fn url_path(url: &str) -> String {
    let without_scheme = url
        .split_once("://")
        .map_or(url, |(_, rest)| rest.find('/').map_or("/", |i| &rest[i..]));
    let end = without_scheme
        .find(['?', '#'])
        .unwrap_or(without_scheme.len());
    let path = &without_scheme[..end];
    if path.is_empty() {
        "/".to_owned()
    } else {
        path.to_owned()
    }
}

fn old_link(public: &str, path: &str, query: &str) -> String {
    if query.is_empty() {
        format!("{public}{path}")
    } else {
        format!("{public}{path}?{query}")
    }
}

/// The access cookie's domain for a document API base URL: its host, less a
/// leading `download.` label (so the cookie reaches the API's sibling hosts);
/// none for an IP address or a single-label host such as `localhost`.
pub(crate) fn cookie_domain(document_api: &str) -> Option<String> {
    let rest = document_api
        .split_once("://")
        .map_or(document_api, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.starts_with('[') {
        return None;
    }
    let host = host
        .split(':')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if !host.contains('.') || host.parse::<std::net::Ipv4Addr>().is_ok() {
        return None;
    }
    Some(host.strip_prefix("download.").unwrap_or(&host).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_bounded_templates() {
        assert_eq!(route_template("/_status"), "/_status");
        assert_eq!(route_template("/d/abc/def"), "/d/{service}/{document}");
        assert_eq!(
            route_template("/d/abc/def/confirm-email-address"),
            "/d/{service}/{document}/confirm-email-address"
        );
        assert_eq!(
            route_template("/d/abc/def/download"),
            "/d/{service}/{document}/download"
        );
        assert_eq!(
            route_template("/static/css/app-1234.css"),
            "/static/{asset}"
        );
        assert_eq!(route_template("/wp-admin/install.php"), "other");
        assert_eq!(route_template("/d/a/b/c/d/e"), "other");
        assert_eq!(route_template("/d/a/b/c/d/e/f/g"), "other");
        assert_eq!(
            route_template("/static/a/b/c/d/e/f/g.css"),
            "/static/{asset}"
        );
        assert_eq!(route_template("/"), "other");
        assert_eq!(route_template(""), "other");
    }

    /// Every code point against the list Python 3 prints for
    /// `[hex(c) for c in range(0x110000) if chr(c).isspace()]`.
    #[test]
    fn python_space_is_str_isspace() {
        const PYTHON: [u32; 29] = [
            0x9, 0xA, 0xB, 0xC, 0xD, 0x1C, 0x1D, 0x1E, 0x1F, 0x20, 0x85, 0xA0, 0x1680, 0x2000,
            0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006, 0x2007, 0x2008, 0x2009, 0x200A, 0x2028,
            0x2029, 0x202F, 0x205F, 0x3000,
        ];
        let ours: Vec<u32> = (0..=0x10_FFFF_u32)
            .filter_map(char::from_u32)
            .filter(|&c| crate::email::is_python_space(c))
            .map(u32::from)
            .collect();
        assert_eq!(ours, PYTHON);
        assert!(is_blank(""));
        assert!(is_blank("\u{3000} \u{85}"));
        assert!(!is_blank("\u{3000}\u{200B}"));
        assert!(!is_blank("\u{180E}"));
    }

    /// The sample document that needs email confirmation, on a local API in
    /// `dir`: GET its confirm form (without a CSRF cookie), the random
    /// generator failing after `successes` fills when set.
    async fn confirm_form(
        dir: &std::path::Path,
        successes: Option<u32>,
    ) -> (StatusCode, HeaderMap, String) {
        use tower::ServiceExt as _;
        let app = crate::DownloadApp::builder()
            .local_api(dir)
            .secret_key(b"unit-test key")
            .build()
            .unwrap();
        let path = app.samples()[1]
            .path
            .replacen('?', "/confirm-email-address?", 1);
        let request = Request::get(path).body(wharf_http::body::empty()).unwrap();
        crate::random::tests::fail_after(successes);
        let response = app.oneshot(request).await;
        crate::random::tests::fail_after(None);
        let (parts, body) = response.unwrap().into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    /// The confirm form draws five times from the generator: the CSP nonce,
    /// the request's B3 trace id and span id (none came in), the span id
    /// sent to the APIs, the CSRF secret. Whichever fails, the page is the
    /// 500 error page, with no CSRF cookie or token.
    #[tokio::test]
    async fn a_failing_generator_fails_the_page_and_sets_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let (status, headers, body) = confirm_form(dir.path(), Some(5)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .starts_with(CSRF_COOKIE));
        assert!(body.contains("csrf_token"), "{body}");
        for successes in [0, 1, 2, 3, 4] {
            let (status, headers, body) = confirm_form(dir.path(), Some(successes)).await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{successes}");
            assert!(headers.get(header::SET_COOKIE).is_none(), "{successes}");
            assert!(!body.contains("csrf_token"), "{successes}: {body}");
            assert!(body.contains("Sorry, there"), "{successes}: {body}");
            let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
            // A nonce only when the generator made one.
            assert_eq!(csp.contains("'nonce-"), successes > 0, "{successes}: {csp}");
        }
    }

    #[test]
    fn a_failing_generator_builds_no_app_with_a_made_up_key() {
        let error = crate::random::tests::failing(|| {
            crate::DownloadApp::builder()
                .notify_api("http://127.0.0.1:9", "admin")
                .document_api("http://127.0.0.1:9", "http://127.0.0.1:9")
                .build()
        })
        .unwrap_err();
        assert!(error.is_random_failure(), "{error}");
        assert!(matches!(error, crate::DownloadError::Random(_)), "{error}");
    }

    #[test]
    fn cookie_domains() {
        assert_eq!(
            cookie_domain("https://download.notifications.service.gov.uk").as_deref(),
            Some("notifications.service.gov.uk")
        );
        assert_eq!(
            cookie_domain("http://test-doc-download-api.com:8080/").as_deref(),
            Some("test-doc-download-api.com")
        );
        assert_eq!(cookie_domain("http://localhost:7000"), None);
        assert_eq!(cookie_domain("http://127.0.0.1:7000"), None);
        assert_eq!(cookie_domain("http://[::1]:7000"), None);
    }

    #[test]
    fn url_paths() {
        assert_eq!(
            url_path("http://test-doc-download-api.com/my/file/path?key=foo"),
            "/my/file/path"
        );
        assert_eq!(
            url_path("/services/a/documents/b.txt?key=x"),
            "/services/a/documents/b.txt"
        );
        assert_eq!(url_path("https://host"), "/");
    }

    /// How query strings and `application/x-www-form-urlencoded` bodies
    /// decode today, pinned so a change of implementation cannot change it:
    /// pairs split on `&` only, the first pair whose decoded name matches
    /// wins, `+` is a space, `%XX` a byte (either case), a `%` not followed
    /// by two hex digits is kept as it is, and the bytes are read as UTF-8
    /// with U+FFFD for invalid sequences. Every row is what Python 3's
    /// `urllib.parse.parse_qsl(..., keep_blank_values=True)` gives.
    #[test]
    fn form_decoding_pins_these_inputs() {
        for (query, name, want) in [
            // Repeated keys: the first one.
            ("key=1&key=2", "key", Some("1")),
            ("key=&key=2", "key", Some("")),
            ("a=1&key=2&key=3", "key", Some("2")),
            // No `=`: an empty value; `=` after the first is part of the value.
            ("key", "key", Some("")),
            ("key&key=2", "key", Some("")),
            ("key=a=b", "key", Some("a=b")),
            ("=x", "key", None),
            // Empty pairs and `;` (not a separator).
            ("&&key=x&", "key", Some("x")),
            ("", "key", None),
            ("key=x;key=y", "key", Some("x;key=y")),
            ("a=1;key=2", "key", None),
            // Names: decoded before comparing, case-sensitive.
            ("k%65y=v", "key", Some("v")),
            ("k%65Y=v", "key", None),
            ("KEY=v", "key", None),
            ("k+y=v", "k y", Some("v")),
            ("email%5Faddress=a", "email_address", Some("a")),
            // `+` is a space; `%2B` a plus; `%20` a space too.
            ("k=a+b", "k", Some("a b")),
            ("k=++", "k", Some("  ")),
            ("k=%2B", "k", Some("+")),
            ("k=%2b", "k", Some("+")),
            ("k=a%20b", "k", Some("a b")),
            ("k=%252B", "k", Some("%2B")),
            // Bad escapes stay as they are.
            ("k=%zz", "k", Some("%zz")),
            ("k=%", "k", Some("%")),
            ("k=%4", "k", Some("%4")),
            ("k=a%", "k", Some("a%")),
            ("k=%41%", "k", Some("A%")),
            ("k=%%41", "k", Some("%A")),
            ("k=%4%41", "k", Some("%4A")),
            ("k=%4g", "k", Some("%4g")),
            ("k=%g4", "k", Some("%g4")),
            ("k=%-1", "k", Some("%-1")),
            ("k=% 1", "k", Some("% 1")),
            // `+` is a space before escapes are read, so `%+1` is `% 1`, as
            // Python's `parse_qsl` gives (the hand-written decoder's
            // `from_str_radix` took the sign and made it byte 1).
            ("k=%+1", "k", Some("% 1")),
            ("k=a%00b", "k", Some("a\0b")),
            // UTF-8: escaped or raw, multi-byte; invalid bytes become U+FFFD.
            ("k=%C3%A9", "k", Some("\u{e9}")),
            ("k=%c3%a9", "k", Some("\u{e9}")),
            ("k=\u{e9}", "k", Some("\u{e9}")),
            ("k=%F0%9F%98%80", "k", Some("\u{1f600}")),
            ("k=%C3", "k", Some("\u{fffd}")),
            ("k=%E9t%E9", "k", Some("\u{fffd}t\u{fffd}")),
            ("k=%C3%28", "k", Some("\u{fffd}(")),
            ("k=%F0%9F%98", "k", Some("\u{fffd}")),
            ("%C3%A9=x", "\u{e9}", Some("x")),
        ] {
            assert_eq!(form_value(query, name).as_deref(), want, "{query:?}");
        }
    }

    #[test]
    fn form_values_are_decoded() {
        assert_eq!(
            form_value("a=1&key=ab%2Bc+d&key=2", "key").as_deref(),
            Some("ab+c d")
        );
        assert_eq!(form_value("key=", "key").as_deref(), Some(""));
        assert_eq!(form_value("keys=1", "key"), None);
        assert_eq!(form_value("k=%zz%4", "k").as_deref(), Some("%zz%4"));
        assert_eq!(
            form_value("email_address=me%40example.com", "email_address").as_deref(),
            Some("me@example.com")
        );
    }
}
