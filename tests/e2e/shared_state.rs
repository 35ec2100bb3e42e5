//! One instance, one state (issue 22): rate-limit zones are counted once per
//! instance however many worker processes serve it, and the counts survive
//! a HUP (every worker replaced) and a USR2 binary upgrade (a new master).
//! Every request is a new connection, so the kernel spreads them over the
//! workers; each test shows from the access log that more than one worker
//! answered, so per-process counting could not pass.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::reliability::{document_path, FRONTEND};
use crate::support::{
    children, curl, free_port, served, start, supervised_edge, wait_until, Process,
};

/// The status of a GET on a new connection.
fn status(url: &str) -> String {
    let (ok, code) = curl(&["-o", "/dev/null", "-w", "%{http_code}", url]);
    assert!(ok, "curl {url} failed");
    code
}

fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// HUPs the master and waits until none of `before` is alive and `count`
/// new workers serve.
fn hup_and_wait(master: u32, before: &[u32], count: usize) {
    signal(master, "HUP");
    wait_until(
        "every worker replaced after HUP",
        Duration::from_secs(20),
        || {
            let now = children(master);
            now.len() == count && now.iter().all(|p| !before.contains(p))
        },
    );
}

/// USR2s the master; returns the new master (stopped by the caller) once the
/// old one has exited.
fn upgrade(proc: &Process, old_workers: &[u32]) -> u32 {
    let old = proc.pid();
    signal(old, "USR2");
    let new = crate::support::new_master(old, old_workers);
    crate::support::wait_exited("the old master exits", old, Duration::from_secs(20));
    new
}

struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.to_string()])
            .status();
    }
}

/// Sends 60 GETs to `url` (new connections) through `proc`'s `workers`
/// workers and expects `admitted` of them past the limiter, from more than
/// one worker (`log_prefix` finds them in the access log); then the next
/// request is still refused after a HUP and after a USR2 upgrade. Returns
/// the new master, stopped when the guard drops.
fn assert_one_zone_across_hup_and_usr2(
    proc: &Process,
    url: &str,
    log_prefix: &str,
    workers: usize,
    admitted: usize,
) -> KillOnDrop {
    let statuses: Vec<String> = (0..60).map(|_| status(url)).collect();
    let passed = statuses.iter().filter(|s| *s != "429").count();
    let pids: BTreeSet<u64> = served(&proc.logs(), |p| p.starts_with(log_prefix))
        .into_iter()
        .map(|(_, pid)| pid)
        .collect();
    assert!(
        pids.len() >= 2,
        "all 60 requests reached one worker ({pids:?}): the test shows nothing"
    );
    assert_eq!(passed, admitted, "{workers} workers: {statuses:?}");

    let before = children(proc.pid());
    hup_and_wait(proc.pid(), &before, workers);
    assert_eq!(status(url), "429", "a HUP gave the client a fresh burst");

    let current = children(proc.pid());
    let stop = KillOnDrop(upgrade(proc, &current));
    assert_eq!(
        status(url),
        "429",
        "a USR2 upgrade gave the client a fresh burst"
    );
    stop
}

/// frontend without Redis at `WEB_CONCURRENCY=4`: the document zone (burst
/// 20, nodelay, 1 r/min so no token returns during the test) admits burst + 1
/// requests, not four times that, and a client at its limit stays there
/// across a HUP and a USR2 upgrade.
#[test]
fn frontend_workers_share_one_document_zone_across_hup_and_usr2() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let env = HashMap::from([
        ("PORT", port.to_string()),
        ("WEB_CONCURRENCY", "4".to_owned()),
        ("WHARF_LOG_FORMAT", "json".to_owned()),
        ("WHARF_GRACEFUL_TIMEOUT_SECONDS", "2".to_owned()),
        ("WHARF_ADMIN_ADDRESS", format!("127.0.0.1:{}", free_port())),
        ("WHARF_RATELIMIT_DOCUMENT_RATE", "1r/m".to_owned()),
        ("WHARF_DOWNLOAD_LOCAL_DIR", dir.path().display().to_string()),
    ]);
    let frontend = start(FRONTEND, &["serve"], &env, port).keep(dir);
    wait_until("four workers", Duration::from_secs(20), || {
        children(frontend.pid()).len() == 4
    });
    let url = format!("http://127.0.0.1:{port}{}", document_path("k"));
    let _stop = assert_one_zone_across_hup_and_usr2(&frontend, &url, "/d/", 4, 21);
    // The new master serves (the zone, not a dead server, said 429).
    assert_eq!(status(&format!("http://127.0.0.1:{port}/_status")), "200");
}

