//! The existing service's test suite, case for case, against stub Notify and
//! document APIs served over real HTTP by the test; plus the fixes listed in
//! docs/compatibility.md, snapshots of each page, and the offline flow.

mod support;

use std::time::Duration;

use http::Method;
use serde_json::json;
use support::{fixture, fixture_with, normalize, sample_service, send, today, Fixture, PUBLIC_API};
use wharf_download::{verify_notify_api_token, Clock, DownloadApp};

const VIEWS: [(&str, &str); 4] = [
    ("", "GET"),
    ("/download", "GET"),
    ("/confirm-email-address", "GET"),
    ("/confirm-email-address", "POST"),
];

/// The B3 ids `open` sends: DDF's tests mock notifications-utils'
/// `get_onwards_request_headers` and assert the API calls carry what it
/// returns; wharf's onward headers are the request's trace (see
/// `b3_ids_are_made_and_sent_as_notifications_utils_does`).
const ONWARD_TRACE: &str = "463ac35c9f6413ad48485a3953bb6124";
const ONWARD_SPAN: &str = "a2fb4a1d1a96d312";

#[allow(clippy::unwrap_used)] // a test helper: a bad method name is a failed test
async fn open(f: &Fixture, suffix: &str, method: &str, key: Option<&str>) -> support::Page {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let body = (method == Method::POST).then(|| "email_address=me%40example.com".to_owned());
    let trace = [("x-b3-traceid", ONWARD_TRACE), ("x-b3-spanid", ONWARD_SPAN)];
    send(&f.app, method, &f.url(suffix, key), body, &trace).await
}

/// DDF's `Test` config (`app/config.py`): the document API's public host is
/// `https://download.test-doc-download-api.gov.uk`, and `HTTP_PROTOCOL` is
/// `http` (no `Secure` cookie). Both APIs are the stub.
#[allow(clippy::unwrap_used)]
async fn ddf_fixture() -> Fixture {
    let f = fixture().await;
    let app = DownloadApp::builder()
        .notify_api(&f.stub.base(), support::ADMIN_SECRET)
        .document_api(DDF_PUBLIC_API, &f.stub.base())
        .clock(Clock::fixed(today()))
        .secret_key(b"test secret key")
        .build()
        .unwrap();
    Fixture { app, ..f }
}

/// DDF's `DOCUMENT_DOWNLOAD_API_HOST_NAME` in its `Test` config.
const DDF_PUBLIC_API: &str = "https://download.test-doc-download-api.gov.uk";

/// The onward headers on one recorded API call: the request's trace id, and
/// its span as the call's parent.
fn assert_onward_headers(request: &support::Recorded, case: &str) {
    assert_eq!(request.headers["x-b3-traceid"], ONWARD_TRACE, "{case}");
    assert_eq!(request.headers["x-b3-parentspanid"], ONWARD_SPAN, "{case}");
}

/// DDF `test_status`.
#[tokio::test]
async fn status_answers_without_calling_any_api() {
    let f = fixture().await;
    let page = f.get("/_status").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&page.body).unwrap(),
        json!({"status": "ok"})
    );
    assert!(f.stub.requests().is_empty());
}

/// DDF `test_security_policy_redirects_to_policy` (both URLs).
#[tokio::test]
async fn security_policy_redirects_to_policy() {
    let f = fixture().await;
    for url in ["/security.txt", "/.well-known/security.txt"] {
        let page = f.get(url).await;
        assert_eq!(page.status, 302, "{url}");
        assert_eq!(
            page.header("location"),
            "https://vdp.cabinetoffice.gov.uk/.well-known/security.txt"
        );
        assert_eq!(page.header("x-frame-options"), "DENY");
    }
}

/// DDF `test_404_if_no_key_in_query_string` (every view and method), and an
/// empty key as well.
#[tokio::test]
async fn not_found_if_no_key_in_query_string() {
    let f = fixture().await;
    f.document(false, "pdf", 5);
    for (suffix, method) in VIEWS {
        for key in [None, Some("")] {
            let page = open(&f, suffix, method, key).await;
            assert_eq!(page.status, 404, "{method} {suffix} {key:?}");
            assert_eq!(page.title(), "Page not found – GOV.UK");
            assert_eq!(page.h1(), "Page not found");
        }
    }
    assert!(f.stub.requests().is_empty(), "no API call without a key");
}

/// DDF `test_notifications_api_error` (the Notify API answers 404, every view
/// and method), and the other statuses `_get_service_or_raise_error` passes on.
#[tokio::test]
async fn notifications_api_errors() {
    let f = fixture().await;
    f.document(false, "pdf", 5);
    for (api_status, page_status, heading) in [
        (404, 404, "Page not found"),
        // DDF `_get_service_or_raise_error` aborts with the API's status:
        // `error/400.html` and `error/410.html` are "Page not found".
        (400, 400, "Page not found"),
        (410, 410, "Page not found"),
        (401, 401, "Sorry, there’s a problem with the service"),
        (403, 403, "Sorry, there’s a problem with the service"),
        (500, 500, "Sorry, there’s a problem with the service"),
        // Any other status: Flask's `errorhandler(Exception)` page, 500.
        (429, 500, "Sorry, there’s a problem with the service"),
        (502, 500, "Sorry, there’s a problem with the service"),
    ] {
        f.service_answers(api_status, &json!({"result": "error"}));
        for (suffix, method) in VIEWS {
            f.stub.clear_requests();
            let page = open(&f, suffix, method, Some(f.key)).await;
            assert!(
                !f.stub.requests().iter().any(|r| r.uri.contains("/check")),
                "no document call after the service failed"
            );
            assert_eq!(page.status, page_status, "{api_status} {method} {suffix}");
            assert_eq!(page.h1(), heading);
            assert_eq!(page.title(), format!("{heading} – GOV.UK"));
            if heading == "Page not found" {
                // The generic page (`error/404.html` and its twins): no service.
                assert_eq!(
                    page.paragraphs(),
                    [
                        "If you selected a link in an email, contact the sender to tell them you cannot download your file.",
                        "If you typed the web address, check it is correct.",
                        "If you pasted the web address, check you copied the entire address.",
                    ],
                    "{api_status} {method} {suffix}"
                );
            }
        }
    }
    let service_problem = {
        f.service_answers(403, &json!({}));
        open(&f, "", "GET", Some(f.key)).await
    };
    assert!(service_problem
        .body
        .contains("mailto:notify-support@digital.cabinet-office.gov.uk"));
}

/// DDF's own 404 for a document the API refuses or does not know
/// (`views/file-unavailable.html` with `status_code == 404`): "Page not
/// found", the three hints, and the service's contact.
fn assert_contextual_not_found(page: &support::Page, case: &str) {
    assert_eq!(page.status, 404, "{case}: {}", page.body);
    assert_eq!(page.title(), "Page not found – GOV.UK", "{case}");
    assert_eq!(page.h1(), "Page not found", "{case}");
    // "ensure this is our contextualized 404 page"
    assert!(
        page.paragraphs()
            .iter()
            .any(|p| p.contains("Sample Service")),
        "{case}: {:?}",
        page.paragraphs()
    );
    assert_eq!(
        page.paragraphs(),
        [
            "If you selected a link in an email, the file may have expired or been deleted.",
            "If you typed the web address, check it is correct.",
            "If you pasted the web address, check you copied the entire address.",
            "If you have any questions, contact Sample Service.",
        ],
        "{case}"
    );
    let (href, text) = &page.main_links()[0];
    assert_eq!(text, "contact Sample Service", "{case}");
    assert_eq!(href, "https://sample-service.gov.uk", "{case}");
}

/// The one `/check` call a document page makes, after the service.
fn assert_one_check(f: &Fixture, case: &str) {
    let requests = f.stub.requests();
    let checks: Vec<_> = requests
        .iter()
        .filter(|r| r.uri.starts_with("/services/"))
        .collect();
    assert_eq!(checks.len(), 1, "{case}: {requests:?}");
    assert_eq!(checks[0].method, Method::GET, "{case}");
    assert_eq!(
        checks[0].uri,
        format!("{}?key=1234", f.check_path()),
        "{case}"
    );
    assert_onward_headers(checks[0], case);
}

/// DDF `test_when_document_is_unavailable`: `/check` answers 404.
#[tokio::test]
async fn when_document_is_unavailable() {
    let f = fixture().await;
    f.check_answers(404, &json!({"Error": "Nope"}));
    for (suffix, method) in VIEWS {
        f.stub.clear_requests();
        let page = open(&f, suffix, method, Some(f.key)).await;
        let case = format!("{method} {suffix}");
        assert_contextual_not_found(&page, &case);
        assert_one_check(&f, &case);
    }
}

/// DDF's 410 (`views/file-unavailable.html` with `status_code == 410`): "No
/// longer available", the service named, and its contact.
fn assert_gone(page: &support::Page, case: &str) {
    assert_eq!(page.status, 410, "{case}: {}", page.body);
    assert_eq!(page.title(), "No longer available – GOV.UK", "{case}");
    assert_eq!(page.h1(), "No longer available", "{case}");
    assert_eq!(
        page.paragraphs(),
        [
            "The file Sample Service sent you has expired or been deleted.",
            "If you have any questions, contact Sample Service.",
        ],
        "{case}"
    );
    let (href, text) = &page.main_links()[0];
    assert_eq!(text, "contact Sample Service", "{case}");
    assert_eq!(href, "https://sample-service.gov.uk", "{case}");
}

