//! `frontend` when the Notify API and the document download API fail: down,
//! slow, answering garbage, restarting. The user must get the right page with
//! the right status, quickly, and the process must keep serving.

use std::time::{Duration, Instant};

use super::raw::{get, Response};
use super::stub::{Reply, Seen, Stub};
use super::{api_env, document_path, frontend, Blackhole};
use crate::support::Process;

const KEY: &str = "c2VjcmV0LWRvY3VtZW50LWtleQ";
pub const SERVICE_JSON: &str =
    r#"{"data":{"name":"Test Service","contact_link":"https://example.gov.uk/contact"}}"#;

pub fn document_json(confirm_email: bool) -> String {
    format!(
        r#"{{"document":{{"direct_file_url":"http://files.example/services/s/documents/d.txt?key={KEY}","confirm_email":{confirm_email},"size_in_bytes":1024,"file_extension":"txt","available_until":"2099-12-31"}}}}"#
    )
}

/// The Notify API's service answer, and `check` for the document API's
/// `/check`; anything else 404.
pub fn api(seen: &Seen, check: impl FnOnce() -> Reply) -> Reply {
    let path = seen.path();
    if path.starts_with("/service/") {
        Reply::json(200, SERVICE_JSON)
    } else if path.ends_with("/check") {
        check()
    } else {
        Reply::json(404, r#"{"result":"error","message":"No result found"}"#)
    }
}

const PROBLEM: &str = "problem with the service";

/// (name, the `/check` answer, expected status, expected page text).
type AnswerCase = (
    &'static str,
    Box<dyn Fn() -> Reply + Send + Sync>,
    u16,
    &'static str,
);

/// (name, the `/check` answer, acceptable statuses).
type FailureCase = (&'static str, fn() -> Reply, &'static [u16]);

fn landing(frontend: &Process) -> (Response, Duration) {
    let started = Instant::now();
    let response = get(frontend.addr(), &document_path(KEY), &[]);
    (response, started.elapsed())
}

fn assert_still_serving(frontend: &Process) {
    assert_eq!(get(frontend.addr(), "/_status", &[]).status, 200);
}

#[test]
fn api_answers_map_to_404_and_410_pages() {
    let api_stub = Stub::start(|seen| api(seen, || Reply::json(200, &document_json(false))));
    let frontend = frontend(&api_env(&api_stub));
    let (ok, _) = landing(&frontend);
    assert_eq!(ok.status, 200, "{}", ok.body_text());
    assert!(ok.body_text().contains("You have a file to download"));

    let cases: Vec<AnswerCase> = vec![
        (
            "check 404",
            Box::new(|| Reply::json(404, r#"{"error":"not found"}"#)),
            404,
            "Page not found",
        ),
        (
            "check 403",
            Box::new(|| Reply::json(403, r#"{"error":"Forbidden"}"#)),
            404,
            "Page not found",
        ),
        (
            "check 400 wrong key",
            Box::new(|| Reply::json(400, r#"{"error":"Invalid decryption key"}"#)),
            404,
            "Page not found",
        ),
        (
            "check 410",
            Box::new(|| Reply::json(410, r#"{"error":"gone"}"#)),
            410,
            "No longer available",
        ),
        (
            "document null",
            Box::new(|| Reply::json(200, r#"{"document":null}"#)),
            410,
            "No longer available",
        ),
    ];
    for (name, check, status, text) in cases {
        api_stub.set(move |seen| api(seen, &check));
        let (response, elapsed) = landing(&frontend);
        assert_eq!(response.status, status, "{name}: {}", response.body_text());
        assert!(response.body_text().contains(text), "{name}");
        assert!(elapsed < Duration::from_secs(2), "{name}: {elapsed:?}");
    }
    // A service the Notify API does not know is a 404 too.
    api_stub.set(|seen| {
        if seen.path().starts_with("/service/") {
            Reply::json(404, r#"{"result":"error","message":"No result found"}"#)
        } else {
            Reply::json(200, &document_json(false))
        }
    });
    assert_eq!(landing(&frontend).0.status, 404);
    assert_still_serving(&frontend);
}

/// Every way of not answering, each within the upstream timeout, each the
/// "problem with the service" page with a 5xx status.
#[test]
fn api_down_slow_or_garbage_is_the_error_page_within_the_timeout() {
    let api_stub = Stub::start(|seen| api(seen, || Reply::json(200, &document_json(false))));
    let frontend = frontend(&api_env(&api_stub));
    assert_eq!(landing(&frontend).0.status, 200);

    let cases: [FailureCase; 7] = [
        (
            "slow (no answer within the timeout)",
            || Reply::delay(Duration::from_secs(5), Reply::json(200, "{}")),
            &[504],
        ),
        ("silent", || Reply::Hang, &[504]),
        (
            "head then a stalled body",
            || Reply::Stall {
                status: 200,
                length: 500,
                sent: b"{\"document\":".to_vec(),
            },
            &[504],
        ),
        (
            "not HTTP",
            || Reply::Raw(b"\x16\x03\x01garbage that is not HTTP\r\n\r\n".to_vec()),
            &[500, 502],
        ),
        ("connection closed", || Reply::Close, &[500, 502]),
        (
            "JSON without the fields",
            || Reply::json(200, r#"{"document":{"unexpected":true}}"#),
            &[500, 502],
        ),
        (
            "2 MiB body",
            || Reply::text(200, &"x".repeat(2 * 1024 * 1024)),
            &[500, 502],
        ),
    ];
    for (name, reply, statuses) in cases {
        api_stub.set(move |seen| api(seen, reply));
        let (response, elapsed) = landing(&frontend);
        assert!(
            statuses.contains(&response.status),
            "{name}: {} {}",
            response.status,
            response.body_text()
        );
        let body = response.body_text();
        assert!(body.contains(PROBLEM), "{name}: {body}");
        assert!(
            !body.contains("garbage") && !body.contains("Bad Gateway from"),
            "{name}"
        );
        // Upstream timeout 1 s; allow for a slow machine.
        assert!(elapsed < Duration::from_millis(2500), "{name}: {elapsed:?}");
    }

    // The API's host gone altogether (nothing listening).
    drop(api_stub);
    let (response, elapsed) = landing(&frontend);
    assert!(
        [500, 502].contains(&response.status),
        "down: {}",
        response.status
    );
    assert!(response.body_text().contains(PROBLEM));
    assert!(elapsed < Duration::from_millis(2500), "down: {elapsed:?}");
    assert_still_serving(&frontend);
    // The page is the same whatever the failure; the logs say which.
    let logs = frontend.stop();
    assert!(logs.contains("Upstream API timed out"), "{logs}");
    assert!(logs.contains("Upstream API call failed"), "{logs}");
}

/// Issue 10: a dependency that is down or answers garbage is a 502 (Bad
/// Gateway), so monitoring tells a dependency outage from a bug of ours.
#[test]
fn api_down_or_garbage_is_502() {
    let api_stub = Stub::start(|seen| api(seen, || Reply::Close));
    let frontend = frontend(&api_env(&api_stub));
    assert_eq!(landing(&frontend).0.status, 502, "connection closed");
    api_stub.set(|seen| api(seen, || Reply::Raw(b"garbage\r\n\r\n".to_vec())));
    assert_eq!(landing(&frontend).0.status, 502, "not HTTP");
    drop(api_stub);
    assert_eq!(landing(&frontend).0.status, 502, "down");
}

/// A 200 whose body is not the API's JSON (an HTML page from a proxy in
/// between, an empty object) says nothing about the document: it is the
/// error page, not "No longer available" with 410 Gone.
#[test]
fn api_garbage_200_is_an_error_not_gone() {
    let api_stub = Stub::start(|seen| {
        api(seen, || {
            Reply::text(200, "<html>502 Bad Gateway from some proxy</html>")
        })
    });
    let frontend = frontend(&api_env(&api_stub));
    let (response, _) = landing(&frontend);
    assert!(
        [500, 502].contains(&response.status),
        "not JSON: {}",
        response.status
    );
    assert!(response.body_text().contains(PROBLEM));
    api_stub.set(|seen| api(seen, || Reply::json(200, "{}")));
    let (response, _) = landing(&frontend);
    assert!(
        [500, 502].contains(&response.status),
        "no document key: {}",
        response.status
    );
}

/// The connect timeout is a timeout: the user gets the 504 page, as for a
/// slow answer (docs/download.md, `UpstreamError::Timeout`).
#[test]
fn api_connect_timeout_is_504() {
    let blackhole = Blackhole::new();
    let mut env = api_env(&Stub::start(|_| Reply::Close));
    for (name, value) in &mut env {
        if name.contains("HOST_NAME") {
            *value = blackhole.base();
        }
        // Only the connect timeout (1 s) can end the wait in time: the
        // whole call's timeout is far longer.
        if *name == "WHARF_DOWNLOAD_UPSTREAM_TIMEOUT_SECONDS" {
            *value = "10".to_owned();
        }
    }
    let frontend = frontend(&env);
    let (response, elapsed) = landing(&frontend);
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    assert!(response.body_text().contains(PROBLEM));
    assert_eq!(response.status, 504);
}

/// The connect timeout bounds a hung connect: whatever the status, the page
/// comes back within it (`WHARF_DOWNLOAD_CONNECT_TIMEOUT_SECONDS=1`).
#[test]
fn api_connect_that_hangs_is_cut_by_the_connect_timeout() {
    let blackhole = Blackhole::new();
    let stub = Stub::start(|_| Reply::Close);
    let mut env = api_env(&stub);
    for (name, value) in &mut env {
        if name.contains("HOST_NAME") {
            *value = blackhole.base();
        }
        // Only the connect timeout (1 s) can end the wait in time: the
        // whole call's timeout is far longer.
        if *name == "WHARF_DOWNLOAD_UPSTREAM_TIMEOUT_SECONDS" {
            *value = "10".to_owned();
        }
    }
    let frontend = frontend(&env);
    let (response, elapsed) = landing(&frontend);
    assert!(response.status >= 500, "{}", response.status);
    assert!(response.body_text().contains(PROBLEM));
    assert!(elapsed < Duration::from_millis(2500), "{elapsed:?}");
    assert_still_serving(&frontend);
}

/// The API restarts (its keep-alive connections die with it): requests
/// during the outage get the error page, and once it is back no request
/// fails on a dead pooled connection.
#[test]
fn api_restart_loses_no_request_once_it_is_back() {
    let api_stub = Stub::start(|seen| api(seen, || Reply::json(200, &document_json(false))));
    let frontend = frontend(&api_env(&api_stub));
    // Fill the pool with keep-alive connections.
    for _ in 0..10 {
        assert_eq!(landing(&frontend).0.status, 200);
    }
    api_stub.set_up(false);
    let (down, _) = landing(&frontend);
    assert!(down.status >= 500 && down.body_text().contains(PROBLEM));
    api_stub.set_up(true);
    let mut failures = Vec::new();
    for _ in 0..30 {
        let (response, _) = landing(&frontend);
        if response.status != 200 {
            failures.push(response.status);
        }
    }
    assert!(
        failures.is_empty(),
        "failed after the restart: {failures:?}"
    );
}
