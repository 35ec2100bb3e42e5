//! Changing the listen set on SIGHUP: the sockets of addresses that stay are
//! kept, new ones are bound before anything changes (a failure refuses the
//! reload), and the replacement workers get the new set in its new order.

use std::collections::HashMap;
use std::net::SocketAddr;

use super::Master;
use crate::config::AcceptMode;
use crate::sockets::{diff_listen_set, ListenSource as Source};
use crate::SupervisorError;

/// What a change of the listen set did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ListenChange {
    /// Addresses bound anew.
    pub(crate) added: Vec<SocketAddr>,
    /// Addresses this master let go of (the old workers keep them until
    /// they have drained).
    pub(crate) removed: Vec<SocketAddr>,
    /// Addresses whose socket was kept.
    pub(crate) kept: usize,
}

impl Master {
    /// SIGHUP, after the check: asks the embedder for the new listen set and
    /// applies it. Whether the reload may go on (false: refused, logged).
    pub(super) async fn reload_listen_set(&mut self) -> bool {
        let Some(listeners) = self.reload_listeners.clone() else {
            return true;
        };
        let wanted = tokio::task::spawn_blocking(move || listeners())
            .await
            .unwrap_or_else(|error| Err(format!("the listen set callback panicked: {error}")));
        let wanted = match wanted {
            Ok(wanted) => wanted,
            Err(why) => {
                tracing::error!(signal = "SIGHUP", error = %why, "Reload refused; the workers keep serving as they are");
                return false;
            }
        };
        match self.change_listeners(&wanted) {
            Ok(change) => {
                if !change.added.is_empty() || !change.removed.is_empty() {
                    tracing::info!(
                        signal = "SIGHUP",
                        added = ?change.added,
                        removed = ?change.removed,
                        kept = change.kept,
                        "Listeners changed: new workers get the new set; removed addresses close once the old workers have drained"
                    );
                }
                true
            }
            Err(error) => {
                let address = match &error {
                    SupervisorError::Bind { addr, .. } => Some(addr.to_string()),
                    _ => None,
                };
                tracing::error!(signal = "SIGHUP", address, %error, "Reload refused: a new listener cannot be bound; the workers keep serving as they are");
                false
            }
        }
    }

