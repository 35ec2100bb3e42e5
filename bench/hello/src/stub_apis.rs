//! `stub-apis`: the two upstream APIs of the Document Download pages, stubbed for
//! the benchmark harness's production-path scenario (`bench/run --scenarios recipient`).
//!
//! Both stacks under test (the seed's nginx + gunicorn + Flask, and wharf's edge +
//! frontend) call the same instance of this server, so what differs between them is
//! how they call it, never what it answers. It answers, in the real APIs' shapes:
//!
//! - the Notify API: `GET /service/{uuid}` → `{"data": {"name": "Sample Service",
//!   "contact_link": "https://www.gov.uk/contact", …}}` (the Bearer token is not
//!   checked);
//! - the document download API: `GET /services/{uuid}/documents/{uuid}/check?key=K`
//!   → `{"document": {direct_file_url, confirm_email, size_in_bytes, file_extension,
//!   filename, available_until}}`, with `available_until` 14 days ahead
//!   (`YYYY-MM-DD`); 400 `Missing decryption key` without `key`. A document whose
//!   id starts with the hex digit `c` needs email confirmation (`"confirm_email":
//!   true`), any other does not;
//! - `POST /services/{uuid}/documents/{uuid}/authenticate` with `{"key": …,
//!   "email_address": …}` → `{"signed_data": …, "direct_file_url": …}`; 400 `No
//!   email address` when the body has no address (any address is accepted);
//! - `GET /_status` and `GET /services/_status` → `{"status": "ok"}` (the harness's
//!   readiness probe); anything else → 404 `{"error": "Not found"}`.
//!
//! `direct_file_url` points at this server itself (the request's `Host`), so no
//! page ever links outside loopback.
//!
//! Configuration: `PORT` (listen on `127.0.0.1:$PORT`, default `7102`),
//! `WORKER_THREADS` (tokio worker threads, default one per core), and
//! `--delay-ms N` or `STUB_DELAY_MS=N`: answer `/check` N milliseconds late (a slow
//! dependency; the timer does not hold a thread).

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use wharf_bench_hello::{env_parse, runtime, BoxResult};

/// The port used when `PORT` is not set.
const DEFAULT_PORT: u16 = 7102;

/// How long documents stay available, as the API's default retention.
const RETENTION_DAYS: u64 = 14;

/// The Notify API's `GET /service/{id}` answer after `{"data": {"id": "<uuid>"`
/// (the service schema's fields, with the two the pages read).
const SERVICE_TAIL: &str = r#","name":"Sample Service","active":true,"restricted":false,"research_mode":false,"contact_link":"https://www.gov.uk/contact","email_from":"sample.service","prefix_sms":true,"count_as_live":true,"go_live_at":"2024-01-15 10:00:00.000000","organisation_type":"central","organisation":"7f2e9b4c-1d3a-4e5f-8a6b-9c0d1e2f3a4b","permissions":["email","sms","letter","upload_document","international_sms"],"email_message_limit":250000,"sms_message_limit":250000,"letter_message_limit":20000,"rate_limit":3000,"message_limit":250000,"volume_email":0,"volume_sms":0,"volume_letter":0,"consent_to_research":null,"billing_contact_email_addresses":null,"billing_contact_names":null,"billing_reference":null,"purchase_order_number":null,"notes":null,"created_by":"0b5e6f7a-8c9d-4e0f-a1b2-c3d4e5f6a7b8","letter_branding":null,"email_branding":null,"inbound_api":[],"service_callback_api":[],"custom_email_sender_name":null,"email_sender_local_part":"sample.service","has_active_go_live_request":false}}"#;

fn main() -> BoxResult<()> {
    let port = env_parse::<u16>("PORT")?.unwrap_or(DEFAULT_PORT);
    let mut delay_ms = env_parse::<u64>("STUB_DELAY_MS")?.unwrap_or(0);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = match arg.split_once('=') {
            Some(("--delay-ms", value)) => value.to_owned(),
            None if arg == "--delay-ms" => args.next().ok_or("--delay-ms needs a value")?,
            _ => {
                return Err(
                    format!("unknown argument {arg:?} (usage: stub-apis [--delay-ms N])").into(),
                )
            }
        };
        delay_ms = value
            .parse()
            .map_err(|e| format!("--delay-ms {value:?}: {e}"))?;
    }

    runtime()?.block_on(serve(port, Duration::from_millis(delay_ms)))
}

