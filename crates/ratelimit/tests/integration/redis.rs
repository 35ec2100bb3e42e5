//! The Redis store against a real redis-server: semantics, coordination
//! between independent limiters, the script, the deny cache, failure modes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wharf_ratelimit::{
    FailureMode, KeySource, Limiter, Rate, RedisOptions, RedisStore, Source, StoreKind, Zone,
};
use wharf_test::RedisServer;

use crate::support::{admitted, options, parts, parts_with, redis_limiter};

fn rate(text: &str) -> Rate {
    text.parse().unwrap()
}

#[tokio::test]
async fn burst_and_nodelay_counts_match_nginx_through_redis() {
    let redis = RedisServer::start();
    let limiter = redis_limiter(
        &options(&redis.url()),
        vec![
            Zone::new("api", rate("10r/s")).burst(20).nodelay(),
            Zone::new("strict", rate("1r/s"))
                .burst(0)
                .key(KeySource::Route),
        ],
    )
    .await;
    // burst=20 nodelay: 21 at once for one client (the route zone is keyed differently).
    let mut passed = 0;
    for i in 0..30 {
        let p = parts("192.0.2.10", &format!("/item/{i}"));
        let d = limiter.check(&p).await;
        assert!(d
            .zones
            .iter()
            .all(|z| z.source == Source::Redis || z.source == Source::DenyCache));
        passed += usize::from(d.allowed);
    }
    assert_eq!(passed, 21);
    // The state lives in Redis under hash-tagged keys with a PX expiry.
    let key = limiter.redis().unwrap().redis_key("api", "192.0.2.10");
    assert_eq!(key, "wharf:rl:{k:192.0.2.10}:api");
    let pttl: i64 = redis.cmd(&["PTTL", &key]).parse().unwrap();
    assert!((1..=2_100).contains(&pttl), "PTTL {pttl}");
    // After 100 ms exactly one more.
    tokio::time::sleep(Duration::from_millis(110)).await;
    let p = parts("192.0.2.10", "/x/1");
    assert_eq!(admitted(&limiter, &p, 3).await, 1);
}

#[tokio::test]
async fn delaying_mode_and_retry_after_come_from_the_redis_clock() {
    let redis = RedisServer::start();
    let limiter = redis_limiter(
        &options(&redis.url()),
        vec![Zone::new("d", rate("10r/s")).burst(3)],
    )
    .await;
    let p = parts("192.0.2.20", "/");
    let mut delays = Vec::new();
    for _ in 0..4 {
        let d = limiter.check(&p).await;
        assert!(d.allowed);
        delays.push(d.delay.as_millis());
    }
    // Each back-to-back request waits one more interval (checks take < 10 ms each).
    for (k, ms) in delays.iter().enumerate() {
        let expected = 100 * k as u128;
        assert!(*ms <= expected && *ms + 15 >= expected, "{delays:?}");
    }
    let rejected = limiter.check(&p).await;
    assert!(!rejected.allowed);
    assert!(
        rejected.retry_after <= Duration::from_millis(100)
            && rejected.retry_after > Duration::from_millis(70)
    );
    assert_eq!(rejected.retry_after_seconds(), 1);
}

