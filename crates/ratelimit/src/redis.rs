//! The Redis store: one atomic Lua script per check on the Redis clock, a
//! circuit breaker, and a local deny cache.
//!
//! Kept whole although over 600 lines: the Lua scripts, the store that runs
//! them, its circuit breaker and its deny cache are one store's protocol with
//! Redis, each relying on the others' invariants.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use fred::clients::Pipeline;
use fred::prelude::ClientLike;
use fred::types::config::{ClusterDiscoveryPolicy, Options, ReconnectPolicy, Server, ServerConfig};
use fred::types::scripts::Script;
use fred::types::{CustomCommand, Value};

use crate::batch::Batcher;
use crate::breaker::{Breaker, BreakerState, Permit};
use crate::error::BuildError;
use crate::gcra::Policy;
use crate::metrics::Metrics;

/// Checks and charges every key of a group, all or nothing, on the Redis
/// clock. KEYS: one per zone, all with the same hash tag (one Cluster slot).
/// ARGV: per key, the interval and the limit `(burst + 1)·T`, in µs.
/// Reply: `{allowed, now, tat_1, ..., tat_n}` where `tat_i` is the TAT the
/// request would give key `i` (stored only when `allowed` is 1). Numbers stay
/// below 2^53, so Lua's doubles hold them exactly; they are written with
/// `%.0f` because Lua's default `%.14g` would round them.
pub const CHECK_SCRIPT: &str = r"-- wharf-ratelimit GCRA check v1
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local tats = {}
local ok = 1
for i = 1, n do
  local interval = tonumber(ARGV[2 * i - 1])
  local limit = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i])) or 0
  if tat < now then tat = now end
  local new = tat + interval
  tats[i] = new
  if new - now > limit then ok = 0 end
end
if ok == 1 then
  for i = 1, n do
    redis.call('SET', KEYS[i], string.format('%.0f', tats[i]), 'PX', math.ceil((tats[i] - now) / 1000))
  end
end
local reply = {ok, now}
for i = 1, n do reply[i + 2] = tats[i] end
return reply
";

/// Gives back one request per key charged at the given TAT, unless the key
/// was charged again since (then ours is lost, erring strict). ARGV: per key,
/// the interval and the charged TAT.
pub const REFUND_SCRIPT: &str = r"-- wharf-ratelimit GCRA refund v1
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local charged = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]))
  if tat and tat == charged then
    local new = tat - interval
    if new <= now then
      redis.call('DEL', KEYS[i])
    else
      redis.call('SET', KEYS[i], string.format('%.0f', new), 'PX', math.ceil((new - now) / 1000))
    end
  end
end
return 1
";

/// What fred answers a command Redis Cluster redirected (MOVED or ASK) when
/// it may follow no redirection: Redis did not run the command.
const REDIRECTED: &str = "Too many redirections.";

/// Most commands one check sends: EVALSHA; again after a MOVED; after
/// ASKING, once the slot is found migrating; again when it no longer is
/// (MOVED then the retry); EVAL after NOSCRIPT.
const MAX_SENDS: usize = 6;

/// How the Redis store connects and behaves. Every field has a default.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://`, `rediss://`, `redis-cluster://` (etc., as fred accepts) URL.
    pub url: String,
    /// Treat the URL's host as a Redis Cluster node (as if `redis-cluster://`). Default false.
    pub cluster: bool,
    /// The most a check waits for Redis before its zone's failure mode
    /// decides. Default 50 ms.
    pub timeout: Duration,
    /// Consecutive failures that open the circuit breaker. Default 5.
    pub breaker_failures: u32,
    /// How long an open breaker skips Redis before one request probes it. Default 1 s.
    pub breaker_cooldown: Duration,
    /// Prefix of every key (must not contain `{` or `}`). Default `wharf:rl`.
    pub key_prefix: String,
    /// Most keys held in the local deny cache (0 disables it). Default 100 000.
    pub deny_cache_keys: usize,
    /// Reconnect delays: exponential from this (ms)... Default 50 ms.
    pub reconnect_min_delay: Duration,
    /// ... up to this. Default 500 ms, so a restarted Redis is found within it.
    pub reconnect_max_delay: Duration,
    /// Most checks sent to Redis in one script call. Checks that arrive
    /// while a call is in flight wait for it and then go together, so a
    /// loaded process makes one round trip for many checks and an idle one
    /// sends each at once. 1 sends every check on its own. Ignored on
    /// Cluster, where each check is its own call. Default 128.
    pub max_batch: usize,
}

