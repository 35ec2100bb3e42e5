//! The listeners a process serves, one serve task each, and how a reload
//! changes them in one process (with worker processes the master changes
//! the sockets and new workers serve them).
//!
//! A reload is two steps, so that a refused reload changes nothing:
//! [`ListenerSet::prepare`] binds every new address (a failure refuses the
//! reload) and copies the sockets of changed ones; [`ListenerSet::apply`]
//! then starts, replaces and stops serve tasks. Addresses are matched as
//! configured ([`wharf_supervisor::diff_listen_set`]), as the master does.

use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;
use wharf_http::{Listener, Server};
use wharf_supervisor::{diff_listen_set, ListenSource};
use wharf_tls::TlsConfig;

use crate::app::ConnLimits;
use crate::config::EdgeConfig;
use crate::runtime::{Current, ListenPlan};
use crate::serve::{server_config, spawn_listener, ServeTask};

/// Why the listen set cannot change (the reload is refused) or start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ListenError {
    /// A new address cannot be bound, or a socket cannot be copied.
    #[error(transparent)]
    Bind(#[from] wharf_http::ListenerError),
    /// A TLS listener is wanted but the process loaded no certificates.
    #[error("{0} terminates TLS, but edge started without a TLS listener (no certificates loaded): restart edge to add the first one")]
    NoTls(SocketAddr),
    /// A worker's inherited sockets are not those its file lists.
    #[error("the master passed sockets for {passed:?} but the file lists {listed:?}: it changed after the master read it; send SIGHUP again")]
    Mismatch {
        /// The master's listen set.
        passed: Vec<SocketAddr>,
        /// This file's.
        listed: Vec<SocketAddr>,
    },
}

/// What every serve task is made with: the settings the process started
/// with (`[http]`, `[tls]` and `set_real_ip_from` need a restart, also for
/// listeners added on reload) and the state a reload swaps.
pub(crate) struct Wiring {
    pub(crate) config: EdgeConfig,
    pub(crate) current: Arc<Current>,
    pub(crate) limits: Arc<ConnLimits>,
    pub(crate) tls: Option<TlsConfig>,
    pub(crate) trusted: wharf_proxy::TrustedProxies,
}

impl Wiring {
    fn spawn(&self, plan: &ListenPlan, listener: Listener) -> (watch::Sender<bool>, ServeTask) {
        let mut server_config = server_config(&self.config, plan.tls);
        // `set_real_ip_from`: the client is resolved once per request, and
        // the proxy (X-Forwarded-For, X-Real-IP), the zones and the access
        // log all read that answer.
        if !self.trusted.resolver().trusted().is_empty() {
            server_config.client_addr = Some(self.trusted.resolver().clone());
        }
        let (stop, mut stopped) = watch::channel(false);
        let shutdown = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let task = spawn_listener(
            plan,
            listener,
            Server::new(server_config),
            shutdown,
            &self.current,
            &self.limits,
            self.tls.as_ref(),
            &self.trusted,
            &self.config,
        );
        (stop, task)
    }
}

/// One listener being served.
struct Running {
    plan: ListenPlan,
    /// In one process, another handle on the socket: its accept queue for
    /// `/metrics`, and the socket a changed plan's new task serves.
    socket: Option<Arc<Listener>>,
    stop: watch::Sender<bool>,
    task: ServeTask,
}

/// The sockets whose accept queues the admin listener reports.
pub(crate) type Listening = Arc<RwLock<Vec<Arc<Listener>>>>;

/// The listeners served, in the file's order.
pub(crate) struct ListenerSet {
    wiring: Wiring,
    running: Vec<Running>,
    /// Tasks of listeners a reload removed or replaced, draining.
    retired: Vec<ServeTask>,
    listening: Listening,
}

/// What one wanted listener will be served on.
enum Next {
    /// The running one, unchanged.
    Keep(usize),
    /// The running one's socket, with a new task for its changed plan.
    Change(usize, Listener),
    /// A socket bound for the reload, and its second handle.
    Bind(Listener, Arc<Listener>),
}

