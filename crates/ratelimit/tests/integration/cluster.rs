//! Redis Cluster: three local `redis-server --cluster-enabled yes` nodes.
//! Keys of many clients spread over the slots of every node; each client's
//! zones share a hash tag, so the multi-zone script runs in one slot.
//!
//! Under load, slots move between nodes with the resharding protocol
//! (IMPORTING/MIGRATING, `MIGRATE`, `SETSLOT NODE`: the client must follow
//! ASK and MOVED), and a replica takes over its master (`CLUSTER FAILOVER`,
//! then the old master is killed).

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use wharf_ratelimit::{Limiter, Rate, Source, Zone};
use wharf_test::RedisServer;

use crate::support::{admitted, options, parts, redis_limiter};

/// The arguments of a cluster node (node timeout 2 s).
const CLUSTER_NODE: [&str; 6] = [
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    "nodes.conf",
    "--cluster-node-timeout",
    "2000",
];

fn start_cluster() -> Vec<RedisServer> {
    let nodes: Vec<RedisServer> = (0..3)
        .map(|_| RedisServer::start_with(&CLUSTER_NODE))
        .collect();
    let addrs: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port()))
        .collect();
    let output = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect(
            "redis-cli is not installed: apt-get install -y redis-server (.ci/run installs it)",
        );
    assert!(
        output.status.success(),
        "cluster create: {}",
        String::from_utf8_lossy(&output.stdout)
    );
    wait_for(Duration::from_secs(20), "cluster_state:ok", || {
        nodes
            .iter()
            .all(|n| n.cmd(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
    });
    nodes
}

/// Polls `condition` every 50 ms; panics naming `what` after `within`.
fn wait_for(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "no {what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn node_id(node: &RedisServer) -> String {
    node.cmd(&["CLUSTER", "MYID"])
}

fn slot_of(node: &RedisServer, key: &str) -> u16 {
    node.cmd(&["CLUSTER", "KEYSLOT", key]).parse().unwrap()
}

/// Whether `node` serves `slot`, by its own line of `CLUSTER NODES` (slot
/// ranges; the `[slot->-id]` migration markers left out).
fn serves(node: &RedisServer, slot: u16) -> bool {
    let nodes = node.cmd(&["CLUSTER", "NODES"]);
    let me = nodes
        .lines()
        .find(|l| l.split(' ').nth(2).is_some_and(|f| f.contains("myself")))
        .unwrap();
    me.split(' ')
        .skip(8)
        .filter(|r| !r.starts_with('['))
        .any(|r| {
            let (a, b) = r.split_once('-').unwrap_or((r, r));
            (a.parse::<u16>().unwrap()..=b.parse::<u16>().unwrap()).contains(&slot)
        })
}

/// The index of the master serving `slot`.
fn owner(nodes: &[RedisServer], slot: u16) -> usize {
    nodes.iter().position(|n| serves(n, slot)).unwrap()
}

/// Step 1 of moving a slot (as `redis-cli --cluster reshard` does): the
/// target imports it, the source migrates it. From now on the source answers
/// ASK for keys it no longer holds.
fn begin_move(from: &RedisServer, to: &RedisServer, slot: u16) {
    let slot = slot.to_string();
    let (from_id, to_id) = (node_id(from), node_id(to));
    assert_eq!(
        to.cmd(&["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]),
        "OK"
    );
    assert_eq!(
        from.cmd(&["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]),
        "OK"
    );
}

/// Step 2: the slot's keys go to the target one `MIGRATE` at a time, with a
/// pause after each so checks run in between. Returns how many moved.
async fn migrate_keys(from: &RedisServer, to: &RedisServer, slot: u16, pause: Duration) -> usize {
    let (slot, port) = (slot.to_string(), to.port().to_string());
    let mut moved = 0;
    loop {
        let key = from.cmd(&["CLUSTER", "GETKEYSINSLOT", &slot, "1"]);
        if key.is_empty() {
            return moved;
        }
        let reply = from.cmd(&["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS", &key]);
        assert!(reply == "OK" || reply == "NOKEY", "MIGRATE {key}: {reply}");
        moved += usize::from(reply == "OK");
        tokio::time::sleep(pause).await;
    }
}

/// Step 3: every node is told the target owns the slot, the target first
/// (it bumps its epoch), then the source (which answers MOVED from now on),
/// then the others.
fn finish_move(nodes: &[RedisServer], from: usize, to: usize, slot: u16) {
    let (slot, to_id) = (slot.to_string(), node_id(&nodes[to]));
    let others = (0..nodes.len()).filter(|&i| i != from && i != to);
    for i in [to, from].into_iter().chain(others) {
        assert_eq!(
            nodes[i].cmd(&["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]),
            "OK",
            "SETSLOT on node {i}"
        );
    }
}

/// A new, empty node made a replica of `nodes[master]` (`CLUSTER MEET`,
/// `CLUSTER REPLICATE`); returns once it has synced and every node lists it
/// as that master's replica.
fn add_replica(nodes: &[RedisServer], master: usize) -> RedisServer {
    let replica = RedisServer::start_with(&CLUSTER_NODE);
    let (master_id, replica_id) = (node_id(&nodes[master]), node_id(&replica));
    let port = nodes[master].port().to_string();
    assert_eq!(replica.cmd(&["CLUSTER", "MEET", "127.0.0.1", &port]), "OK");
    wait_for(
        Duration::from_secs(20),
        "handshake with the new node",
        || {
            replica.cmd(&["CLUSTER", "NODES"]).contains(&master_id)
                && nodes
                    .iter()
                    .all(|n| n.cmd(&["CLUSTER", "NODES"]).contains(&replica_id))
        },
    );
    assert_eq!(replica.cmd(&["CLUSTER", "REPLICATE", &master_id]), "OK");
    let is_replica = |node: &RedisServer| {
        node.cmd(&["CLUSTER", "NODES"])
            .lines()
            .find(|l| l.starts_with(&replica_id))
            .is_some_and(|l| l.contains("slave") && l.contains(&master_id))
    };
    wait_for(Duration::from_secs(20), "replica in sync", || {
        replica
            .cmd(&["INFO", "replication"])
            .contains("master_link_status:up")
            && nodes.iter().all(is_replica)
    });
    replica
}

/// Burst of the test zone: a client gets `BURST + 1` checks through, then
/// (1r/m) nothing more for a minute, longer than any test here.
const BURST: u32 = 4;

/// A limiter on the cluster with one zone, 1r/m burst 4 nodelay per client
/// IP, failing open, and no local deny cache: every check asks Redis.
async fn cluster_limiter(nodes: &[RedisServer], timeout: Duration) -> Limiter {
    let mut opts = options(&nodes[0].url());
    opts.cluster = true;
    opts.timeout = timeout;
    opts.deny_cache_keys = 0;
    let zone = Zone::new("minute", "1r/m".parse::<Rate>().unwrap())
        .burst(BURST)
        .nodelay();
    redis_limiter(&opts, vec![zone]).await
}

/// One check made by the load.
struct Check {
    client: usize,
    source: Source,
    allowed: bool,
    ended: Instant,
    took: Duration,
}

/// `tasks` tasks checking `clients` continuously until `stop` (task `t`
/// takes clients `t`, `t + tasks`, … in turn). Each returns its checks.
fn spawn_load(
    limiter: &Limiter,
    clients: &[String],
    tasks: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<Vec<Check>>> {
    (0..tasks)
        .map(|t| {
            let limiter = limiter.clone();
            let stop = Arc::clone(stop);
            let mine: Vec<(usize, http::request::Parts)> = (t..clients.len())
                .step_by(tasks)
                .map(|i| (i, parts(&clients[i], "/")))
                .collect();
            tokio::spawn(async move {
                let mut checks = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    for (client, parts) in &mine {
                        let started = Instant::now();
                        let decision = limiter.check(parts).await;
                        let source = decision.zones[0].source;
                        checks.push(Check {
                            client: *client,
                            source,
                            allowed: decision.allowed,
                            ended: Instant::now(),
                            took: started.elapsed(),
                        });
                        if source != Source::Redis {
                            // Failing checks return at once: keep their
                            // number (and the memory) bounded.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
                checks
            })
        })
        .collect()
}

async fn stop_load(stop: &AtomicBool, load: Vec<JoinHandle<Vec<Check>>>) -> Vec<Check> {
    stop.store(true, Ordering::Relaxed);
    let mut checks = Vec::new();
    for task in load {
        checks.extend(task.await.unwrap());
    }
    checks
}

/// Per client: checks Redis let through, and checks Redis did not answer
/// (failed open).
fn per_client(checks: &[Check], clients: usize) -> Vec<(usize, usize)> {
    let mut out = vec![(0, 0); clients];
    for c in checks {
        if c.source == Source::Redis {
            out[c.client].0 += usize::from(c.allowed);
        } else {
            out[c.client].1 += 1;
        }
    }
    out
}

/// Exactness: a client gets exactly `BURST + 1` through Redis, less one for
/// each failed check that Redis may still have charged (it timed out on our
/// side after running there).
fn assert_exact(per_client: &[(usize, usize)]) {
    let capacity = usize::try_from(BURST).unwrap() + 1;
    for (client, &(through_redis, failed)) in per_client.iter().enumerate() {
        assert!(
            through_redis <= capacity && through_redis + failed >= capacity,
            "client {client}: {through_redis} let through by Redis, {failed} failed checks"
        );
    }
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
        assert!(keys > 10, "node {} holds {keys} keys", node.port());
    }
}

/// Most checks the moves may cost (failed open), of thousands: on a loaded
/// machine a check can miss the 500 ms budget while the client refreshes its
/// slot map. A client that does not follow ASK or MOVED fails hundreds.
const MOVE_FAILURES: usize = 3;

/// Four tasks check 48 clients (each at its limit) continuously while the
/// slots of six of them and of a witness client move to other nodes, keys
/// one `MIGRATE` at a time. The client follows ASK (keys already on the
/// target) and MOVED (after `SETSLOT NODE`); no check waits past its budget;
/// and no count is lost: every client, moved or not, got exactly burst + 1
/// through, and the witness got 2 before the move, 1 while only the target
/// held its key, and exactly 2 after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_moved_under_load_are_followed_and_limits_stay_exact() {
    let nodes = start_cluster();
    let timeout = Duration::from_millis(500);
    let limiter = cluster_limiter(&nodes, timeout).await;
    let store = limiter.redis().unwrap();
    let clients: Vec<String> = (0..48).map(|i| format!("198.51.100.{i}")).collect();
    let witness = parts("203.0.113.9", "/");
    let witness_key = store.redis_key("minute", "203.0.113.9");
    let witness_slot = slot_of(&nodes[0], &witness_key);
    for _ in 0..2 {
        let d = limiter.check(&witness).await;
        assert!(d.allowed && d.zones[0].source == Source::Redis, "{d:?}");
    }
    // The witness's slot and the first six clients' move to the next node.
    let mut moves: Vec<(u16, usize, usize)> = Vec::new();
    let moved_keys = clients[..6].iter().map(|c| store.redis_key("minute", c));
    for key in std::iter::once(witness_key.clone()).chain(moved_keys) {
        let slot = slot_of(&nodes[0], &key);
        if moves.iter().all(|m| m.0 != slot) {
            let from = owner(&nodes, slot);
            moves.push((slot, from, (from + 1) % nodes.len()));
        }
    }

    let stop = Arc::new(AtomicBool::new(false));
    let load = spawn_load(&limiter, &clients, 4, &stop);
    // Every client reaches its limit before anything moves.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let mut migrated = 0;
    for &(slot, from, to) in &moves {
        begin_move(&nodes[from], &nodes[to], slot);
        migrated += migrate_keys(&nodes[from], &nodes[to], slot, Duration::from_millis(50)).await;
        // Keys on the target, slot still the source's: checks of it are
        // answered ASK by the source.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if slot == witness_slot {
            let count =
                |node: &RedisServer| node.cmd(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]);
            assert_eq!(
                (count(&nodes[from]), count(&nodes[to])),
                ("0".into(), "1".into())
            );
            let d = limiter.check(&witness).await;
            assert!(
                d.allowed && d.zones[0].source == Source::Redis,
                "the witness while its key is only on the importing node: {d:?}"
            );
        }
        finish_move(&nodes, from, to, slot);
        // Clients still sending to the source get MOVED.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let moving = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let checks = stop_load(&stop, load).await;

    // The witness after the move: exactly two more, then Redis says no.
    let after: Vec<bool> = checks_in_turn(&limiter, &witness, 4).await;
    assert_eq!(
        after,
        [true, true, false, false],
        "burst + 1 across the move"
    );
    for &(slot, from, to) in &moves {
        assert!(serves(&nodes[to], slot) && !serves(&nodes[from], slot));
    }
    assert!(nodes[moves[0].2]
        .cmd(&["GET", &witness_key])
        .parse::<u64>()
        .is_ok());

    let during: Vec<&Check> = checks
        .iter()
        .filter(|c| c.ended >= started && c.ended <= started + moving)
        .collect();
    let failed = checks.iter().filter(|c| c.source != Source::Redis).count();
    let slowest = checks.iter().map(|c| c.took).max().unwrap();
    eprintln!(
        "moved {} slots ({migrated} keys) in {moving:?}; {} checks in all, {} during the move, \
         {failed} failed open, Redis errors {}, slowest check {slowest:?}",
        moves.len(),
        checks.len(),
        during.len(),
        limiter.metrics().redis_errors()
    );
    assert!(migrated >= moves.len(), "each moved slot held a key");
    assert!(
        failed <= MOVE_FAILURES,
        "{failed} checks failed open during or after the move"
    );
    // The limiter's own counters say the same.
    let metrics = limiter.metrics();
    assert_eq!(metrics.zone("minute").unwrap().fallback(), failed as u64);
    assert!(metrics.redis_errors() <= MOVE_FAILURES as u64);
    assert!(
        slowest <= 2 * timeout + Duration::from_millis(500),
        "{slowest:?}"
    );
    // Load on the moving keys the whole time, not only before and after.
    for client in 0..6 {
        let n = during.iter().filter(|c| c.client == client).count();
        assert!(n >= 20, "client {client}: only {n} checks during the move");
    }
    assert_exact(&per_client(&checks, clients.len()));
}

/// `n` checks one after the other: which passed (each answered by Redis).
async fn checks_in_turn(limiter: &Limiter, parts: &http::request::Parts, n: usize) -> Vec<bool> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = limiter.check(parts).await;
        assert_eq!(d.zones[0].source, Source::Redis, "{d:?}");
        out.push(d.allowed);
    }
    out
}

/// How long after the promotion checks of the failed-over slots may still
/// fail (the breaker's 1 s cool-down, a MOVED and a slot-map refresh).
const RECOVERY: Duration = Duration::from_secs(5);

/// The command time budget of the failover tests.
const FAILOVER_BUDGET: Duration = Duration::from_millis(200);

/// A three-master cluster whose first master (the node the client's URL
/// names) has a replica, and four tasks checking 48 clients (each at its
/// limit) on it.
struct Failover {
    nodes: Vec<RedisServer>,
    master: usize,
    replica: RedisServer,
    keys: Vec<String>,
    /// The clients whose slots the master serves.
    moved: Vec<usize>,
    stop: Arc<AtomicBool>,
    load: Vec<JoinHandle<Vec<Check>>>,
}

impl Failover {
    async fn start() -> Self {
        let nodes = start_cluster();
        let limiter = cluster_limiter(&nodes, FAILOVER_BUDGET).await;
        let store = limiter.redis().unwrap();
        let clients: Vec<String> = (0..48).map(|i| format!("198.51.100.{i}")).collect();
        let keys: Vec<String> = clients
            .iter()
            .map(|c| store.redis_key("minute", c))
            .collect();
        let master = 0;
        let moved: Vec<usize> = (0..clients.len())
            .filter(|&i| owner(&nodes, slot_of(&nodes[1], &keys[i])) == master)
            .collect();
        assert!(
            moved.len() >= 5,
            "{} clients on the first master",
            moved.len()
        );
        let replica = add_replica(&nodes, master);
        let stop = Arc::new(AtomicBool::new(false));
        let load = spawn_load(&limiter, &clients, 4, &stop);
        tokio::time::sleep(Duration::from_millis(500)).await;
        Self {
            nodes,
            master,
            replica,
            keys,
            moved,
            stop,
            load,
        }
    }

    /// Waits (at most `within`) until the replica says it is a master.
    async fn promoted(&self, within: Duration) -> Instant {
        let started = Instant::now();
        while !self.replica.cmd(&["ROLE"]).starts_with("master") {
            assert!(started.elapsed() < within, "no promotion within {within:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Instant::now()
    }

    /// Stops the load and checks what it saw: Redis answered the failed-over
    /// slots again within [`RECOVERY`] of the promotion and nothing failed
    /// after `settled`; no check took longer than twice the budget (EVALSHA,
    /// then EVAL after NOSCRIPT on the new master) plus scheduling slack;
    /// the new master holds the counts, and none was lost.
    async fn finish(self, started: Instant, promoted: Instant, settled: Instant) {
        let checks = stop_load(&self.stop, self.load).await;
        let failed: Vec<&Check> = checks
            .iter()
            .filter(|c| c.source != Source::Redis)
            .collect();
        let last_failure = failed.iter().map(|c| c.ended).max();
        let moved = &self.moved;
        let answered_again = checks
            .iter()
            .filter(|c| {
                moved.contains(&c.client)
                    && c.source == Source::Redis
                    && c.ended > promoted
                    && last_failure.is_none_or(|l| c.ended > l)
            })
            .map(|c| c.ended)
            .min()
            .expect("no check of the failed-over slots answered by Redis after the promotion");
        let slowest = checks.iter().map(|c| c.took).max().unwrap();
        let after = checks
            .iter()
            .filter(|c| moved.contains(&c.client) && c.ended > settled)
            .count();
        let since = |t: Option<Instant>| t.map(|t| t.saturating_duration_since(started));
        eprintln!(
            "failover: promoted {:?} after it began; {} checks, {} failed open (from {:?} to {:?} \
             after it began), Redis answered the failed-over slots again {:?} after the \
             promotion; slowest check {slowest:?}; {after} checks of them at the end",
            promoted - started,
            checks.len(),
            failed.len(),
            since(failed.iter().map(|c| c.ended).min()),
            since(last_failure),
            answered_again.saturating_duration_since(promoted),
        );
        assert!(
            answered_again <= promoted + RECOVERY,
            "Redis answered again only {:?} after the promotion",
            answered_again - promoted
        );
        assert!(
            slowest <= 2 * FAILOVER_BUDGET + Duration::from_millis(300),
            "a check took {slowest:?}"
        );
        assert!(
            after >= 100,
            "{after} checks of the failed-over slots at the end"
        );
        assert!(
            failed.iter().all(|c| c.ended < settled),
            "{} checks failed at the end",
            failed.iter().filter(|c| c.ended >= settled).count()
        );
        for &i in moved {
            assert!(
                self.replica
                    .cmd(&["GET", &self.keys[i]])
                    .parse::<u64>()
                    .is_ok(),
                "client {i}'s count is on the new master"
            );
        }
        assert_exact(&per_client(&checks, self.keys.len()));
        drop(self.nodes);
    }
}

/// A replica of the master serving a third of the clients takes over
/// (`CLUSTER FAILOVER`) under load; then the old master is killed
/// (`SIGKILL`). Redis answers again within 5 s of the promotion, nothing
/// fails after the kill (the new master answers), no check waits past twice
/// the budget, and no count is lost (a coordinated failover loses no write).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_taking_over_under_load_answers_within_5s_within_the_budget() {
    let mut failover = Failover::start().await;
    let started = Instant::now();
    assert_eq!(failover.replica.cmd(&["CLUSTER", "FAILOVER"]), "OK");
    let promoted = failover.promoted(Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    failover.nodes[failover.master].kill();
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    failover.finish(started, promoted, killed).await;
}

/// The master serving a third of the clients is killed (`SIGKILL`) under
/// load; its replica is promoted once the other masters mark it failed
/// (node timeout 2 s). Meanwhile checks of its slots fail to the failure
/// mode within the budget; Redis answers them again within 5 s of the
/// promotion, and nothing fails from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_by_its_replica_and_checks_recover_within_5s() {
    let mut failover = Failover::start().await;
    let started = Instant::now();
    failover.nodes[failover.master].kill();
    let promoted = failover.promoted(Duration::from_secs(15)).await;
    tokio::time::sleep(RECOVERY + Duration::from_secs(1)).await;
    failover
        .finish(started, promoted, promoted + RECOVERY)
        .await;
}
