//! Redis faults under `frontend`'s rate limiter: Redis killed and restarted
//! under load, and Redis too slow to answer. The limiter fails open
//! (`WHARF_RATELIMIT_ON_REDIS_FAILURE=open`): a Redis fault must cost neither
//! a 5xx nor a slow request, and limiting must come back with Redis.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wharf_test::RedisServer;

use super::raw::get;
use super::{eventually, frontend};
use crate::support::{free_port, Process};

/// The sample document's landing page (served from the local directory).
const PLAIN_DOC: &str = "/d/jTpOLGsfTF6afS8OGzxNXg/HJ9eejstTm-KG5wNLk9qiw?key=c2FtcGxlLWtleS1mb3ItdGhlLXBsYWluLWRvY3VtZW50";

/// A frontend limiting document pages through Redis at `rate` with
/// `burst`, failing open; `prefix` keeps two frontends' keys apart. The
/// loopback is a trusted proxy, so a test picks its client address with
/// `X-Forwarded-For` (a fresh address is a fresh budget, untouched by the
/// local deny cache).
fn limited_frontend(redis_port: u16, rate: &str, burst: u32, prefix: &str) -> Process {
    frontend(&[
        ("WHARF_RATELIMIT_ENABLED", "true".to_owned()),
        ("REDIS_ENABLED", "true".to_owned()),
        ("REDIS_URL", format!("redis://127.0.0.1:{redis_port}/0")),
        ("WHARF_RATELIMIT_DOCUMENT_RATE", rate.to_owned()),
        ("WHARF_RATELIMIT_DOCUMENT_BURST", burst.to_string()),
        ("WHARF_RATELIMIT_ON_REDIS_FAILURE", "open".to_owned()),
        ("WHARF_RATELIMIT_KEY_PREFIX", prefix.to_owned()),
        ("WHARF_RATELIMIT_TRUSTED_PROXIES", "127.0.0.1/32".to_owned()),
        ("WHARF_ACCESS_LOG", "false".to_owned()),
    ])
}

/// The status and latency of one document page request from `client`.
fn timed(addr: SocketAddr, client: &str) -> (u16, Duration) {
    let started = Instant::now();
    let header = format!("X-Forwarded-For: {client}");
    let status = get(addr, PLAIN_DOC, &[&header]).status;
    (status, started.elapsed())
}

/// Two requests from a client never seen before, against a frontend at
/// 1r/m with no burst: `[200, 429]` when Redis limits, `[200, 200]` when
/// the limiter fails open.
fn pair(strict: &Process, client: u32) -> [(u16, Duration); 2] {
    let client = format!(
        "10.{}.{}.{}",
        client >> 16 & 255,
        client >> 8 & 255,
        client & 255
    );
    [timed(strict.addr(), &client), timed(strict.addr(), &client)]
}

/// Waits (`within` at most) until the strict frontend limits through
/// Redis, trying fresh clients from `*next`; how long it took.
fn limiting_within(strict: &Process, next: &mut u32, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut seen = Vec::new();
    let limited = eventually(within, || {
        *next += 1;
        let statuses = pair(strict, *next).map(|(s, _)| s);
        assert!(
            statuses.iter().all(|s| s / 100 != 5),
            "{seen:?} {statuses:?}"
        );
        seen.push(statuses);
        statuses == [200, 429]
    });
    eprintln!("limiting after {:?}: {seen:?}", started.elapsed());
    limited.then(|| started.elapsed())
}