/// A reload's listen set, bound and ready to apply (dropping it closes the
/// new sockets and changes nothing).
pub(crate) struct Prepared {
    next: Vec<(ListenPlan, Next)>,
    removed: Vec<usize>,
}

impl ListenerSet {
    /// Starts a serve task per plan: on the sockets a master passed (in a
    /// worker, with the address each stands for), or on sockets bound here.
    pub(crate) fn start(
        wiring: Wiring,
        plans: &[ListenPlan],
        inherited: Option<(Vec<TcpListener>, Vec<SocketAddr>)>,
    ) -> Result<Self, ListenError> {
        let mut running = Vec::with_capacity(plans.len());
        let sockets: Vec<(Listener, Option<Arc<Listener>>)> = match inherited {
            Some((sockets, passed)) => {
                let listed: Vec<SocketAddr> = plans.iter().map(|p| p.addr).collect();
                if sockets.len() < plans.len()
                    || passed.get(..listed.len()) != Some(listed.as_slice())
                {
                    return Err(ListenError::Mismatch { passed, listed });
                }
                if sockets.len() > plans.len() {
                    tracing::warn!(passed = ?passed, listed = ?listed, "The master passed more sockets than the file lists; the extra ones are not served");
                }
                sockets
                    .into_iter()
                    .take(plans.len())
                    .map(|s| (Listener::from_std(s), None))
                    .collect()
            }
            None => plans
                .iter()
                .map(|plan| {
                    let listener = Listener::bind_with_backlog(plan.addr, plan.backlog)?;
                    let copy = Arc::new(
                        listener
                            .try_clone()
                            .map_err(wharf_http::ListenerError::Io)?,
                    );
                    Ok((listener, Some(copy)))
                })
                .collect::<Result<_, ListenError>>()?,
        };
        for (plan, (listener, socket)) in plans.iter().zip(sockets) {
            if plan.tls && wiring.tls.is_none() {
                return Err(ListenError::NoTls(plan.addr));
            }
            log_listening(plan, &listener, "Listening");
            let (stop, task) = wiring.spawn(plan, listener);
            running.push(Running {
                plan: plan.clone(),
                socket,
                stop,
                task,
            });
        }
        let listening = Arc::new(RwLock::new(
            running.iter().filter_map(|r| r.socket.clone()).collect(),
        ));
        Ok(Self {
            wiring,
            running,
            retired: Vec::new(),
            listening,
        })
    }

    /// The sockets for the admin listener's `/metrics`, kept up to date.
    pub(crate) fn listening(&self) -> Listening {
        Arc::clone(&self.listening)
    }

    /// Binds what `plans` adds and copies the sockets of changed plans;
    /// nothing running changes. An error refuses the reload.
    pub(crate) fn prepare(&self, plans: &[ListenPlan]) -> Result<Prepared, ListenError> {
        if let Some(plan) = plans.iter().find(|p| p.tls && self.wiring.tls.is_none()) {
            return Err(ListenError::NoTls(plan.addr));
        }
        let held: Vec<SocketAddr> = self.running.iter().map(|r| r.plan.addr).collect();
        let wanted: Vec<SocketAddr> = plans.iter().map(|p| p.addr).collect();
        let diff = diff_listen_set(&held, &wanted);
        let mut next = Vec::with_capacity(plans.len());
        for (plan, source) in plans.iter().zip(&diff.sources) {
            let entry = match *source {
                ListenSource::Keep(i) if self.running[i].plan == *plan => Next::Keep(i),
                ListenSource::Keep(i) => match &self.running[i].socket {
                    Some(socket) => Next::Change(
                        i,
                        socket.try_clone().map_err(wharf_http::ListenerError::Io)?,
                    ),
                    // A worker's set is the master's to change.
                    None => Next::Keep(i),
                },
                ListenSource::Bind => {
                    let listener = Listener::bind_with_backlog(plan.addr, plan.backlog)?;
                    let copy = listener
                        .try_clone()
                        .map_err(wharf_http::ListenerError::Io)?;
                    Next::Bind(listener, Arc::new(copy))
                }
            };
            next.push((plan.clone(), entry));
        }
        Ok(Prepared {
            next,
            removed: diff.removed,
        })
    }

