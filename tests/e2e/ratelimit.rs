//! `frontend`'s rate limits, in memory and shared through a real Redis.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use wharf_test::RedisServer;

use crate::support::{free_port, start};

const FRONTEND: &str = env!("CARGO_BIN_EXE_frontend");
const PLAIN_DOC: &str = "/d/jTpOLGsfTF6afS8OGzxNXg/HJ9eejstTm-KG5wNLk9qiw?key=c2FtcGxlLWtleS1mb3ItdGhlLXBsYWluLWRvY3VtZW50";
/// The other sample, which needs email confirmation.
const CONFIRM_DOC: &str = "/d/jTpOLGsfTF6afS8OGzxNXg/fiudTFofSz6cjW8KK0xtjg?key=c2FtcGxlLWtleS1mb3ItdGhlLWNvbmZpcm0tZG9jdW1lbnQ";

/// One request on a fresh connection; returns the status and the raw head.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let head = text.split("\r\n\r\n").next().unwrap_or_default().to_owned();
    (status, head)
}

fn env(port: u16, local_dir: &std::path::Path) -> HashMap<&'static str, String> {
    HashMap::from([
        ("PORT", port.to_string()),
        ("WEB_CONCURRENCY", "1".to_owned()),
        ("WHARF_ACCESS_LOG", "false".to_owned()),
        ("WHARF_DOWNLOAD_LOCAL_DIR", local_dir.display().to_string()),
    ])
}

#[test]
fn document_routes_allow_the_burst_then_answer_429_with_retry_after() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut vars = env(port, dir.path());
    // A slow refill makes the count exact: burst 20 + 1 pass, then 429.
    vars.insert("WHARF_RATELIMIT_DOCUMENT_RATE", "1r/m".to_owned());
    let frontend = start(FRONTEND, &["serve"], &vars, port);
    let statuses: Vec<(u16, String)> = (0..25).map(|_| get(frontend.addr(), PLAIN_DOC)).collect();
    let passed = statuses.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(
        passed,
        21,
        "{:?}",
        statuses.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    // An admitted document page carries the limiter's headers too.
    let first = statuses[0].1.to_ascii_lowercase();
    assert!(first.contains("\r\nratelimit-policy: "), "{first}");
    let (status, head) = &statuses[24];
    assert_eq!(*status, 429);
    let head = head.to_ascii_lowercase();
    assert!(head.contains("\r\nretry-after: "), "{head}");
    assert!(head.contains("\r\nratelimit-policy: "), "{head}");
    // While the client is limited on document pages, health checks are not
    // (more of them than the burst, none with the limiter's headers), and
    // the zone is per client, not per page: another document is limited too.
    for _ in 0..25 {
        let (status, head) = get(frontend.addr(), "/_status");
        assert_eq!(status, 200, "{head}");
        let head = head.to_ascii_lowercase();
        assert!(!head.contains("\r\nratelimit"), "{head}");
    }
    assert_eq!(get(frontend.addr(), CONFIRM_DOC).0, 429);
    assert_eq!(get(frontend.addr(), PLAIN_DOC).0, 429);
}

#[test]
fn two_frontends_sharing_redis_admit_the_configured_rate_together() {
    let redis = RedisServer::start();
    let redis_port = redis.port();
    let dir = tempfile::tempdir().unwrap();
    let mut instances = Vec::new();
    for _ in 0..2 {
        let port = free_port();
        let mut vars = env(port, dir.path());
        vars.insert("REDIS_ENABLED", "true".to_owned());
        vars.insert("REDIS_URL", format!("redis://127.0.0.1:{redis_port}/0"));
        vars.insert("WHARF_RATELIMIT_DOCUMENT_RATE", "40r/s".to_owned());
        vars.insert("WHARF_RATELIMIT_DOCUMENT_BURST", "0".to_owned());
        instances.push(start(FRONTEND, &["serve"], &vars, port));
    }
    let addrs: Vec<SocketAddr> = instances
        .iter()
        .map(crate::support::Process::addr)
        .collect();
    // Both see the same client IP (127.0.0.1): one shared budget.
    let duration = Duration::from_secs(3);
    let started = Instant::now();
    // Each admitted request's time: the budget is measured between the first
    // and the last admission, so slow thread start-up on a loaded machine
    // does not count as time the limiter could have admitted in.
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let addr = addrs[i % 2];
            std::thread::spawn(move || {
                let mut admitted = Vec::new();
                let mut limited = 0_u32;
                while started.elapsed() < duration {
                    match get(addr, PLAIN_DOC).0 {
                        200 => admitted.push(started.elapsed()),
                        429 => limited += 1,
                        other => panic!("unexpected status {other}"),
                    }
                }
                (admitted, limited)
            })
        })
        .collect();
    let mut admitted = Vec::new();
    let mut limited = 0;
    for thread in threads {
        let (a, l) = thread.join().unwrap();
        admitted.extend(a);
        limited += l;
    }
    admitted.sort();
    let ok = u32::try_from(admitted.len()).unwrap();
    let first = admitted.first().copied().unwrap_or_default();
    let last = admitted.last().copied().unwrap_or_default();
    // GCRA at 40 r/s, burst 0: at most one admission every 25 ms from the
    // first, across both processes. Two uncoordinated limiters would admit
    // about twice that. The ceiling is exact (+2 % for clock reads); fewer
    // is possible when the loaded client leaves a slot unused (burst 0 does
    // not bank idle time), so the floor is looser.
    let ceiling = 40.0 * last.saturating_sub(first).as_secs_f64() + 1.0;
    eprintln!("admitted {ok} of at most {ceiling:.1}, {limited} limited");
    assert!(limited > 0, "the load must exceed the rate");
    assert!(
        f64::from(ok) <= ceiling * 1.02,
        "admitted {ok}, more than the shared rate allows ({ceiling:.0})"
    );
    assert!(
        f64::from(ok) >= ceiling * 0.85,
        "admitted {ok}, far below the rate ({ceiling:.0}): is the load reaching both?"
    );
}
