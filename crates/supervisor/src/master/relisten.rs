//! Changing the listen set on SIGHUP: the sockets of addresses that stay are
//! kept, new ones are bound before anything changes (a failure refuses the
//! reload), and the replacement workers get the new set in its new order.
//! A dropped socket is retired, not closed, while a worker that was given it
//! still serves, so going back (a failed reload, or a revert and HUP) takes
//! it again instead of binding an address those workers still listen on. A
//! socket systemd passed is never dropped: the socket unit holds it too.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};

use super::{Master, Reason};
use crate::config::AcceptMode;
use crate::sockets::{diff_listen_set, ListenSource as Source};
use crate::SupervisorError;

/// What the master knows about one of its sockets besides the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Held {
    /// Stays with the socket (and its slot siblings) across changes of the
    /// set; each worker records the ids it was given.
    pub(crate) id: u64,
    /// Passed by systemd (`LISTEN_FDS`).
    pub(crate) systemd: bool,
}

impl Held {
    pub(crate) fn new(id: u64) -> Self {
        Self { id, systemd: false }
    }
}

/// A socket a change of the set dropped, with its slot siblings
/// (`reuseport`), kept while a worker that was given it still serves.
#[derive(Debug)]
pub(crate) struct Retired {
    /// The address it was configured as.
    addr: SocketAddr,
    backlog: u32,
    held: Held,
    listener: TcpListener,
    siblings: HashMap<usize, TcpListener>,
}

/// What a change of the listen set did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct ListenChange {
    /// Addresses bound anew.
    pub(crate) added: Vec<SocketAddr>,
    /// Addresses whose retired socket was taken back (still served by the
    /// workers that were given it).
    pub(crate) reused: Vec<SocketAddr>,
    /// Addresses this master dropped from the set (the old workers keep
    /// them until they have drained).
    pub(crate) removed: Vec<SocketAddr>,
    /// Addresses whose socket was kept.
    pub(crate) kept: usize,
}

