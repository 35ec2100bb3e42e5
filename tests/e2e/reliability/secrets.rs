//! No secret reaches a log line of `frontend` or `edge`, the `frontend
//! config` report, or an error page: the `key` query parameter, cookies,
//! `Authorization`, `SECRET_KEY`, `DANGEROUS_SALT`, `ADMIN_CLIENT_SECRET`, the
//! password in `REDIS_URL`, the Notify API token and the access cookie.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use super::stub::{Reply, Stub};
use super::{document_path, frontend, Edge, EdgeSpec, FRONTEND};
use crate::support::command;

const KEY: &str = "KeyOfTheDocument0x5ecret";
const KEY_404: &str = "KeyThatIsWrong0x5ecret";
const KEY_SLOW: &str = "KeyForASlowApi0x5ecret";
const KEY_GARBAGE: &str = "KeyForGarbage0x5ecret";
const KEY_GONE: &str = "KeyOfAGoneFile0x5ecret";
const SECRET_KEY: &str = "secret-key-value-0x5ecret";
const DANGEROUS_SALT: &str = "dangerous-salt-value-0x5ecret";
const ADMIN_CLIENT_SECRET: &str = "admin-client-secret-0x5ecret";
const REDIS_PASSWORD: &str = "redis-password-0x5ecret";
const CLIENT_AUTHORIZATION: &str = "client-bearer-token-0x5ecret";
const CLIENT_COOKIE: &str = "client-cookie-value-0x5ecret";
const SIGNED_DATA: &str = "signed-access-cookie-0x5ecret";
const EMAIL: &str = "recipient@example.gov.uk";

fn secret_env() -> Vec<(&'static str, String)> {
    vec![
        ("SECRET_KEY", SECRET_KEY.to_owned()),
        ("DANGEROUS_SALT", DANGEROUS_SALT.to_owned()),
        ("ADMIN_CLIENT_SECRET", ADMIN_CLIENT_SECRET.to_owned()),
        ("REDIS_ENABLED", "false".to_owned()),
        (
            "REDIS_URL",
            format!("redis://wharf:{REDIS_PASSWORD}@127.0.0.1:6390/0"),
        ),
    ]
}