    /// Makes `wanted` (addresses with their backlogs, in order) the set new
    /// workers get. Everything that can fail (binding new addresses, and in
    /// `reuseport` mode their per-slot siblings; copying the kept sockets'
    /// descriptors) happens first: on an error nothing has changed.
    pub(crate) fn change_listeners(
        &mut self,
        wanted: &[(SocketAddr, u32)],
    ) -> Result<ListenChange, SupervisorError> {
        let addrs: Vec<SocketAddr> = wanted.iter().map(|(addr, _)| *addr).collect();
        let diff = diff_listen_set(&self.addrs, &addrs);
        let backlogs: Vec<u32> = wanted.iter().map(|(_, backlog)| *backlog).collect();
        let old_backlog = |i: usize| self.backlogs.get(i).copied().unwrap_or(crate::BACKLOG);
        let backlogs_same =
            diff.sources
                .iter()
                .zip(&backlogs)
                .all(|(source, backlog)| match source {
                    Source::Keep(i) => old_backlog(*i) == *backlog,
                    Source::Bind => true,
                });
        if diff.is_unchanged() && backlogs_same {
            return Ok(ListenChange {
                kept: addrs.len(),
                ..ListenChange::default()
            });
        }
        let reuse_port = self.accept == AcceptMode::ReusePort;
        let io = |addr: SocketAddr| move |source| SupervisorError::Bind { addr, source };
        // The first sockets: kept ones as copies, new ones bound.
        let mut listeners = Vec::with_capacity(wanted.len());
        for (source, (addr, backlog)) in diff.sources.iter().zip(wanted) {
            let socket = match source {
                Source::Keep(i) => self.listeners[*i].try_clone().map_err(io(*addr))?,
                Source::Bind => crate::bind(*addr, reuse_port, *backlog).map_err(io(*addr))?,
            };
            listeners.push(socket);
        }
        // Each slot's own sockets (`reuseport`): kept ones follow their
        // address; a new address gets a sibling of its new socket.
        let mut slot_listeners = HashMap::with_capacity(self.slot_listeners.len());
        for (slot, siblings) in &self.slot_listeners {
            let mut set = Vec::with_capacity(wanted.len());
            for (i, (source, (addr, backlog))) in diff.sources.iter().zip(wanted).enumerate() {
                let kept = match source {
                    Source::Keep(old) => siblings.get(*old),
                    Source::Bind => None,
                };
                let socket = if let Some(sibling) = kept {
                    sibling.try_clone().map_err(io(*addr))?
                } else {
                    let bound = listeners[i].local_addr().map_err(io(*addr))?;
                    crate::bind(bound, true, *backlog).map_err(io(*addr))?
                };
                set.push(socket);
            }
            slot_listeners.insert(*slot, set);
        }
        // Nothing can fail from here on.
        for (i, (source, backlog)) in diff.sources.iter().zip(&backlogs).enumerate() {
            if let Source::Keep(old) = source {
                if old_backlog(*old) != *backlog {
                    let sockets = std::iter::once(&listeners[i])
                        .chain(slot_listeners.values().filter_map(|set| set.get(i)));
                    for socket in sockets {
                        let result =
                            socket2::SockRef::from(socket).listen(crate::listen_arg(*backlog));
                        if let Err(error) = result {
                            tracing::warn!(%error, backlog, address = %addrs[i], "Cannot change the backlog of a kept socket; it keeps its own");
                        }
                    }
                }
            }
        }
        let change = ListenChange {
            added: diff
                .sources
                .iter()
                .zip(&addrs)
                .filter(|(source, _)| **source == Source::Bind)
                .map(|(_, addr)| *addr)
                .collect(),
            removed: diff.removed.iter().map(|i| self.addrs[*i]).collect(),
            kept: diff
                .sources
                .iter()
                .filter(|s| matches!(s, Source::Keep(_)))
                .count(),
        };
        // The old descriptors close here: a kept socket lives on in its
        // copy; a removed one in the old workers, until they have drained.
        self.listeners = listeners;
        self.slot_listeners = slot_listeners;
        self.addrs = addrs;
        self.backlogs = backlogs;
        Ok(change)
    }
}

