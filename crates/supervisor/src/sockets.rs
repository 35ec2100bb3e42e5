//! The listen set across a reload: which of the sockets a master holds stay,
//! which are bound anew, which are closed ([`diff_listen_set`], which a
//! service running in one process can use for its own sockets too).
//!
//! A socket stands for the address it was configured as (the n-th of
//! [`Supervisor::listen_with_backlog`](crate::Supervisor::listen_with_backlog),
//! or the n-th address of a [`ReloadListeners`](crate::ReloadListeners)
//! answer), not the address the kernel reports: a socket bound to port 0, or
//! one systemd passed (matched to the configuration by position at start, as
//! its backlog is), is still recognised when the same configuration comes
//! back. A socket that stays is the same socket, so nothing in its accept
//! queue is lost; only addresses that are new are bound.

use std::net::SocketAddr;

/// Where the socket for one wanted address comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenSource {
    /// The held socket at this index, kept as it is.
    Keep(usize),
    /// A new socket, bound for this address.
    Bind,
}

/// What changing from the held addresses to the wanted ones takes
/// ([`diff_listen_set`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenDiff {
    /// One entry per wanted address, in the wanted order (the order workers
    /// take their sockets in).
    pub sources: Vec<ListenSource>,
    /// The held sockets no wanted address uses (indices, ascending): to
    /// close (let go of) once the new set is in place.
    pub removed: Vec<usize>,
}

impl ListenDiff {
    /// Whether the wanted set is the held one, in the same order.
    pub fn is_unchanged(&self) -> bool {
        self.removed.is_empty()
            && self
                .sources
                .iter()
                .enumerate()
                .all(|(i, source)| *source == ListenSource::Keep(i))
    }
}

/// Matches `wanted` addresses to `held` ones (each the address a socket was
/// configured as) by equality, each held socket used at most once (a second
/// occurrence of an address is bound anew, and fails as binding a taken
/// address does).
///
/// ```
/// use wharf_supervisor::{diff_listen_set, ListenSource};
///
/// let held = ["127.0.0.1:80".parse().unwrap(), "127.0.0.1:443".parse().unwrap()];
/// let wanted = ["127.0.0.1:8443".parse().unwrap(), "127.0.0.1:80".parse().unwrap()];
/// let diff = diff_listen_set(&held, &wanted);
/// assert_eq!(diff.sources, [ListenSource::Bind, ListenSource::Keep(0)]);
/// assert_eq!(diff.removed, [1]); // 127.0.0.1:443
/// ```
pub fn diff_listen_set(held: &[SocketAddr], wanted: &[SocketAddr]) -> ListenDiff {
    let mut used = vec![false; held.len()];
    let sources = wanted
        .iter()
        .map(|addr| {
            let found = held
                .iter()
                .enumerate()
                .position(|(i, h)| !used[i] && h == addr);
            match found {
                Some(i) => {
                    used[i] = true;
                    ListenSource::Keep(i)
                }
                None => ListenSource::Bind,
            }
        })
        .collect();
    let removed = used
        .iter()
        .enumerate()
        .filter_map(|(i, used)| (!used).then_some(i))
        .collect();
    ListenDiff { sources, removed }
}

/// The inode of a socket: the same socket across copies of its descriptor.
#[cfg(test)]
pub(crate) fn inode(listener: &std::net::TcpListener) -> u64 {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(format!("/proc/self/fd/{}", listener.as_raw_fd())).map_or(0, |m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn the_same_set_in_the_same_order_is_unchanged() {
        let held = addrs(&["127.0.0.1:80", "127.0.0.1:443"]);
        let diff = diff_listen_set(&held, &held);
        assert_eq!(diff.sources, [ListenSource::Keep(0), ListenSource::Keep(1)]);
        assert!(diff.removed.is_empty());
        assert!(diff.is_unchanged());
    }

    #[test]
    fn an_added_address_is_bound_and_the_others_kept_in_the_new_order() {
        let held = addrs(&["127.0.0.1:80", "127.0.0.1:443"]);
        let wanted = addrs(&["127.0.0.1:8443", "127.0.0.1:443", "127.0.0.1:80"]);
        let diff = diff_listen_set(&held, &wanted);
        assert_eq!(
            diff.sources,
            [
                ListenSource::Bind,
                ListenSource::Keep(1),
                ListenSource::Keep(0)
            ]
        );
        assert!(diff.removed.is_empty());
        assert!(!diff.is_unchanged());
    }

    #[test]
    fn a_removed_address_is_closed() {
        let held = addrs(&["127.0.0.1:80", "127.0.0.1:443", "127.0.0.1:8080"]);
        let wanted = addrs(&["127.0.0.1:80", "127.0.0.1:8080"]);
        let diff = diff_listen_set(&held, &wanted);
        assert_eq!(diff.sources, [ListenSource::Keep(0), ListenSource::Keep(2)]);
        assert_eq!(diff.removed, [1]);
        assert!(!diff.is_unchanged());
    }

    #[test]
    fn a_reordered_set_keeps_every_socket() {
        let held = addrs(&["127.0.0.1:80", "127.0.0.1:443"]);
        let wanted = addrs(&["127.0.0.1:443", "127.0.0.1:80"]);
        let diff = diff_listen_set(&held, &wanted);
        assert_eq!(diff.sources, [ListenSource::Keep(1), ListenSource::Keep(0)]);
        assert!(diff.removed.is_empty());
        assert!(!diff.is_unchanged(), "the workers' order changed");
    }

    #[test]
    fn addresses_are_compared_as_configured_not_as_bound() {
        // Port 0 stays port 0: the socket it got is kept.
        let held = addrs(&["127.0.0.1:0"]);
        assert!(diff_listen_set(&held, &held).is_unchanged());
        // Another IP on the same port is another address.
        let diff = diff_listen_set(&addrs(&["0.0.0.0:80"]), &addrs(&["127.0.0.1:80"]));
        assert_eq!(diff.sources, [ListenSource::Bind]);
        assert_eq!(diff.removed, [0]);
    }

    #[test]
    fn a_repeated_address_keeps_one_socket_and_binds_the_other() {
        let held = addrs(&["127.0.0.1:80"]);
        let wanted = addrs(&["127.0.0.1:80", "127.0.0.1:80"]);
        let diff = diff_listen_set(&held, &wanted);
        assert_eq!(diff.sources, [ListenSource::Keep(0), ListenSource::Bind]);
        assert!(diff.removed.is_empty());
    }

    #[test]
    fn an_empty_held_set_binds_everything_and_an_empty_wanted_one_closes_everything() {
        let some = addrs(&["127.0.0.1:80", "[::1]:443"]);
        let all_new = diff_listen_set(&[], &some);
        assert_eq!(all_new.sources, [ListenSource::Bind, ListenSource::Bind]);
        let none = diff_listen_set(&some, &[]);
        assert!(none.sources.is_empty());
        assert_eq!(none.removed, [0, 1]);
    }
}