impl RedisOptions {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            cluster: false,
            timeout: Duration::from_millis(50),
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(1),
            key_prefix: "wharf:rl".to_owned(),
            deny_cache_keys: 100_000,
            reconnect_min_delay: Duration::from_millis(50),
            reconnect_max_delay: Duration::from_millis(500),
            max_batch: 128,
        }
    }
}

/// The shared store: a fred client and everything around it.
pub struct RedisStore {
    conn: Conn,
    check: Script,
    refund: Script,
    /// Sends concurrent checks in one script call (not on Cluster, whether
    /// by `cluster` or by a `redis-cluster://` URL).
    pub(crate) batcher: Option<Batcher>,
    pub(crate) breaker: Breaker,
    prefix: String,
    deny: DenyCache,
    /// Whether the connection was started (see [`RedisStore::lazy`]).
    started: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("timeout", &self.conn.timeout)
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

/// A started client's connection task outlives the handle unless told to
/// quit: a store replaced by a configuration reload closes its connection.
impl Drop for RedisStore {
    fn drop(&mut self) {
        if !self.started.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let client = self.conn.client.clone();
            runtime.spawn(async move {
                let _ = client.quit().await;
            });
        }
    }
}

/// Why a Redis check gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unavailable {
    /// The breaker is open: Redis was not asked.
    Skipped,
    /// Redis failed or did not answer in time.
    Failed(String),
}

/// What Redis answered for a group.
#[derive(Debug, Clone)]
pub(crate) struct GroupAnswer {
    pub(crate) allowed: bool,
    pub(crate) now: u64,
    pub(crate) tats: Vec<u64>,
}

impl RedisStore {
    /// Builds the client and starts connecting in the background (call from
    /// inside a tokio runtime). It does not wait for Redis: until Redis
    /// answers, checks fail fast and each zone's failure mode decides.
    pub fn connect(options: &RedisOptions) -> Result<Self, BuildError> {
        let store = Self::lazy(options)?;
        store.start();
        Ok(store)
    }