/// DDF `test_when_document_is_unavailable_old_api` (`{"document": null}`,
/// every view) and `test_download_document_returns_file_unavailable_if_file_past_expiry_date`
/// (`/check` answers 410).
#[tokio::test]
async fn when_document_is_gone() {
    let f = fixture().await;
    for answer in [
        (200, json!({"document": null})),
        (410, json!({"Error": "Gone"})),
    ] {
        f.check_answers(answer.0, &answer.1);
        for (suffix, method) in VIEWS {
            f.stub.clear_requests();
            let page = open(&f, suffix, method, Some(f.key)).await;
            let case = format!("{} {method} {suffix}", answer.0);
            assert_gone(&page, &case);
            assert_one_check(&f, &case);
        }
    }
}

/// DDF `test_download_document_returns_file_unavailable_if_file_past_expiry_date_old_api`:
/// `available_until` yesterday.
#[tokio::test]
async fn expired_documents_are_no_longer_available() {
    let f = fixture().await;
    f.document(false, "pdf", -1);
    for (suffix, method) in VIEWS {
        f.stub.clear_requests();
        let page = open(&f, suffix, method, Some(f.key)).await;
        let case = format!("{method} {suffix}");
        assert_gone(&page, &case);
        assert_one_check(&f, &case);
    }
    f.document(false, "pdf", 0);
    assert_eq!(
        open(&f, "", "GET", Some(f.key)).await.status,
        200,
        "expires today: still available"
    );
}

/// DDF `test_download_document_succeeds_if_missing_available_until`: with
/// `available_until: null` the landing, confirm (a redirect, as no
/// confirmation is needed) and download views answer below 400, after one
/// `/check` carrying the onward headers.
#[tokio::test]
async fn download_document_succeeds_if_missing_available_until() {
    let f = fixture().await;
    f.check_answers(
        200,
        &json!({"document": {"direct_file_url": "url", "confirm_email": false, "size_in_bytes": 712_099, "file_extension": "pdf", "available_until": null}}),
    );
    for (suffix, status) in [
        ("", 200),
        ("/confirm-email-address", 302),
        ("/download", 200),
    ] {
        f.stub.clear_requests();
        let page = open(&f, suffix, "GET", Some(f.key)).await;
        assert!(page.status < 400, "{suffix}: {}", page.body);
        assert_eq!(page.status, status, "{suffix}");
        assert_one_check(&f, suffix);
    }
}

/// DDF `test_404_hides_incorrect_credentials`: every view × 400/403/404 ×
/// the three error bodies is DDF's contextual 404, after one `/check`.
#[tokio::test]
async fn not_found_hides_incorrect_credentials() {
    let f = fixture().await;
    for status in [400, 404, 403] {
        for body in [
            json!({"error": "Missing decryption key"}),
            json!({"error": "Invalid decryption key"}),
            json!({"error": "Forbidden"}),
        ] {
            f.check_answers(status, &body);
            for (suffix, method) in VIEWS {
                f.stub.clear_requests();
                let page = open(&f, suffix, method, Some(f.key)).await;
                let case = format!("{status} {body} {method} {suffix}");
                assert_contextual_not_found(&page, &case);
                assert_one_check(&f, &case);
            }
        }
    }
    f.check_answers(404, &json!({"error": "Not found"}));
    assert_contextual_not_found(&open(&f, "", "GET", Some(f.key)).await, "404");
    // Any other 400 is `raise_for_status` → 500, as any other error status.
    f.check_answers(400, &json!({"error": "Something else"}));
    assert_eq!(open(&f, "", "GET", Some(f.key)).await.status, 500);
    f.check_answers(502, &json!({}));
    assert_eq!(open(&f, "", "GET", Some(f.key)).await.status, 500);
}

/// DDF `test_landing_page_creates_link_for_document`.
/// The answers document-download-api documents (alphagov/document-download-api
/// `app/download/views.py` and `app/utils/store.py`, f881d9d), with its exact
/// bodies, each shown as DDF's `_get_document_metadata` and
/// `_authenticate_access_to_document` make of it.
#[tokio::test]
async fn the_document_apis_real_answers_are_shown_as_ddf_shows_them() {
    let f = fixture().await;
    // `/check` 200: the metadata, with `filename` (DDF ignores it) and an
    // `available_until` that may be null.
    f.check_answers(
        200,
        &json!({"document": {"direct_file_url": "https://download.example/services/s/documents/d.pdf?key=k", "confirm_email": false, "size_in_bytes": 712_099, "file_extension": "pdf", "filename": "letter.pdf", "available_until": "2022-10-19"}}),
    );
    let page = open(&f, "/download", "GET", Some(f.key)).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.main_links()[0],
        (
            "https://download.example/services/s/documents/d.pdf?key=k".to_owned(),
            "Download this PDF (0.7MB) to your device".to_owned()
        )
    );
    // The key is not there or not base64, the document is blocked or not
    // there, or S3 refuses the key (`DocumentStoreError(e.response["Error"])`,
    // 400 with the boto error as text): DDF's contextual 404.
    for (status, error) in [
        (400, "Missing decryption key"),
        (400, "Invalid decryption key"),
        (400, "{'Code': '403', 'Message': 'Forbidden'}"),
        (403, "Access to the document has been blocked"),
        (404, "The requested document could not be found"),
    ] {
        f.check_answers(status, &json!({ "error": error }));
        for (suffix, method) in VIEWS {
            f.stub.clear_requests();
            let page = open(&f, suffix, method, Some(f.key)).await;
            let case = format!("{status} {error} {method} {suffix}");
            assert_contextual_not_found(&page, &case);
            assert_one_check(&f, &case);
        }
    }
    // Expired or deleted: DDF's 410.
    f.check_answers(
        410,
        &json!({"error": "The document is no longer available"}),
    );
    for (suffix, method) in VIEWS {
        assert_gone(
            &open(&f, suffix, method, Some(f.key)).await,
            &format!("{method} {suffix}"),
        );
    }
    // Any other store error is a 400 DDF does not recognise: 500.
    f.check_answers(
        400,
        &json!({"error": "{'Code': 'SlowDown', 'Message': 'Please reduce your request rate.'}"}),
    );
    let page = open(&f, "", "GET", Some(f.key)).await;
    assert_eq!(page.status, 500);
    assert_eq!(page.h1(), "Sorry, there’s a problem with the service");

    // `/authenticate`: every 400 the API sends and its 403 are the
    // wrong-address form error; 429 (with `Retry-After`) the 429 page; any
    // other status DDF's `raise_for_status`, a 500.
    f.document(true, "pdf", 5);
    for error in [
        "Missing decryption key",
        "Invalid decryption key",
        "No email address",
        "Invalid email address",
    ] {
        f.authenticate_answers(400, &json!({ "error": error }));
        let page = f.submit_email("me@example.com").await;
        assert_eq!(page.status, 400, "{error}");
        assert!(
            page.body
                .contains("This is not the email address the file was sent to."),
            "{error}"
        );
    }
    f.authenticate_answers(403, &json!({"error": "Authentication failure"}));
    assert_eq!(f.submit_email("me@example.com").await.status, 400);
    f.authenticate_answers(
        429,
        &json!({"error": "Too many requests - more than 50 in the last 300 seconds"}),
    );
    let page = f.submit_email("me@example.com").await;
    assert_eq!(page.status, 429);
    assert_eq!(page.h1(), "Cannot access document");
    for status in [404, 500] {
        f.authenticate_answers(status, &json!({"error": "Internal server error"}));
        let page = f.submit_email("me@example.com").await;
        assert_eq!(page.status, 500, "{status}");
        assert_eq!(page.h1(), "Sorry, there’s a problem with the service");
        assert!(page
            .set_cookies()
            .iter()
            .all(|c| !c.starts_with("document_access")));
    }
    // A 200 without the fields DDF reads (`KeyError`): 500, no cookie.
    f.authenticate_answers(200, &json!({"signed_data": "blah"}));
    let page = f.submit_email("me@example.com").await;
    assert_eq!(page.status, 500);
    assert!(page
        .set_cookies()
        .iter()
        .all(|c| !c.starts_with("document_access")));
}

/// Metadata without `confirm_email` (an older document-download-api): DDF's
/// `landing` logs it and links to the download page, and the download page
/// shows the file; its `confirm_email_address` reads
/// `metadata["confirm_email"]` and fails with a 500. wharf treats the
/// missing field as `false` there too and redirects to the download page
/// (docs/compatibility.md).
#[tokio::test]
async fn metadata_without_confirm_email_needs_no_confirmation() {
    let f = fixture().await;
    f.check_answers(
        200,
        &json!({"document": {"direct_file_url": "url", "size_in_bytes": 712_099, "file_extension": "pdf", "available_until": "2022-10-19"}}),
    );
    let landing = f.get(&f.url("", Some(f.key))).await;
    assert_eq!(landing.status, 200);
    assert!(landing
        .main_links()
        .contains(&(f.url("/download", Some("1234")), "Continue".to_owned())));
    assert_eq!(f.get(&f.url("/download", Some(f.key))).await.status, 200);
    let confirm = f.get(&f.url("/confirm-email-address", Some(f.key))).await;
    assert_eq!(confirm.status, 302);
    assert_eq!(confirm.header("location"), f.url("/download", Some(f.key)));
}

