//! Test support: a stub upstream API over real HTTP, and request helpers that
//! drive a `DownloadApp` as a tower service.

// Helpers panic on a broken fixture: that is a failed test with a line number.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::missing_panics_doc,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tower::ServiceExt;
use wharf_download::{Clock, Date, DownloadApp, Uuid};

/// The fixed "today" of these tests (the old suite's `freeze_time`).
pub fn today() -> Date {
    Date::new(2022, 10, 12).unwrap()
}

/// A canned answer.
#[derive(Clone, Debug)]
pub struct Canned {
    pub status: u16,
    pub body: String,
    pub delay: Duration,
}

/// A request the stub received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: String,
}

#[derive(Default)]
struct State {
    routes: HashMap<String, Canned>,
    requests: Vec<Recorded>,
}

/// A stub HTTP API on a loopback port: answers `"{METHOD} {path}"` (query
/// ignored) with what was set, 404 `{}` otherwise, and records every request.
#[derive(Clone)]
pub struct Stub {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Stub {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(answer(&state, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set(&self, method: &str, path: &str, status: u16, body: &serde_json::Value) {
        self.set_delayed(method, path, status, body, Duration::ZERO);
    }

    pub fn set_delayed(
        &self,
        method: &str,
        path: &str,
        status: u16,
        body: &serde_json::Value,
        delay: Duration,
    ) {
        self.state.lock().unwrap().routes.insert(
            format!("{method} {path}"),
            Canned {
                status,
                body: body.to_string(),
                delay,
            },
        );
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().requests.clone()
    }

    pub fn clear_requests(&self) {
        self.state.lock().unwrap().requests.clear();
    }
}

async fn answer(state: &Mutex<State>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    let canned = {
        let mut state = state.lock().unwrap();
        state.requests.push(Recorded {
            method: parts.method.clone(),
            uri: parts.uri.to_string(),
            headers: parts.headers.clone(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        state
            .routes
            .get(&format!("{} {}", parts.method, parts.uri.path()))
            .cloned()
    };
    let canned = canned.unwrap_or(Canned {
        status: 404,
        body: "{}".into(),
        delay: Duration::ZERO,
    });
    if !canned.delay.is_zero() {
        tokio::time::sleep(canned.delay).await;
    }
    let mut response = Response::new(Full::new(Bytes::from(canned.body)));
    *response.status_mut() = StatusCode::from_u16(canned.status).unwrap();
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

/// The secret the stub Notify API's tokens are signed with.
pub const ADMIN_SECRET: &str = "test-admin-secret";
/// The document API's public host, as configured.
pub const PUBLIC_API: &str = "http://test-doc-download-api.com";

/// The ids and key of one test document.
#[derive(Clone, Copy)]
pub struct Ids {
    pub service: Uuid,
    pub document: Uuid,
}

/// An app wired to `stub` for both APIs, with the fixed clock.
pub struct Fixture {
    pub stub: Stub,
    pub app: DownloadApp,
    pub ids: Ids,
    pub key: &'static str,
}

pub async fn fixture() -> Fixture {
    fixture_with(|b| b).await
}

pub async fn fixture_with(
    configure: impl FnOnce(wharf_download::Builder) -> wharf_download::Builder,
) -> Fixture {
    let stub = Stub::start().await;
    let builder = DownloadApp::builder()
        .notify_api(&stub.base(), ADMIN_SECRET)
        .document_api(PUBLIC_API, &stub.base())
        .clock(Clock::fixed(today()))
        .secret_key(b"test secret key")
        .request_timeout(Duration::from_millis(800))
        .connect_timeout(Duration::from_millis(500));
    let app = configure(builder).build().unwrap();
    let ids = Ids {
        service: "d3b3a2a2-1f6e-4c3e-9a52-0e1d2c3b4a59".parse().unwrap(),
        document: "8f0e5c2a-7b4d-4e6f-a1c3-5d7e9f0b2c4d".parse().unwrap(),
    };
    let fixture = Fixture {
        stub,
        app,
        ids,
        key: "1234",
    };
    fixture.service_answers(200, &sample_service("https://sample-service.gov.uk"));
    fixture
}

pub fn sample_service(contact: &str) -> serde_json::Value {
    serde_json::json!({"data": {"name": "Sample Service", "contact_link": contact}})
}

impl Fixture {
    pub fn service_path(&self) -> String {
        format!("/service/{}", self.ids.service)
    }

    pub fn check_path(&self) -> String {
        format!(
            "/services/{}/documents/{}/check",
            self.ids.service, self.ids.document
        )
    }

    pub fn authenticate_path(&self) -> String {
        format!(
            "/services/{}/documents/{}/authenticate",
            self.ids.service, self.ids.document
        )
    }

    pub fn service_answers(&self, status: u16, body: &serde_json::Value) {
        self.stub.set("GET", &self.service_path(), status, body);
    }

    pub fn check_answers(&self, status: u16, body: &serde_json::Value) {
        self.stub.set("GET", &self.check_path(), status, body);
    }

    pub fn authenticate_answers(&self, status: u16, body: &serde_json::Value) {
        self.stub
            .set("POST", &self.authenticate_path(), status, body);
    }

    /// The document's metadata with the given confirmation and days to expiry.
    pub fn document(&self, confirm_email: bool, extension: &str, days_to_expiry: i64) {
        self.check_answers(
            200,
            &serde_json::json!({"document": {
                "direct_file_url": "url",
                "confirm_email": confirm_email,
                "size_in_bytes": 712_099,
                "file_extension": extension,
                "available_until": today().add_days(days_to_expiry).to_string(),
            }}),
        );
    }

    /// `/d/{service}/{document}{suffix}` with `?key=` when given.
    pub fn url(&self, suffix: &str, key: Option<&str>) -> String {
        let base = format!(
            "/d/{}/{}{suffix}",
            self.ids.service.to_base64(),
            self.ids.document.to_base64()
        );
        match key {
            Some(key) => format!("{base}?key={key}"),
            None => base,
        }
    }

    pub async fn get(&self, uri: &str) -> Page {
        send(&self.app, Method::GET, uri, None, &[]).await
    }

    /// GETs the confirm form, then POSTs `email` with its CSRF token and cookie.
    pub async fn submit_email(&self, email: &str) -> Page {
        let form_url = self.url("/confirm-email-address", Some(self.key));
        let form = self.get(&form_url).await;
        assert_eq!(form.status, 200, "{}", form.body);
        let token = form.attribute_of("name=\"csrf_token\"", "value").unwrap();
        let cookie = form.set_cookies()[0].split(';').next().unwrap().to_owned();
        let body = format!("csrf_token={token}&email_address={}", form_encode(email));
        send(
            &self.app,
            Method::POST,
            &form_url,
            Some(body),
            &[("cookie", &cookie)],
        )
        .await
    }
}

pub fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {
                char::from(b).to_string()
            }
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A response, read whole.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

pub async fn send(
    app: &DownloadApp,
    method: Method,
    uri: &str,
    body: Option<String>,
    headers: &[(&str, &str)],
) -> Page {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    if body.is_some() {
        builder = builder.header("content-type", "application/x-www-form-urlencoded");
    }
    let request = builder
        .body(wharf_http::body::full(body.unwrap_or_default()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Page {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Collapses runs of whitespace, as the old suite's `normalize_spaces`.
pub fn normalize(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Text content of HTML: tags dropped, entities decoded, spaces normalised.
pub fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    normalize(
        &out.replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'"),
    )
}

impl Page {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", |v| v.to_str().unwrap())
    }

    pub fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    /// The inner HTML of the first element starting with `open` (e.g. `<h1`).
    pub fn element(&self, open: &str, close: &str) -> Option<String> {
        let start = self.body.find(open)?;
        let after = start + self.body[start..].find('>')? + 1;
        let end = after + self.body[after..].find(close)?;
        Some(self.body[after..end].to_owned())
    }

    pub fn title(&self) -> String {
        text(&self.element("<title", "</title>").unwrap_or_default())
    }

    pub fn h1(&self) -> String {
        text(&self.element("<h1", "</h1>").unwrap_or_default())
    }

    /// The main column's paragraphs, as text.
    pub fn paragraphs(&self) -> Vec<String> {
        let main = self.element("<main", "</main>").unwrap_or_default();
        main.split("<p class=\"govuk-body\">")
            .skip(1)
            .map(|p| text(p.split("</p>").next().unwrap_or_default()))
            .collect()
    }

    /// Links in `<main>` as (href, text).
    pub fn main_links(&self) -> Vec<(String, String)> {
        let main = self.element("<main", "</main>").unwrap_or_default();
        main.split("<a ")
            .skip(1)
            .map(|a| {
                let href = a
                    .split("href=\"")
                    .nth(1)
                    .and_then(|h| h.split('"').next())
                    .unwrap_or_default()
                    .replace("&amp;", "&");
                let inner = a.split_once('>').map(|(_, r)| r).unwrap_or_default();
                (href, text(inner.split("</a>").next().unwrap_or_default()))
            })
            .collect()
    }

    /// Every `href` on the page.
    pub fn hrefs(&self) -> Vec<String> {
        self.body
            .split("href=\"")
            .skip(1)
            .map(|h| {
                h.split('"')
                    .next()
                    .unwrap_or_default()
                    .replace("&amp;", "&")
            })
            .collect()
    }

    /// The value of `attribute` on the first tag containing `marker`.
    pub fn attribute_of(&self, marker: &str, attribute: &str) -> Option<String> {
        let at = self.body.find(marker)?;
        let start = self.body[..at].rfind('<')?;
        let end = at + self.body[at..].find('>')?;
        let tag = &self.body[start..end];
        let needle = format!(" {attribute}=\"");
        let from = tag.find(&needle)? + needle.len();
        Some(tag[from..].split('"').next()?.replace("&amp;", "&"))
    }

    pub fn has_class(&self, class: &str) -> bool {
        self.body.contains(&format!("class=\"{class}\""))
            || self.body.contains(&format!("{class} "))
            || self.body.contains(&format!(" {class}\""))
    }
}