/// Accepts connections on `127.0.0.1:port` forever, one task per connection.
async fn serve(port: u16, delay: Duration) -> BoxResult<()> {
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
    eprintln!(
        "stub-apis listening on http://{} (/check delayed {} ms)",
        listener.local_addr()?,
        delay.as_millis()
    );
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                eprintln!("stub-apis: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, delay));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("stub-apis: connection from {peer}: {e}");
            }
        });
    }
}

/// A JSON response.
fn json(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Whether `text` is a hyphenated UUID (8-4-4-4-12 hex digits).
fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

/// The value of `name` in a query string (not percent-decoded: only its
/// presence matters here).
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

async fn answer(
    request: Request<hyper::body::Incoming>,
    delay: Duration,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    let host = request
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = request.method().clone();
    let response = match (&method, segments.as_slice()) {
        (&Method::GET, ["_status"] | ["services", "_status"]) => {
            json(StatusCode::OK, r#"{"status":"ok"}"#.to_owned())
        }
        (&Method::GET, ["service", id]) if is_uuid(id) => json(
            StatusCode::OK,
            format!(r#"{{"data":{{"id":"{id}"{SERVICE_TAIL}"#),
        ),
        (&Method::GET, ["services", service, "documents", document, "check"])
            if is_uuid(service) && is_uuid(document) =>
        {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            match query_value(&query, "key") {
                None => json(
                    StatusCode::BAD_REQUEST,
                    r#"{"error":"Missing decryption key"}"#.to_owned(),
                ),
                Some(key) => {
                    let confirm = document.starts_with(['c', 'C']);
                    json(
                        StatusCode::OK,
                        format!(
                            r#"{{"document":{{"direct_file_url":"http://{host}/services/{service}/documents/{document}.pdf?key={key}","confirm_email":{confirm},"size_in_bytes":1234,"file_extension":"pdf","filename":"report.pdf","available_until":"{}"}}}}"#,
                            date_in(RETENTION_DAYS)
                        ),
                    )
                }
            }
        }
        (&Method::POST, ["services", service, "documents", document, "authenticate"])
            if is_uuid(service) && is_uuid(document) =>
        {
            let (service, document) = ((*service).to_owned(), (*document).to_owned());
            let body = Limited::new(request.into_body(), 64 * 1024)
                .collect()
                .await
                .map(http_body_util::Collected::to_bytes)
                .unwrap_or_default();
            let body = String::from_utf8_lossy(&body);
            if body.contains("\"email_address\"") && body.contains('@') {
                json(
                    StatusCode::OK,
                    format!(
                        r#"{{"signed_data":"eyJkb2N1bWVudF9pZCI6ICJzdHViIn0.stub-signature","direct_file_url":"http://{host}/services/{service}/documents/{document}.pdf"}}"#
                    ),
                )
            } else {
                json(
                    StatusCode::BAD_REQUEST,
                    r#"{"error":"No email address"}"#.to_owned(),
                )
            }
        }
        _ => json(StatusCode::NOT_FOUND, r#"{"error":"Not found"}"#.to_owned()),
    };
    Ok(response)
}

/// The UTC date `days` days from now, `YYYY-MM-DD`.
fn date_in(days: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days(now / 86_400 + days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Days since 1970-01-01 to a (year, month, day) in the proleptic Gregorian
/// calendar (Howard Hinnant's `civil_from_days`, for days on or after 1970).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_454), (2026, 1, 1));
    }

    #[test]
    fn uuids_and_keys() {
        assert!(is_uuid("c0ffee00-1111-4222-8333-444455556666"));
        assert!(!is_uuid("c0ffee00111142228333444455556666"));
        assert_eq!(query_value("a=1&key=abc", "key"), Some("abc"));
        assert_eq!(query_value("key=", "key"), None);
    }
}