#[tokio::test]
async fn landing_page_creates_link_for_document() {
    let f = fixture().await;
    f.document(false, "pdf", 5);
    let page = f.get(&f.url("", Some(f.key))).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.title(), "You have a file to download – GOV.UK");
    assert_eq!(page.h1(), "You have a file to download");
    assert_eq!(
        page.paragraphs(),
        [
            "Sample Service sent you a file to download.",
            "Continue",
            "If you have any questions, contact Sample Service."
        ]
    );
    let continue_link = page
        .main_links()
        .into_iter()
        .find(|(_, t)| t == "Continue")
        .unwrap();
    assert_eq!(continue_link.0, f.url("/download", Some("1234")));
}

/// DDF `views/landing.html`: `{{ service_name or '[SERVICE_NAME]'}} sent you
/// a file to download.` (the placeholder is on that page only).
#[tokio::test]
async fn landing_page_shows_a_placeholder_for_an_empty_service_name() {
    let f = fixture().await;
    f.document(false, "pdf", 5);
    f.service_answers(
        200,
        &json!({"data": {"name": "", "contact_link": "07123456789"}}),
    );
    let page = f.get(&f.url("", Some(f.key))).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.paragraphs(),
        [
            "[SERVICE_NAME] sent you a file to download.",
            "Continue",
            "If you have any questions, call 07123456789."
        ]
    );
    f.service_answers(200, &json!({"data": {"name": " ", "contact_link": "x"}}));
    let page = f.get(&f.url("", Some(f.key))).await;
    assert_eq!(
        page.paragraphs()[0],
        "sent you a file to download.",
        "a blank name is not empty: Jinja's `or` keeps it"
    );
}

/// DDF `test_landing_page_creates_link_to_confirm_email_address`.
#[tokio::test]
async fn landing_page_creates_link_to_confirm_email_address() {
    let f = fixture().await;
    f.document(true, "pdf", 5);
    let page = f.get(&f.url("", Some(f.key))).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.title(), "You have a file to download – GOV.UK");
    assert_eq!(page.h1(), "You have a file to download");
    let continue_link = page
        .main_links()
        .into_iter()
        .find(|(_, t)| t == "Continue")
        .unwrap();
    assert_eq!(
        continue_link.0,
        f.url("/confirm-email-address", Some("1234"))
    );
}

#[tokio::test]
async fn the_key_is_kept_url_encoded_on_links_and_redirects() {
    let f = fixture().await;
    f.document(false, "pdf", 5);
    let key = "a+b/c=d&e";
    let encoded = "a%2Bb%2Fc%3Dd%26e";
    let page = f.get(&f.url("", Some(encoded))).await;
    let continue_link = page
        .main_links()
        .into_iter()
        .find(|(_, t)| t == "Continue")
        .unwrap();
    assert_eq!(continue_link.0, f.url("/download", Some(encoded)));
    let check = f
        .stub
        .requests()
        .into_iter()
        .find(|r| r.uri.contains("/check"))
        .unwrap();
    assert!(
        check.uri.ends_with(&format!("/check?key={encoded}")),
        "{}",
        check.uri
    );
    let redirect = f.get(&f.url("/confirm-email-address", Some(encoded))).await;
    assert_eq!(
        redirect.header("location"),
        f.url("/download", Some(encoded))
    );
    assert_eq!(support::form_encode(key), "a%2Bb%2Fc%3Dd%26e");
}

/// DDF `test_confirm_email_address_page_shows_email_address_form_and_contact_details`.
#[tokio::test]
async fn confirm_email_address_page_shows_email_address_form() {
    let f = fixture().await;
    f.document(true, "pdf", 5);
    let page = f.get(&f.url("/confirm-email-address", Some(f.key))).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.title(), "Confirm your email address – GOV.UK");
    assert_eq!(page.h1(), "Confirm your email address");
    assert!(page.body.contains("<form method=\"post\""));
    assert_eq!(
        page.attribute_of("<form", "action").unwrap(),
        f.url("/confirm-email-address", Some("1234"))
    );
    assert!(page.body.contains("novalidate"));
    assert!(page
        .attribute_of("name=\"email_address\"", "value")
        .is_none());
    assert!(!page.body.contains("govuk-error-summary"));
    assert_eq!(
        page.paragraphs(),
        [
            "For security, we need to confirm the email address the file was sent to before you can download it.",
            "If you have any questions, contact Sample Service."
        ]
    );
    let (href, text) = &page.main_links()[0];
    assert_eq!(text, "contact Sample Service");
    assert_eq!(href, "https://sample-service.gov.uk");
}

/// DDF `test_confirm_email_address_page_redirects_to_download_page_if_confirmation_not_required`.
#[tokio::test]
async fn confirm_email_address_page_redirects_to_download_page_if_confirmation_not_required() {
    let f = fixture().await;
    f.document(false, "pdf", 5);
    for method in ["GET", "POST"] {
        let page = open(&f, "/confirm-email-address", method, Some(f.key)).await;
        assert_eq!(page.status, 302, "{method}");
        assert_eq!(page.header("location"), f.url("/download", Some(f.key)));
        assert_eq!(
            page.header("cache-control"),
            "no-store, no-cache, private, must-revalidate"
        );
    }
}

/// DDF `test_confirm_email_address_page_shows_an_error_if_the_email_address_is_invalid`
/// ("fake address") and `tests/app/test_forms.py` `test_email_address_form_validates`
/// (`invalid_email`, empty).
#[tokio::test]
async fn confirm_email_address_page_shows_errors_for_empty_and_invalid_addresses() {
    let f = fixture().await;
    f.document(true, "pdf", 5);
    for (email, expected) in [
        ("", "Enter your email address"),
        ("   ", "Enter your email address"),
        ("fake address", "Not a valid email address"),
        ("testing", "Not a valid email address"),
        ("me@example", "Not a valid email address"),
    ] {
        let page = f.submit_email(email).await;
        assert_eq!(page.status, 400, "{email:?}");
        assert_eq!(page.title(), "Error: Confirm your email address – GOV.UK");
        assert_eq!(page.h1(), "Confirm your email address");
        assert_eq!(
            support::text(
                &page
                    .element("<h2 class=\"govuk-error-summary__title\"", "</h2>")
                    .unwrap()
            ),
            "There is a problem"
        );
        assert_eq!(
            support::text(
                &page
                    .element(
                        "<ul class=\"govuk-list govuk-error-summary__list\"",
                        "</ul>"
                    )
                    .unwrap()
            ),
            expected
        );
        assert_eq!(
            support::text(
                &page
                    .element("<p id=\"email_address-error\"", "</p>")
                    .unwrap()
            ),
            format!("Error: {expected}")
        );
    }
    assert!(
        !f.stub
            .requests()
            .iter()
            .any(|r| r.uri.contains("/authenticate")),
        "invalid addresses never reach the API"
    );
}

/// DDF's field runs the `strip_all_whitespace` filter, then wtforms 3.2.2's
/// `DataRequired`, which calls the value empty when Python's `str.strip()`
/// leaves nothing (`field.data.strip()`). So whitespace the filter keeps but
/// `str.strip()` drops is "Enter your email address", not "Not a valid email
/// address"; a character `str.strip()` keeps (U+200B is not `isspace()`)
/// makes the value non-empty again.
#[tokio::test]
async fn whitespace_python_strips_is_an_empty_address() {
    let f = fixture().await;
    f.document(true, "pdf", 5);
    for (email, expected) in [
        ("\u{0085}", "Enter your email address"),
        ("\u{2000}", "Enter your email address"),
        (" \u{2003}\u{200A} ", "Enter your email address"),
        ("\u{3000}", "Enter your email address"),
        ("\u{1680}\u{205F}", "Enter your email address"),
        (
            "\u{001C}\u{001D}\u{001E}\u{001F}",
            "Enter your email address",
        ),
        // The filter strips U+200B from the ends; U+2003 is left.
        ("\u{200B}\u{2003}\u{200B}", "Enter your email address"),
        // Kept by the filter (not at an end) and by `str.strip()`.
        ("\u{2003}\u{200B}\u{2003}", "Not a valid email address"),
        ("\u{2003}me@example.com", "Not a valid email address"),
    ] {
        let page = f.submit_email(email).await;
        assert_eq!(page.status, 400, "{email:?}");
        assert_eq!(
            support::text(
                &page
                    .element("<p id=\"email_address-error\"", "</p>")
                    .unwrap()
            ),
            format!("Error: {expected}"),
            "{email:?}"
        );
    }
    assert!(
        !f.stub
            .requests()
            .iter()
            .any(|r| r.uri.contains("/authenticate")),
        "none of these reach the API"
    );
}

