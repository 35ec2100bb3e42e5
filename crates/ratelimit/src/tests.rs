//! Unit tests: the GCRA arithmetic against nginx's, properties, keys, memory.

use std::net::{IpAddr, SocketAddr};

use crate::gcra::Policy;
use crate::key::{ClientIp, ForwardedHeader, IpNet};
use crate::memory::{self, Table};
use crate::rate::Rate;

const MS: u64 = 1_000;

fn rate(text: &str) -> Rate {
    text.parse().unwrap()
}

/// Runs a sequence of request times (µs) against one key; returns the
/// accept/reject sequence and the delays.
fn run(policy: Policy, times: &[u64]) -> Vec<(bool, u64)> {
    let mut tat = 0;
    times
        .iter()
        .map(|&now| {
            let o = policy.decide(tat, now);
            if o.allowed {
                tat = o.tat;
            }
            (o.allowed, o.delay)
        })
        .collect()
}

/// nginx's own arithmetic (`ngx_http_limit_req_module.c`): excess in
/// milli-requests, time in ms, rate in milli-requests per second.
fn nginx(rate_mrps: i64, burst: i64, times_ms: &[i64]) -> Vec<bool> {
    let mut state: Option<(i64, i64)> = None; // (excess, last)
    times_ms
        .iter()
        .map(|&now| match state {
            None => {
                state = Some((0, now));
                true
            }
            Some((excess0, last)) => {
                let ms = (now - last).max(0);
                let excess = (excess0 - rate_mrps * ms / 1000 + 1000).max(0);
                if excess > burst * 1000 {
                    false
                } else {
                    state = Some((excess, if ms != 0 { now } else { last }));
                    true
                }
            }
        })
        .collect()
}

#[test]
fn burst_20_nodelay_admits_21_at_once_then_one_per_interval() {
    let policy = Policy::new(rate("10r/s"), 20).nodelay();
    let at_once = run(policy, &[1; 30]);
    assert_eq!(at_once.iter().filter(|(ok, _)| *ok).count(), 21);
    assert!(at_once[..21].iter().all(|(ok, delay)| *ok && *delay == 0));
    assert!(at_once[21..].iter().all(|(ok, _)| !ok));
    // After 100 ms exactly one more passes; after 1 s, ten more.
    let mut times = vec![1; 21];
    times.extend([1 + 100 * MS, 1 + 100 * MS]);
    times.extend(std::iter::repeat_n(1 + 1_100 * MS, 12));
    let seq = run(policy, &times);
    assert_eq!(
        seq[21..23].iter().map(|s| s.0).collect::<Vec<_>>(),
        [true, false]
    );
    assert_eq!(seq[23..].iter().filter(|s| s.0).count(), 10);
}

#[test]
fn burst_0_admits_one_then_exactly_at_the_rate() {
    let policy = Policy::new(rate("1r/s"), 0);
    let seq = run(policy, &[1, 2, 999_999, 1_000_001, 1_000_002]);
    assert_eq!(
        seq.iter().map(|s| s.0).collect::<Vec<_>>(),
        [true, false, false, true, false]
    );
}

#[test]
fn delaying_mode_spaces_the_burst_to_the_rate_and_rejects_beyond() {
    let policy = Policy::new(rate("10r/s"), 5);
    let seq = run(policy, &[1; 8]);
    let delays: Vec<u64> = seq.iter().filter(|s| s.0).map(|s| s.1).collect();
    assert_eq!(
        delays,
        [0, 100 * MS, 200 * MS, 300 * MS, 400 * MS, 500 * MS]
    );
    assert_eq!(seq.iter().filter(|s| !s.0).count(), 2);
    // delay=2: the first two excess requests go at once, the rest wait.
    let seq = run(policy.delay_after(2), &[1; 6]);
    let delays: Vec<u64> = seq.iter().map(|s| s.1).collect();
    assert_eq!(delays, [0, 0, 0, 100 * MS, 200 * MS, 300 * MS]);
}

#[test]
fn rejected_requests_are_not_charged() {
    let policy = Policy::new(rate("1r/s"), 1).nodelay();
    // Two pass, then a flood of rejections must not push the next pass later.
    let mut times = vec![1, 1];
    times.extend((0..1000).map(|i| 2 + i * 900));
    times.push(1 + 1_000 * MS);
    let seq = run(policy, &times);
    assert!(seq[0].0 && seq[1].0);
    assert!(seq[2..1002].iter().all(|s| !s.0));
    assert!(
        seq[1002].0,
        "the next interval's request passes despite the rejections"
    );
}