#[tokio::test]
async fn several_zones_are_all_or_nothing_in_one_script_and_across_keys() {
    let redis = RedisServer::start();
    let limiter = redis_limiter(
        &options(&redis.url()),
        vec![
            // A global zone: a different key, so a different slot and its own
            // round trip, made first and refunded when the next one rejects.
            Zone::new("global", rate("1r/m"))
                .burst(100)
                .nodelay()
                .key(KeySource::Global),
            Zone::new("loose", rate("10r/s")).burst(10).nodelay(),
            Zone::new("tight", rate("1r/m")).burst(2).nodelay(),
        ],
    )
    .await;
    let p = parts("192.0.2.30", "/");
    assert_eq!(
        admitted(&limiter, &p, 6).await,
        3,
        "the tight zone admits 3"
    );
    let store = limiter.redis().unwrap();
    // loose was charged exactly 3 times: TAT = now + 3 intervals (0.3 s) at most.
    let loose_tat: u64 = redis
        .cmd(&["GET", &store.redis_key("loose", "192.0.2.30")])
        .parse()
        .unwrap();
    let now: Vec<u64> = redis
        .cmd(&["TIME"])
        .split(' ')
        .map(|s| s.parse().unwrap())
        .collect();
    let now = now[0] * 1_000_000 + now[1];
    assert!(
        loose_tat <= now + 300_000 && loose_tat + 100_000 > now + 200_000,
        "loose charged 3 times"
    );
    // The global zone (its own round trip, first) was refunded for the
    // rejected request: exactly 3 charges of 60 s.
    let global_tat: u64 = redis
        .cmd(&["GET", &store.redis_key("global", "")])
        .parse()
        .unwrap();
    let charged = (global_tat - now + 59_000_000) / 60_000_000;
    assert_eq!(charged, 3);
    // Once the tight zone rejects a key, the deny cache answers locally.
    let calls = limiter.metrics().redis_calls();
    for _ in 0..50 {
        assert!(!limiter.check(&p).await.allowed);
    }
    assert_eq!(
        limiter.metrics().redis_calls(),
        calls,
        "no round trips while denied"
    );
    assert!(limiter.metrics().deny_cache_hits() >= 50);
}

#[tokio::test]
async fn rejected_requests_are_not_charged_in_redis() {
    let redis = RedisServer::start();
    // Deny cache off, so every rejection really reaches the script.
    let mut opts = options(&redis.url());
    opts.deny_cache_keys = 0;
    let limiter = redis_limiter(&opts, vec![Zone::new("z", rate("5r/s")).burst(1).nodelay()]).await;
    let p = parts("192.0.2.40", "/");
    assert_eq!(admitted(&limiter, &p, 2).await, 2);
    let key = limiter.redis().unwrap().redis_key("z", "192.0.2.40");
    let before = redis.cmd(&["GET", &key]);
    assert_eq!(admitted(&limiter, &p, 200).await, 0);
    assert_eq!(
        redis.cmd(&["GET", &key]),
        before,
        "rejections leave the TAT alone"
    );
    tokio::time::sleep(Duration::from_millis(220)).await;
    assert_eq!(admitted(&limiter, &p, 3).await, 1);
}

/// Two independent limiters (two fred clients, two deny caches), as two
/// replicas would be, hammer one key through one Redis: together they admit
/// the configured rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_sharing_redis_admit_the_configured_rate_together() {
    let redis = RedisServer::start();
    let zone = || Zone::new("shared", rate("200r/s")).burst(10).nodelay();
    let a = redis_limiter(&options(&redis.url()), vec![zone()]).await;
    let b = redis_limiter(&options(&redis.url()), vec![zone()]).await;
    let admitted = Arc::new(AtomicUsize::new(0));
    let per_replica = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let run_for = Duration::from_secs(3);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (i, limiter) in [a, b].into_iter().enumerate() {
        for _ in 0..4 {
            let limiter: Limiter = limiter.clone();
            let admitted = Arc::clone(&admitted);
            let mine = Arc::clone(&per_replica[i]);
            tasks.push(tokio::spawn(async move {
                let p = parts("203.0.113.50", "/");
                let mut last = Instant::now();
                while start.elapsed() < run_for {
                    if limiter.check(&p).await.allowed {
                        admitted.fetch_add(1, Ordering::Relaxed);
                        mine.fetch_add(1, Ordering::Relaxed);
                    }
                    last = Instant::now();
                    tokio::task::yield_now().await;
                }
                last
            }));
        }
    }
    let mut end = start;
    for t in tasks {
        end = end.max(t.await.unwrap());
    }
    let elapsed = end - start;
    let total = admitted.load(Ordering::Relaxed);
    let expected = 11.0 + elapsed.as_secs_f64() * 200.0;
    let error = (total as f64 - expected).abs() / expected;
    eprintln!(
        "admitted {total} (replica a {}, b {}), expected {expected:.0} over {elapsed:?}: error {:.2}%",
        per_replica[0].load(Ordering::Relaxed),
        per_replica[1].load(Ordering::Relaxed),
        error * 100.0
    );
    assert!(error <= 0.02, "admitted {total}, expected {expected:.0}");
    assert!(
        per_replica[0].load(Ordering::Relaxed) > 50 && per_replica[1].load(Ordering::Relaxed) > 50,
        "both replicas admit"
    );
}