/// DDF `test_confirm_email_address_page_shows_error_if_wrong_email_address`
/// (the API's 400), and 403, which DDF treats the same.
#[tokio::test]
async fn confirm_email_address_page_shows_error_if_wrong_email_address() {
    let f = fixture().await;
    f.document(true, "pdf", 5);
    for status in [400, 403] {
        f.authenticate_answers(status, &json!({"error": "Authentication failure"}));
        let page = f.submit_email("me@example.com").await;
        assert_eq!(page.status, 400);
        assert_eq!(page.title(), "Error: Confirm your email address – GOV.UK");
        assert_eq!(page.h1(), "Confirm your email address");
        assert_eq!(
            support::text(
                &page
                    .element("<h2 class=\"govuk-error-summary__title\"", "</h2>")
                    .unwrap()
            ),
            "There is a problem"
        );
        let summary = page
            .element(
                "<ul class=\"govuk-list govuk-error-summary__list\"",
                "</ul>",
            )
            .unwrap();
        assert_eq!(
            support::text(&summary),
            "This is not the email address the file was sent to.To confirm the file was meant for you, enter the email address Sample Service sent the file to."
        );
        assert!(page
            .element("<p id=\"email_address-error\"", "</p>")
            .is_none());
        assert_eq!(
            page.attribute_of("name=\"email_address\"", "value")
                .as_deref(),
            Some("me@example.com")
        );
    }
}

/// DDF `test_confirm_email_address_page_shows_429_error_page_if_auth_rate_limited`;
/// the "Go back" link is relative (docs/compatibility.md).
#[tokio::test]
async fn confirm_email_address_page_shows_429_error_page_if_auth_rate_limited() {
    let f = fixture().await;
    f.document(true, "pdf", 5);
    f.authenticate_answers(429, &json!({"error": "Too many requests"}));
    let page = f.submit_email("me@example.com").await;
    assert_eq!(page.status, 429);
    assert_eq!(page.title(), "Cannot access document – GOV.UK");
    assert_eq!(page.h1(), "Cannot access document");
    let back = page
        .main_links()
        .into_iter()
        .find(|(_, t)| t == "Go back to confirm your email address")
        .unwrap();
    assert_eq!(back.0, f.url("/confirm-email-address", Some("1234")));
    assert!(page
        .body
        .contains("notify-support@digital.cabinet-office.gov.uk"));
}

/// DDF `test_confirm_email_address_page_redirects_and_sets_cookie_on_success`,
/// with DDF's `Test` config: a 302 to the download page, the access cookie
/// for the API's domain and the file's path, and exactly two document API
/// calls, `/check` then `/authenticate`, each with the onward headers.
#[tokio::test]
async fn confirm_email_address_page_redirects_and_sets_cookie_on_success() {
    let f = ddf_fixture().await;
    f.document(true, "pdf", 5);
    f.authenticate_answers(
        200,
        &json!({"signed_data": "blah", "direct_file_url": "http://test-doc-download-api.com/my/file/path?key=foo"}),
    );
    // DDF's tests turn CSRF off; wharf's form needs its token and cookie.
    let form_url = f.url("/confirm-email-address", Some(f.key));
    let form = f.get(&form_url).await;
    let token = form.attribute_of("name=\"csrf_token\"", "value").unwrap();
    let cookie = form.set_cookies()[0].split(';').next().unwrap().to_owned();
    f.stub.clear_requests();
    let page = send(
        &f.app,
        Method::POST,
        &form_url,
        Some(format!("csrf_token={token}&email_address=me%40example.com")),
        &[
            ("cookie", &cookie),
            ("x-b3-traceid", ONWARD_TRACE),
            ("x-b3-spanid", ONWARD_SPAN),
        ],
    )
    .await;
    assert_eq!(page.status, 302, "{}", page.body);
    assert_eq!(page.header("location"), f.url("/download", Some(f.key)));
    assert_eq!(
        page.set_cookies(),
        ["document_access_signed_data=blah; Domain=test-doc-download-api.gov.uk; HttpOnly; Path=/my/file/path"]
    );
    let calls: Vec<_> = f
        .stub
        .requests()
        .into_iter()
        .filter(|r| r.uri.starts_with("/services/"))
        .collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].method, Method::GET);
    assert_eq!(calls[0].uri, format!("{}?key=1234", f.check_path()));
    assert_onward_headers(&calls[0], "check");
    assert_eq!(calls[1].method, Method::POST);
    assert_eq!(calls[1].uri, f.authenticate_path());
    assert_onward_headers(&calls[1], "authenticate");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&calls[1].body).unwrap(),
        json!({"key": "1234", "email_address": "me@example.com"})
    );
    assert_eq!(calls[1].headers["content-type"], "application/json");
}

/// DDF `test_email_address_form_strips_whitespace` (`tests/app/test_forms.py`):
/// the address reaches the API without the blanks around it (here also a
/// zero-width space, which notifications-utils' `strip_all_whitespace`
/// removes too).
#[tokio::test]
async fn email_address_form_strips_whitespace() {
    let f = fixture().await;
    f.document(true, "pdf", 5);
    f.authenticate_answers(
        200,
        &json!({"signed_data": "blah", "direct_file_url": "http://test-doc-download-api.com/my/file/path?key=foo"}),
    );
    for email in ["     me@example.com   ", "  me@example.com\u{200B} "] {
        f.stub.clear_requests();
        let page = f.submit_email(email).await;
        assert_eq!(page.status, 302, "{email:?}: {}", page.body);
        let auth = f
            .stub
            .requests()
            .into_iter()
            .find(|r| r.uri.ends_with("/authenticate"))
            .unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&auth.body).unwrap()["email_address"],
            "me@example.com",
            "{email:?}"
        );
    }
}

#[tokio::test]
async fn the_access_cookie_is_secure_over_https_and_its_domain_drops_download() {
    let f = fixture().await;
    let app = DownloadApp::builder()
        .notify_api(&f.stub.base(), support::ADMIN_SECRET)
        .document_api(
            "https://download.notifications.service.gov.uk",
            &f.stub.base(),
        )
        .https(true)
        .clock(Clock::fixed(today()))
        .build()
        .unwrap();
    let f = Fixture { app, ..f };
    f.document(true, "pdf", 5);
    f.authenticate_answers(
        200,
        &json!({"signed_data": "abc.def-_", "direct_file_url": "https://download.notifications.service.gov.uk/services/x/documents/y.pdf?key=k"}),
    );
    let page = f.submit_email("me@example.com").await;
    assert_eq!(page.status, 302);
    assert_eq!(
        page.set_cookies(),
        ["document_access_signed_data=abc.def-_; Domain=notifications.service.gov.uk; Secure; HttpOnly; Path=/services/x/documents/y.pdf"]
    );
}

/// `tests/app/test_errorhandlers.py` `test_csrf_error_returns_400_status_code_and_500_error_page`:
/// the same 400, but the form again with a "session expired" error instead
/// of the generic error page (docs/compatibility.md).
#[tokio::test]
async fn csrf_failure_is_a_form_error() {
    let f = fixture().await;
    f.document(true, "pdf", 5);
    let form_url = f.url("/confirm-email-address", Some(f.key));
    let form = f.get(&form_url).await;
    let token = form.attribute_of("name=\"csrf_token\"", "value").unwrap();
    let cookie = form.set_cookies()[0].split(';').next().unwrap().to_owned();
    assert!(form.set_cookies()[0].contains("HttpOnly; Path=/; SameSite=Lax"));
    let cases = [
        (
            "no token, no cookie",
            "email_address=me%40example.com".to_owned(),
            None,
        ),
        (
            "token without its cookie",
            format!("csrf_token={token}&email_address=me%40example.com"),
            None,
        ),
        (
            "cookie without a token",
            "email_address=me%40example.com".to_owned(),
            Some(cookie.clone()),
        ),
        (
            "a forged token",
            "csrf_token=1.AAAA&email_address=me%40example.com".to_owned(),
            Some(cookie.clone()),
        ),
        (
            "another browser's cookie",
            format!("csrf_token={token}&email_address=me%40example.com"),
            Some("document_download_csrf=other".to_owned()),
        ),
    ];
    for (case, body, cookie) in cases {
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("cookie", c.as_str())).collect();
        let page = send(&f.app, Method::POST, &form_url, Some(body), &headers).await;
        assert_eq!(page.status, 400, "{case}");
        assert_eq!(
            page.title(),
            "Error: Confirm your email address – GOV.UK",
            "{case}"
        );
        assert!(page.body.contains("Your session has expired"), "{case}");
    }
    assert!(!f
        .stub
        .requests()
        .iter()
        .any(|r| r.uri.contains("/authenticate")));
}

/// DDF `test_download_document_creates_link_to_actual_doc_from_api` and
/// `test_download_document_shows_contact_information` (the second link).
#[tokio::test]
async fn download_document_creates_link_to_actual_doc_from_api() {
    let f = fixture().await;
    f.document(false, "txt", 5);
    let page = f.get(&f.url("/download", Some(f.key))).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.title(), "Download your file – GOV.UK");
    assert_eq!(page.h1(), "Download your file");
    let links = page.main_links();
    assert_eq!(
        links[0],
        (
            "url".to_owned(),
            "Download this text file (0.7MB) to your device".to_owned()
        )
    );
    assert_eq!(
        links[1],
        (
            "https://sample-service.gov.uk".to_owned(),
            "contact Sample Service".to_owned()
        )
    );
    // DDF `views/download.html`: `<a href="{{download_link}}" download
    // class="govuk-link" rel="noreferrer">`.
    let main = page.element("<main", "</main>").unwrap();
    let tag = main.split("<a ").nth(1).unwrap().split('>').next().unwrap();
    assert_eq!(
        tag,
        "href=\"url\" download class=\"govuk-link\" rel=\"noreferrer\""
    );
}