    /// Serves the prepared set: new listeners start accepting, a changed
    /// one gets a new task on its socket (its old task drains the
    /// connections it accepted), removed ones stop accepting and drain.
    pub(crate) fn apply(&mut self, prepared: Prepared) {
        let mut old: Vec<Option<Running>> = std::mem::take(&mut self.running)
            .into_iter()
            .map(Some)
            .collect();
        let mut running = Vec::with_capacity(prepared.next.len());
        for (plan, next) in prepared.next {
            match next {
                Next::Keep(i) => running.extend(old[i].take()),
                Next::Change(i, listener) => {
                    let Some(before) = old[i].take() else {
                        continue;
                    };
                    if before.plan.backlog != plan.backlog {
                        let backlog = i32::try_from(plan.backlog).unwrap_or(i32::MAX);
                        if let Err(error) = socket2::SockRef::from(&listener).listen(backlog) {
                            tracing::warn!(%error, address = %plan.addr, "Cannot change the backlog; the socket keeps its own");
                        }
                    }
                    log_listening(
                        &plan,
                        &listener,
                        "Listener changed: new connections get the new settings, open ones finish",
                    );
                    let (stop, task) = self.wiring.spawn(&plan, listener);
                    let _ = before.stop.send(true);
                    self.retired.push(before.task);
                    running.push(Running {
                        plan,
                        socket: before.socket,
                        stop,
                        task,
                    });
                }
                Next::Bind(listener, socket) => {
                    log_listening(&plan, &listener, "Listening");
                    let (stop, task) = self.wiring.spawn(&plan, listener);
                    running.push(Running {
                        plan,
                        socket: Some(socket),
                        stop,
                        task,
                    });
                }
            }
        }
        // This process's copies close first, so the socket closes with the
        // task's own once it has taken its queue.
        let removed: Vec<Running> = prepared
            .removed
            .iter()
            .filter_map(|i| old.get_mut(*i).and_then(Option::take))
            .collect();
        self.running = running;
        self.publish();
        for gone in removed {
            tracing::info!(address = %gone.plan.addr, "Listener removed: it stops accepting; open connections finish");
            drop(gone.socket);
            let _ = gone.stop.send(true);
            self.retired.push(gone.task);
        }
    }

    /// Stops every listener and waits for their drain (and that of
    /// listeners retired earlier); the connections closed by force.
    pub(crate) async fn stop(mut self) -> usize {
        self.running.iter_mut().for_each(|r| r.socket = None);
        self.publish();
        let mut tasks = std::mem::take(&mut self.retired);
        for running in self.running {
            let _ = running.stop.send(true);
            tasks.push(running.task);
        }
        let mut forced = 0;
        for task in tasks {
            if let Ok(Ok(report)) = task.await {
                forced += report.forced;
            }
        }
        forced
    }

    /// Publishes the running sockets to the admin listener.
    fn publish(&self) {
        let sockets = self
            .running
            .iter()
            .filter_map(|r| r.socket.clone())
            .collect();
        match self.listening.write() {
            Ok(mut listening) => *listening = sockets,
            Err(poisoned) => *poisoned.into_inner() = sockets,
        }
    }
}

fn log_listening(plan: &ListenPlan, listener: &Listener, message: &'static str) {
    let local = listener.local_addr().unwrap_or(plan.addr);
    tracing::info!(
        address = %local,
        tls = plan.tls,
        redirect = plan.redirect_https_port.is_some(),
        proxy_protocol = plan.proxy_protocol,
        backlog = plan.backlog,
        "{message}"
    );
}
