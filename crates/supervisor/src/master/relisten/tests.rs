//! `Master::change_listeners` and what follows from it, on real sockets.

use std::time::Duration;

use super::*;
use crate::config::SupervisorSection;
use crate::sockets::inode;

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

/// A worker (a fake pid) given the master's current set.
fn serving_worker(master: &mut Master, pid: u32) {
    let mut worker = crate::master::tests::worker(0, 0, 0, false);
    worker.sockets = master.held.iter().map(|h| h.id).collect();
    master.workers.insert(pid, worker);
}

fn refused(addr: SocketAddr) -> bool {
    std::net::TcpStream::connect(addr)
        .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
}

/// A HUP dropped b while an old worker still listens on it (its copy of
/// the shared socket); the revert and HUP take b's socket back instead
/// of binding an address in use (`EADDRINUSE` without `SO_REUSEPORT`).
#[test]
fn a_dropped_socket_is_retired_while_a_worker_serves_it_and_taken_back() {
    let (a, b, c) = (free(), free(), free());
    let mut master = master(AcceptMode::Shared, &[(a, 16), (b, 16)]);
    serving_worker(&mut master, 4242);
    let old_workers_copy = master.listeners[1].try_clone().unwrap();
    let b_inode = inode(&master.listeners[1]);
    let change = master.change_listeners(&[(a, 16), (c, 16)]).unwrap();
    assert_eq!(change.removed, [b]);
    assert_eq!(master.retired.len(), 1);
    let change = master.change_listeners(&[(a, 16), (b, 16)]).unwrap();
    assert_eq!(change.reused, [b]);
    assert!(change.added.is_empty(), "{change:?}");
    assert_eq!(change.removed, [c]);
    assert_eq!(bound(&master), [a, b]);
    assert_eq!(inode(&master.listeners[1]), b_inode, "b's own socket");
    // c was given to no worker: closed at once.
    assert!(master.retired.is_empty());
    assert!(refused(c));
    drop(old_workers_copy);
}

#[test]
fn a_retired_socket_closes_once_no_serving_worker_was_given_it() {
    let (a, b) = (free(), free());
    let mut master = master(AcceptMode::ReusePort, &[(a, 16), (b, 16)]);
    master.slot_fds(1);
    serving_worker(&mut master, 4242);
    master.change_listeners(&[(a, 16)]).unwrap();
    assert_eq!(master.retired.len(), 1);
    assert!(!refused(b), "the old worker's address still listens");
    // A worker started after the change was not given b.
    serving_worker(&mut master, 4243);
    master.drain(4242);
    assert!(master.retired.is_empty());
    assert!(refused(b));
}

/// The new workers of a HUP that changed the set fail: the master goes
/// back to the previous set (the same sockets) and replaces no more.
#[test]
fn a_failed_reload_goes_back_to_the_previous_set() {
    let (a, b, c) = (free(), free(), free());
    let mut master = master(AcceptMode::Shared, &[(a, 16), (b, 16)]);
    serving_worker(&mut master, 4242);
    let inodes: Vec<u64> = master.listeners.iter().map(inode).collect();
    let previous = master.listen_set();
    master.change_listeners(&[(c, 16), (a, 8)]).unwrap();
    master.rollback = Some(previous);
    master.reloading = true;
    master.queue.push_back((1, Reason::Reload));
    master.queue.push_back((0, Reason::MaxRequests));
    master.replacement_failed(Reason::Reload);
    assert_eq!(master.addrs, [a, b]);
    assert_eq!(master.backlogs, [16, 16]);
    assert_eq!(
        master.listeners.iter().map(inode).collect::<Vec<_>>(),
        inodes
    );
    assert_eq!(
        Vec::from(master.queue.clone()),
        [(0, Reason::MaxRequests)],
        "the rest of the reload is dropped"
    );
    assert!(!master.reloading);
    assert!(master.rollback.is_none());
    assert!(refused(c), "the abandoned address closed");
    // Only a reload's failure goes back, and only once.
    master.replacement_failed(Reason::Reload);
    assert_eq!(master.addrs, [a, b]);
}

#[test]
fn a_socket_from_systemd_is_not_dropped() {
    let (a, b, c) = (free(), free(), free());
    let mut master = master(AcceptMode::Shared, &[(a, 16), (b, 16)]).with_systemd(&[false, true]);
    let error = master.change_listeners(&[(a, 16), (c, 16)]).unwrap_err();
    assert!(
        matches!(error, SupervisorError::SystemdListener { addr } if addr == b),
        "{error}"
    );
    assert!(error.to_string().contains(".socket unit"), "{error}");
    assert_eq!(bound(&master), [a, b], "nothing changed");
    assert!(refused(c));
    // Reordering or adding keeps it, still marked.
    master
        .change_listeners(&[(c, 16), (b, 16), (a, 16)])
        .unwrap();
    assert_eq!(bound(&master), [c, b, a]);
    let systemd: Vec<bool> = master.held.iter().map(|h| h.systemd).collect();
    assert_eq!(systemd, [false, true, false]);
    // The one the master bound itself may go.
    master.change_listeners(&[(b, 16), (a, 16)]).unwrap();
    assert!(refused(c));
}

#[test]
fn an_upgrade_hands_over_current_and_retired_sockets_with_their_addresses() {
    let (a, b) = (free(), free());
    let mut master = master(AcceptMode::Shared, &[(a, 16), (b, 16)]).with_systemd(&[true, false]);
    serving_worker(&mut master, 4242);
    master.change_listeners(&[(a, 16)]).unwrap();
    let handover = master.handover();
    assert_eq!(handover.addrs, [a, b]);
    assert_eq!(handover.systemd, [true, false]);
    assert_eq!(handover.listeners.len(), 2);
}