/// DDF `test_download_document_shows_pretty_file_type` (its 11 extensions),
/// and an unknown one (docs/compatibility.md).
#[tokio::test]
async fn download_document_shows_pretty_file_type() {
    let f = fixture().await;
    for (extension, expected) in [
        ("pdf", "PDF"),
        ("txt", "text file"),
        ("docx", "Microsoft Word document"),
        ("doc", "Microsoft Word document"),
        ("csv", "CSV file"),
        ("odt", "text file"),
        ("rtf", "text file"),
        ("xlsx", "Microsoft Excel spreadsheet"),
        ("png", "PNG file"),
        ("jpeg", "JPEG file"),
        ("json", "JSON file"),
        ("zip", "file"),
    ] {
        f.document(false, extension, 5);
        let page = f.get(&f.url("/download", Some(f.key))).await;
        assert_eq!(page.status, 200, "{extension}");
        assert_eq!(
            page.main_links()[0].1,
            format!("Download this {expected} (0.7MB) to your device")
        );
    }
}

#[tokio::test]
async fn download_document_shows_file_sizes() {
    let f = fixture().await;
    for (bytes, expected) in [
        (10, "0.1KB"),
        (2048, "2KB"),
        (712_099, "0.7MB"),
        (10 * 1024 * 1024, "10MB"),
    ] {
        f.check_answers(
            200,
            &json!({"document": {"direct_file_url": "url", "confirm_email": false, "size_in_bytes": bytes, "file_extension": "pdf", "available_until": "2022-10-20"}}),
        );
        let page = f.get(&f.url("/download", Some(f.key))).await;
        assert_eq!(
            page.main_links()[0].1,
            format!("Download this PDF ({expected}) to your device")
        );
    }
}

/// DDF `test_download_document_shows_expiry_date` (28, 30, 31 and 50 days
/// from 12 October 2022) and `test_download_document_handles_missing_expiry`.
#[tokio::test]
async fn download_document_shows_expiry_date() {
    let f = fixture().await;
    for (days, expected) in [
        (
            28,
            "This file is available to download until Wednesday 9 November 2022.",
        ),
        (
            30,
            "This file is available to download until Friday 11 November 2022.",
        ),
        (
            31,
            "This file is available to download until 12 November 2022.",
        ),
        (
            50,
            "This file is available to download until 1 December 2022.",
        ),
        (
            0,
            "This file is available to download until Wednesday 12 October 2022.",
        ),
    ] {
        f.document(false, "pdf", days);
        let page = f.get(&f.url("/download", Some(f.key))).await;
        assert_eq!(page.paragraphs()[0], expected, "{days} days");
    }
    for unknown in [json!(null), json!("soon")] {
        f.check_answers(
            200,
            &json!({"document": {"direct_file_url": "url", "confirm_email": false, "size_in_bytes": 1, "file_extension": "pdf", "available_until": unknown}}),
        );
        let page = f.get(&f.url("/download", Some(f.key))).await;
        assert_eq!(page.status, 200);
        assert_eq!(
            page.paragraphs()[0],
            "File expiry information is temporarily unavailable."
        );
    }
}

/// DDF `test_pages_contain_key_security_headers` (the three views, a
/// document that needs confirmation), and an error page and a redirect.
#[tokio::test]
async fn pages_contain_key_security_headers() {
    let f = fixture().await;
    f.document(true, "pdf", 5);
    let mut nonces = Vec::new();
    for url in [
        f.url("", Some(f.key)),
        f.url("/download", Some(f.key)),
        f.url("/confirm-email-address", Some(f.key)),
        "/nowhere".to_owned(),
        "/security.txt".to_owned(),
    ] {
        let page = f.get(&url).await;
        if url.starts_with("/d/") {
            assert_eq!(page.status, 200, "{url}");
        }
        for (name, value) in [
            ("x-robots-tag", "noindex, nofollow"),
            ("x-frame-options", "DENY"),
            ("x-content-type-options", "nosniff"),
            ("x-permitted-cross-domain-policies", "none"),
            ("referrer-policy", "no-referrer"),
            (
                "cache-control",
                "no-store, no-cache, private, must-revalidate",
            ),
            (
                "strict-transport-security",
                "max-age=31536000; includeSubDomains; preload",
            ),
            ("cross-origin-embedder-policy", "require-corp"),
            ("cross-origin-opener-policy", "same-origin"),
            ("cross-origin-resource-policy", "same-origin"),
        ] {
            assert_eq!(page.header(name), value, "{name} on {url}");
        }
        assert!(page.header("permissions-policy").contains("camera=()"));
        let csp = page.header("content-security-policy");
        let nonce = csp
            .split("'nonce-")
            .nth(1)
            .unwrap()
            .split('\'')
            .next()
            .unwrap()
            .to_owned();
        assert_eq!(
            csp,
            format!(
                "default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'nonce-{nonce}'; \
                 img-src 'self' data:; font-src 'self' data:; connect-src 'self'; object-src 'none'; \
                 base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
            )
        );
        if page.status != 302 {
            assert!(
                page.body.contains(&format!("<script nonce=\"{nonce}\">")),
                "{url}"
            );
            assert!(
                page.body.contains(&format!("<style nonce=\"{nonce}\">")),
                "{url}"
            );
        }
        nonces.push(nonce);
    }
    nonces.sort();
    nonces.dedup();
    assert_eq!(nonces.len(), 5, "a fresh nonce per response");
}

/// DDF `tests/app/test_headers.py` `test_owasp_useful_headers_set` (the
/// landing page of a document that needs confirmation): every header it
/// names. Seven are DDF's exactly; CSP, the three `Cross-Origin-*`,
/// `Permissions-Policy` and `Server` differ on purpose
/// (docs/compatibility.md, "Security headers").
#[tokio::test]
async fn owasp_useful_headers_set() {
    let f = fixture().await;
    f.document(true, "pdf", 5);
    let page = f.get(&f.url("", Some(f.key))).await;
    assert_eq!(page.status, 200);
    for (name, value) in [
        ("x-robots-tag", "noindex, nofollow"),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("x-permitted-cross-domain-policies", "none"),
        (
            "strict-transport-security",
            "max-age=31536000; includeSubDomains; preload",
        ),
        ("referrer-policy", "no-referrer"),
        (
            "cache-control",
            "no-store, no-cache, private, must-revalidate",
        ),
    ] {
        assert_eq!(page.header(name), value, "{name}: DDF's value");
    }
    let csp = page.header("content-security-policy");
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    // DDF: `default-src 'self';script-src 'self' 'nonce-…';connect-src
    // 'self';object-src 'self';font-src 'self' data:;img-src 'self'
    // data:;style-src 'self' 'nonce-…';frame-ancestors 'self';frame-src
    // 'self';`. wharf: no plugins, no framing (as `X-Frame-Options: DENY`
    // says), `frame-src` left to `default-src 'self'`, and `base-uri` and
    // `form-action` pinned.
    assert_eq!(
        csp,
        format!(
            "default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self' 'nonce-{nonce}'; \
             img-src 'self' data:; font-src 'self' data:; connect-src 'self'; object-src 'none'; \
             base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        )
    );
    // DDF: `require-corp;` and `same-origin;`, whose trailing `;` makes
    // browsers ignore them (an empty structured-field parameter).
    assert_eq!(page.header("cross-origin-embedder-policy"), "require-corp");
    assert_eq!(page.header("cross-origin-opener-policy"), "same-origin");
    assert_eq!(page.header("cross-origin-resource-policy"), "same-origin");
    // DDF: `geolocation=(), microphone=(), camera=(), autoplay=(),
    // payment=(), sync-xhr=()`; wharf's denies those and more.
    let permissions = page.header("permissions-policy");
    for feature in [
        "geolocation=()",
        "microphone=()",
        "camera=()",
        "autoplay=()",
        "payment=()",
        "sync-xhr=()",
    ] {
        assert!(
            permissions.split(", ").any(|f| f == feature),
            "{feature} in {permissions}"
        );
    }
    // DDF: `Server: Cloudfront`, a disguise; wharf names no server.
    assert!(page.headers.get("server").is_none());
}

/// DDF `test_landing_page_has_supplier_contact_info` (link, email, number).
#[tokio::test]
async fn landing_page_has_supplier_contact_info() {
    let f = fixture().await;
    f.document(false, "pdf", 5);
    for (contact, paragraph, href) in [
        (
            "https://sample-service.gov.uk",
            "If you have any questions, contact Sample Service.",
            Some("https://sample-service.gov.uk"),
        ),
        (
            "info@sample-service.gov.uk",
            "If you have any questions, email info@sample-service.gov.uk.",
            Some("mailto:info@sample-service.gov.uk"),
        ),
        (
            "07123456789",
            "If you have any questions, call 07123456789.",
            None,
        ),
        (
            "0207 123 4567",
            "If you have any questions, call 0207 123 4567.",
            None,
        ),
    ] {
        f.service_answers(200, &sample_service(contact));
        let page = f.get(&f.url("", Some(f.key))).await;
        assert_eq!(page.paragraphs().last().unwrap(), paragraph);
        let links: Vec<String> = page.main_links().into_iter().map(|(h, _)| h).collect();
        match href {
            Some(href) => assert!(links.contains(&href.to_owned()), "{links:?}"),
            None => assert_eq!(links.len(), 1, "only Continue: {links:?}"),
        }
    }
    f.service_answers(
        200,
        &json!({"data": {"name": "Sample Service", "contact_link": null}}),
    );
    let page = f.get(&f.url("", Some(f.key))).await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.paragraphs(),
        ["Sample Service sent you a file to download.", "Continue"]
    );
}