    /// Builds the client and checks the options, connecting only on the
    /// first check (or [`start`](Self::start)): no runtime needed, and a
    /// store built only to validate a configuration never connects.
    pub fn lazy(options: &RedisOptions) -> Result<Self, BuildError> {
        if options.key_prefix.contains(['{', '}']) {
            return Err(BuildError::KeyPrefix(options.key_prefix.clone()));
        }
        let config = if options.cluster {
            let url = options
                .url
                .replacen("rediss://", "rediss-cluster://", 1)
                .replacen("redis://", "redis-cluster://", 1);
            fred::types::config::Config::from_url(&url)
        } else {
            fred::types::config::Config::from_url(&options.url)
        }
        .map_err(|e| BuildError::RedisUrl(e.details().to_owned()))?;
        let mut config = config;
        // From the parsed URL: `redis-cluster://` is a Cluster too.
        let clustered = matches!(config.server, ServerConfig::Clustered { .. });
        // Retry the first connection with the reconnect policy instead of
        // failing: a replica must start (failing open) while Redis is down.
        config.fail_fast = false;
        // Rediscover a Cluster through any master it knew, not only the
        // node the URL names: with that node dead (a master that failed
        // over), fred would otherwise never find the cluster again.
        if let ServerConfig::Clustered { policy, .. } = &mut config.server {
            *policy = ClusterDiscoveryPolicy::UseCache;
        }
        let min = u32::try_from(options.reconnect_min_delay.as_millis())
            .unwrap_or(u32::MAX)
            .max(1);
        let max = u32::try_from(options.reconnect_max_delay.as_millis())
            .unwrap_or(u32::MAX)
            .max(min);
        // fred has no reconnect policy unless given one: reconnect forever (0).
        let mut policy = ReconnectPolicy::new_exponential(0, min, max, 2);
        policy.set_jitter(min.min(50));
        let timeout = options.timeout;
        let client = fred::types::Builder::from_config(config)
            .with_connection_config(|c| {
                // One attempt: a check resent after a dropped connection could
                // be charged twice. Failures go to the failure mode instead.
                c.max_command_attempts = 1;
                // fred follows no Cluster redirection: `run` does (see there).
                c.max_redirections = 0;
                c.connection_timeout = Duration::from_secs(2).max(timeout);
                c.internal_command_timeout = Duration::from_secs(2).max(timeout);
                c.tcp.nodelay = Some(true);
            })
            .with_performance_config(|p| {
                // fred applies no timeout by default; every command gets the budget.
                p.default_command_timeout = timeout;
            })
            .set_policy(policy)
            .build()
            .map_err(|e| BuildError::RedisUrl(e.details().to_owned()))?;
        let conn = Conn {
            client,
            options: Options {
                max_attempts: Some(1),
                timeout: Some(timeout),
                // While fred (re)connects, a check waits for it within its
                // budget: the client connects in the background at start-up,
                // and failing the first checks at once would open the breaker
                // for its cool-down. (`ping` fails at once.)
                fail_fast: false,
                ..Options::default()
            },
            timeout,
        };
        // Cluster keys of different clients live in different slots, which
        // one script cannot touch: there every check is its own call.
        let batcher =
            (!clustered && options.max_batch > 1).then(|| Batcher::new(options.max_batch));
        Ok(Self {
            conn,
            check: Script::from_lua(CHECK_SCRIPT),
            refund: Script::from_lua(REFUND_SCRIPT),
            batcher,
            breaker: Breaker::new(options.breaker_failures, options.breaker_cooldown),
            prefix: options.key_prefix.clone(),
            deny: DenyCache::new(options.deny_cache_keys),
            started: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Starts connecting in the background, once (call from inside a tokio
    /// runtime; later calls do nothing).
    pub fn start(&self) {
        // A load first: every check calls this, and a swap would write.
        if !self.started.load(std::sync::atomic::Ordering::Acquire)
            && !self.started.swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let _connection_task = self.conn.client.connect();
            if let Some(batcher) = &self.batcher {
                batcher.spawn(self.conn.clone());
            }
        }
    }

    /// Waits until the client is connected, at most `timeout`. Returns whether it is.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        self.start();
        matches!(
            tokio::time::timeout(timeout, self.conn.client.wait_for_connect()).await,
            Ok(Ok(()))
        )
    }

    /// The underlying fred client (for tests and health checks).
    pub fn client(&self) -> &fred::clients::Client {
        &self.conn.client
    }

    /// Whether concurrent checks share script calls (see
    /// [`RedisOptions::max_batch`]): not on Cluster, nor with `max_batch` 1.
    pub fn batches(&self) -> bool {
        self.batcher.is_some()
    }

    /// The circuit breaker's state.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The Redis key of `key` in `zone`: `<prefix>:{k:<key>}:<zone>`, the hash
    /// tag making every zone of one client key share a Cluster slot.
    pub fn redis_key(&self, zone: &str, key: &str) -> String {
        format!("{}:{{k:{key}}}:{zone}", self.prefix)
    }

    /// PINGs Redis within the timeout budget (readiness).
    pub async fn ping(&self) -> Result<(), String> {
        self.start();
        // While reconnecting, fail at once rather than queue.
        let client = self.conn.client.with_options(&Options {
            fail_fast: true,
            ..self.conn.options.clone()
        });
        let ping = client.ping::<String>(None);
        match tokio::time::timeout(self.conn.timeout.max(Duration::from_millis(500)), ping).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("redis: {e}")),
            Err(_) => Err("redis: no answer in time".to_owned()),
        }
    }

