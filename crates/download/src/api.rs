//! The two upstream APIs, each either over HTTP or the built-in local one.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use http_body_util::Full;

use crate::html::url_encode;
use crate::ids::Uuid;
use crate::local::LocalApi;
use crate::present::ServiceInfo;
use crate::signing::notify_api_token;
use crate::upstream::{Answer, TraceHeaders, Upstream, UpstreamError};

/// The issuer of the admin client's tokens.
const NOTIFY_ADMIN_ISSUER: &str = "notify-admin";
const USER_AGENT: &str = concat!("wharf-download/", env!("CARGO_PKG_VERSION"));

/// Why a service could not be fetched.
#[derive(Debug)]
pub(crate) enum ServiceFailure {
    /// The API answered this status.
    Status(StatusCode),
    /// No usable answer.
    Upstream(UpstreamError),
}

/// The Notify API (service names and contact links).
#[derive(Clone, Debug)]
pub(crate) enum NotifyApi {
    Http {
        upstream: Upstream,
        base: Arc<str>,
        secret: Arc<str>,
    },
    Local(Arc<LocalApi>),
}

fn request(
    method: Method,
    url: &str,
    body: Option<Vec<u8>>,
    trace: &TraceHeaders,
) -> Result<Request<Full<Bytes>>, UpstreamError> {
    let mut builder = Request::builder().method(method).uri(url);
    if let Some(headers) = builder.headers_mut() {
        trace.apply(headers);
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if body.is_some() {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    builder
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|error| UpstreamError::Invalid(format!("bad upstream URL {url}: {error}")))
}

fn now_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl NotifyApi {
    /// `GET {API_HOST_NAME}/service/{id}` with an HS256 token.
    pub(crate) async fn get_service(
        &self,
        id: Uuid,
        trace: &TraceHeaders,
    ) -> Result<ServiceInfo, ServiceFailure> {
        match self {
            Self::Local(local) => local
                .service(id)
                .ok_or(ServiceFailure::Status(StatusCode::NOT_FOUND)),
            Self::Http {
                upstream,
                base,
                secret,
            } => {
                let url = format!("{base}/service/{id}");
                let mut req =
                    request(Method::GET, &url, None, trace).map_err(ServiceFailure::Upstream)?;
                let token = notify_api_token(NOTIFY_ADMIN_ISSUER, secret, now_seconds());
                if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
                    req.headers_mut().insert(header::AUTHORIZATION, value);
                }
                let answer = upstream.send(req).await.map_err(ServiceFailure::Upstream)?;
                if !answer.status.is_success() {
                    return Err(ServiceFailure::Status(answer.status));
                }
                let json = answer.json();
                let data = &json["data"];
                let name = data["name"].as_str().ok_or_else(|| {
                    ServiceFailure::Upstream(UpstreamError::Invalid(
                        "service without data.name".to_owned(),
                    ))
                })?;
                Ok(ServiceInfo {
                    name: name.to_owned(),
                    contact_link: data["contact_link"].as_str().map(str::to_owned),
                })
            }
        }
    }
}

/// The document download API.
#[derive(Clone, Debug)]
pub(crate) enum DocumentApi {
    Http { upstream: Upstream, base: Arc<str> },
    Local(Arc<LocalApi>),
}

impl DocumentApi {
    /// `GET …/services/{s}/documents/{d}/check?key=K`.
    pub(crate) async fn check(
        &self,
        service: Uuid,
        document: Uuid,
        key: &str,
        trace: &TraceHeaders,
    ) -> Result<Answer, UpstreamError> {
        match self {
            Self::Local(local) => Ok(local.check(service, document, Some(key))),
            Self::Http { upstream, base } => {
                let url = format!(
                    "{base}/services/{service}/documents/{document}/check?key={}",
                    url_encode(key)
                );
                upstream
                    .send(request(Method::GET, &url, None, trace)?)
                    .await
            }
        }
    }

    /// `POST …/services/{s}/documents/{d}/authenticate` with `{key, email_address}`.
    pub(crate) async fn authenticate(
        &self,
        service: Uuid,
        document: Uuid,
        key: &str,
        email_address: &str,
        trace: &TraceHeaders,
    ) -> Result<Answer, UpstreamError> {
        let body = serde_json::json!({ "key": key, "email_address": email_address });
        match self {
            Self::Local(local) => Ok(local.authenticate(service, document, &body)),
            Self::Http { upstream, base } => {
                let url = format!("{base}/services/{service}/documents/{document}/authenticate");
                let body =
                    serde_json::to_vec(&body).map_err(|e| UpstreamError::Invalid(e.to_string()))?;
                upstream
                    .send(request(Method::POST, &url, Some(body), trace)?)
                    .await
            }
        }
    }
}
