//! Hardening (issue 26): `frontend` as a process where a security property
//! must hold even when something underneath fails or is misconfigured.
//!
//! - The operating system's random generator fails: no page is served with a
//!   guessable CSP nonce or CSRF secret, and the start fails rather than make a
//!   guessable signing key. `getrandom(2)` is made to fail for real, inside the
//!   built binary, by a tiny `LD_PRELOAD` library compiled here (`cc`): the
//!   `getrandom` crate reaches the kernel through libc's `syscall()`, which the
//!   library wraps to answer `EIO` while a flag file exists.
//! - Weak keys (seed 003, "Hardcoded Secret Keys"): in preview, staging and
//!   production `frontend` refuses to start (78) with a `SECRET_KEY`,
//!   `DANGEROUS_SALT` or `ADMIN_CLIENT_SECRET` shorter than 32 bytes, equal
//!   to another, or shipped in the repository, naming each, never showing
//!   one; with fresh distinct keys it serves.
//!
//! The scenarios and their results are listed in docs/reliability.md.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::reliability::{frontend, DOCUMENT_B64, FRONTEND, SERVICE_B64};
use crate::support::{command, curl, free_port, require_tool, strong_key};

/// The sample document that needs email confirmation (seeded by the local
/// document API): its confirm page sets the CSRF cookie.
fn confirm_path() -> String {
    format!(
        "/d/{SERVICE_B64}/{DOCUMENT_B64}/confirm-email-address?key=c2FtcGxlLWtleS1mb3ItdGhlLWNvbmZpcm0tZG9jdW1lbnQ"
    )
}

/// The `LD_PRELOAD` library: `syscall(SYS_getrandom, buf, len > 0, …)` fails
/// with `EIO` while the file named by `GETRANDOM_FAIL_IF_EXISTS` exists. The
/// zero-length probe the `getrandom` crate makes first passes, so the crate
/// keeps using the system call (rather than falling back to `/dev/urandom`).
/// libc's own `getrandom()` (std's hash-map keys) is left alone.
const FAILING_GETRANDOM_C: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static int failing(void) {
    const char *flag = getenv("GETRANDOM_FAIL_IF_EXISTS");
    return flag != NULL && access(flag, F_OK) == 0;
}

long syscall(long number, ...) {
    va_list ap;
    va_start(ap, number);
    long a = va_arg(ap, long), b = va_arg(ap, long), c = va_arg(ap, long);
    long d = va_arg(ap, long), e = va_arg(ap, long), f = va_arg(ap, long);
    va_end(ap);
    if (number == SYS_getrandom && b > 0 && failing()) {
        errno = EIO;
        return -1;
    }
    static long (*real)(long, ...);
    if (real == NULL) {
        real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    }
    return real(number, a, b, c, d, e, f);
}
"#;

/// The failing-generator library, built once per test run into `dir`; `None`
/// (test skipped, said so) without a C compiler outside CI.
fn failing_getrandom(dir: &Path) -> Option<PathBuf> {
    let cc = require_tool("cc", "apt-get install -y gcc")?;
    let source = dir.join("failing_getrandom.c");
    let library = dir.join("failing_getrandom.so");
    std::fs::write(&source, FAILING_GETRANDOM_C).unwrap();
    let out = std::process::Command::new(cc)
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&library)
        .arg(&source)
        .arg("-ldl")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(library)
}

