//! The listen set across a reload: which of the sockets a master holds stay,
//! which are bound anew, which are closed.
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
pub(crate) enum Source {
    /// The held socket at this index, kept as it is.
    Keep(usize),
    /// A new socket, bound for this address.
    Bind,
}

/// What changing from the held addresses to the wanted ones takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Diff {
    /// One entry per wanted address, in the wanted order (the order workers
    /// take their sockets in).
    pub(crate) sources: Vec<Source>,
    /// The held sockets no wanted address uses (indices, ascending): closed
    /// by the master once the new set is in place.
    pub(crate) removed: Vec<usize>,
}

impl Diff {
    /// Whether the wanted set is the held one, in the same order.
    pub(crate) fn is_unchanged(&self) -> bool {
        self.removed.is_empty()
            && self
                .sources
                .iter()
                .enumerate()
                .all(|(i, source)| *source == Source::Keep(i))
    }
}

/// Matches `wanted` addresses to `held` ones by equality, each held socket
/// used at most once (a second occurrence of an address is bound anew, and
/// fails as binding a taken address does).
pub(crate) fn diff(held: &[SocketAddr], wanted: &[SocketAddr]) -> Diff {
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
                    Source::Keep(i)
                }
                None => Source::Bind,
            }
        })
        .collect();
    let removed = used
        .iter()
        .enumerate()
        .filter_map(|(i, used)| (!used).then_some(i))
        .collect();
    Diff { sources, removed }
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
        let diff = diff(&held, &held);
        assert_eq!(diff.sources, [Source::Keep(0), Source::Keep(1)]);
        assert!(diff.removed.is_empty());
        assert!(diff.is_unchanged());
    }

    #[test]
    fn an_added_address_is_bound_and_the_others_kept_in_the_new_order() {
        let held = addrs(&["127.0.0.1:80", "127.0.0.1:443"]);
        let wanted = addrs(&["127.0.0.1:8443", "127.0.0.1:443", "127.0.0.1:80"]);
        let diff = diff(&held, &wanted);
        assert_eq!(
            diff.sources,
            [Source::Bind, Source::Keep(1), Source::Keep(0)]
        );
        assert!(diff.removed.is_empty());
        assert!(!diff.is_unchanged());
    }

    #[test]
    fn a_removed_address_is_closed() {
        let held = addrs(&["127.0.0.1:80", "127.0.0.1:443", "127.0.0.1:8080"]);
        let wanted = addrs(&["127.0.0.1:80", "127.0.0.1:8080"]);
        let diff = diff(&held, &wanted);
        assert_eq!(diff.sources, [Source::Keep(0), Source::Keep(2)]);
        assert_eq!(diff.removed, [1]);
        assert!(!diff.is_unchanged());
    }

    #[test]
    fn a_reordered_set_keeps_every_socket() {
        let held = addrs(&["127.0.0.1:80", "127.0.0.1:443"]);
        let wanted = addrs(&["127.0.0.1:443", "127.0.0.1:80"]);
        let diff = diff(&held, &wanted);
        assert_eq!(diff.sources, [Source::Keep(1), Source::Keep(0)]);
        assert!(diff.removed.is_empty());
        assert!(!diff.is_unchanged(), "the workers' order changed");
    }

    #[test]
    fn addresses_are_compared_as_configured_not_as_bound() {
        // Port 0 stays port 0: the socket it got is kept.
        let held = addrs(&["127.0.0.1:0"]);
        assert!(diff(&held, &held).is_unchanged());
        // Another IP on the same port is another address.
        let diff = diff(&addrs(&["0.0.0.0:80"]), &addrs(&["127.0.0.1:80"]));
        assert_eq!(diff.sources, [Source::Bind]);
        assert_eq!(diff.removed, [0]);
    }

    #[test]
    fn a_repeated_address_keeps_one_socket_and_binds_the_other() {
        let held = addrs(&["127.0.0.1:80"]);
        let wanted = addrs(&["127.0.0.1:80", "127.0.0.1:80"]);
        let diff = diff(&held, &wanted);
        assert_eq!(diff.sources, [Source::Keep(0), Source::Bind]);
        assert!(diff.removed.is_empty());
    }

    #[test]
    fn an_empty_held_set_binds_everything_and_an_empty_wanted_one_closes_everything() {
        let some = addrs(&["127.0.0.1:80", "[::1]:443"]);
        let all_new = diff(&[], &some);
        assert_eq!(all_new.sources, [Source::Bind, Source::Bind]);
        let none = diff(&some, &[]);
        assert!(none.sources.is_empty());
        assert_eq!(none.removed, [0, 1]);
    }
}