/// DDF assesses the contact link untrimmed (`assess_contact_type` in
/// app/utils.py): with a space before it an address or URL is neither an
/// email (the pattern is anchored at `^`) nor a link (`startswith("http")`),
/// so the page says "call …"; a space after a URL still makes a link.
#[tokio::test]
async fn contact_links_with_surrounding_spaces_are_shown_as_ddf_shows_them() {
    let f = fixture().await;
    f.document(false, "pdf", 5);
    for (contact, paragraph, href) in [
        (
            " info@sample-service.gov.uk",
            "If you have any questions, call info@sample-service.gov.uk.",
            None,
        ),
        (
            "info@sample-service.gov.uk ",
            // DDF's template is `call {{ service_contact_info }}.`
            "If you have any questions, call info@sample-service.gov.uk .",
            None,
        ),
        (
            " https://sample-service.gov.uk",
            "If you have any questions, call https://sample-service.gov.uk.",
            None,
        ),
        (
            "https://sample-service.gov.uk ",
            "If you have any questions, contact Sample Service.",
            Some("https://sample-service.gov.uk "),
        ),
    ] {
        f.service_answers(200, &sample_service(contact));
        let page = f.get(&f.url("", Some(f.key))).await;
        assert_eq!(page.status, 200, "{contact:?}");
        assert_eq!(page.paragraphs().last().unwrap(), paragraph, "{contact:?}");
        let links: Vec<String> = page.main_links().into_iter().map(|(h, _)| h).collect();
        match href {
            Some(href) => assert!(links.contains(&href.to_owned()), "{contact:?}: {links:?}"),
            None => assert_eq!(links.len(), 1, "{contact:?}: only Continue: {links:?}"),
        }
    }
}

#[tokio::test]
async fn service_data_is_escaped() {
    let f = fixture().await;
    f.document(false, "pdf", 5);
    f.service_answers(200, &json!({"data": {"name": "<script>alert(1)</script>", "contact_link": "https://x\"><script>"}}));
    let page = f.get(&f.url("", Some(f.key))).await;
    assert!(!page.body.contains("<script>alert"));
    assert!(page
        .body
        .contains("&lt;script&gt;alert(1)&lt;/script&gt; sent you a file"));
}

/// DDF `test_footer_doesnt_link_to_national_archives`.
#[tokio::test]
async fn footer_doesnt_link_to_national_archives() {
    let f = fixture().await;
    f.document(false, "pdf", 5);
    f.service_answers(200, &sample_service("blah blah blah"));
    let page = f.get(&f.url("", Some(f.key))).await;
    assert_eq!(page.status, 200);
    assert!(!page
        .hrefs()
        .iter()
        .any(|h| h.contains("nationalarchives.gov.uk")));
    assert!(page.body.contains("© Crown copyright"));
}

/// DDF `test_services_view_redirects_to_api`: its six URLs, each a 301 to
/// the same path and query on the document API's public host.
#[tokio::test]
async fn services_view_redirects_to_api() {
    let f = ddf_fixture().await;
    for url in [
        "/services/_status",
        "/services/11111111-1111-4111-1111-111111111111/documents/22222222-2222-4222-2222-222222222222",
        "/services/11111111-1111-4111-1111-111111111111/documents/22222222-2222-4222-2222-222222222222.pdf",
        "/services/11111111-1111-4111-1111-111111111111/documents/22222222-2222-4222-2222-222222222222/check",
        "/services/11111111-1111-4111-1111-111111111111/documents/22222222-2222-4222-2222-222222222222/check?key=123456",
        "/services/11111111-1111-4111-1111-111111111111/documents/22222222-2222-4222-2222-222222222222/check?random_parameter=xyz",
    ] {
        let page = f.get(url).await;
        assert_eq!(page.status, 301, "{url}");
        assert_eq!(page.header("location"), format!("{DDF_PUBLIC_API}{url}"));
    }
    assert!(f.stub.requests().is_empty());
}

#[tokio::test]
async fn old_api_links_redirect_permanently_to_the_document_api() {
    let f = fixture().await;
    let s = f.ids.service;
    let d = f.ids.document;
    for (path, location) in [
        (
            format!("/services/{s}/documents/{d}?key=abc"),
            format!("{PUBLIC_API}/services/{s}/documents/{d}?key=abc"),
        ),
        (
            format!("/services/{s}/documents/{d}.pdf?key=abc"),
            format!("{PUBLIC_API}/services/{s}/documents/{d}.pdf?key=abc"),
        ),
        (
            format!("/services/{s}/documents/{d}/check?key=abc"),
            format!("{PUBLIC_API}/services/{s}/documents/{d}/check?key=abc"),
        ),
        (
            format!("/services/{s}/documents/{d}"),
            format!("{PUBLIC_API}/services/{s}/documents/{d}"),
        ),
        (
            "/services/_status".to_owned(),
            format!("{PUBLIC_API}/services/_status"),
        ),
    ] {
        let page = f.get(&path).await;
        assert_eq!(page.status, 301, "{path}");
        assert_eq!(page.header("location"), location);
    }
    assert_eq!(f.get("/services/not-a-uuid/documents/x").await.status, 404);
    assert!(f.stub.requests().is_empty());
}

#[tokio::test]
async fn unknown_paths_and_malformed_ids_are_not_found() {
    let f = fixture().await;
    f.document(false, "pdf", 5);
    let s = f.ids.service.to_base64();
    let d = f.ids.document.to_base64();
    for path in [
        "/".to_owned(),
        "/nowhere".to_owned(),
        // DDF `test_bad_url_returns_page_not_found`.
        "/bad_url".to_owned(),
        format!("/d/{s}/{d}/?key=1234"),
        format!("/d/{s}/{d}/other?key=1234"),
        format!("/d/{s}?key=1234"),
        format!("/d/{}/{d}?key=1234", f.ids.service),
        format!("/d/{s}x/{d}?key=1234"),
        format!("/d/{}/{d}?key=1234", &s[..21]),
        "/static/nothing.css".to_owned(),
    ] {
        let page = f.get(&path).await;
        assert_eq!(page.status, 404, "{path}");
        assert_eq!(page.h1(), "Page not found");
    }
}

/// DDF answers these 500 (its `errorhandler(Exception)` catches Werkzeug's
/// `MethodNotAllowed`); wharf answers 405. Its `Allow` is the one Werkzeug's
/// `MethodNotAllowed` carries, the route's methods as Flask registers them:
/// with HEAD (added for GET) and OPTIONS (`provide_automatic_options`), as
/// in the OPTIONS answer. Werkzeug 3.1.8 joins a Python set, so its order
/// changes with `PYTHONHASHSEED`; wharf's is alphabetical.
#[tokio::test]
async fn a_wrong_method_is_405_not_500() {
    let f = fixture().await;
    f.document(true, "pdf", 5);
    let get = "GET, HEAD, OPTIONS";
    for (method, url, allow) in [
        ("POST", f.url("", Some(f.key)), get),
        (
            "PUT",
            f.url("/confirm-email-address", Some(f.key)),
            "GET, HEAD, OPTIONS, POST",
        ),
        ("DELETE", f.url("/download", Some(f.key)), get),
        ("POST", "/_status".to_owned(), get),
        ("TRACE", "/security.txt".to_owned(), get),
        ("PATCH", "/services/_status".to_owned(), get),
    ] {
        let page = send(
            &f.app,
            Method::from_bytes(method.as_bytes()).unwrap(),
            &url,
            None,
            &[],
        )
        .await;
        assert_eq!(page.status, 405, "{method} {url}");
        assert_eq!(page.header("allow"), allow, "{method} {url}");
        assert_eq!(page.header("x-frame-options"), "DENY");
    }
    // The local document API's POST-only route (a Flask app as well).
    let dir = tempfile::tempdir().unwrap();
    let app = DownloadApp::builder()
        .local_api(dir.path())
        .build()
        .unwrap();
    let (s, d) = (f.ids.service, f.ids.document);
    let url = format!("/services/{s}/documents/{d}/authenticate");
    let page = send(&app, Method::GET, &url, None, &[]).await;
    assert_eq!(page.status, 405, "{url}");
    assert_eq!(page.header("allow"), "OPTIONS, POST", "{url}");
}