    /// A value every replica sharing this Redis agrees on: the one stored at
    /// `<prefix>:<name>`, or `candidate` when none is (set with `SET NX`, so
    /// of several replicas starting at once, one wins and all read it).
    /// Within `timeout`; no expiry (delete the key to have a new one chosen).
    pub async fn agreed_value(
        &self,
        name: &str,
        candidate: &str,
        timeout: Duration,
    ) -> Result<String, String> {
        self.start();
        let key = format!("{}:{name}", self.prefix);
        let slot = fred::util::redis_keyslot(key.as_bytes());
        let client = self.conn.client.with_options(&Options {
            timeout: Some(timeout),
            ..self.conn.options.clone()
        });
        let exchange = async {
            let _: Value = client
                .custom(
                    CustomCommand::new_static("SET", slot, false),
                    vec![key.as_str(), candidate, "NX"],
                )
                .await?;
            client
                .custom::<Option<String>, _>(
                    CustomCommand::new_static("GET", slot, false),
                    vec![key.as_str()],
                )
                .await
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(Some(value))) => Ok(value),
            Ok(Ok(None)) => Err(format!("redis: {key} vanished between SET and GET")),
            Ok(Err(e)) => Err(format!("redis: {e}")),
            Err(_) => Err("redis: no answer in time".to_owned()),
        }
    }

    /// The local deny cache: if any key is denied until later than now, the
    /// longest remaining wait.
    pub(crate) fn denied(&self, keys: &[String]) -> Option<Duration> {
        let now = Instant::now();
        keys.iter()
            .filter_map(|k| self.deny.until(k, now))
            .max()
            .map(|until| until - now)
    }

    pub(crate) fn deny_until(&self, key: &str, wait: Duration) {
        self.deny.insert(key, Instant::now() + wait);
    }

    /// One round trip: runs the check script for `keys` (one hash tag).
    pub(crate) async fn check_group(
        &self,
        keys: Vec<String>,
        policies: &[Policy],
        metrics: &Metrics,
    ) -> Result<GroupAnswer, Unavailable> {
        if self.breaker.permit() == Permit::Skip {
            metrics.redis_skip();
            return Err(Unavailable::Skipped);
        }
        let args: Vec<i64> = policies
            .iter()
            .flat_map(|p| [p.interval_micros(), p.limit_micros()])
            .map(|v| i64::try_from(v).unwrap_or(i64::MAX))
            .collect();
        let started = Instant::now();
        let queued = match &self.batcher {
            Some(batcher) => {
                self.start();
                batcher.submit(keys, args, started + self.conn.timeout)
            }
            None => Err((keys, args)),
        };
        let parsed = match queued {
            Ok(pending) => pending.wait(self.conn.timeout.as_millis()).await,
            // Not batched, or the batcher's task is gone (the runtime that
            // started the store has shut down): sent alone, which then fails
            // within the budget unless fred's connection still runs.
            Err((keys, args)) => self
                .run(&self.check, keys, args)
                .await
                .and_then(|values| parse_answer(&values, policies.len())),
        };
        let elapsed = started.elapsed();
        metrics.redis_call(elapsed, parsed.is_ok());
        match parsed {
            Ok(answer) => {
                self.breaker.success();
                metrics
                    .fallback_active
                    .store(false, std::sync::atomic::Ordering::Relaxed);
                Ok(answer)
            }
            Err(error) => {
                if self.breaker.failure(&error) {
                    metrics
                        .fallback_active
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                Err(Unavailable::Failed(error))
            }
        }
    }

    /// Refunds a charged group (best effort, errors ignored).
    pub(crate) async fn refund_group(&self, keys: Vec<String>, intervals_and_tats: Vec<i64>) {
        if let Err(error) = self.run(&self.refund, keys, intervals_and_tats).await {
            tracing::debug!(error, "Could not refund a rate-limit charge");
        }
    }

    /// Sends a script (see [`Conn::run`]), connecting first if need be.
    async fn run(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<i64>,
    ) -> Result<Vec<i64>, String> {
        self.start();
        self.conn.run(script, keys, args).await
    }
}

/// The client and how each command is sent: shared by the store and its
/// batcher task.
#[derive(Clone)]
pub(crate) struct Conn {
    client: fred::clients::Client,
    options: Options,
    timeout: Duration,
}

