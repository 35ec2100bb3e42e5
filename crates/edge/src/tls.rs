//! TLS settings from the file, and where session state lives: the session
//! cache and the ticket secret in the instance's shared memory, a ticket
//! file, or a fleet's Redis.

use std::path::PathBuf;
use std::time::Duration;

use wharf_supervisor::WorkerContext;
use wharf_tls::{KeyKind, SelfSigned, TlsConfig, TlsSettings};

use crate::config::{self, EdgeConfig};
use crate::runtime;

pub(crate) fn tls_settings(
    config: &EdgeConfig,
    certificates: Vec<wharf_tls::CertificatePair>,
) -> TlsSettings {
    TlsSettings {
        certificates,
        session_cache_size: config.tls.session_cache,
        session_tickets: config.tls.session_tickets,
        handshake_timeout: config.tls.handshake_timeout,
        watch_interval: (!config.tls.watch_interval.is_zero()).then_some(config.tls.watch_interval),
        client_auth: config
            .tls
            .client_certificate
            .as_ref()
            .map(|ca| wharf_tls::ClientAuth {
                ca: PathBuf::from(ca.get_ref()),
                required: config.tls.verify_client,
            }),
        ..TlsSettings::default()
    }
}

/// The shared-memory segment holding the instance's ticket secret.
pub(crate) const TICKET_SEGMENT: &str = "tls-tickets";

/// The shared-memory segment holding the instance's TLS session cache.
pub(crate) const SESSION_SEGMENT: &str = "tls-sessions";

/// The session cache: in a worker, the one every worker shares (the
/// master's segment); in one process, the same kind in its own memory, so
/// `session_timeout` holds either way.
pub(crate) fn session_store(
    config: &EdgeConfig,
    worker: Option<&mut WorkerContext>,
) -> wharf_tls::SharedSessionCache {
    let timeout = config.tls.session_timeout;
    match worker.and_then(|ctx| ctx.take_shared_memory(SESSION_SEGMENT)) {
        Some(segment) => wharf_tls::SharedSessionCache::new(segment, timeout),
        None => wharf_tls::SharedSessionCache::private(config.tls.session_cache, timeout),
    }
}

/// The secret in the `session_ticket_key` file, when one is named (not
/// `"redis"`).
pub(crate) fn file_ticket_secret(
    config: &EdgeConfig,
) -> Result<Option<wharf_tls::TicketSecret>, String> {
    let Some(path) = config
        .tls
        .session_ticket_key
        .as_ref()
        .filter(|key| key.get_ref() != config::TICKET_KEY_IN_REDIS)
    else {
        return Ok(None);
    };
    let bytes = std::fs::read(path.get_ref())
        .map_err(|e| format!("session_ticket_key {}: {e}", path.get_ref()))?;
    wharf_tls::TicketSecret::from_material(&bytes)
        .map(Some)
        .ok_or_else(|| {
            format!(
                "session_ticket_key {}: needs at least 32 bytes of key material (openssl rand 80 > file)",
                path.get_ref()
            )
        })
}

/// Where session-ticket keys come from: `session_ticket_key` (a fleet's
/// file), else the instance's secret in the master's shared memory (every
/// worker, across HUP and USR2); with `"redis"` and no master, a secret of
/// this process until Redis answers; else this process's own keys.
pub(crate) fn ticket_secret(
    config: &EdgeConfig,
    worker: Option<&mut WorkerContext>,
) -> Result<Option<wharf_tls::TicketSecret>, String> {
    if let Some(secret) = file_ticket_secret(config)? {
        return Ok(Some(secret));
    }
    let instance = worker
        .and_then(|ctx| ctx.take_shared_memory(TICKET_SEGMENT))
        .and_then(|segment| wharf_tls::TicketSecret::in_shared_memory(segment.words()));
    let in_redis = config
        .tls
        .session_ticket_key
        .as_ref()
        .is_some_and(|key| key.get_ref() == config::TICKET_KEY_IN_REDIS);
    if instance.is_none() && in_redis {
        // A ticketer whose secret the Redis task can replace.
        return wharf_tls::TicketSecret::fresh_material()
            .and_then(|material| wharf_tls::TicketSecret::from_material(material.as_bytes()))
            .map(Some)
            .ok_or_else(|| "session_ticket_key: no randomness for a secret".to_owned());
    }
    Ok(instance)
}