/// edge with `[supervisor] workers = 2`: a `[[limit_req]]` zone (burst 10,
/// nodelay) admits 11 of 60 new connections, as nginx with two workers and
/// `limit_req zone=api burst=10 nodelay` does, and stays at its limit across
/// a HUP (every worker replaced, the file re-read) and a USR2 upgrade.
#[test]
fn edge_workers_share_one_limit_req_zone_across_hup_and_usr2() {
    let zone = "[[limit_req]]\nzone = \"api\"\nrate = \"1r/m\"\nburst = 10\nnodelay = true\n";
    let edge = supervised_edge(2, false, "", zone);
    // The upstream is down: an admitted request is a 502, a refused one 429.
    let url = format!("http://127.0.0.1:{}/api", edge.proc.port());
    // nginx with worker_processes 2 and the same zone admits 11.
    let _stop = assert_one_zone_across_hup_and_usr2(&edge.proc, &url, "/api", 2, 11);
}

/// `openssl s_client` for `localhost` with `args` and a request: what it
/// printed (asserting it exited 0).
fn s_client(port: u16, args: &[&str]) -> String {
    let (ok, text) = crate::edge::s_client_with_input(
        port,
        &[&["-servername", "localhost", "-ign_eof"][..], args].concat(),
        "GET /fixed HTTP/1.0\r\nHost: localhost\r\n\r\n",
    );
    assert!(ok, "{text}");
    text
}

/// Offers the session saved in `sess` `times` times on new connections;
/// returns how many were resumed.
fn resumed(port: u16, version: &str, sess: &str, times: usize) -> usize {
    (0..times)
        .filter(|_| s_client(port, &[version, "-sess_in", sess]).contains("Reused, TLSv1."))
        .count()
}

/// A session saved from one worker of a 4-worker edge resumes on every
/// connection, whichever worker takes it (TLS 1.3 and 1.2), after a HUP
/// replaced every worker, after a USR2 upgrade, and on a second edge
/// instance sharing the `session_ticket_key` file.
#[test]
fn every_worker_and_a_sharing_replica_resume_a_session_across_hup_and_usr2() {
    let dir = tempfile::tempdir().unwrap();
    let instance = supervised_edge(4, true, "", "");
    let (edge, https) = (&instance.proc, instance.tls_addr().port());
    let mut sessions = Vec::new();
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = dir.path().join(format!("session{version}.pem"));
        let sess = sess.display().to_string();
        let out = s_client(https, &[version, "-sess_out", &sess]);
        assert!(out.contains("New, TLSv1."), "{version}: {out}");
        assert_eq!(
            resumed(https, version, &sess, 20),
            20,
            "{version}: 4 workers"
        );
        sessions.push((version, sess));
    }
    let before = children(edge.pid());
    hup_and_wait(edge.pid(), &before, 4);
    for (version, sess) in &sessions {
        assert_eq!(resumed(https, version, sess, 8), 8, "{version}: after HUP");
    }
    let workers = children(edge.pid());
    let new_master = upgrade(edge, &workers);
    let _stop = KillOnDrop(new_master);
    for (version, sess) in &sessions {
        assert_eq!(resumed(https, version, sess, 8), 8, "{version}: after USR2");
    }

    // Two replicas sharing a key file resume each other's sessions.
    let key = dir.path().join("ticket.key");
    let mut material = [0_u8; 80];
    getrandom_bytes(&mut material);
    std::fs::write(&key, material).unwrap();
    let ticket_key = format!("session_ticket_key = \"{}\"\n", key.display());
    let replica_a = supervised_edge(2, true, &ticket_key, "");
    let replica_b = supervised_edge(2, true, &ticket_key, "");
    let (a, b) = (replica_a.tls_addr().port(), replica_b.tls_addr().port());
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = dir.path().join(format!("replica{version}.pem"));
        let sess = sess.display().to_string();
        s_client(a, &[version, "-sess_out", &sess]);
        assert_eq!(
            resumed(b, version, &sess, 8),
            8,
            "{version}: the other replica"
        );
    }
}

fn getrandom_bytes(buf: &mut [u8]) {
    let mut file = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut file, buf).unwrap();
}

