//! Checks sent to Redis together (group commit): while one script call is in
//! flight, the checks that arrive queue, and the next call carries them all.
//!
//! An idle process sends each check at once, as before; a loaded one makes
//! one round trip, one script call and one `TIME` for many checks. Each
//! check keeps its meaning: the script decides the groups in the order they
//! were queued, each all or nothing, so a key charged by an earlier group of
//! the same call is seen charged by a later one.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use fred::types::scripts::Script;
use tokio::sync::{mpsc, oneshot};

use crate::redis::{parse_answer, Conn, GroupAnswer};

/// Checks queued groups in one call, each all or nothing, in order, on the
/// Redis clock. Checks of the same keys come as one group with a count:
/// the keys are read once, the checks decided one after another in Lua,
/// and the keys written once (a client sending many requests at once costs
/// one `GET` and one `SET` per key, not one per request). KEYS: every
/// group's keys, group after group. ARGV: the number of groups `g`; per
/// group its key count `n` and check count `c`; then per group, per key,
/// the interval and the limit `(burst + 1)·T` in µs. Reply: `{now, ...}`
/// then per group, per check, whether it passed and the TAT it would give
/// each key (stored only when it passed). Numbers stay below 2^53, so Lua's
/// doubles hold them exactly; `%d` writes them as integers (Lua 5.1 casts
/// to a 64-bit `long`), without `%.0f`'s multi-precision float printing.
pub const BATCH_SCRIPT: &str = r"-- wharf-ratelimit GCRA batch v1
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local groups = tonumber(ARGV[1])
local reply = {now}
local k = 0
local a = 1 + 2 * groups
for g = 1, groups do
  local n = tonumber(ARGV[2 * g])
  local c = tonumber(ARGV[2 * g + 1])
  local cur, iv, lim = {}, {}, {}
  for i = 1, n do
    iv[i] = tonumber(ARGV[a + 2 * i - 1])
    lim[i] = tonumber(ARGV[a + 2 * i])
    cur[i] = tonumber(redis.call('GET', KEYS[k + i])) or 0
  end
  local charged = false
  for r = 1, c do
    local ok = 1
    local tats = {}
    for i = 1, n do
      local tat = cur[i]
      if tat < now then tat = now end
      tats[i] = tat + iv[i]
      if tats[i] - now > lim[i] then ok = 0 end
    end
    if ok == 1 then
      for i = 1, n do cur[i] = tats[i] end
      charged = true
    end
    reply[#reply + 1] = ok
    for i = 1, n do reply[#reply + 1] = tats[i] end
  end
  if charged then
    for i = 1, n do
      redis.call('SET', KEYS[k + i], string.format('%d', cur[i]), 'PX', math.ceil((cur[i] - now) / 1000))
    end
  end
  k = k + n
  a = a + 2 * n
end
return reply
";

/// One queued check: a group's keys and their (interval, limit) pairs.
struct Job {
    keys: Vec<String>,
    args: Vec<i64>,
    /// After this the caller has given up (its budget is spent): not sent.
    deadline: Instant,
    reply: oneshot::Sender<Result<GroupAnswer, String>>,
}

/// The queue in front of one task that sends the calls.
pub(crate) struct Batcher {
    max: usize,
    tx: mpsc::UnboundedSender<Job>,
    /// Taken by [`Batcher::spawn`], once.
    rx: Mutex<Option<mpsc::UnboundedReceiver<Job>>>,
}

/// A queued check's answer, or why it has none.
pub(crate) struct Pending {
    rx: oneshot::Receiver<Result<GroupAnswer, String>>,
    deadline: Instant,
}

impl Pending {
    /// Waits for the answer until the check's deadline.
    pub(crate) async fn wait(self, budget_ms: u128) -> Result<GroupAnswer, String> {
        match tokio::time::timeout_at(self.deadline.into(), self.rx).await {
            Ok(Ok(answer)) => answer,
            // The task dropped the job unsent: its deadline passed in the
            // queue, or the task itself ended (its runtime shut down).
            Ok(Err(_)) => Err(format!(
                "not sent: the budget of {budget_ms} ms ran out in the queue, or the sender stopped"
            )),
            Err(_) => Err(format!("no answer within {budget_ms} ms")),
        }
    }
}

impl Batcher {
    pub(crate) fn new(max: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            max,
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Starts the task that sends the calls (inside a tokio runtime), once.
    pub(crate) fn spawn(&self, conn: Conn) {
        let rx = self
            .rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(rx) = rx {
            tokio::spawn(serve(conn, Script::from_lua(BATCH_SCRIPT), rx, self.max));
        }
    }

    /// Queues a group's check. Gives the keys and arguments back when the
    /// task is gone (its runtime shut down), for the caller to send alone.
    pub(crate) fn submit(
        &self,
        keys: Vec<String>,
        args: Vec<i64>,
        deadline: Instant,
    ) -> Result<Pending, (Vec<String>, Vec<i64>)> {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            keys,
            args,
            deadline,
            reply,
        };
        match self.tx.send(job) {
            Ok(()) => Ok(Pending { rx, deadline }),
            Err(mpsc::error::SendError(job)) => Err((job.keys, job.args)),
        }
    }
}

/// Takes what is queued (up to `max`), sends it as one call, answers each
/// check, and repeats; ends when the store (the sender) is dropped.
async fn serve(conn: Conn, script: Script, mut rx: mpsc::UnboundedReceiver<Job>, max: usize) {
    let refund_script = Script::from_lua(crate::redis::REFUND_SCRIPT);
    let mut batch: Vec<Job> = Vec::with_capacity(max);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < max {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // A caller that gave up takes its zone's failure mode: charging it
        // now would count a request Redis never decided.
        let now = Instant::now();
        batch.retain(|job| job.deadline > now && !job.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        // Checks of the same keys (and zones) form one group, in queue order.
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<(&[String], &[i64]), usize> = HashMap::new();
        for (j, job) in batch.iter().enumerate() {
            match index.entry((&job.keys, &job.args)) {
                Entry::Occupied(e) => groups[*e.get()].jobs.push(j),
                Entry::Vacant(e) => {
                    e.insert(groups.len());
                    groups.push(Group {
                        keys: job.keys.len(),
                        jobs: vec![j],
                    });
                }
            }
        }
        drop(index);
        let mut keys = Vec::new();
        let mut args = Vec::with_capacity(1 + 2 * groups.len());
        args.push(int(groups.len()));
        for group in &groups {
            args.extend([int(group.keys), int(group.jobs.len())]);
        }
        for group in &groups {
            let first = &batch[group.jobs[0]];
            keys.extend(first.keys.iter().cloned());
            args.extend_from_slice(&first.args);
        }
        let answers = conn
            .run(&script, keys, args)
            .await
            .and_then(|values| split(&values, &groups, batch.len()));
        match answers {
            Ok(answers) => {
                for (job, answer) in batch.drain(..).zip(answers) {
                    if let Err(Ok(answer)) = job.reply.send(Ok(answer)) {
                        // The caller gave up (its budget ran out while the
                        // call was in flight) and took its zone's failure
                        // mode: give back what Redis charged it.
                        if answer.allowed {
                            refund(&conn, &refund_script, job.keys, &job.args, &answer.tats);
                        }
                    }
                }
            }
            Err(error) => {
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Gives back one charged check in the background (best effort, as the
/// single-check path's refunds): `args` are the job's (interval, limit)
/// pairs, `tats` what the check charged.
fn refund(conn: &Conn, script: &Script, keys: Vec<String>, args: &[i64], tats: &[u64]) {
    let pairs: Vec<i64> = args
        .chunks(2)
        .zip(tats)
        .flat_map(|(pair, tat)| [pair[0], i64::try_from(*tat).unwrap_or(i64::MAX)])
        .collect();
    let (conn, script) = (conn.clone(), script.clone());
    tokio::spawn(async move {
        if let Err(error) = conn.run(&script, keys, pairs).await {
            tracing::debug!(error, "Could not refund a rate-limit charge");
        }
    });
}

/// Checks of the same keys in one batch: how many keys, and which jobs.
struct Group {
    keys: usize,
    jobs: Vec<usize>,
}

fn int(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Splits the batch script's reply into one answer per job (`jobs` of them,
/// each in its group's order).
fn split(values: &[i64], groups: &[Group], jobs: usize) -> Result<Vec<GroupAnswer>, String> {
    let expected = 1 + groups
        .iter()
        .map(|g| g.jobs.len() * (g.keys + 1))
        .sum::<usize>();
    if values.len() != expected {
        return Err(format!(
            "unexpected batch reply of {} values (expected {expected})",
            values.len()
        ));
    }
    let now = values[0];
    let mut at = 1;
    let mut answers: Vec<Option<GroupAnswer>> = vec![None; jobs];
    for group in groups {
        let n = group.keys;
        for &job in &group.jobs {
            // `[allowed, now, tats...]`, the single check's reply shape.
            let mut one = Vec::with_capacity(n + 2);
            one.push(values[at]);
            one.push(now);
            one.extend_from_slice(&values[at + 1..at + 1 + n]);
            at += 1 + n;
            answers[job] = Some(parse_answer(&one, n)?);
        }
    }
    answers
        .into_iter()
        .map(|a| a.ok_or_else(|| "a check missing from the batch".to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::{split, Group};
    use crate::redis::{RedisOptions, RedisStore};

    /// Calls of `command` Redis has counted (`INFO commandstats`).
    fn calls(redis: &wharf_test::RedisServer, command: &str) -> u64 {
        let stats = redis.cmd(&["INFO", "commandstats"]);
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// A check whose caller gave up while its call was in flight is
    /// charged by Redis and then given back; one whose caller waits is
    /// charged and kept.
    #[tokio::test]
    async fn a_check_answered_after_its_caller_gave_up_is_refunded() {
        let redis = wharf_test::RedisServer::start();
        let store = RedisStore::connect(&RedisOptions::new(redis.url())).unwrap();
        assert!(store.wait_connected(Duration::from_secs(5)).await);
        let batcher = store.batcher.as_ref().unwrap();
        // 1r/m, burst 0: interval and limit 60 s.
        let args = vec![60_000_000, 60_000_000];
        let deadline = Instant::now() + Duration::from_secs(5);
        for (key, gives_up) in [("wharf:rl:{k:a}:z", true), ("wharf:rl:{k:b}:z", false)] {
            let pending = batcher
                .submit(vec![key.to_owned()], args.clone(), deadline)
                .ok()
                .unwrap();
            // The batcher task takes the job and sends it (this task runs
            // again only after it has)...
            tokio::task::yield_now().await;
            if gives_up {
                // ... and the caller is gone before the answer is read.
                drop(pending);
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert_eq!(redis.cmd(&["EXISTS", key]), "0", "refunded");
            } else {
                assert!(pending.wait(5_000).await.unwrap().allowed);
                assert_eq!(redis.cmd(&["EXISTS", key]), "1", "charged");
            }
        }
        // The given-up check was charged (a SET), then refunded (a DEL).
        assert_eq!(calls(&redis, "set"), 2);
        assert_eq!(calls(&redis, "del"), 1);
    }

    #[test]
    fn a_batch_reply_splits_into_its_jobs_in_queue_order() {
        // Jobs 0 and 2 share one key (group 0); job 1 has two keys (group 1).
        let groups = [
            Group {
                keys: 1,
                jobs: vec![0, 2],
            },
            Group {
                keys: 2,
                jobs: vec![1],
            },
        ];
        let values = [1_000, 1, 1_100, 0, 1_200, 0, 1_200, 9_000];
        let answers = split(&values, &groups, 3).unwrap();
        assert_eq!(answers.len(), 3);
        assert!(answers[0].allowed);
        assert_eq!(
            (answers[0].now, answers[0].tats.clone()),
            (1_000, vec![1_100])
        );
        assert!(!answers[2].allowed);
        assert_eq!(answers[2].tats, vec![1_200]);
        assert!(!answers[1].allowed);
        assert_eq!(answers[1].tats, vec![1_200, 9_000]);
        assert!(split(&values[..7], &groups, 3).is_err());
        let mut negative = values;
        negative[2] = -5;
        assert!(split(&negative, &groups, 3).is_err());
    }
}