/// (status, headers, body) of a GET, headers lower-cased.
fn get(port: u16, path: &str) -> (u16, String, String) {
    let (ok, out) = curl(&["-i", &format!("http://127.0.0.1:{port}{path}")]);
    assert!(ok, "curl failed: {out}");
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

#[test]
fn a_failing_random_generator_fails_the_request_never_a_guessable_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(library) = failing_getrandom(tmp.path()) else {
        return;
    };
    let flag = tmp.path().join("fail-now");
    let server = frontend(&[
        ("LD_PRELOAD", library.display().to_string()),
        ("GETRANDOM_FAIL_IF_EXISTS", flag.display().to_string()),
    ]);
    let confirm = confirm_path();

    // The generator works: the confirm form with a fresh CSRF secret.
    let (status, head, body) = get(server.port(), &confirm);
    assert_eq!(status, 200, "{head}{body}");
    assert!(
        head.contains("set-cookie: document_download_csrf="),
        "{head}"
    );
    assert!(body.contains("csrf_token"), "{body}");

    // getrandom(2) now fails: no page carries a secret or a nonce made up
    // from anything else.
    std::fs::write(&flag, b"").unwrap();
    let (status, head, body) = get(server.port(), &confirm);
    let (landing_status, landing_head, _) =
        get(server.port(), &crate::reliability::document_path("x"));
    std::fs::remove_file(&flag).unwrap();
    assert_eq!(status, 500, "{head}{body}");
    assert!(!head.contains("set-cookie"), "{head}");
    assert!(!body.contains("csrf_token"), "{body}");
    assert!(
        !head.contains("'nonce-"),
        "a nonce without a generator: {head}"
    );
    assert!(
        head.contains("content-security-policy: default-src 'self'"),
        "{head}"
    );
    assert!(head.contains("x-frame-options: deny"), "{head}");
    assert_eq!(landing_status, 500, "{landing_head}");
    assert!(!landing_head.contains("'nonce-"), "{landing_head}");

    // The generator is back: so are the pages.
    let (status, head, _) = get(server.port(), &confirm);
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("set-cookie: document_download_csrf="),
        "{head}"
    );

    let logs = server.stop();
    let errors: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\"") && l.contains("random generator failed"))
        .collect();
    assert!(errors.len() >= 2, "no error logged:\n{logs}");
    assert!(
        !logs.contains("fallback"),
        "a fallback generator was used:\n{logs}"
    );
}

#[test]
fn a_failing_random_generator_at_start_up_stops_the_start() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(library) = failing_getrandom(tmp.path()) else {
        return;
    };
    let flag = tmp.path().join("fail-now");
    std::fs::write(&flag, b"").unwrap();
    let local = tmp.path().join("local");
    let port = free_port();
    // Development with a new local document directory: the local API must
    // make the key it signs access cookies with.
    let env = HashMap::from([
        ("PORT", port.to_string()),
        ("WEB_CONCURRENCY", "0".to_owned()),
        ("WHARF_LOG_FORMAT", "json".to_owned()),
        ("WHARF_RATELIMIT_ENABLED", "false".to_owned()),
        ("WHARF_DOWNLOAD_LOCAL_DIR", local.display().to_string()),
        ("LD_PRELOAD", library.display().to_string()),
        ("GETRANDOM_FAIL_IF_EXISTS", flag.display().to_string()),
    ]);
    let mut child = command(FRONTEND, &env)
        .args(["serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        let listening = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if listening || Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "frontend started without a random generator:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let logs = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(69), "{logs}");
    assert!(logs.contains("random generator failed"), "{logs}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "something listens on {port}"
    );
    assert!(
        !local.join(".signing-key").exists(),
        "a signing key was written without a random generator"
    );
}

/// A key that ships in the repository (frontend's development key): 33
/// bytes, so only the shipped-values list refuses it.
const SHIPPED_SECRET_KEY: &str = "wharf-development-only-secret-key";

/// What a deployed `frontend` needs besides its keys (one process, loopback).
fn deployed_env(environment: &str, port: u16) -> HashMap<&'static str, String> {
    HashMap::from([
        ("NOTIFY_ENVIRONMENT", environment.to_owned()),
        ("PORT", port.to_string()),
        ("WHARF_BIND_ADDRESS", "127.0.0.1".to_owned()),
        ("WEB_CONCURRENCY", "0".to_owned()),
        ("WHARF_LOG_FORMAT", "json".to_owned()),
        ("WHARF_RATELIMIT_ENABLED", "false".to_owned()),
        ("REDIS_ENABLED", "false".to_owned()),
        ("REDIS_URL", format!("redis://127.0.0.1:{}/0", free_port())),
        ("API_HOST_NAME", "https://api.invalid".to_owned()),
        (
            "DOCUMENT_DOWNLOAD_API_HOST_NAME",
            "https://download.invalid".to_owned(),
        ),
        (
            "DOCUMENT_DOWNLOAD_API_HOST_NAME_INTERNAL",
            "https://download.invalid".to_owned(),
        ),
        ("HTTP_PROTOCOL", "https".to_owned()),
    ])
}