impl Conn {
    /// EVALSHA, and on NOSCRIPT (Redis restarted or flushed its scripts) EVAL
    /// with the body, which also caches it again. No command is sent twice
    /// unless Redis refused it (NOSCRIPT, or a Cluster redirection: it did
    /// not run, so nothing is charged twice), and none is started once the
    /// budget is spent: at most twice the budget in all.
    ///
    /// Redis Cluster redirections are followed here, not by fred (fred 10
    /// sends the command that follows an `ASKING` back to the old node, and
    /// reads the `ASKING` reply off a connection other commands are waiting
    /// on). After a MOVED, fred has refreshed its slot map, so the same
    /// command reaches the new owner. Redirected again, the slot is migrating
    /// and the key already on the importing node: see [`Self::ask`].
    ///
    /// Both commands are custom commands routed to the keys' slot: fred's
    /// `WithOptions` has no Lua interface, so `with_options(..).evalsha(..)`
    /// would reach the plain client through `Deref`, without the options.
    pub(crate) async fn run(
        &self,
        script: &Script,
        keys: Vec<String>,
        args: Vec<i64>,
    ) -> Result<Vec<i64>, String> {
        let started = Instant::now();
        let slot = keys
            .first()
            .map_or(0, |k| fred::util::redis_keyslot(k.as_bytes()));
        // Built once (the keys moved in, not copied); a resend clones the
        // vector, which only bumps the reference counts of its strings.
        let mut values = Vec::with_capacity(2 + keys.len() + args.len());
        values.push(Value::from(script.sha1().clone()));
        values.push(Value::Integer(
            i64::try_from(keys.len()).unwrap_or(i64::MAX),
        ));
        values.extend(keys.into_iter().map(Value::from));
        values.extend(args.into_iter().map(Value::Integer));
        let command = |body: bool, values: &[Value]| {
            let name = if body { "EVAL" } else { "EVALSHA" };
            (
                CustomCommand::new_static(name, slot, false),
                values.to_vec(),
            )
        };
        let (mut body, mut redirections) = (false, 0);
        for _ in 0..MAX_SENDS {
            let answer = if redirections >= 2 {
                self.ask(slot, command(body, &values)).await
            } else {
                self.send(command(body, &values)).await
            };
            match answer {
                Ok(values) => return Ok(values),
                Err(Refused::NoScript) if !body => {
                    // EVAL with the body, which also caches the script again.
                    body = true;
                    values[0] = Value::from(script.lua().cloned().unwrap_or_default());
                }
                Err(Refused::Redirected) => redirections += 1,
                // The move ended meanwhile: the next answer is a MOVED.
                Err(Refused::NotMigrating) => redirections = 0,
                Err(other) => return Err(other.into_message()),
            }
            if started.elapsed() >= self.timeout {
                break;
            }
        }
        Err(format!(
            "refused or redirected until {} ms had passed",
            started.elapsed().as_millis()
        ))
    }