/// Flask answers OPTIONS on every route itself (`provide_automatic_options`):
/// 200, an empty body, `Allow` with the route's methods plus HEAD and
/// OPTIONS, the after-request headers, and the view never runs (so no key is
/// needed and no API is called). Flask's order of `Allow` follows a Python
/// set's; wharf's is alphabetical. Checked against Flask 3.1.3 and Werkzeug
/// 3.1.8, the versions DDF pins.
#[tokio::test]
async fn options_is_answered_as_flask_does() {
    let f = fixture().await;
    f.document(true, "pdf", 5);
    let s = f.ids.service;
    let d = f.ids.document;
    let get = "GET, HEAD, OPTIONS";
    for (url, allow) in [
        ("/_status".to_owned(), get),
        ("/security.txt".to_owned(), get),
        ("/.well-known/security.txt".to_owned(), get),
        (f.url("", Some(f.key)), get),
        (f.url("", None), get),
        (f.url("/download", Some(f.key)), get),
        (
            f.url("/confirm-email-address", Some(f.key)),
            "GET, HEAD, OPTIONS, POST",
        ),
        (
            f.url("/confirm-email-address", None),
            "GET, HEAD, OPTIONS, POST",
        ),
        ("/services/_status".to_owned(), get),
        (format!("/services/{s}/documents/{d}"), get),
        (format!("/services/{s}/documents/{d}.pdf"), get),
        (format!("/services/{s}/documents/{d}/check?key=1"), get),
        // `/static/<path:filename>`: the route matches whether or not the
        // file exists.
        ("/static/nothing.css".to_owned(), get),
    ] {
        let page = send(&f.app, Method::OPTIONS, &url, None, &[]).await;
        assert_eq!(page.status, 200, "{url}: {}", page.body);
        assert_eq!(page.header("allow"), allow, "{url}");
        assert_eq!(page.body, "", "{url}");
        assert_eq!(
            page.header("content-type"),
            "text/html; charset=utf-8",
            "{url}"
        );
        assert_eq!(page.header("x-frame-options"), "DENY", "{url}");
        assert_eq!(
            page.header("cache-control"),
            "no-store, no-cache, private, must-revalidate",
            "{url}"
        );
    }
    assert!(f.stub.requests().is_empty(), "no view ran");
    // No route, no OPTIONS: Werkzeug's NotFound, DDF's 404 page.
    for url in [
        "/nowhere".to_owned(),
        "/static/".to_owned(),
        format!("/d/{s}/{d}?key=1"),
        f.url("/other", Some(f.key)),
        format!("/services/{s}/documents/{d}/authenticate"),
    ] {
        let page = send(&f.app, Method::OPTIONS, &url, None, &[]).await;
        assert_eq!(page.status, 404, "{url}");
        assert_eq!(page.h1(), "Page not found", "{url}");
        assert!(page.headers.get("allow").is_none(), "{url}");
    }
    // The local document API's routes answer OPTIONS too (the real
    // document-download-api is a Flask app as well).
    let dir = tempfile::tempdir().unwrap();
    let app = DownloadApp::builder()
        .local_api(dir.path())
        .build()
        .unwrap();
    for (url, allow) in [
        (format!("/services/{s}/documents/{d}/check"), get),
        (
            format!("/services/{s}/documents/{d}/authenticate"),
            "OPTIONS, POST",
        ),
    ] {
        let page = send(&app, Method::OPTIONS, &url, None, &[]).await;
        assert_eq!(page.status, 200, "{url}");
        assert_eq!(page.header("allow"), allow, "{url}");
    }
}

#[tokio::test]
async fn upstream_timeouts_are_504_and_unreachable_apis_502() {
    let f = fixture().await;
    f.document(false, "pdf", 5);
    f.stub.set_delayed(
        "GET",
        &f.service_path(),
        200,
        &sample_service("x"),
        Duration::from_secs(3),
    );
    let page = f.get(&f.url("", Some(f.key))).await;
    assert_eq!(page.status, 504);
    assert_eq!(page.h1(), "Sorry, there’s a problem with the service");

    f.service_answers(200, &sample_service("x"));
    f.stub.set_delayed(
        "GET",
        &f.check_path(),
        200,
        &json!({"document": null}),
        Duration::from_secs(3),
    );
    assert_eq!(f.get(&f.url("/download", Some(f.key))).await.status, 504);

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let app = DownloadApp::builder()
        .notify_api(&format!("http://{closed}"), "x")
        .document_api(PUBLIC_API, &format!("http://{closed}"))
        .build()
        .unwrap();
    let page = send(&app, Method::GET, &f.url("", Some(f.key)), None, &[]).await;
    // An unreachable API is a gateway failure (502), not our own (500).
    assert_eq!(page.status, 502);
    assert!(
        page.body
            .contains("Sorry, there’s a problem with the service")
            || page.body.contains("problem with the service")
    );
}

/// `tests/app/notify_client/test_service_api_client.py` `test_client_gets_service`
/// (`GET /service/<id>`) and `test_client_onward_headers`.
#[tokio::test]
async fn the_notify_api_is_called_first_with_an_hs256_token_and_trace_headers() {
    let f = fixture().await;
    f.document(false, "pdf", 5);
    let page = send(
        &f.app,
        Method::GET,
        &f.url("", Some(f.key)),
        None,
        &[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
        ],
    )
    .await;
    assert_eq!(page.status, 200);
    let requests = f.stub.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].uri, f.service_path());
    assert_eq!(requests[1].uri, format!("{}?key=1234", f.check_path()));
    let token = requests[0].headers["authorization"]
        .to_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap();
    let claims = verify_notify_api_token(token, support::ADMIN_SECRET)
        .expect("signed with ADMIN_CLIENT_SECRET");
    assert_eq!(claims["iss"], "notify-admin");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(claims["iat"].as_u64().unwrap().abs_diff(now) < 60);
    for request in &requests {
        assert_eq!(
            request.headers["x-b3-traceid"],
            "463ac35c9f6413ad48485a3953bb6124"
        );
        assert_eq!(request.headers["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        let traceparent = request.headers["traceparent"].to_str().unwrap();
        assert!(
            traceparent.starts_with("00-463ac35c9f6413ad48485a3953bb6124-"),
            "{traceparent}"
        );
    }
    assert!(requests[1].headers.get("authorization").is_none());
}

/// notifications-utils' `request_helper`, as DDF runs it: behind `CloudFront`
/// (`X-Amz-Cf-Id`) with no B3 header, the `CloudFront` id is the trace id; the
/// response carries it and this request's own span id (`self-…`), and both
/// API calls carry the trace id, a new span id each, and this request's span
/// as their parent. With no id coming in the calls are still made (DDF
/// `test_client_no_onward_headers`), with a new trace id.
#[tokio::test]
async fn b3_ids_are_made_and_sent_as_notifications_utils_does() {
    let f = fixture().await;
    f.document(false, "pdf", 5);
    let cf = "TyE-_AQMm9wVqY2nX0JfQ0m7mcB5oHa3UZF4WJiCDSbNdEp0Ik1mUw==";
    let page = send(
        &f.app,
        Method::GET,
        &f.url("", Some(f.key)),
        None,
        &[("x-amz-cf-id", cf)],
    )
    .await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["x-b3-traceid"], cf);
    let span = page.headers["x-b3-spanid"].to_str().unwrap().to_owned();
    assert!(span.starts_with("self-") && span.len() == 21, "{span}");
    let requests = f.stub.requests();
    assert_eq!(requests.len(), 2);
    let mut onward_spans = Vec::new();
    for request in &requests {
        assert_eq!(request.headers["x-b3-traceid"], cf);
        assert_eq!(request.headers["x-b3-parentspanid"], span.as_str());
        onward_spans.push(request.headers["x-b3-spanid"].to_str().unwrap().to_owned());
    }
    assert_ne!(onward_spans[0], onward_spans[1], "a new span per call");
    // With nothing coming in, a new 128-bit trace id, on the page and onward.
    let page = send(&f.app, Method::GET, &f.url("", Some(f.key)), None, &[]).await;
    let trace = page.headers["x-b3-traceid"].to_str().unwrap().to_owned();
    assert!(
        trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()),
        "{trace}"
    );
    let last = f.stub.requests().pop().unwrap();
    assert_eq!(last.headers["x-b3-traceid"], trace.as_str());
}

