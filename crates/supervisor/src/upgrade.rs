//! Zero-downtime binary upgrade (SIGUSR2): the environment a new master
//! inherits from the old one, and how the new master matches the sockets it
//! inherits to the addresses its own configuration lists.

use std::net::{SocketAddr, TcpListener};

use crate::sockets::{diff_listen_set, ListenSource};
use crate::SupervisorError;

/// How many listening sockets the new master inherits at fds 3, 4, ….
const ENV_FDS: &str = "_WHARF_UPGRADE_FDS";
/// The old master's pid, to signal once the new workers are ready.
const ENV_FROM: &str = "_WHARF_UPGRADE_FROM";
/// The address each inherited socket was configured as in the old master,
/// comma-separated, in fd order. Without it (an old master from before this
/// variable) the sockets are matched to the configuration by position.
const ENV_ADDRS: &str = "_WHARF_UPGRADE_ADDRS";
/// The indices of the inherited sockets that came from systemd's
/// `LISTEN_FDS` (comma-separated): the socket unit holds them too.
const ENV_SYSTEMD: &str = "_WHARF_UPGRADE_SYSTEMD";

/// The sockets an old master hands over: each with the address it was
/// configured as and whether systemd passed it.
pub(crate) struct Handover<'a> {
    pub(crate) listeners: Vec<&'a TcpListener>,
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) systemd: Vec<bool>,
}

/// The variables for a new master inheriting `handover`'s sockets and then
/// the `shared` segments from `old`.
pub(crate) fn env(
    handover: &Handover<'_>,
    shared: &[std::sync::Arc<crate::SharedMemory>],
    old: u32,
) -> Vec<(String, String)> {
    let systemd: Vec<String> = handover
        .systemd
        .iter()
        .enumerate()
        .filter(|(_, systemd)| **systemd)
        .map(|(i, _)| i.to_string())
        .collect();
    vec![
        (ENV_FDS.to_owned(), handover.listeners.len().to_string()),
        (ENV_FROM.to_owned(), old.to_string()),
        (
            ENV_ADDRS.to_owned(),
            crate::worker::encode_addrs(&handover.addrs),
        ),
        (ENV_SYSTEMD.to_owned(), systemd.join(",")),
        (
            crate::shared::ENV_SHARED.to_owned(),
            crate::shared::encode(shared),
        ),
    ]
}

/// The shared-memory segments inherited from the old master (after its
/// listening sockets), if this process is taking over from one.
pub(crate) fn inherited_shared() -> Result<Vec<crate::SharedMemory>, SupervisorError> {
    if taking_over_from().is_none() {
        return Ok(Vec::new());
    }
    let first = crate::sys::FIRST_INHERITED_FD + i32::try_from(fd_count()?).unwrap_or(0);
    crate::shared::adopt(first).map_err(|e| SupervisorError::Boot(e.to_string()))
}

/// The old master this process is taking over from, if it is one started by
/// SIGUSR2 (and the old master is still its parent).
pub(crate) fn taking_over_from() -> Option<u32> {
    let old: u32 = std::env::var(ENV_FROM).ok()?.parse().ok()?;
    (crate::sys::parent_pid() == old).then_some(old)
}

fn fd_count() -> Result<usize, SupervisorError> {
    std::env::var(ENV_FDS)
        .ok()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| SupervisorError::Boot(format!("{ENV_FDS} is not a number")))
}

/// The listening sockets inherited from the old master, if any.
pub(crate) fn inherited_listeners() -> Result<Option<Inherited>, SupervisorError> {
    if taking_over_from().is_none() {
        return Ok(None);
    }
    let count = fd_count()?;
    let mut listeners = Vec::with_capacity(count);
    for i in 0..count {
        let fd = crate::sys::FIRST_INHERITED_FD + i32::try_from(i).unwrap_or(0);
        let owned = crate::sys::adopt_fd(fd).ok_or_else(|| {
            SupervisorError::Boot(format!("inherited listener fd {fd} is not open"))
        })?;
        listeners.push(TcpListener::from(owned));
    }
    let addrs = std::env::var(ENV_ADDRS)
        .ok()
        .and_then(|text| crate::worker::decode_addrs(&text))
        .filter(|addrs| addrs.len() == count);
    let mut systemd = vec![false; count];
    for i in std::env::var(ENV_SYSTEMD).unwrap_or_default().split(',') {
        if let Some(flag) = i.parse::<usize>().ok().and_then(|i| systemd.get_mut(i)) {
            *flag = true;
        }
    }
    Ok(Some(Inherited {
        listeners,
        addrs,
        systemd,
    }))
}

/// What a new master inherited from the old one.
#[derive(Debug)]
pub(crate) struct Inherited {
    pub(crate) listeners: Vec<TcpListener>,
    /// The address each was configured as in the old master (`None`: an
    /// old master that did not say).
    pub(crate) addrs: Option<Vec<SocketAddr>>,
    /// Whether each came from systemd's `LISTEN_FDS`.
    pub(crate) systemd: Vec<bool>,
}

/// The sockets a master starts with, in the order of its configuration,
/// and whether each came from systemd.
#[derive(Debug)]
pub(crate) struct StartSet {
    pub(crate) listeners: Vec<TcpListener>,
    pub(crate) systemd: Vec<bool>,
}