/// With tickets off (the seeds' `ssl_session_tickets off`), the session
/// cache is what resumes, and it is one cache for every worker: a TLS 1.2
/// session id resumes on every connection of a 4-worker edge, and a TLS 1.3
/// client that keeps the fresh ticket each connection gives it resumes every
/// time (rustls takes a cached TLS 1.3 ticket once, as RFC 8446 asks). Both
/// still resume after a HUP and a USR2 upgrade, and the scrape counts it.
#[test]
fn every_worker_resumes_from_one_session_cache_across_hup_and_usr2() {
    let dir = tempfile::tempdir().unwrap();
    let instance = supervised_edge(4, true, "session_tickets = false\n", "");
    let (edge, https) = (&instance.proc, instance.tls_addr().port());
    let tls12 = dir.path().join("session12.pem").display().to_string();
    let out = s_client(https, &["-tls1_2", "-sess_out", &tls12]);
    assert!(out.contains("New, TLSv1.2"), "{out}");
    let tls13 = dir.path().join("session13.pem").display().to_string();
    let out = s_client(https, &["-tls1_3", "-sess_out", &tls13]);
    assert!(out.contains("New, TLSv1.3"), "{out}");
    // Each TLS 1.3 connection offers the ticket the previous one received.
    let chained = |times: usize| {
        (0..times)
            .filter(|_| {
                s_client(https, &["-tls1_3", "-sess_in", &tls13, "-sess_out", &tls13])
                    .contains("Reused, TLSv1.3")
            })
            .count()
    };
    assert_eq!(resumed(https, "-tls1_2", &tls12, 20), 20, "TLS 1.2");
    assert_eq!(chained(20), 20, "TLS 1.3");
    // The master's one scrape counts every worker's resumptions.
    wait_until(
        "the resumptions in the scrape",
        Duration::from_secs(10),
        || {
            instance
                .try_metric("edge_tls_resumed_total")
                .is_ok_and(|n| n >= 40)
        },
    );
    // A used TLS 1.3 ticket is refused by whichever worker sees it again.
    let used = dir.path().join("used13.pem").display().to_string();
    std::fs::copy(&tls13, &used).unwrap();
    assert_eq!(chained(1), 1);
    assert_eq!(
        resumed(https, "-tls1_3", &used, 1),
        0,
        "a ticket resumed twice"
    );

    let before = children(edge.pid());
    hup_and_wait(edge.pid(), &before, 4);
    assert_eq!(resumed(https, "-tls1_2", &tls12, 8), 8, "TLS 1.2 after HUP");
    assert_eq!(chained(8), 8, "TLS 1.3 after HUP");
    let workers = children(edge.pid());
    let new_master = upgrade(edge, &workers);
    let _stop = KillOnDrop(new_master);
    assert_eq!(
        resumed(https, "-tls1_2", &tls12, 8),
        8,
        "TLS 1.2 after USR2"
    );
    assert_eq!(chained(8), 8, "TLS 1.3 after USR2");
}

/// Two edge replicas with `[redis]` count a `store = "shared"` zone
/// together, as frontend replicas do: 1 r/min, burst 10, nodelay admits 11
/// of 30 requests alternating between them (each replica alone would admit
/// 11), and each scrape says the zone counts in Redis.
#[test]
fn edge_replicas_with_redis_count_one_zone_together() {
    let redis_server = wharf_test::RedisServer::start();
    let redis_port = redis_server.port();
    let tables = format!(
        "[[limit_req]]\nzone = \"api\"\nrate = \"1r/m\"\nburst = 10\nnodelay = true\n\n\
         [redis]\nurl = \"redis://127.0.0.1:{redis_port}\"\ntimeout = \"500ms\"\n"
    );
    let replicas = [
        supervised_edge(2, false, "", &tables),
        supervised_edge(2, false, "", &tables),
    ];
    // The upstream is down: an admitted request is a 502, a refused one 429.
    let mut statuses = Vec::new();
    for i in 0..30 {
        let port = replicas[i % 2].proc.port();
        statuses.push(status(&format!("http://127.0.0.1:{port}/api")));
    }
    let admitted = statuses.iter().filter(|s| *s == "502").count();
    assert_eq!(
        admitted + statuses.iter().filter(|s| *s == "429").count(),
        30,
        "{statuses:?}"
    );
    assert_eq!(admitted, 11, "{statuses:?}");
    for edge in &replicas {
        wait_until("the zone in the scrape", Duration::from_secs(10), || {
            edge.try_metric("wharf_ratelimit_zone_info{zone=\"api\",store=\"redis\"}") == Ok(1)
                && edge.try_metric("wharf_ratelimit_checks_total{zone=\"api\"}") == Ok(15)
        });
    }
    let limited: u64 = replicas
        .iter()
        .map(|e| e.metric("wharf_ratelimit_limited_total{zone=\"api\"}"))
        .sum();
    assert_eq!(limited, 19);
}

