//! systemd's `sd_notify` protocol: one datagram to `$NOTIFY_SOCKET`.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`) to systemd when `NOTIFY_SOCKET` is set;
/// does nothing otherwise. Failures are logged, never fatal.
pub fn sd_notify(state: &str) {
    let Ok(path) = std::env::var("NOTIFY_SOCKET") else {
        return;
    };
    let result = UnixDatagram::unbound().and_then(|socket| {
        if let Some(abstract_name) = path.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
            socket.send_to_addr(state.as_bytes(), &addr)
        } else {
            socket.send_to(state.as_bytes(), &path)
        }
    });
    if let Err(error) = result {
        tracing::warn!(%error, state, "Cannot notify systemd");
    }
}

/// `MONOTONIC_USEC=…` for a `RELOADING=1` message (`Type=notify-reload`).
pub(crate) fn monotonic_usec() -> String {
    format!("MONOTONIC_USEC={}", crate::sys::monotonic_usec())
}

/// Half of systemd's `WATCHDOG_USEC` when the watchdog is on for this process.
pub(crate) fn watchdog_interval() -> Option<std::time::Duration> {
    let for_us = std::env::var("WATCHDOG_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        .is_none_or(|pid| pid == std::process::id());
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    (for_us && usec > 0).then(|| std::time::Duration::from_micros(usec / 2))
}