    /// One custom command with the options and within the time budget.
    async fn send(
        &self,
        (command, values): (CustomCommand, Vec<Value>),
    ) -> Result<Vec<i64>, Refused> {
        let client = self.client.with_options(&self.options);
        let call = client.custom::<Vec<i64>, _>(command, values);
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map_err(Refused::from),
            Err(_) => Err(Refused::Failed(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// Follows an ASK redirection for `slot`, within one time budget: the
    /// node fred routes the slot to (the migrating one) names the importing
    /// node in its own `CLUSTER NODES` line (`[slot->-id]`), and that node
    /// gets `ASKING` and the command back to back in one pipeline, so that no
    /// other command on the connection comes between them.
    async fn ask(
        &self,
        slot: u16,
        (command, values): (CustomCommand, Vec<Value>),
    ) -> Result<Vec<i64>, Refused> {
        let follow = async {
            let nodes: String = self
                .client
                .with_options(&self.options)
                .custom(
                    CustomCommand::new_static("CLUSTER", slot, false),
                    vec!["NODES"],
                )
                .await?;
            let Some((host, port)) = importing_node(&nodes, slot) else {
                return Err(Refused::NotMigrating);
            };
            let target = Options {
                cluster_node: Some(Server::new(host, port)),
                ..self.options.clone()
            };
            let pipeline = Pipeline::from(self.client.with_options(&target));
            // Both are queued in memory, then sent by `try_all`.
            let _: Value = pipeline
                .custom(
                    CustomCommand::new_static("ASKING", slot, false),
                    Vec::<Value>::new(),
                )
                .await?;
            let _: Value = pipeline.custom(command, values).await?;
            match pipeline.try_all::<Value>().await.pop() {
                Some(answer) => Ok(answer?.convert::<Vec<i64>>()?),
                None => Err(Refused::Failed("no answer after ASKING".to_owned())),
            }
        };
        match tokio::time::timeout(self.timeout, follow).await {
            Ok(result) => result,
            Err(_) => Err(Refused::Failed(format!(
                "no answer within {} ms after ASK",
                self.timeout.as_millis()
            ))),
        }
    }
}

/// Why one command got no answer.
enum Refused {
    /// Redis Cluster redirected it (MOVED or ASK): it did not run.
    Redirected,
    /// The node does not have the script: it did not run.
    NoScript,
    /// Following an ASK: the slot no longer migrates (it did not run).
    NotMigrating,
    /// Anything else: an error, or no answer in time.
    Failed(String),
}

impl From<fred::error::Error> for Refused {
    fn from(e: fred::error::Error) -> Self {
        if e.details() == REDIRECTED {
            Self::Redirected
        } else if e.details().starts_with("NOSCRIPT") {
            Self::NoScript
        } else {
            Self::Failed(e.to_string())
        }
    }
}

impl Refused {
    fn into_message(self) -> String {
        match self {
            Self::Redirected => REDIRECTED.to_owned(),
            Self::NoScript => "NOSCRIPT".to_owned(),
            Self::NotMigrating => "redirected, but the slot does not migrate".to_owned(),
            Self::Failed(message) => message,
        }
    }
}

/// The address (host, port) of the node `slot` migrates to, from the
/// migrating node's `CLUSTER NODES`: its own (`myself`) line lists
/// `[<slot>->-<node id>]`, and that node's line starts with its id and
/// `host:port@bus-port`.
pub(crate) fn importing_node(nodes: &str, slot: u16) -> Option<(String, u16)> {
    let marker = format!("[{slot}->-");
    let me = nodes
        .lines()
        .find(|l| l.split(' ').nth(2).is_some_and(|f| f.contains("myself")))?;
    let id = me
        .split(' ')
        .find_map(|f| f.strip_prefix(marker.as_str())?.strip_suffix(']'))?;
    let line = nodes.lines().find(|l| l.split(' ').next() == Some(id))?;
    let address = line.split(' ').nth(1)?.split(['@', ',']).next()?;
    let (host, port) = address.rsplit_once(':')?;
    Some((host.to_owned(), port.parse().ok()?))
}

pub(crate) fn parse_answer(values: &[i64], n: usize) -> Result<GroupAnswer, String> {
    if values.len() != n + 2 {
        return Err(format!(
            "unexpected script reply of {} values",
            values.len()
        ));
    }
    let as_u64 = |v: i64| u64::try_from(v).map_err(|_| "negative value in script reply".to_owned());
    Ok(GroupAnswer {
        allowed: values[0] == 1,
        now: as_u64(values[1])?,
        tats: values[2..]
            .iter()
            .map(|v| as_u64(*v))
            .collect::<Result<_, _>>()?,
    })
}

const DENY_SHARDS: usize = 16;

/// Keys denied until an instant, so repeated requests from a denied client
/// are rejected without a Redis round trip. Sound because a rejected request
/// is not charged: nothing but time can make the key pass earlier.
struct DenyCache {
    shards: Vec<Mutex<HashMap<String, Instant>>>,
    hasher: RandomState,
    per_shard: usize,
}

impl DenyCache {
    fn new(max_keys: usize) -> Self {
        Self {
            shards: (0..DENY_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            hasher: RandomState::new(),
            per_shard: max_keys.div_ceil(DENY_SHARDS),
        }
    }

    fn shard(&self, key: &str) -> &Mutex<HashMap<String, Instant>> {
        let i = usize::try_from(self.hasher.hash_one(key) >> 60).unwrap_or(0) % DENY_SHARDS;
        &self.shards[i]
    }

    fn until(&self, key: &str, now: Instant) -> Option<Instant> {
        if self.per_shard == 0 {
            return None;
        }
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match shard.get(key) {
            Some(until) if *until > now => Some(*until),
            Some(_) => {
                shard.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&self, key: &str, until: Instant) {
        if self.per_shard == 0 {
            return;
        }
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if shard.len() >= self.per_shard && !shard.contains_key(key) {
            let now = Instant::now();
            shard.retain(|_, t| *t > now);
            if shard.len() >= self.per_shard {
                shard.clear();
            }
        }
        shard.insert(key.to_owned(), until);
    }
}