/// `session_ticket_key = "redis"`: two replicas of 2 workers each, with no
/// key file, resume each other's sessions (TLS 1.3 and 1.2) once each has
/// read the fleet's secret; replicas sharing the Redis but not the setting
/// resume none of each other's.
#[test]
fn replicas_resume_each_others_sessions_with_the_secret_in_redis() {
    let redis_server = wharf_test::RedisServer::start();
    let redis_port = redis_server.port();
    let dir = tempfile::tempdir().unwrap();
    let redis = format!("[redis]\nurl = \"redis://127.0.0.1:{redis_port}\"\n");
    let pair = |tls_lines: &str| {
        [
            supervised_edge(2, true, tls_lines, &redis),
            supervised_edge(2, true, tls_lines, &redis),
        ]
    };
    let across = |a: u16, b: u16, version: &str, times: usize| {
        let sess = dir.path().join(format!("{a}{version}.pem"));
        let sess = sess.display().to_string();
        s_client(a, &[version, "-sess_out", &sess]);
        resumed(b, version, &sess, times)
    };
    let shared = pair("session_ticket_key = \"redis\"\n");
    let (a, b) = (shared[0].tls_addr().port(), shared[1].tls_addr().port());
    // Each worker reads the secret as it starts: wait until every one has.
    wait_until(
        "both replicas on the fleet's secret",
        Duration::from_secs(15),
        || across(a, b, "-tls1_3", 4) == 4 && across(b, a, "-tls1_3", 4) == 4,
    );
    for version in ["-tls1_3", "-tls1_2"] {
        assert_eq!(across(a, b, version, 8), 8, "{version}: a to b");
        assert_eq!(across(b, a, version, 8), 8, "{version}: b to a");
    }
    // One process, no master: the same secret once Redis has answered.
    let single = crate::reliability::Edge::start(&crate::reliability::EdgeSpec {
        servers: format!("{{ address = \"{}\" }}", crate::reliability::dead_address()),
        tls: true,
        tls_settings: "session_ticket_key = \"redis\"\n".to_owned(),
        locations: redis.clone(),
        ..Default::default()
    });
    let one = single.tls_addr().port();
    wait_until(
        "the single process on the fleet's secret",
        Duration::from_secs(15),
        || across(a, one, "-tls1_3", 2) == 2,
    );
    assert_eq!(
        across(one, b, "-tls1_2", 4),
        4,
        "one process to a supervised replica"
    );
    let apart = pair("");
    let (left, right) = (apart[0].tls_addr().port(), apart[1].tls_addr().port());
    assert_eq!(across(left, right, "-tls1_3", 4), 0, "without the setting");
}

/// A single-process edge reads its `session_ticket_key` file again on a
/// HUP, as nginx does: sessions of a replica already on the new key resume
/// after the reload, and its own sessions from before it still resume.
#[test]
fn a_reload_reads_the_session_ticket_key_file_again() {
    let dir = tempfile::tempdir().unwrap();
    let (old_key, new_key) = (dir.path().join("old.key"), dir.path().join("new.key"));
    let mut material = [0_u8; 80];
    getrandom_bytes(&mut material);
    std::fs::write(&old_key, material).unwrap();
    getrandom_bytes(&mut material);
    std::fs::write(&new_key, material).unwrap();
    let live_key = dir.path().join("ticket.key");
    std::fs::copy(&old_key, &live_key).unwrap();
    let spec = |key: &std::path::Path| crate::reliability::EdgeSpec {
        servers: format!("{{ address = \"{}\" }}", crate::reliability::dead_address()),
        tls: true,
        tls_settings: format!("session_ticket_key = \"{}\"\n", key.display()),
        ..Default::default()
    };
    let edge = crate::reliability::Edge::start(&spec(&live_key));
    let replica = crate::reliability::Edge::start(&spec(&new_key));
    let (port, other) = (edge.tls_addr().port(), replica.tls_addr().port());
    let save = |port: u16, name: &str| {
        let sess = dir.path().join(name).display().to_string();
        s_client(port, &["-tls1_3", "-sess_out", &sess]);
        sess
    };
    let before = save(port, "before.pem");
    let from_replica = save(other, "replica.pem");
    assert_eq!(
        resumed(port, "-tls1_3", &from_replica, 2),
        0,
        "keys differ yet"
    );
    std::fs::copy(&new_key, &live_key).unwrap();
    signal(edge.proc.pid(), "HUP");
    wait_until("the reload", Duration::from_secs(10), || {
        edge.try_metric("edge_config_reloads_total") == Ok(1)
    });
    assert_eq!(
        resumed(port, "-tls1_3", &from_replica, 4),
        4,
        "after the reload"
    );
    assert_eq!(
        resumed(port, "-tls1_3", &before, 4),
        4,
        "its own earlier sessions"
    );
}