#[tokio::test]
async fn static_assets_are_fingerprinted_and_immutable() {
    let mut assets = wharf_download::Assets::empty();
    assets.insert(
        "govuk-frontend.min.css",
        bytes::Bytes::from_static(b"body { color: black }"),
    );
    assets.insert(
        "govuk-frontend.min.js",
        bytes::Bytes::from_static(b"export function initAll() {}"),
    );
    let f = fixture_with(|b| b.assets(assets)).await;
    f.document(false, "pdf", 5);
    let page = f.get(&f.url("", Some(f.key))).await;
    let css = page.attribute_of("rel=\"stylesheet\"", "href").unwrap();
    assert!(
        css.starts_with("/static/govuk-frontend.") && css != "/static/govuk-frontend.min.css",
        "{css}"
    );
    let asset = f.get(&css).await;
    assert_eq!(asset.status, 200);
    assert_eq!(asset.body, "body { color: black }");
    assert_eq!(
        asset.header("cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(asset.header("content-type"), "text/css; charset=utf-8");
    assert_eq!(asset.header("x-content-type-options"), "nosniff");
    let post = send(&f.app, Method::POST, &css, None, &[]).await;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), "GET, HEAD, OPTIONS");
    let js = page
        .body
        .split("import { initAll } from \"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert_eq!(f.get(js).await.status, 200);
    assert_eq!(
        f.get("/static/govuk-frontend.min.css")
            .await
            .header("cache-control"),
        "public, max-age=86400"
    );
}

/// Snapshots of each page; `UPDATE_SNAPSHOTS=1 cargo test -p wharf-download`
/// rewrites them. The per-response nonce is replaced by `NONCE`.
#[tokio::test]
async fn snapshots_of_each_page() {
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots");
    let f = fixture().await;
    let mut pages = Vec::new();
    f.document(true, "pdf", 5);
    pages.push(("landing", f.get(&f.url("", Some(f.key))).await));
    pages.push((
        "confirm",
        f.get(&f.url("/confirm-email-address", Some(f.key))).await,
    ));
    pages.push(("confirm_invalid", f.submit_email("fake address").await));
    f.authenticate_answers(403, &json!({"error": "Authentication failure"}));
    pages.push((
        "confirm_wrong_address",
        f.submit_email("me@example.com").await,
    ));
    f.authenticate_answers(429, &json!({}));
    pages.push(("too_many_requests", f.submit_email("me@example.com").await));
    f.document(false, "txt", 30);
    pages.push(("download", f.get(&f.url("/download", Some(f.key))).await));
    f.check_answers(200, &json!({"document": null}));
    pages.push(("no_longer_available", f.get(&f.url("", Some(f.key))).await));
    f.check_answers(404, &json!({"error": "Not found"}));
    pages.push(("file_not_found", f.get(&f.url("", Some(f.key))).await));
    pages.push(("not_found", f.get("/nowhere").await));
    f.service_answers(403, &json!({}));
    pages.push(("service_problem", f.get(&f.url("", Some(f.key))).await));
    f.service_answers(500, &json!({}));
    pages.push(("server_error", f.get(&f.url("", Some(f.key))).await));
    let mut failures = Vec::new();
    for (name, page) in pages {
        let csp = page.header("content-security-policy");
        let nonce = csp
            .split("'nonce-")
            .nth(1)
            .unwrap()
            .split('\'')
            .next()
            .unwrap();
        let mut html = page.body.replace(nonce, "NONCE");
        // The CSRF token carries the time it was issued.
        if let Some(token) = page.attribute_of("name=\"csrf_token\"", "value") {
            html = html.replace(&token, "CSRF_TOKEN");
        }
        let path = dir.join(format!("{name}.html"));
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &html).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(expected) if expected == html => {}
            Ok(_) => failures.push(format!("{name}: differs from {}", path.display())),
            Err(_) => failures.push(format!("{name}: no snapshot at {}", path.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{failures:#?}\n(UPDATE_SNAPSHOTS=1 to accept)"
    );
}

#[tokio::test]
async fn the_offline_default_serves_the_whole_flow() {
    let dir = tempfile::tempdir().unwrap();
    let app = DownloadApp::builder()
        .local_api(dir.path())
        .clock(Clock::fixed(today()))
        .build()
        .unwrap();
    let samples = app.samples();
    assert_eq!(samples.len(), 2);
    let plain = &samples[0];
    let confirm = &samples[1];
    assert!(plain.confirm_email_address.is_none());

    // No confirmation: landing → download page → the file.
    let landing = send(&app, Method::GET, &plain.path, None, &[]).await;
    assert_eq!(landing.status, 200);
    assert!(landing
        .body
        .contains("Sample Service sent you a file to download."));
    let next = landing
        .main_links()
        .into_iter()
        .find(|(_, t)| t == "Continue")
        .unwrap()
        .0;
    assert!(next.contains("/download?key="));
    let download = send(&app, Method::GET, &next, None, &[]).await;
    assert_eq!(download.status, 200);
    assert_eq!(
        download.paragraphs()[0],
        "This file is available to download until Wednesday 26 October 2022."
    );
    let (file_url, text) = download.main_links()[0].clone();
    assert_eq!(text, "Download this CSV file (0.1KB) to your device");
    let file = send(&app, Method::GET, &file_url, None, &[]).await;
    assert_eq!(file.status, 200);
    assert_eq!(file.body, "name,department\nSample Person,Cabinet Office\n");
    assert!(file.header("content-disposition").starts_with("attachment"));

    // Confirmation: landing → form → wrong address → right address → cookie → file.
    let landing = send(&app, Method::GET, &confirm.path, None, &[]).await;
    let form_url = landing
        .main_links()
        .into_iter()
        .find(|(_, t)| t == "Continue")
        .unwrap()
        .0;
    assert!(form_url.contains("/confirm-email-address?key="));
    let form = send(&app, Method::GET, &form_url, None, &[]).await;
    let token = form.attribute_of("name=\"csrf_token\"", "value").unwrap();
    let session = form.set_cookies()[0].split(';').next().unwrap().to_owned();
    let post = |email: &str| {
        format!(
            "csrf_token={token}&email_address={}",
            support::form_encode(email)
        )
    };
    let wrong = send(
        &app,
        Method::POST,
        &form_url,
        Some(post("other@example.gov.uk")),
        &[("cookie", &session)],
    )
    .await;
    assert_eq!(wrong.status, 400);
    let right = send(
        &app,
        Method::POST,
        &form_url,
        Some(post("TEST@example.gov.uk")),
        &[("cookie", &session)],
    )
    .await;
    assert_eq!(right.status, 302, "{}", right.body);
    let cookie = right.set_cookies()[0].clone();
    assert!(cookie.starts_with("document_access_signed_data="));
    assert!(!cookie.contains("Domain="), "{cookie}");
    let download = send(&app, Method::GET, right.header("location"), None, &[]).await;
    let file_url = download.main_links()[0].0.clone();
    assert!(
        cookie.contains(&format!("Path={}", file_url.split('?').next().unwrap())),
        "{cookie}"
    );
    let without_cookie = send(&app, Method::GET, &file_url, None, &[]).await;
    assert_eq!(without_cookie.status, 302);
    assert_eq!(without_cookie.header("location"), confirm.path);
    let cookie_pair = cookie.split(';').next().unwrap();
    let file = send(
        &app,
        Method::GET,
        &file_url,
        None,
        &[("cookie", cookie_pair)],
    )
    .await;
    assert_eq!(file.status, 200);
    assert_eq!(file.body, wharf_download::SAMPLE_CONFIRM_CONTENT);
    assert_eq!(file.header("content-type"), "text/plain");
}

/// Development shows what production shows: the local document API answers
/// as document-download-api does, so a link to a document it does not have
/// is the contextual 404 page (not "No longer available"), and its own
/// routes carry the real API's bodies and headers.
#[tokio::test]
async fn the_local_api_answers_as_the_real_document_api() {
    let dir = tempfile::tempdir().unwrap();
    let app = DownloadApp::builder()
        .local_api(dir.path())
        .clock(Clock::fixed(today()))
        .build()
        .unwrap();
    let plain = app.samples()[0].path.clone();
    // The sample's service, another document id.
    let (prefix, query) = plain.rsplit_once('?').unwrap();
    let (service, _) = prefix.rsplit_once('/').unwrap();
    let unknown = format!("{service}/AAAAAAAAAAAAAAAAAAAAAA?{query}");
    let page = send(&app, Method::GET, &unknown, None, &[]).await;
    assert_eq!(page.status, 404, "{}", page.body);
    assert!(
        page.paragraphs()
            .contains(&"If you have any questions, contact Sample Service.".to_owned()),
        "{:?}",
        page.paragraphs()
    );

    let status = send(&app, Method::GET, "/services/_status", None, &[]).await;
    assert_eq!(status.status, 200);
    assert_eq!(status.body, r#"{"status":"ok"}"#);
    assert_eq!(
        status.header("cache-control"),
        "no-store, no-cache, private, must-revalidate"
    );
    let landing = send(&app, Method::GET, &plain, None, &[]).await;
    let download = landing
        .main_links()
        .into_iter()
        .find(|(_, t)| t == "Continue")
        .unwrap()
        .0;
    let download = send(&app, Method::GET, &download, None, &[]).await;
    let file_url = download.main_links()[0].0.clone();
    let check_url = file_url.replacen(".csv?", "/check?", 1);
    let check = send(&app, Method::GET, &check_url, None, &[]).await;
    assert_eq!(check.status, 200, "{check_url}: {}", check.body);
    assert_eq!(check.header("cache-control"), "max-age=1800");
    assert_eq!(check.header("content-type"), "application/json");
    assert!(
        check.body.contains(r#""filename":"sample.csv""#),
        "{}",
        check.body
    );
    let gone = check_url.replacen(
        &check_url[check_url.find("/documents/").unwrap() + 11..check_url.find("/check").unwrap()],
        "00000000-0000-4000-8000-000000000000",
        1,
    );
    let gone = send(&app, Method::GET, &gone, None, &[]).await;
    assert_eq!(gone.status, 404);
    assert_eq!(
        gone.body,
        r#"{"error":"The requested document could not be found"}"#
    );
    let file = send(&app, Method::GET, &file_url, None, &[]).await;
    assert_eq!(
        file.header("content-disposition"),
        "attachment; filename=sample.csv"
    );
}

#[tokio::test]
async fn deployed_environments_refuse_the_local_api() {
    use wharf_config::{Environment, Secret};
    let section = wharf_download::DownloadSection::default();
    let secret = Secret::new("k".to_owned());
    let error = DownloadApp::from_section(
        &section,
        Some("https://api.example"),
        Some(&secret),
        Environment::Production,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("DOCUMENT_DOWNLOAD_API_HOST_NAME must be set in production"),
        "{error}"
    );
    let dir = tempfile::tempdir().unwrap();
    let section = wharf_download::DownloadSection {
        local_dir: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let app = DownloadApp::from_section(&section, None, None, Environment::Development).unwrap();
    assert_eq!(app.samples().len(), 2);
    assert_eq!(normalize(" a \n b "), "a b");
}
