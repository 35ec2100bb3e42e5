//! Test support: Redis options and limiters, request builders. The
//! redis-server processes and free ports come from wharf-test.

use std::net::SocketAddr;
use std::time::Duration;

use wharf_ratelimit::{Limiter, RedisOptions, RedisStore, Zone};

/// Test options: the defaults with a fast breaker for tests.
pub fn options(url: &str) -> RedisOptions {
    let mut options = RedisOptions::new(url);
    options.timeout = Duration::from_millis(50);
    options
}

/// A Redis-backed limiter, connected.
pub async fn redis_limiter(options: &RedisOptions, zones: Vec<Zone>) -> Limiter {
    let store = RedisStore::connect(options).unwrap();
    assert!(
        store.wait_connected(Duration::from_secs(5)).await,
        "fred connects"
    );
    let mut builder = Limiter::builder();
    for zone in zones {
        builder = builder.zone(zone);
    }
    builder.redis(store).build().unwrap()
}

/// A request head from `peer` for `path`.
pub fn parts(peer: &str, path: &str) -> http::request::Parts {
    parts_with(peer, http::Method::GET, path)
}

pub fn parts_with(peer: &str, method: http::Method, path: &str) -> http::request::Parts {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .unwrap();
    let addr: SocketAddr = format!("{peer}:40000").parse().unwrap();
    req.extensions_mut().insert(addr);
    req.into_parts().0
}

/// How many of `n` back-to-back checks pass.
pub async fn admitted(limiter: &Limiter, parts: &http::request::Parts, n: usize) -> usize {
    let mut passed = 0;
    for _ in 0..n {
        if limiter.check(parts).await.allowed {
            passed += 1;
        }
    }
    passed
}
