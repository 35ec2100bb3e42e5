//! Redis misbehaving under load: killed, frozen, restarted empty. The site
//! must keep answering (no 5xx), each check bounded by the time budget, the
//! breaker must stop the waiting, and limiting must come back by itself.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use http::{Request, Response};
use tower::{Layer, ServiceExt};
use wharf_ratelimit::{BreakerState, Limiter, Rate, RateLimitLayer, RedisOptions, Source, Zone};
use wharf_test::RedisServer;

use crate::support::{parts, redis_limiter};

const BUDGET: Duration = Duration::from_millis(50);
/// Scheduling slack on a shared 2-core machine (debug build, parallel tests).
const SLACK: Duration = Duration::from_millis(150);

fn opts(redis: &RedisServer) -> RedisOptions {
    let mut options = RedisOptions::new(redis.url());
    options.timeout = BUDGET;
    options.breaker_failures = 5;
    options.breaker_cooldown = Duration::from_millis(500);
    options
}

/// Sends `n` requests through the layer, one client each (never limited);
/// returns the slowest and the statuses.
async fn load(limiter: &Limiter, n: usize) -> (Duration, Vec<u16>) {
    let app = tower::service_fn(|_r: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::from("ok")))
    });
    let svc = RateLimitLayer::new(limiter.clone()).layer(app);
    let mut slowest = Duration::ZERO;
    let mut statuses = Vec::new();
    for i in 0..n {
        let mut req = Request::new(String::new());
        let peer = format!("10.{}.{}.{}:1", (i >> 16) & 255, (i >> 8) & 255, i & 255);
        req.extensions_mut()
            .insert(peer.parse::<std::net::SocketAddr>().unwrap());
        let started = Instant::now();
        let response = svc.clone().oneshot(req).await.unwrap();
        slowest = slowest.max(started.elapsed());
        statuses.push(response.status().as_u16());
    }
    (slowest, statuses)
}

#[tokio::test]
async fn killed_redis_mid_load_adds_at_most_the_budget_then_the_breaker_skips_it() {
    let mut redis = RedisServer::start();
    let limiter = redis_limiter(
        &opts(&redis),
        vec![Zone::new("z", "1r/s".parse::<Rate>().unwrap())],
    )
    .await;
    let (_, statuses) = load(&limiter, 200).await;
    assert!(statuses.iter().all(|s| *s == 200));
    redis.kill();
    let (slowest, statuses) = load(&limiter, 500).await;
    assert!(
        statuses.iter().all(|s| *s == 200),
        "fail open: no 5xx, no 429"
    );
    assert!(slowest <= BUDGET + SLACK, "slowest check {slowest:?}");
    let m = limiter.metrics();
    assert!(m.redis_errors() >= 5, "errors {}", m.redis_errors());
    assert!(
        m.redis_skipped() > 300,
        "the breaker skipped Redis: {}",
        m.redis_skipped()
    );
    assert!(m.zone("z").unwrap().fallback() >= 500);
    assert_ne!(
        limiter.redis().unwrap().breaker_state(),
        BreakerState::Closed
    );
}

#[tokio::test]
async fn frozen_redis_costs_each_request_at_most_the_budget() {
    let redis = RedisServer::start();
    let limiter = redis_limiter(
        &opts(&redis),
        vec![Zone::new("z", "1r/s".parse::<Rate>().unwrap())],
    )
    .await;
    assert!(limiter.check(&parts("192.0.2.1", "/")).await.allowed);
    redis.signal("STOP");
    let started = Instant::now();
    let (slowest, statuses) = load(&limiter, 100).await;
    let total = started.elapsed();
    redis.signal("CONT");
    assert!(statuses.iter().all(|s| *s == 200));
    assert!(slowest <= BUDGET + SLACK, "slowest {slowest:?}");
    // Only the first few waited the budget; then the breaker skipped Redis.
    assert!(total < BUDGET * 20, "100 requests took {total:?}");
    assert!(limiter.metrics().redis_skipped() >= 80);
}

#[tokio::test]
async fn restarted_empty_redis_gets_the_script_again_and_limiting_resumes_within_2s() {
    let mut redis = RedisServer::start();
    let limiter = redis_limiter(
        &opts(&redis),
        vec![Zone::new("z", "1r/m".parse::<Rate>().unwrap())],
    )
    .await;
    let client = parts("192.0.2.99", "/");
    assert!(limiter.check(&client).await.allowed);
    assert!(!limiter.check(&parts("192.0.2.99", "/")).await.allowed);
    redis.kill();
    // Traffic while it is down opens the breaker.
    for i in 0..20 {
        let _ = limiter
            .check(&parts(&format!("192.0.2.{}", 100 + i), "/"))
            .await;
    }
    redis.restart();
    let restarted = Instant::now();
    // A new client: allowed once via Redis, then limited via Redis.
    let fresh = parts("198.51.100.99", "/");
    let mut first_allowed = false;
    let resumed = loop {
        let d = limiter.check(&fresh).await;
        if d.zones[0].source == Source::Redis || d.zones[0].source == Source::DenyCache {
            if d.allowed {
                first_allowed = true;
            } else if first_allowed {
                break restarted.elapsed();
            }
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "limiting did not resume"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("limiting resumed {resumed:?} after the restart");
    assert!(
        resumed <= Duration::from_secs(2),
        "resumed after {resumed:?}"
    );
    assert_eq!(
        limiter.redis().unwrap().breaker_state(),
        BreakerState::Closed
    );
    // The restarted server has the script cached again (EVAL on NOSCRIPT):
    // the batch script, which a store not on Cluster sends.
    let sha = fred::util::sha1_hash(wharf_ratelimit::scripts::BATCH_SCRIPT);
    assert_eq!(redis.cmd(&["SCRIPT", "EXISTS", &sha]), "1");
}