#[tokio::test]
async fn flushed_scripts_are_reloaded_without_an_error() {
    // Batched checks (the default) send the batch script; `max_batch = 1`
    // sends each check's own.
    for (max_batch, script) in [
        (128, wharf_ratelimit::scripts::BATCH_SCRIPT),
        (1, wharf_ratelimit::scripts::CHECK_SCRIPT),
    ] {
        let redis = RedisServer::start();
        let mut opts = options(&redis.url());
        opts.max_batch = max_batch;
        let limiter = redis_limiter(&opts, vec![Zone::new("z", rate("1r/s"))]).await;
        assert!(limiter.check(&parts("192.0.2.60", "/")).await.allowed);
        let sha = fred::util::sha1_hash(script);
        assert_eq!(redis.cmd(&["SCRIPT", "EXISTS", &sha]), "1");
        assert_eq!(redis.cmd(&["SCRIPT", "FLUSH"]), "OK");
        assert_eq!(redis.cmd(&["SCRIPT", "EXISTS", &sha]), "0");
        let d = limiter.check(&parts("192.0.2.61", "/")).await;
        assert!(d.allowed);
        assert_eq!(d.zones[0].source, Source::Redis);
        assert_eq!(limiter.metrics().redis_errors(), 0);
        // EVAL cached it again: the next check is an EVALSHA hit.
        assert_eq!(redis.cmd(&["SCRIPT", "EXISTS", &sha]), "1");
        assert!(!limiter.check(&parts("192.0.2.61", "/")).await.allowed);
    }
}

#[tokio::test]
async fn failure_modes_open_closed_and_local_when_redis_is_unreachable() {
    // Nothing listens on this port.
    let port = wharf_test::free_port();
    let mut opts = options(&format!("redis://127.0.0.1:{port}"));
    opts.breaker_failures = 1_000;
    let store = RedisStore::connect(&opts).unwrap();
    let limiter = Limiter::builder()
        .zone(Zone::new("open", rate("1r/m")).when(|p| p.uri.path() == "/open"))
        .zone(
            Zone::new("closed", rate("1r/m"))
                .on_redis_failure(FailureMode::Closed)
                .when(|p| p.uri.path() == "/closed"),
        )
        .zone(
            Zone::new("local", rate("1r/m"))
                .burst(1)
                .nodelay()
                .on_redis_failure(FailureMode::Local)
                .when(|p| p.uri.path() == "/local"),
        )
        .zone(
            Zone::new("memory", rate("1r/m"))
                .store(StoreKind::Memory)
                .when(|p| p.uri.path() == "/memory"),
        )
        .redis(store)
        .build()
        .unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        let d = limiter.check(&parts("192.0.2.70", "/open")).await;
        assert!(d.allowed);
        assert_eq!(d.zones[0].source, Source::FailedOpen);
        assert!(started.elapsed() < Duration::from_millis(500));
    }
    let d = limiter.check(&parts("192.0.2.70", "/closed")).await;
    assert!(!d.allowed);
    assert_eq!(d.zones[0].source, Source::FailedClosed);
    assert_eq!(d.retry_after_seconds(), 1);
    assert_eq!(
        admitted(&limiter, &parts("192.0.2.70", "/local"), 5).await,
        2,
        "local fallback limits"
    );
    assert_eq!(
        admitted(&limiter, &parts("192.0.2.70", "/memory"), 5).await,
        1
    );
    assert!(limiter.metrics().redis_errors() >= 6);
    assert!(limiter.metrics().fallback_active() || limiter.metrics().redis_errors() > 0);
    // Readiness: a zone fails closed, so Redis being down makes the instance unready.
    let err = limiter.readiness().await.unwrap_err();
    assert!(err.contains("fails closed"), "{err}");
}