impl Inherited {
    /// Matches the inherited sockets to `wanted` (this master's configured
    /// addresses and backlogs) as a HUP would ([`diff_listen_set`]), so the
    /// new master serves exactly its file's set even when the file changed
    /// since the old master read it: a socket whose address stays is kept,
    /// a new address is bound, a socket no longer listed is closed (the old
    /// master's workers keep theirs until they have drained). A socket from
    /// systemd is never closed (the socket unit holds it too): one no longer
    /// listed is kept after the others, with a warning. With no configured
    /// addresses, or an old master that did not say what its sockets stand
    /// for, the sockets are taken by position.
    pub(crate) fn reconcile(
        self,
        wanted: &[(SocketAddr, u32)],
        reuse_port: bool,
    ) -> Result<StartSet, SupervisorError> {
        let Some(held) = self.addrs.filter(|_| !wanted.is_empty()) else {
            return Ok(StartSet {
                listeners: self.listeners,
                systemd: self.systemd,
            });
        };
        let addrs: Vec<SocketAddr> = wanted.iter().map(|(addr, _)| *addr).collect();
        let diff = diff_listen_set(&held, &addrs);
        let mut inherited: Vec<Option<TcpListener>> =
            self.listeners.into_iter().map(Some).collect();
        let mut listeners = Vec::with_capacity(wanted.len());
        let mut systemd = Vec::with_capacity(wanted.len());
        let mut added = Vec::new();
        for (source, (addr, backlog)) in diff.sources.iter().zip(wanted) {
            let kept = match source {
                ListenSource::Keep(i) => inherited[*i]
                    .take()
                    .map(|socket| (socket, self.systemd.get(*i).copied().unwrap_or(false))),
                ListenSource::Bind => None,
            };
            if let Some((socket, from_systemd)) = kept {
                listeners.push(socket);
                systemd.push(from_systemd);
            } else {
                let socket = crate::bind(*addr, reuse_port, *backlog).map_err(|source| {
                    SupervisorError::Bind {
                        addr: *addr,
                        source,
                    }
                })?;
                listeners.push(socket);
                systemd.push(false);
                added.push(*addr);
            }
        }
        let mut dropped = Vec::new();
        for i in diff.removed {
            let Some(socket) = inherited[i].take() else {
                continue;
            };
            if self.systemd.get(i).copied().unwrap_or(false) {
                tracing::warn!(
                    address = %held[i],
                    "Binary upgrade: the configuration no longer lists a socket systemd passed; keeping it (remove it from the .socket unit's ListenStream= and restart the socket unit to close it)"
                );
                listeners.push(socket);
                systemd.push(true);
            } else {
                dropped.push(held[i]);
            }
        }
        if !added.is_empty() || !dropped.is_empty() {
            tracing::info!(
                ?added,
                ?dropped,
                "Binary upgrade: the configuration's listen set differs from the old master's; bound the new addresses and let go of the removed ones"
            );
        }
        Ok(StartSet { listeners, systemd })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    fn inherited(addrs: &[SocketAddr], systemd: &[bool]) -> Inherited {
        Inherited {
            listeners: addrs
                .iter()
                .map(|addr| crate::bind(*addr, false, 16).unwrap())
                .collect(),
            addrs: Some(addrs.to_vec()),
            systemd: systemd.to_vec(),
        }
    }

    fn bound(set: &StartSet) -> Vec<SocketAddr> {
        set.listeners
            .iter()
            .map(|l| l.local_addr().unwrap())
            .collect()
    }

    /// The file went from [a, b] to [a, c] between the old master's start
    /// and the USR2: the socket bound to b is not labelled c.
    #[test]
    fn an_upgrade_serves_the_files_set_not_the_old_masters() {
        let (a, b, c) = (free(), free(), free());
        let old = inherited(&[a, b], &[false, false]);
        let kept_inode = crate::sockets::inode(&old.listeners[0]);
        let set = old.reconcile(&[(a, 16), (c, 16)], false).unwrap();
        assert_eq!(bound(&set), [a, c]);
        assert_eq!(crate::sockets::inode(&set.listeners[0]), kept_inode);
        assert_eq!(set.systemd, [false, false]);
        let refused = std::net::TcpStream::connect(b).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn a_reordered_set_keeps_both_sockets_in_the_files_order() {
        let (a, b) = (free(), free());
        let set = inherited(&[a, b], &[true, false])
            .reconcile(&[(b, 16), (a, 16)], false)
            .unwrap();
        assert_eq!(bound(&set), [b, a]);
        assert_eq!(set.systemd, [false, true]);
    }

    #[test]
    fn a_systemd_socket_the_file_dropped_is_kept_last() {
        let (a, b) = (free(), free());
        let set = inherited(&[a, b], &[true, false])
            .reconcile(&[(b, 16)], false)
            .unwrap();
        assert_eq!(bound(&set), [b, a]);
        assert_eq!(set.systemd, [false, true]);
    }

    #[test]
    fn without_the_old_masters_addresses_the_sockets_go_by_position() {
        let (a, b, c) = (free(), free(), free());
        let mut old = inherited(&[a, b], &[false, false]);
        old.addrs = None;
        let set = old.reconcile(&[(a, 16), (c, 16)], false).unwrap();
        assert_eq!(bound(&set), [a, b]);
    }
}
