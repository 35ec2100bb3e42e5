//! wharf-ratelimit benchmark: in-memory checks/s on one core, Redis-backed
//! check latency (p50/p99) and throughput, and `redis-benchmark` SET against
//! the same redis-server in the same run. Loopback only, bounded duration.
//!
//! Run with `bench/ratelimit.sh` (or `cargo bench -p wharf-ratelimit --bench ratelimit`).
// A benchmark program: casts between counts and floats are for reporting.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::too_many_lines,
    missing_docs
)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use wharf_ratelimit::{KeySource, Limiter, Policy, Rate, RedisOptions, RedisStore, Zone};
use wharf_test::RedisServer;

fn parts_for(i: usize) -> http::request::Parts {
    let mut req = http::Request::get("/d/x").body(()).unwrap();
    let peer = SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 40000));
    req.extensions_mut().insert(peer);
    req.into_parts().0
}

fn measure_memory() {
    // Pure arithmetic, for reference.
    let policy = Policy::new(Rate::per_second(10).unwrap(), 20).nodelay();
    let started = Instant::now();
    let mut tat = 0u64;
    let n = 50_000_000u64;
    for now in 1..=n {
        let o = policy.decide(tat, std::hint::black_box(now * 7));
        if o.allowed {
            tat = o.tat;
        }
    }
    std::hint::black_box(tat);
    println!(
        "gcra arithmetic:        {:>12.0} decisions/s",
        n as f64 / started.elapsed().as_secs_f64()
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (label, key) in [("custom key", true), ("client IP key", false)] {
        let zone = Zone::new("bench", Rate::per_second(1_000).unwrap())
            .burst(100)
            .nodelay();
        let zone = if key {
            zone.key(KeySource::custom(|_| Some("tenant-42".to_owned())))
        } else {
            zone
        };
        let limiter = Limiter::builder().zone(zone).build().unwrap();
        let requests: Vec<_> = (0..10_000).map(parts_for).collect();
        let (checks, elapsed) = runtime.block_on(async {
            let started = Instant::now();
            let mut checks = 0u64;
            while started.elapsed() < Duration::from_secs(2) {
                for p in &requests[..1000] {
                    std::hint::black_box(limiter.check(p).await.allowed);
                }
                checks += 1000;
            }
            (checks, started.elapsed())
        });
        println!(
            "in-memory Limiter::check ({label}), 1 core: {:>10.0} checks/s",
            checks as f64 / elapsed.as_secs_f64()
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn measure_redis() {
    let redis = RedisServer::start();
    let port = redis.port();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let limiter = runtime.block_on(async {
        let mut options = RedisOptions::new(format!("redis://127.0.0.1:{port}"));
        options.deny_cache_keys = 0;
        let store = RedisStore::connect(&options).unwrap();
        assert!(store.wait_connected(Duration::from_secs(5)).await);
        Limiter::builder()
            .zone(
                Zone::new("bench", Rate::per_second(1_000_000).unwrap())
                    .burst(100)
                    .nodelay(),
            )
            .redis(store)
            .build()
            .unwrap()
    });
    let requests: Arc<Vec<_>> = Arc::new((0..10_000).map(parts_for).collect());

    // Latency: one check in flight at a time.
    let mut latencies = runtime.block_on(async {
        let mut latencies = Vec::with_capacity(20_000);
        for i in 0..20_000 {
            let started = Instant::now();
            let d = limiter.check(&requests[i % requests.len()]).await;
            latencies.push(started.elapsed());
            assert!(d.zones[0].source == wharf_ratelimit::Source::Redis, "{d:?}");
        }
        latencies
    });
    latencies.sort();
    println!(
        "redis check latency, 1 in flight: p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  (20000 checks)",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        percentile(&latencies, 0.999).as_secs_f64() * 1e3
    );

    // Throughput: 64 checks in flight.
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for t in 0..64 {
            let limiter = limiter.clone();
            let requests = Arc::clone(&requests);
            let done = Arc::clone(&done);
            tasks.push(tokio::spawn(async move {
                let mut i = t * 97;
                while started.elapsed() < Duration::from_secs(4) {
                    let _ = limiter.check(&requests[i % requests.len()]).await;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let rate = done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let errors = limiter.metrics().redis_errors();
    println!("redis checks/s, 64 in flight:      {rate:>10.0}  ({errors} errors)");
    drop(runtime);

    let output = Command::new("redis-benchmark")
        .args([
            "-p",
            &port.to_string(),
            "-t",
            "set",
            "-n",
            "200000",
            "-c",
            "64",
            "-q",
        ])
        .output();
    match output {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            // -q prints progress lines separated by \r; the summary is the last.
            let line = text
                .split(['\r', '\n'])
                .rfind(|l| l.contains("requests per second"))
                .unwrap_or("")
                .trim();
            let set_rps: f64 = line
                .split_whitespace()
                .find_map(|w| w.parse::<f64>().ok())
                .unwrap_or(0.0);
            println!("redis-benchmark SET, 64 clients:   {set_rps:>10.0}  ({line})");
            if set_rps > 0.0 {
                println!(
                    "ratio wharf checks / SET:          {:>10.2}",
                    rate / set_rps
                );
            }
        }
        Err(e) => println!("redis-benchmark not run: {e}"),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!(
        "wharf-ratelimit benchmark ({} CPUs, loopback)",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get)
    );
    measure_memory();
    measure_redis();
}