#[tokio::test]
async fn readiness_reports_redis_but_stays_ready_when_failing_open() {
    let mut redis = RedisServer::start();
    let limiter = redis_limiter(&options(&redis.url()), vec![Zone::new("z", rate("1r/s"))]).await;
    assert_eq!(limiter.readiness().await, Ok(()));
    assert_eq!(limiter.redis_state(), "ok");
    redis.kill();
    for _ in 0..10 {
        let _ = limiter
            .check(&parts_with("192.0.2.80", http::Method::GET, "/"))
            .await;
    }
    assert_eq!(
        limiter.readiness().await,
        Ok(()),
        "fail-open zones keep the instance ready"
    );
    assert_ne!(limiter.redis_state(), "ok");
}

/// Concurrent checks go to Redis together (one script call for many) and
/// each keeps its meaning: of 200 checks on one key at once, exactly
/// `burst + 1` pass; a two-zone group passes or fails whole; a batch
/// counts a key charged by an earlier check of the same batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_checks_share_script_calls_and_stay_exact() {
    let redis = RedisServer::start();
    // A budget no loaded test machine reaches: every check must be decided
    // by Redis, not by the failure mode after a 50 ms timeout.
    let mut budget = options(&redis.url());
    budget.timeout = Duration::from_secs(5);
    let limiter = redis_limiter(
        &budget,
        vec![
            Zone::new("doc", rate("1r/m")).burst(49).nodelay(),
            Zone::new("all", rate("1r/m")).burst(29).nodelay(),
        ],
    )
    .await;
    let calls = |redis: &RedisServer| -> u64 {
        let stats = redis.cmd(&["INFO", "commandstats"]);
        stats
            .lines()
            .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    };
    let before = calls(&redis);
    let mut set = tokio::task::JoinSet::new();
    for i in 0..200 {
        let limiter = limiter.clone();
        // Half the requests from one client, half from 100 others: every
        // request meets both zones (keyed by client IP), so the client's
        // requests stop at "all"'s 30 and the others each pass once.
        let peer = if i % 2 == 0 {
            "192.0.2.70".to_owned()
        } else {
            format!("198.51.100.{}", i / 2)
        };
        set.spawn(async move { (i % 2 == 0, limiter.check(&parts(&peer, "/")).await) });
    }
    let (mut same, mut others) = (0, 0);
    while let Some(joined) = set.join_next().await {
        let (one_client, decision) = joined.unwrap();
        assert!(
            decision.zones.iter().all(|z| z.source == Source::Redis),
            "{decision:?}"
        );
        if decision.allowed {
            if one_client {
                same += 1;
            } else {
                others += 1;
            }
        }
    }
    assert_eq!(same, 30, "the one client: the smaller zone's burst + 1");
    assert_eq!(others, 100, "each other client passes once");
    let script_calls = calls(&redis) - before;
    eprintln!("{script_calls} script calls for 200 concurrent checks");
    assert!(
        script_calls < 100,
        "{script_calls} script calls for 200 concurrent checks"
    );
    // Nothing was charged past the burst: the one client's keys hold 30
    // requests in both zones (rejected groups charged neither).
    let tat = |zone: &str| -> i64 {
        let key = format!("wharf:rl:{{k:192.0.2.70}}:{zone}");
        redis.cmd(&["PTTL", &key]).parse().unwrap()
    };
    assert!(
        (29 * 60_000..=30 * 60_000).contains(&tat("doc")),
        "{}",
        tat("doc")
    );
    assert!(
        (29 * 60_000..=30 * 60_000).contains(&tat("all")),
        "{}",
        tat("all")
    );
}

#[test]
fn cluster_urls_and_max_batch_1_send_each_check_alone() {
    let store = |url: &str, cluster: bool, max_batch: usize| {
        let mut options = RedisOptions::new(url);
        options.cluster = cluster;
        options.max_batch = max_batch;
        RedisStore::lazy(&options).unwrap().batches()
    };
    assert!(store("redis://127.0.0.1:6379", false, 128));
    assert!(!store("redis://127.0.0.1:6379", true, 128));
    assert!(!store("redis-cluster://127.0.0.1:7000", false, 128));
    assert!(!store("redis://127.0.0.1:6379", false, 1));
}