/// How often `session_ticket_key = "redis"` reads the fleet's secret again.
pub(crate) const TICKET_SECRET_REFRESH: Duration = Duration::from_secs(60);

/// `session_ticket_key = "redis"`: the fleet's ticket secret, chosen by the
/// first replica to ask and read again every minute, so every replica seals
/// with one secret and deleting the key rotates them all. Until Redis first
/// answers, the instance's own secret seals (and still opens afterwards).
///
/// A reload calls it again: the task of the previous configuration stops, and
/// one starts if the new configuration still keeps the secret in Redis.
pub(crate) fn follow_redis_ticket_secret(config: &EdgeConfig, tls: &TlsConfig) {
    static TASK: std::sync::Mutex<Option<tokio::task::AbortHandle>> = std::sync::Mutex::new(None);
    let mut task = TASK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(previous) = task.take() {
        previous.abort();
    }
    let (Some(key), Some(section)) = (&config.tls.session_ticket_key, &config.redis) else {
        return;
    };
    let Some(url) = section
        .url
        .as_ref()
        .filter(|_| key.get_ref() == config::TICKET_KEY_IN_REDIS)
    else {
        return;
    };
    let options = runtime::redis_options(section, url.get_ref());
    let store = match wharf_ratelimit::RedisStore::lazy(&options) {
        Ok(store) => store,
        Err(error) => {
            tracing::error!(%error, "session_ticket_key: Redis unusable; this instance's own ticket keys serve");
            return;
        }
    };
    let tls = tls.clone();
    let handle = tokio::spawn(async move {
        let budget = Duration::from_secs(2);
        loop {
            let wait = match fleet_ticket_secret(&store, budget).await {
                Ok(secret) => {
                    if tls.set_ticket_secret(&secret) {
                        tracing::info!("Session tickets sealed with the fleet's secret from Redis");
                    }
                    TICKET_SECRET_REFRESH
                }
                Err(error) => {
                    tracing::warn!(%error, "session_ticket_key: cannot read the fleet's secret from Redis; retrying");
                    Duration::from_secs(5)
                }
            };
            tokio::time::sleep(wait).await;
        }
    });
    *task = Some(handle.abort_handle());
}

async fn fleet_ticket_secret(
    store: &wharf_ratelimit::RedisStore,
    budget: Duration,
) -> Result<wharf_tls::TicketSecret, String> {
    let fresh = wharf_tls::TicketSecret::fresh_material()
        .ok_or_else(|| "no randomness for a new secret".to_owned())?;
    let material = store
        .agreed_value("tls-ticket-secret", &fresh, budget)
        .await?;
    wharf_tls::TicketSecret::from_material(material.as_bytes())
        .ok_or_else(|| "the secret in Redis is under 32 bytes".to_owned())
}

/// Makes the development certificate when no file configures one.
pub(crate) fn development_certificates(
) -> Result<Vec<wharf_tls::CertificatePair>, wharf_tls::TlsError> {
    let dir = std::env::temp_dir().join(format!("wharf-edge-dev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| wharf_tls::TlsError::Read {
        path: dir.clone(),
        source,
    })?;
    let pair = SelfSigned::generate(&["localhost", "127.0.0.1"], KeyKind::EcdsaP256)?
        .write(&dir, "localhost")?;
    tracing::warn!(cert = %pair.cert.display(), "Development: serving a self-signed certificate made at start");
    Ok(vec![pair])
}