impl Master {
    /// SIGHUP, after the check: asks the embedder for the new listen set and
    /// applies it. Whether the reload may go on (false: refused, logged).
    pub(super) async fn reload_listen_set(&mut self) -> bool {
        self.rollback = None;
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
        let previous = self.listen_set();
        match self.change_listeners(&wanted) {
            Ok(change) => {
                if !change.added.is_empty()
                    || !change.removed.is_empty()
                    || !change.reused.is_empty()
                {
                    tracing::info!(
                        signal = "SIGHUP",
                        added = ?change.added,
                        reused = ?change.reused,
                        removed = ?change.removed,
                        kept = change.kept,
                        "Listeners changed: new workers get the new set; removed addresses close once the old workers have drained"
                    );
                }
                if previous != wanted {
                    self.rollback = Some(previous);
                }
                true
            }
            Err(SupervisorError::SystemdListener { addr }) => {
                tracing::error!(
                    signal = "SIGHUP",
                    address = %addr,
                    "Reload refused: the new configuration drops an address whose socket systemd passed (LISTEN_FDS); the socket unit holds it too, so clients would queue for nobody. Remove it from the .socket unit's ListenStream= and restart the socket unit and the service, or keep it in the configuration; the workers keep serving as they are"
                );
                false
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

    /// The set new workers get: each address with its backlog.
    fn listen_set(&self) -> Vec<(SocketAddr, u32)> {
        self.addrs
            .iter()
            .enumerate()
            .map(|(i, addr)| {
                (
                    *addr,
                    self.backlogs.get(i).copied().unwrap_or(crate::BACKLOG),
                )
            })
            .collect()
    }

    /// A replacement of a reload failed (its new worker exited, missed the
    /// ready deadline or could not start). If that reload changed the set,
    /// the master goes back to the set before it, so the workers it keeps
    /// and the ones it starts from now on agree, and drops the rest of the
    /// reload. Workers already replaced keep the set they were given.
    pub(super) fn replacement_failed(&mut self, reason: Reason) {
        if reason != Reason::Reload {
            return;
        }
        let Some(previous) = self.rollback.take() else {
            return;
        };
        let abandoned = self.addrs.clone();
        self.queue.retain(|(_, reason)| *reason != Reason::Reload);
        let listeners: Vec<SocketAddr> = previous.iter().map(|(addr, _)| *addr).collect();
        match self.change_listeners(&previous) {
            Ok(change) => tracing::error!(
                ?listeners,
                ?abandoned,
                dropped = ?change.removed,
                "Reload failed: a new worker did not become ready; going back to the previous listen set, and replacing no more workers (the ones not replaced keep serving it; fix the configuration and HUP again)"
            ),
            Err(error) => tracing::error!(
                ?listeners,
                ?abandoned,
                %error,
                "Reload failed, and the previous listen set cannot be restored; new workers keep getting the new one"
            ),
        }
        if self.reloading {
            self.reloading = false;
            crate::notify::sd_notify("READY=1");
        }
    }

    /// Closes the retired sockets no serving worker was given (a draining
    /// worker closes its listeners first thing, so it does not count).
    pub(super) fn prune_retired(&mut self) {
        let workers = &self.workers;
        self.retired.retain(|retired| {
            workers.values().any(|w| {
                w.draining_since.is_none()
                    && w.killed_for.is_none()
                    && w.sockets.contains(&retired.held.id)
            })
        });
    }

    /// The retired sockets and their slot siblings (a stop refuses new
    /// connections on them too).
    pub(super) fn retired_sockets(&self) -> impl Iterator<Item = &TcpListener> {
        self.retired
            .iter()
            .flat_map(|r| std::iter::once(&r.listener).chain(r.siblings.values()))
    }

    /// The sockets this master holds, current then retired, each with the
    /// address it was configured as and whether systemd passed it: what a
    /// binary upgrade hands over.
    pub(super) fn handover(&self) -> crate::upgrade::Handover<'_> {
        let retired = self.retired.iter();
        crate::upgrade::Handover {
            listeners: self
                .listeners
                .iter()
                .chain(retired.clone().map(|r| &r.listener))
                .collect(),
            addrs: self
                .addrs
                .iter()
                .copied()
                .chain(retired.clone().map(|r| r.addr))
                .collect(),
            systemd: (0..self.listeners.len())
                .map(|i| self.held.get(i).is_some_and(|h| h.systemd))
                .chain(retired.map(|r| r.held.systemd))
                .collect(),
        }
    }

    /// Makes `wanted` (addresses with their backlogs, in order) the set new
    /// workers get. Everything that can fail (binding new addresses, and in
    /// `reuseport` mode their per-slot siblings; copying the kept sockets'
    /// descriptors) happens first: on an error nothing has changed. Retired
    /// sockets are matched too, after the current ones. A socket systemd
    /// passed may not be dropped ([`SupervisorError::SystemdListener`]).
    #[allow(clippy::too_many_lines)] // check, copy or bind, then commit: one transaction
    pub(crate) fn change_listeners(
        &mut self,
        wanted: &[(SocketAddr, u32)],
    ) -> Result<ListenChange, SupervisorError> {
        let addrs: Vec<SocketAddr> = wanted.iter().map(|(addr, _)| *addr).collect();
        let current = self.addrs.len().min(self.listeners.len());
        let held_addrs: Vec<SocketAddr> = self.addrs[..current]
            .iter()
            .copied()
            .chain(self.retired.iter().map(|r| r.addr))
            .collect();
        let diff = diff_listen_set(&held_addrs, &addrs);
        let removed: Vec<usize> = diff
            .removed
            .iter()
            .copied()
            .filter(|i| *i < current)
            .collect();
        if let Some(i) = removed
            .iter()
            .find(|i| self.held.get(**i).is_some_and(|h| h.systemd))
        {
            return Err(SupervisorError::SystemdListener {
                addr: self.addrs[*i],
            });
        }
        let backlogs: Vec<u32> = wanted.iter().map(|(_, backlog)| *backlog).collect();
        let old_backlog = |i: usize| match i.checked_sub(current) {
            None => self.backlogs.get(i).copied().unwrap_or(crate::BACKLOG),
            Some(r) => self.retired[r].backlog,
        };
        let backlogs_same =
            diff.sources
                .iter()
                .zip(&backlogs)
                .all(|(source, backlog)| match source {
                    Source::Keep(i) => old_backlog(*i) == *backlog,
                    Source::Bind => true,
                });
        let unchanged = removed.is_empty()
            && diff.sources.len() == current
            && diff
                .sources
                .iter()
                .enumerate()
                .all(|(i, source)| *source == Source::Keep(i));
        if unchanged && backlogs_same {
            return Ok(ListenChange {
                kept: addrs.len(),
                ..ListenChange::default()
            });
        }
        let socket = |i: usize| match i.checked_sub(current) {
            None => &self.listeners[i],
            Some(r) => &self.retired[r].listener,
        };
        let sibling = |i: usize, slot: usize| match i.checked_sub(current) {
            None => self.slot_listeners.get(&slot).and_then(|set| set.get(i)),
            Some(r) => self.retired[r].siblings.get(&slot),
        };
        let reuse_port = self.accept == AcceptMode::ReusePort;
        let io = |addr: SocketAddr| move |source| SupervisorError::Bind { addr, source };
        // The first sockets: kept ones as copies, new ones bound.
        let mut listeners = Vec::with_capacity(wanted.len());
        for (source, (addr, backlog)) in diff.sources.iter().zip(wanted) {
            let socket = match source {
                Source::Keep(i) => socket(*i).try_clone().map_err(io(*addr))?,
                Source::Bind => crate::bind(*addr, reuse_port, *backlog).map_err(io(*addr))?,
            };
            listeners.push(socket);
        }
        // Each slot's own sockets (`reuseport`): kept ones follow their
        // address; a new address gets a sibling of its new socket.
        let mut slot_listeners = HashMap::with_capacity(self.slot_listeners.len());
        for slot in self.slot_listeners.keys() {
            let mut set = Vec::with_capacity(wanted.len());
            for (i, (source, (addr, backlog))) in diff.sources.iter().zip(wanted).enumerate() {
                let kept = match source {
                    Source::Keep(old) => sibling(*old, *slot),
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
        let mut change = ListenChange {
            removed: removed.iter().map(|i| self.addrs[*i]).collect(),
            ..ListenChange::default()
        };
        let mut held = Vec::with_capacity(wanted.len());
        for (source, addr) in diff.sources.iter().zip(&addrs) {
            held.push(match source {
                Source::Keep(i) => match i.checked_sub(current) {
                    None => {
                        change.kept += 1;
                        self.held.get(*i).copied().unwrap_or(Held::new(u64::MAX))
                    }
                    Some(r) => {
                        change.reused.push(*addr);
                        self.retired[r].held
                    }
                },
                Source::Bind => {
                    change.added.push(*addr);
                    self.next_socket_id += 1;
                    Held::new(self.next_socket_id - 1)
                }
            });
        }
        // Retired: the ones not taken back, and the ones dropped now. A
        // kept or taken-back socket lives on in its copy.
        let reused: Vec<usize> = diff
            .sources
            .iter()
            .filter_map(|source| match source {
                Source::Keep(i) => i.checked_sub(current),
                Source::Bind => None,
            })
            .collect();
        let mut retired: Vec<Retired> = std::mem::take(&mut self.retired)
            .into_iter()
            .enumerate()
            .filter_map(|(r, retired)| (!reused.contains(&r)).then_some(retired))
            .collect();
        let mut old: Vec<Option<TcpListener>> = std::mem::take(&mut self.listeners)
            .into_iter()
            .map(Some)
            .collect();
        let mut old_siblings: HashMap<usize, Vec<Option<TcpListener>>> =
            std::mem::take(&mut self.slot_listeners)
                .into_iter()
                .map(|(slot, set)| (slot, set.into_iter().map(Some).collect()))
                .collect();
        for i in &removed {
            let Some(listener) = old.get_mut(*i).and_then(Option::take) else {
                continue;
            };
            let siblings = old_siblings
                .iter_mut()
                .filter_map(|(slot, set)| Some((*slot, set.get_mut(*i)?.take()?)))
                .collect();
            retired.push(Retired {
                addr: self.addrs[*i],
                backlog: self.backlogs.get(*i).copied().unwrap_or(crate::BACKLOG),
                held: self.held.get(*i).copied().unwrap_or(Held::new(u64::MAX)),
                listener,
                siblings,
            });
        }
        self.listeners = listeners;
        self.slot_listeners = slot_listeners;
        self.addrs = addrs;
        self.backlogs = backlogs;
        self.held = held;
        self.retired = retired;
        self.prune_retired();
        Ok(change)
    }
}

#[cfg(test)]
mod tests;