#[test]
fn retry_after_is_exactly_when_the_request_would_pass() {
    let policy = Policy::new(rate("2r/s"), 3).nodelay();
    let mut tat = 0;
    for _ in 0..4 {
        tat = policy.decide(tat, 10).tat;
    }
    let rejected = policy.decide(tat, 10);
    assert!(!rejected.allowed);
    assert_eq!(rejected.retry_after, 500 * MS);
    assert!(!policy.decide(tat, 10 + rejected.retry_after - 1).allowed);
    assert!(policy.decide(tat, 10 + rejected.retry_after).allowed);
}

#[test]
fn matches_nginx_arithmetic_on_random_sequences() {
    let mut rng = Rng(0x5eed);
    for case in 0..300 {
        let r = 1 + rng.below(50);
        let burst = rng.below(30);
        let mut now = 1_000;
        let times_ms: Vec<i64> = (0..200)
            .map(|_| {
                // Mostly back-to-back, sometimes a pause.
                if rng.below(4) == 0 {
                    now += rng.below(3_000);
                }
                i64::try_from(now).unwrap()
            })
            .collect();
        // Only rates nginx holds exactly in ms (1000 ms divisible by r) compare
        // bit-for-bit; others differ by nginx's per-ms truncation.
        if 1000 % r != 0 {
            continue;
        }
        let policy = Policy::new(
            Rate::per_second(u32::try_from(r).unwrap()).unwrap(),
            u32::try_from(burst).unwrap(),
        )
        .nodelay();
        let ours: Vec<bool> = run(
            policy,
            &times_ms
                .iter()
                .map(|t| u64::try_from(*t).unwrap() * MS)
                .collect::<Vec<_>>(),
        )
        .into_iter()
        .map(|s| s.0)
        .collect();
        let theirs = nginx(
            i64::try_from(r).unwrap() * 1000,
            i64::try_from(burst).unwrap(),
            &times_ms,
        );
        assert_eq!(ours, theirs, "case {case}: rate {r}r/s burst {burst}");
    }
}

/// A tiny deterministic generator (splitmix64) for the property loops: no
/// dependency, reproducible failures (the case number is in the message).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Extremes on purpose: 0, 1, `u64::MAX` and neighbours, and anything.
    fn edgy(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => u64::MAX - self.below(3),
            2 => self.below(4),
            3 => 1 << self.below(64),
            _ => self.next(),
        }
    }
}

#[test]
fn property_no_overflow_and_sane_outcomes_at_extremes() {
    let mut rng = Rng(1);
    for _ in 0..200_000 {
        let policy =
            Policy::from_interval(rng.edgy(), u32::try_from(rng.edgy() & 0xffff_ffff).unwrap())
                .delay_after(u32::try_from(rng.edgy() >> 32).unwrap());
        let (tat, now) = (rng.edgy(), rng.edgy());
        let o = policy.decide(tat, now);
        assert!(o.tat >= tat.max(now), "TAT never moves back");
        if o.allowed {
            assert_eq!(o.retry_after, 0);
            assert!(o.remaining <= u64::from(policy.burst()));
        } else {
            assert!(o.retry_after >= 1);
            assert_eq!(o.delay, 0);
        }
        let j = policy.judge(rng.edgy(), rng.edgy());
        assert!(j.allowed || j.retry_after >= 1);
    }
}

#[test]
fn property_monotonic_in_time() {
    let mut rng = Rng(2);
    for case in 0..100_000 {
        let policy = Policy::from_interval(
            1 + rng.below(10_000_000),
            u32::try_from(rng.below(100)).unwrap(),
        );
        let tat = rng.below(1 << 50);
        let now = rng.below(1 << 50);
        let later = now + rng.below(1 << 40);
        let a = policy.decide(tat, now);
        let b = policy.decide(tat, later);
        // Waiting never hurts: what passed still passes, and the wait shrinks.
        assert!(!a.allowed || b.allowed, "case {case}");
        assert!(b.retry_after <= a.retry_after, "case {case}");
        assert!(b.remaining >= a.remaining, "case {case}");
        // Waiting exactly retry_after makes it pass.
        if !a.allowed {
            assert!(
                policy.decide(tat, now + a.retry_after).allowed,
                "case {case}"
            );
        }
        // judge() of decide()'s TAT agrees with decide().
        assert_eq!(policy.judge(a.tat, now), a, "case {case}");
    }
}

#[test]
fn property_admissions_never_exceed_burst_plus_rate() {
    let mut rng = Rng(3);
    for case in 0..300 {
        let interval = 1 + rng.below(1_000_000);
        let burst = rng.below(20);
        let policy = Policy::from_interval(interval, u32::try_from(burst).unwrap()).nodelay();
        let mut tat = 0;
        let mut now = 1 + rng.below(1 << 40);
        let start = now;
        let mut admitted = 0u64;
        for _ in 0..2_000 {
            now += rng.below(interval / 2 + 1);
            let o = policy.decide(tat, now);
            if o.allowed {
                tat = o.tat;
                admitted += 1;
            }
        }
        let bound = burst + 1 + (now - start) / interval;
        assert!(admitted <= bound, "case {case}: {admitted} > {bound}");
    }
}

