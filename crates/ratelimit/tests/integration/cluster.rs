//! Redis Cluster: three local `redis-server --cluster-enabled yes` nodes.
//! Keys of many clients spread over the slots of every node; each client's
//! zones share a hash tag, so the multi-zone script runs in one slot.

use std::process::Command;
use std::time::{Duration, Instant};

use wharf_ratelimit::{Rate, Source, Zone};

use crate::support::{admitted, options, parts, redis_limiter, Redis};

fn start_cluster() -> Vec<Redis> {
    let nodes: Vec<Redis> = (0..3)
        .map(|_| {
            Redis::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ])
        })
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let output = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("redis-cli must be installed");
    assert!(
        output.status.success(),
        "cluster create: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes
        .iter()
        .all(|n| n.cmd(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    {
        assert!(Instant::now() < deadline, "cluster did not become ok");
        std::thread::sleep(Duration::from_millis(100));
    }
    nodes
}

#[tokio::test]
async fn limits_are_exact_across_slots_of_a_three_node_cluster() {
    let nodes = start_cluster();
    let mut opts = options(&nodes[0].url());
    opts.cluster = true;
    opts.timeout = Duration::from_millis(200);
    let limiter = redis_limiter(
        &opts,
        vec![
            Zone::new("burst", "10r/s".parse::<Rate>().unwrap())
                .burst(2)
                .nodelay(),
            Zone::new("minute", "1r/m".parse::<Rate>().unwrap())
                .burst(5)
                .nodelay(),
        ],
    )
    .await;
    for client in 0..60 {
        let p = parts(&format!("198.51.100.{client}"), "/");
        let d = limiter.check(&p).await;
        assert!(d.allowed);
        assert_eq!(d.zones[0].source, Source::Redis, "{d:?}");
        assert_eq!(
            admitted(&limiter, &p, 4).await,
            2,
            "client {client}: burst 2 nodelay admits 3 in all"
        );
    }
    assert_eq!(limiter.metrics().redis_errors(), 0);
    // The keys landed on every node.
    for node in &nodes {
        let keys: u64 = node.cmd(&["DBSIZE"]).parse().unwrap();
        assert!(keys > 10, "node {} holds {keys} keys", node.port);
    }
}