/// Runs `frontend serve` with `env` until it exits (its code and all it
/// printed) or listens on `port` (`None`, and it is stopped). With no port
/// to watch (one it would share with other tests, such as the default
/// 7001), only its exit counts: it must exit within the deadline.
fn exit_or_listen(env: &HashMap<&str, String>, port: Option<u16>) -> (Option<i32>, String) {
    let mut child = command(FRONTEND, env)
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if let Some(port) = port.filter(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok())
        {
            let (ok, body) = curl(&[&format!("http://127.0.0.1:{port}/_status")]);
            assert!(ok && body.contains("\"status\":\"ok\""), "{body}");
            let _ = child.kill();
            break None;
        }
        assert!(
            Instant::now() < deadline,
            "frontend neither exited nor listened: it started"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (code, printed)
}

#[test]
fn a_deployed_frontend_refuses_shipped_short_and_shared_keys_never_showing_them() {
    // A shipped SECRET_KEY, everything else right.
    let port = free_port();
    let mut env = deployed_env("production", port);
    env.insert("SECRET_KEY", SHIPPED_SECRET_KEY.to_owned());
    env.insert("DANGEROUS_SALT", strong_key());
    env.insert("ADMIN_CLIENT_SECRET", strong_key());
    let (code, printed) = exit_or_listen(&env, Some(port));
    assert_eq!(code, Some(78), "started with a shipped key:\n{printed}");
    assert!(
        printed.contains(
            "frontend: invalid configuration for NOTIFY_ENVIRONMENT=production (1 problem):\n  \
             SECRET_KEY: a value that ships in wharf's repository"
        ),
        "{printed}"
    );
    assert!(!printed.contains(SHIPPED_SECRET_KEY), "{printed}");

    // One run, every problem in the one error: a shipped SECRET_KEY, the
    // same key twice, and PORT missing.
    let port = free_port();
    let shared = strong_key();
    let mut env = deployed_env("production", port);
    env.remove("PORT");
    env.insert("SECRET_KEY", SHIPPED_SECRET_KEY.to_owned());
    env.insert("DANGEROUS_SALT", shared.clone());
    env.insert("ADMIN_CLIENT_SECRET", shared.clone());
    let (code, printed) = exit_or_listen(&env, None);
    assert_eq!(code, Some(78), "started with a shipped key:\n{printed}");
    for expected in [
        "invalid configuration for NOTIFY_ENVIRONMENT=production (3 problems)",
        "PORT: required in production, not set",
        "SECRET_KEY: a value that ships in wharf's repository",
        "ADMIN_CLIENT_SECRET: the same value as DANGEROUS_SALT",
    ] {
        assert!(printed.contains(expected), "no {expected:?} in:\n{printed}");
    }
    assert!(!printed.contains("DANGEROUS_SALT:"), "{printed}");
    assert!(!printed.contains(SHIPPED_SECRET_KEY), "{printed}");
    assert!(!printed.contains(&shared), "{printed}");

    // Too short, in every deployed environment.
    for environment in ["preview", "staging", "production"] {
        let port = free_port();
        let short = strong_key()[..31].to_owned();
        let mut env = deployed_env(environment, port);
        env.insert("SECRET_KEY", short.clone());
        env.insert("DANGEROUS_SALT", strong_key());
        env.insert("ADMIN_CLIENT_SECRET", strong_key());
        let (code, printed) = exit_or_listen(&env, Some(port));
        assert_eq!(
            code,
            Some(78),
            "{environment} started with a short key:\n{printed}"
        );
        assert!(
            printed.contains(&format!(
                "SECRET_KEY: too short for {environment}: 31 bytes, at least 32 needed"
            )),
            "{printed}"
        );
        assert!(printed.contains("(1 problem)"), "{printed}");
        assert!(!printed.contains(&short), "{printed}");
    }
}

#[test]
fn a_deployed_frontend_starts_with_fresh_distinct_keys_and_test_keeps_any() {
    let port = free_port();
    let mut env = deployed_env("production", port);
    env.insert("SECRET_KEY", strong_key());
    env.insert("DANGEROUS_SALT", strong_key());
    env.insert("ADMIN_CLIENT_SECRET", strong_key());
    let (code, printed) = exit_or_listen(&env, Some(port));
    assert_eq!(code, None, "refused good keys:\n{printed}");

    // `test` is like development (automated runs, `.env` read): a shipped
    // key is still accepted there.
    let port = free_port();
    let mut env = deployed_env("test", port);
    env.insert("SECRET_KEY", SHIPPED_SECRET_KEY.to_owned());
    let (code, printed) = exit_or_listen(&env, Some(port));
    assert_eq!(code, None, "test refused a sample key:\n{printed}");
}
