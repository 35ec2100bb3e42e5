//! What a master tells its worker through the environment: the slot, the
//! inherited descriptors, the address each socket was configured as, and
//! the test hooks (debug builds only).

use std::net::{SocketAddr, TcpListener};

/// Environment variables the master sets for its workers. They start with an
/// underscore: internal, and outside the `WHARF_` namespace that
/// configuration loaders reserve.
pub(crate) const ENV_SLOT: &str = "_WHARF_WORKER_SLOT";
pub(crate) const ENV_LISTENERS: &str = "_WHARF_WORKER_LISTENERS";
pub(crate) const ENV_MASTER_PID: &str = "_WHARF_MASTER_PID";
/// The address each inherited listener was configured as, comma-separated,
/// in order ([`WorkerContext::listen_addresses`](super::WorkerContext::listen_addresses)).
pub(crate) const ENV_ADDRS: &str = "_WHARF_WORKER_ADDRS";

/// The addresses a master passes in [`ENV_ADDRS`].
pub(crate) fn encode_addrs(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// [`encode_addrs`] read back; `None` if a part is not an address.
pub(crate) fn decode_addrs(text: &str) -> Option<Vec<SocketAddr>> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| part.parse().ok())
        .collect()
}

/// Test hooks, honoured only in debug builds and only with `_WHARF_TEST_HOOKS=1`
/// (release builds ignore them): a worker whose slot equals `BLOCK_SLOT` blocks
/// its runtime after becoming ready; every worker exits with status 3
/// `EXIT_AFTER_MS` after becoming ready; with `FAIL_BEFORE_READY=1` every worker
/// fails before it is ready, and so does every worker started while the file
/// `FAIL_IF_FILE` names exists.
pub(super) const ENV_TEST_BLOCK_SLOT: &str = "_WHARF_TEST_BLOCK_SLOT";
/// With `BLOCK_SLOT`: only the worker that manages to create this file blocks
/// (the first one), so its replacements serve.
pub(super) const ENV_TEST_BLOCK_ONCE_FILE: &str = "_WHARF_TEST_BLOCK_ONCE_FILE";
pub(super) const ENV_TEST_EXIT_AFTER_MS: &str = "_WHARF_TEST_EXIT_AFTER_MS";
pub(super) const ENV_TEST_FAIL_BEFORE_READY: &str = "_WHARF_TEST_FAIL_BEFORE_READY";
/// A file whose existence makes new workers fail before they are ready (a
/// reload whose new workers fail, while the old ones keep serving).
pub(super) const ENV_TEST_FAIL_IF_FILE: &str = "_WHARF_TEST_FAIL_IF_FILE";

/// Whether the test hooks ask this worker to fail before it is ready.
pub(super) fn test_fail_before_ready() -> bool {
    test_hook(ENV_TEST_FAIL_BEFORE_READY).is_some_and(|v| v == "1")
        || test_hook(ENV_TEST_FAIL_IF_FILE).is_some_and(|path| std::path::Path::new(&path).exists())
}

fn test_hooks_enabled() -> bool {
    cfg!(debug_assertions) && std::env::var("_WHARF_TEST_HOOKS").is_ok_and(|v| v == "1")
}

pub(super) fn test_hook(name: &str) -> Option<String> {
    test_hooks_enabled()
        .then(|| std::env::var(name).ok())
        .flatten()
}

/// What the master told this process, if it is a worker.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WorkerEnv {
    pub(crate) slot: usize,
    pub(crate) listeners: usize,
    pub(crate) master_pid: u32,
}

impl WorkerEnv {
    pub(crate) fn detect() -> Option<Self> {
        let slot = std::env::var(ENV_SLOT).ok()?.parse().ok()?;
        let listeners = std::env::var(ENV_LISTENERS).ok()?.parse().ok()?;
        let master_pid = std::env::var(ENV_MASTER_PID).ok()?.parse().ok()?;
        Some(Self {
            slot,
            listeners,
            master_pid,
        })
    }
}

/// The addresses `listeners` are bound to (unspecified where unknown).
pub(super) fn bound_addrs(listeners: &[TcpListener]) -> Vec<SocketAddr> {
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
        })
        .collect()
}
