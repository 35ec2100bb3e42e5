//! Zero-downtime binary upgrade (SIGUSR2): the environment a new master
//! inherits from the old one.

use std::net::TcpListener;

/// How many listening sockets the new master inherits at fds 3, 4, ….
const ENV_FDS: &str = "_WHARF_UPGRADE_FDS";
/// The old master's pid, to signal once the new workers are ready.
const ENV_FROM: &str = "_WHARF_UPGRADE_FROM";

/// The variables for a new master inheriting `listeners` sockets and then
/// the `shared` segments from `old`.
pub(crate) fn env(
    listeners: usize,
    shared: &[std::sync::Arc<crate::SharedMemory>],
    old: u32,
) -> Vec<(String, String)> {
    vec![
        (ENV_FDS.to_owned(), listeners.to_string()),
        (ENV_FROM.to_owned(), old.to_string()),
        (
            crate::shared::ENV_SHARED.to_owned(),
            crate::shared::encode(shared),
        ),
    ]
}

/// The shared-memory segments inherited from the old master (after its
/// `listeners` sockets), if this process is taking over from one.
pub(crate) fn inherited_shared(
    listeners: usize,
) -> Result<Vec<crate::SharedMemory>, crate::SupervisorError> {
    if taking_over_from().is_none() {
        return Ok(Vec::new());
    }
    let first = crate::sys::FIRST_INHERITED_FD + i32::try_from(listeners).unwrap_or(0);
    crate::shared::adopt(first).map_err(|e| crate::SupervisorError::Boot(e.to_string()))
}

/// The old master this process is taking over from, if it is one started by
/// SIGUSR2 (and the old master is still its parent).
pub(crate) fn taking_over_from() -> Option<u32> {
    let old: u32 = std::env::var(ENV_FROM).ok()?.parse().ok()?;
    (crate::sys::parent_pid() == old).then_some(old)
}

/// The listening sockets inherited from the old master, if any.
pub(crate) fn inherited_listeners() -> Result<Option<Vec<TcpListener>>, crate::SupervisorError> {
    if taking_over_from().is_none() {
        return Ok(None);
    }
    let count: usize = std::env::var(ENV_FDS)
        .ok()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| crate::SupervisorError::Boot(format!("{ENV_FDS} is not a number")))?;
    let mut listeners = Vec::with_capacity(count);
    for i in 0..count {
        let fd = crate::sys::FIRST_INHERITED_FD + i32::try_from(i).unwrap_or(0);
        let owned = crate::sys::adopt_fd(fd).ok_or_else(|| {
            crate::SupervisorError::Boot(format!("inherited listener fd {fd} is not open"))
        })?;
        listeners.push(TcpListener::from(owned));
    }
    Ok(Some(listeners))
}