/// The inode of a socket: the same socket across copies of its descriptor.
#[cfg(test)]
fn inode(listener: &std::net::TcpListener) -> u64 {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd())).map_or(0, |m| m.ino())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::SupervisorSection;

    fn master(accept: AcceptMode, held: &[(SocketAddr, u32)]) -> Master {
        let listeners = held
            .iter()
            .map(|(addr, backlog)| {
                crate::bind(*addr, accept == AcceptMode::ReusePort, *backlog).unwrap()
            })
            .collect();
        let config = SupervisorSection {
            accept,
            workers: Some(2),
            ..SupervisorSection::default()
        };
        Master::new(config, Duration::from_secs(1), listeners)
            .unwrap()
            .with_addresses(held)
    }

    fn free() -> SocketAddr {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    }

    fn bound(master: &Master) -> Vec<SocketAddr> {
        master
            .listeners
            .iter()
            .map(|l| l.local_addr().unwrap())
            .collect()
    }

    #[test]
    fn an_added_address_is_bound_and_a_kept_one_is_the_same_socket() {
        let a = free();
        let mut master = master(AcceptMode::Shared, &[(a, 16)]);
        let before = inode(&master.listeners[0]);
        let b = free();
        let change = master.change_listeners(&[(b, 16), (a, 16)]).unwrap();
        assert_eq!(change.added, [b]);
        assert!(change.removed.is_empty());
        assert_eq!(change.kept, 1);
        assert_eq!(bound(&master), [b, a], "the new order");
        assert_eq!(inode(&master.listeners[1]), before, "the same socket");
        assert_eq!(master.addrs, [b, a]);
        // Both accept connections.
        for addr in [a, b] {
            std::net::TcpStream::connect(addr).unwrap();
        }
    }

    #[test]
    fn a_removed_address_is_let_go_of() {
        let (a, b) = (free(), free());
        let mut master = master(AcceptMode::Shared, &[(a, 16), (b, 16)]);
        let change = master.change_listeners(&[(b, 16)]).unwrap();
        assert_eq!(change.removed, [a]);
        assert_eq!(bound(&master), [b]);
        // Nothing else holds it: the address refuses connections.
        let refused = std::net::TcpStream::connect(a).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn an_address_that_cannot_be_bound_refuses_the_change_and_keeps_the_set() {
        let a = free();
        let mut master = master(AcceptMode::ReusePort, &[(a, 16)]);
        let before = inode(&master.listeners[0]);
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken_addr = taken.local_addr().unwrap();
        let error = master
            .change_listeners(&[(a, 16), (free(), 16), (taken_addr, 16)])
            .unwrap_err();
        assert!(
            matches!(&error, SupervisorError::Bind { addr, .. } if *addr == taken_addr),
            "{error}"
        );
        assert!(error.to_string().contains(&taken_addr.to_string()));
        assert_eq!(bound(&master), [a]);
        assert_eq!(inode(&master.listeners[0]), before);
        assert_eq!(master.addrs, [a]);
    }

    #[test]
    fn slot_sockets_follow_the_set_in_reuseport_mode() {
        let (a, b) = (free(), free());
        let mut master = master(AcceptMode::ReusePort, &[(a, 16), (b, 16)]);
        // Slot 1's siblings, as its first worker would get them.
        assert_eq!(master.slot_fds(1).len(), 2);
        let kept_sibling = inode(&master.slot_listeners[&1][1]);
        let c = free();
        master.change_listeners(&[(b, 16), (c, 32)]).unwrap();
        let siblings = &master.slot_listeners[&1];
        let addrs: Vec<SocketAddr> = siblings.iter().map(|l| l.local_addr().unwrap()).collect();
        assert_eq!(addrs, [b, c]);
        assert_eq!(inode(&siblings[0]), kept_sibling, "b's sibling is kept");
        assert_eq!(master.backlogs, [16, 32]);
        // a is gone from slot 0 and slot 1 alike.
        let refused = std::net::TcpStream::connect(a).unwrap_err();
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn the_listen_queue_metrics_follow_the_set() {
        let (a, b) = (free(), free());
        let mut master = master(AcceptMode::Shared, &[(a, 16)]);
        master.render_metrics();
        let text = master.metrics.lock().unwrap().clone();
        assert!(text.contains(&format!("address=\"{a}\"")), "{text}");
        master.change_listeners(&[(b, 8)]).unwrap();
        master.render_metrics();
        let text = master.metrics.lock().unwrap().clone();
        assert!(text.contains(&format!("address=\"{b}\"")), "{text}");
        assert!(!text.contains(&format!("address=\"{a}\"")), "{text}");
    }

    #[test]
    fn a_changed_backlog_is_applied_to_the_kept_socket() {
        let a = free();
        let mut master = master(AcceptMode::Shared, &[(a, 16)]);
        let before = inode(&master.listeners[0]);
        let change = master.change_listeners(&[(a, 7)]).unwrap();
        assert!(change.added.is_empty() && change.removed.is_empty());
        assert_eq!(inode(&master.listeners[0]), before);
        let queue = crate::ListenQueue::of(std::os::fd::AsFd::as_fd(&master.listeners[0])).unwrap();
        assert_eq!(queue.max, 7);
    }
}