#[test]
fn rates_parse_like_nginx() {
    assert_eq!(rate("10r/s").interval_micros(), 100_000);
    assert_eq!(rate("1r/m").interval_micros(), 60_000_000);
    assert_eq!(rate(" 30r/m ").to_string(), "30r/m");
    for bad in [
        "",
        "r/s",
        "10",
        "10r/h",
        "0r/s",
        "-1r/s",
        "1.5r/s",
        "99999999999r/s",
        "2000000r/s",
    ] {
        assert!(bad.parse::<Rate>().is_err(), "{bad:?}");
    }
}

fn parts_with(peer: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut builder = http::Request::get("/d/x");
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let mut req = builder.body(()).unwrap();
    req.extensions_mut()
        .insert(peer.parse::<SocketAddr>().unwrap());
    req.into_parts().0
}

#[test]
fn client_ip_ignores_forwarded_headers_from_untrusted_peers() {
    let client_ip = ClientIp::new().trust("10.0.0.0/8".parse().unwrap());
    let spoof = parts_with("198.51.100.1:1000", &[("x-forwarded-for", "1.2.3.4")]);
    assert_eq!(
        client_ip.resolve(&spoof),
        Some("198.51.100.1".parse().unwrap())
    );
    // A trusted proxy: rightmost untrusted hop, skipping trusted ones.
    let via = parts_with(
        "10.0.0.5:1000",
        &[("x-forwarded-for", "1.2.3.4, 203.0.113.9, 10.9.9.9")],
    );
    assert_eq!(
        client_ip.resolve(&via),
        Some("203.0.113.9".parse().unwrap())
    );
    // Several header lines count as one list.
    let multi = parts_with(
        "10.0.0.5:1000",
        &[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-for", "203.0.113.10"),
        ],
    );
    assert_eq!(
        client_ip.resolve(&multi),
        Some("203.0.113.10".parse().unwrap())
    );
    // Garbage stops the walk at the last trusted hop.
    let junk = parts_with(
        "10.0.0.5:1000",
        &[("x-forwarded-for", "203.0.113.9, nonsense")],
    );
    assert_eq!(client_ip.resolve(&junk), Some("10.0.0.5".parse().unwrap()));
    // No header: the proxy itself.
    let bare = parts_with("10.0.0.5:1000", &[]);
    assert_eq!(client_ip.resolve(&bare), Some("10.0.0.5".parse().unwrap()));
}

#[test]
fn client_ip_reads_rfc7239_forwarded_and_groups_ipv6() {
    let client_ip = ClientIp::new()
        .trust("::1".parse().unwrap())
        .header(ForwardedHeader::Forwarded)
        .ipv6_prefix(48);
    let parts = parts_with(
        "[::1]:80",
        &[(
            "forwarded",
            "for=192.0.2.60;proto=http, for=\"[2001:db8:cafe:1::17]:4711\"",
        )],
    );
    assert_eq!(
        client_ip.resolve(&parts),
        Some("2001:db8:cafe:1::17".parse().unwrap())
    );
    assert_eq!(client_ip.key(&parts).as_deref(), Some("2001:db8:cafe::/48"));
    // IPv4-mapped IPv6 peers are IPv4 clients.
    let mapped = parts_with("[::ffff:192.0.2.1]:80", &[]);
    assert_eq!(ClientIp::new().key(&mapped).as_deref(), Some("192.0.2.1"));
    let v6 = parts_with("[2001:db8:1:2:3:4:5:6]:80", &[]);
    assert_eq!(
        ClientIp::new().key(&v6).as_deref(),
        Some("2001:db8:1:2::/64")
    );
}

#[test]
fn ip_nets_parse_and_match() {
    let net: IpNet = "192.168.0.0/16".parse().unwrap();
    assert!(net.contains("192.168.3.4".parse::<IpAddr>().unwrap()));
    assert!(!net.contains("192.169.0.1".parse::<IpAddr>().unwrap()));
    assert!(net.contains("::ffff:192.168.0.1".parse::<IpAddr>().unwrap()));
    assert_eq!(
        "10.1.2.3/8".parse::<IpNet>().unwrap().to_string(),
        "10.0.0.0/8"
    );
    for bad in ["10.0.0.0/33", "nonsense", "::/129", "1.2.3.4/"] {
        assert!(bad.parse::<IpNet>().is_err(), "{bad}");
    }
}