/// Both APIs, answering by key: the good one gets the whole flow; others
/// 404, slow, garbage (echoing the key, as a confused proxy might) or gone.
fn api() -> Stub {
    Stub::start(|seen| {
        let path = seen.path();
        if path.starts_with("/service/") {
            return Reply::json(200, super::dependency::SERVICE_JSON);
        }
        if path.ends_with("/authenticate") {
            let body = String::from_utf8_lossy(&seen.body);
            return if body.contains(EMAIL) {
                Reply::json(
                    200,
                    &format!(
                        r#"{{"signed_data":"{SIGNED_DATA}","direct_file_url":"http://files.example/services/s/documents/d.txt"}}"#
                    ),
                )
            } else {
                Reply::json(403, r#"{"error":"Authentication failure"}"#)
            };
        }
        let key = &seen.target;
        if key.contains(KEY_404) {
            Reply::json(400, r#"{"error":"Invalid decryption key"}"#)
        } else if key.contains(KEY_SLOW) {
            Reply::delay(Duration::from_secs(3), Reply::json(200, "{}"))
        } else if key.contains(KEY_GARBAGE) {
            Reply::Raw(format!("not HTTP: error for {}\r\n\r\n", seen.target).into_bytes())
        } else if key.contains(KEY_GONE) {
            Reply::json(410, r#"{"error":"gone"}"#)
        } else {
            Reply::json(200, &super::dependency::document_json(true))
        }
    })
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Error pages of the app (404, 504, 502, 410), of edge and of wharf-http,
/// each requested with a key in its URL.
fn error_pages_show_no_secret(client: &dyn Fn(&[&str]) -> String, base: &str) {
    for (key, status) in [
        (KEY_404, "404"),
        (KEY_SLOW, "504"),
        (KEY_GARBAGE, "502"),
        (KEY_GONE, "410"),
    ] {
        let page = client(&[
            "-w",
            "\n%{http_code}",
            &format!("{base}{}", document_path(key)),
        ]);
        assert!(page.ends_with(&format!("\n{status}")), "{key}: {page}");
        for secret in [
            key,
            SECRET_KEY,
            ADMIN_CLIENT_SECRET,
            CLIENT_AUTHORIZATION,
            CLIENT_COOKIE,
        ] {
            assert!(!page.contains(secret), "the {status} page shows {secret}");
        }
    }
    // Error pages of edge and wharf-http themselves.
    for (path, status) in [
        (format!("/%zz?key={KEY}"), "404"),
        (format!("/x?key={KEY}&{}", "a".repeat(20_000)), "414"),
    ] {
        let page = client(&["-w", "\n%{http_code}", &format!("{base}{path}")]);
        // An answer, not a failed request (whose empty output shows nothing).
        assert!(page.ends_with(&format!("\n{status}")), "{path}: {page}");
        assert!(!page.contains(KEY), "{path}: {page}");
    }
}

/// A cookie's value in a curl cookie jar.
fn cookie_value(jar: &str, name: &str) -> String {
    jar.lines()
        .find(|l| l.contains(name))
        .and_then(|l| l.rsplit('\t').next())
        .unwrap()
        .to_owned()
}

/// The whole flow: landing, confirm form, confirm, download. The CSRF token
/// and session cookie it was given.
fn whole_flow(client: &dyn Fn(&[&str]) -> String, base: &str, jar: &str) -> (String, String) {
    let landing = client(&[&format!("{base}{}", document_path(KEY))]);
    assert!(landing.contains("You have a file to download"), "{landing}");
    let confirm_url = format!(
        "{base}/d/{}/{}/confirm-email-address?key={KEY}",
        super::SERVICE_B64,
        super::DOCUMENT_B64
    );
    let form = client(&[&confirm_url]);
    let token = form
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token in {form}"))
        .to_owned();
    let redirect = client(&[
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--data-urlencode",
        &format!("email_address={EMAIL}"),
        "--data-urlencode",
        &format!("csrf_token={token}"),
        &confirm_url,
    ]);
    assert_eq!(redirect, "302");
    let jar_text = std::fs::read_to_string(jar).unwrap();
    assert!(jar_text.contains(SIGNED_DATA), "{jar_text}");
    let csrf_session = cookie_value(&jar_text, "document_download_csrf");
    let download = client(&[&format!(
        "{base}/d/{}/{}/download?key={KEY}",
        super::SERVICE_B64,
        super::DOCUMENT_B64
    )]);
    assert!(download.contains("Download your file"), "{download}");

    (token, csrf_session)
}

fn assert_no_line_shows(logs: &str, secrets: &[&str]) {
    for secret in secrets {
        if let Some(line) = logs.lines().find(|l| l.contains(secret)) {
            panic!("a log line shows {secret}: {line}");
        }
    }
}

#[test]
fn no_secret_reaches_a_log_or_an_error_page_in_a_full_flow() {
    let api_stub = api();
    let mut env = super::api_env(&api_stub);
    env.extend(secret_env());
    env.push(("WEB_CONCURRENCY", "2".to_owned()));
    env.push(("RUST_LOG", "debug".to_owned()));
    env.push(("WHARF_DOWNLOAD_UPSTREAM_TIMEOUT_SECONDS", "1".to_owned()));
    let frontend = frontend(&env);
    let edge = Edge::start(&EdgeSpec {
        servers: format!("{{ address = \"{}\" }}", frontend.addr()),
        tls: true,
        http: "access_log = true".to_owned(),
        ..EdgeSpec::default()
    });
    // Both workers up.
    std::thread::sleep(Duration::from_millis(500));
    let https = edge.https.unwrap();
    let base = format!("https://localhost:{https}");
    let resolve = format!("localhost:{https}:127.0.0.1");
    let jar_dir = tempfile::tempdir().unwrap();
    let jar = jar_dir.path().join("jar").display().to_string();
    let authorization = format!("Authorization: Bearer {CLIENT_AUTHORIZATION}");
    let cookie = format!("Cookie: session={CLIENT_COOKIE}");
    let client = |extra: &[&str]| {
        let mut args = vec![
            "--resolve",
            &resolve,
            "-c",
            &jar,
            "-b",
            &jar,
            "-H",
            &authorization,
            "-H",
            &cookie,
        ];
        args.extend_from_slice(extra);
        curl(&args)
    };

    let (token, csrf_session) = whole_flow(&client, &base, &jar);
    error_pages_show_no_secret(&client, &base);

    let notify_token = api_stub
        .seen()
        .iter()
        .find_map(|s| s.header("authorization"))
        .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned))
        .expect("the Notify API got no token");
    let logs = format!("{}\n{}", frontend.stop(), edge.proc.stop());
    assert!(logs.contains("Served request"), "no access log: {logs}");
    assert!(logs.contains("key=[redacted]"), "{logs}");
    // The workers' error paths were logged (the check is not vacuous).
    assert!(logs.contains("Upstream API timed out"), "{logs}");
    assert!(logs.contains("Upstream API call failed"), "{logs}");
    assert!(logs.contains("\"level\":\"DEBUG\""), "{logs}");
    let secrets = [
        KEY,
        KEY_404,
        KEY_SLOW,
        KEY_GARBAGE,
        KEY_GONE,
        SECRET_KEY,
        DANGEROUS_SALT,
        ADMIN_CLIENT_SECRET,
        REDIS_PASSWORD,
        CLIENT_AUTHORIZATION,
        CLIENT_COOKIE,
        SIGNED_DATA,
        &notify_token,
        &token,
        &csrf_session,
    ];
    assert_no_line_shows(&logs, &secrets);
}

#[test]
fn the_config_report_and_config_errors_show_no_secret() {
    // The configuration report, table and JSON.
    let env: HashMap<&str, String> = secret_env().into_iter().collect();
    for args in [vec!["config"], vec!["config", "--json"]] {
        let out = command(FRONTEND, &env).args(&args).output().unwrap();
        assert!(out.status.success());
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("[redacted]"), "{text}");
        for secret in [
            SECRET_KEY,
            DANGEROUS_SALT,
            ADMIN_CLIENT_SECRET,
            REDIS_PASSWORD,
        ] {
            assert!(!text.contains(secret), "`frontend {args:?}` shows {secret}");
        }
    }
    // A configuration error names the variable, not its secret value.
    let mut bad = env.clone();
    bad.insert("REDIS_URL", format!("http://wharf:{REDIS_PASSWORD}@redis"));
    let out = command(FRONTEND, &bad).arg("config").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("REDIS_URL"), "{stderr}");
    assert!(!stderr.contains(REDIS_PASSWORD), "{stderr}");
}

/// The app reads `key` after percent-decoding parameter names, so
/// `?k%65y=…` is the document key too; the access log must redact it as
/// well.
#[test]
fn a_percent_encoded_key_is_redacted_too() {
    const SNEAKY: &str = "SneakyEncodedKey0x5ecret";
    let api_stub = api();
    let frontend = frontend(&super::api_env(&api_stub));
    let path = format!(
        "/d/{}/{}?k%65y={SNEAKY}",
        super::SERVICE_B64,
        super::DOCUMENT_B64
    );
    let page = super::raw::get(frontend.addr(), &path, &[]);
    assert_eq!(page.status, 200, "the app took k%65y as the key");
    let logs = frontend.stop();
    assert!(logs.contains("Served request"));
    if let Some(line) = logs.lines().find(|l| l.contains(SNEAKY)) {
        panic!("logged: {line}");
    }
}