#[test]
fn redis_killed_under_load_fails_open_fast_and_limits_again_after_restart() {
    let mut redis = RedisServer::start();
    let redis_port = redis.port();
    // Load goes to a frontend whose limit is never reached; the restart is
    // judged on one whose limit is reached at a client's second request.
    let loaded = limited_frontend(redis_port, "10000r/s", 10_000, "wharf:rl:loaded");
    let strict = limited_frontend(redis_port, "1r/m", 0, "wharf:rl:strict");
    let mut client = 0;
    assert!(
        limiting_within(&strict, &mut client, Duration::from_secs(3)).is_some(),
        "the limiter does not limit: {}",
        strict.logs()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let addr = loaded.addr();
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    samples.push(timed(addr, "192.0.2.1"));
                }
                samples
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    redis.kill();
    // Down: the strict frontend fails open, a new client's two requests pass.
    std::thread::sleep(Duration::from_millis(300));
    let while_down: Vec<[(u16, Duration); 2]> = (0..5)
        .map(|_| {
            client += 1;
            pair(&strict, client)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::Relaxed);
    let samples: Vec<(u16, Duration)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();

    let failed: Vec<&(u16, Duration)> = samples.iter().filter(|(s, _)| *s != 200).collect();
    let slowest = samples.iter().map(|(_, d)| *d).max().unwrap_or_default();
    eprintln!(
        "{} requests under load, slowest {slowest:?}; strict while down {while_down:?}",
        samples.len()
    );
    assert!(samples.len() > 30, "too little load: {}", samples.len());
    assert!(failed.is_empty(), "non-200 under load: {failed:?}");
    assert!(slowest < Duration::from_secs(1), "slowest {slowest:?}");
    assert!(
        while_down
            .iter()
            .flatten()
            .all(|(s, d)| *s == 200 && *d < Duration::from_secs(1)),
        "not failing open while Redis is down: {while_down:?}"
    );

    // Back on the same port (empty): within 2 s a new client's second
    // request is 429 again.
    redis.restart();
    let back = limiting_within(&strict, &mut client, Duration::from_secs(2));
    assert!(
        back.is_some(),
        "no 429 within 2 s of the restart: {}",
        strict.logs()
    );
}

#[test]
fn a_slow_redis_hits_the_command_timeout_not_the_request_timeout() {
    let redis = RedisServer::start();
    let redis_port = redis.port();
    let strict = limited_frontend(redis_port, "1r/m", 0, "wharf:rl:slow");
    let mut client = 0;
    assert!(
        limiting_within(&strict, &mut client, Duration::from_secs(3)).is_some(),
        "the limiter does not limit: {}",
        strict.logs()
    );

    let started = Instant::now();
    let sleeper = std::thread::spawn(move || {
        Command::new("redis-cli")
            .args(["-p", &redis_port.to_string(), "DEBUG", "SLEEP", "2"])
            .output()
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(200));
    let mut during = Vec::new();
    while started.elapsed() < Duration::from_millis(1600) {
        client += 1;
        during.extend(pair(&strict, client));
    }
    let asleep = sleeper.join().unwrap();
    let slept = started.elapsed();
    let said = String::from_utf8_lossy(&asleep.stdout);
    assert!(said.trim() == "OK", "DEBUG SLEEP: {said} {asleep:?}");
    // The requests were all made while Redis slept.
    assert!(
        slept >= Duration::from_secs(2),
        "Redis slept only {slept:?}"
    );
    let slowest = during.iter().map(|(_, d)| *d).max().unwrap_or_default();
    eprintln!(
        "{} requests while Redis slept, slowest {slowest:?}",
        during.len()
    );
    assert!(during.len() >= 6, "{during:?}");
    assert!(
        during
            .iter()
            .all(|(s, d)| *s == 200 && *d < Duration::from_millis(500)),
        "expected fast 200s (fail open after the 50 ms command timeout): {during:?}"
    );

    // Awake again: limiting resumes (no late reply of a slept command taken
    // for another one's).
    assert!(
        limiting_within(&strict, &mut client, Duration::from_secs(3)).is_some(),
        "no 429 after Redis woke: {}",
        strict.logs()
    );
}

/// The password in `REDIS_URL` reaches no log line, with debug logging on,
/// when Redis refuses it (a real `redis-server` with another password) and
/// when nothing listens there: the client's connection errors are logged,
/// the URL is not.
#[test]
fn the_redis_password_reaches_no_log_when_redis_refuses_it_or_is_down() {
    const PASSWORD: &str = "wrong-redis-password-0x5ecret";
    let redis = RedisServer::start_with(&["--requirepass", "the-right-password"]);
    let port = redis.port();
    for target in [port, free_port()] {
        let front = frontend(&[
            ("WHARF_RATELIMIT_ENABLED", "true".to_owned()),
            ("REDIS_ENABLED", "true".to_owned()),
            (
                "REDIS_URL",
                format!("redis://wharf:{PASSWORD}@127.0.0.1:{target}/0"),
            ),
            ("WHARF_RATELIMIT_ON_REDIS_FAILURE", "open".to_owned()),
            ("RUST_LOG", "debug".to_owned()),
        ]);
        for _ in 0..10 {
            // Fails open: served, whatever Redis says.
            assert_eq!(get(front.addr(), PLAIN_DOC, &[]).status, 200);
        }
        let logs = front.stop();
        // Not vacuous: the failure was noticed and logged.
        assert!(logs.contains("Redis is failing"), "{logs}");
        if let Some(line) = logs.lines().find(|l| l.contains(PASSWORD)) {
            panic!("a log line shows the Redis password: {line}");
        }
    }
}