#[test]
fn memory_multi_zone_is_all_or_nothing() {
    let a = Table::new(100);
    let b = Table::new(100);
    let loose = Policy::new(rate("10r/s"), 10).nodelay();
    let strict = Policy::new(rate("1r/s"), 1).nodelay();
    let items = [
        memory::Item {
            table: &a,
            policy: loose,
            key: "k",
        },
        memory::Item {
            table: &b,
            policy: strict,
            key: "k",
        },
    ];
    let mut passed = 0;
    for _ in 0..5 {
        if memory::check_all(&items, 10).iter().all(|o| o.allowed) {
            passed += 1;
        }
    }
    assert_eq!(passed, 2, "the strict zone admits 2");
    // The loose zone was charged only for the 2 that passed.
    assert_eq!(memory::peek(&a, "k"), Some(10 + 2 * 100_000));
}

#[test]
fn memory_is_bounded_and_evicts_expired_keys_first() {
    let table = Table::new(640);
    let policy = Policy::new(rate("1r/s"), 0);
    for i in 0..100_000u64 {
        let item = memory::Item {
            table: &table,
            policy,
            key: &format!("client-{i}"),
        };
        memory::check_all(std::slice::from_ref(&item), 1 + i);
    }
    assert!(table.len() <= 640, "{} keys held", table.len());
    // Expired keys go first: a live key survives a churn of short-lived ones.
    let table = Table::new(6_400);
    let long = Policy::new(rate("1r/m"), 0);
    let short = Policy::new(rate("1000r/s"), 0);
    let hot = memory::Item {
        table: &table,
        policy: long,
        key: "hot",
    };
    assert!(memory::check_all(std::slice::from_ref(&hot), 1)[0].allowed);
    for i in 0..50_000u64 {
        let item = memory::Item {
            table: &table,
            policy: short,
            key: &format!("c{i}"),
        };
        memory::check_all(std::slice::from_ref(&item), 10 + i * 1_000);
    }
    assert!(table.len() <= 6_400);
    assert_eq!(memory::peek(&table, "hot"), Some(1 + 60_000_000));
    assert!(!memory::check_all(std::slice::from_ref(&hot), 50_000_100)[0].allowed);
}

/// The node a migrating slot goes to, read from the migrating node's
/// `CLUSTER NODES` (Redis 7 format, with and without an announced hostname).
#[test]
fn importing_node_is_read_from_the_migrating_nodes_line() {
    let nodes = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@40004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@40002,node-2.example master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@40003 master - 0 1426238318243 3 connected 10923-16383
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 [93->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1] [77-<-292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f]
";
    assert_eq!(
        crate::redis::importing_node(nodes, 93),
        Some(("127.0.0.1".to_owned(), 30002))
    );
    // Importing (not migrating) and untouched slots: no target.
    assert_eq!(crate::redis::importing_node(nodes, 77), None);
    assert_eq!(crate::redis::importing_node(nodes, 100), None);
    // Only the node's own line counts.
    let other = nodes.replace("myself,master", "master").replacen(
        "master - 0 1426238318243",
        "myself,master - 0 1426238318243",
        1,
    );
    assert_eq!(crate::redis::importing_node(&other, 93), None);
}

/// The scrape says where each zone counts: Redis for a shared zone when the
/// limiter has Redis, else the zone memory, shared or this process's own.
#[tokio::test]
async fn metrics_name_each_zones_store() {
    use crate::{Limiter, RedisOptions, RedisStore, StoreKind, Zone, ZoneMemory};
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;

    let zones = || {
        [
            Zone::new("a", rate("1r/s")),
            Zone::new("b", rate("1r/s")).store(StoreKind::Memory),
        ]
    };
    let words: Box<[AtomicU64]> = (0..ZoneMemory::bytes_for(2, 64) / 8)
        .map(|_| AtomicU64::new(0))
        .collect();
    let shared = ZoneMemory::new(Arc::new(words), 2, 64).unwrap();
    assert!(shared.is_shared());
    assert!(!ZoneMemory::private(2, 64).unwrap().is_shared());
    let [a, b] = zones();
    let limiter = Limiter::builder()
        .zone(a)
        .zone(b)
        .memory(shared)
        .build()
        .unwrap();
    assert_eq!(limiter.metrics().store("a"), Some("shared_memory"));
    assert_eq!(limiter.metrics().store("b"), Some("shared_memory"));

    // A Redis nobody listens on: the store is named from the configuration.
    let redis = RedisStore::connect(&RedisOptions::new("redis://127.0.0.1:1")).unwrap();
    let [a, b] = zones();
    let limiter = Limiter::builder()
        .zone(a)
        .zone(b)
        .redis(redis)
        .build()
        .unwrap();
    assert_eq!(limiter.metrics().store("a"), Some("redis"));
    assert_eq!(limiter.metrics().store("b"), Some("memory"));
    let text = limiter.metrics().render_prometheus();
    assert!(
        text.contains("wharf_ratelimit_zone_info{zone=\"a\",store=\"redis\"} 1"),
        "{text}"
    );
}
