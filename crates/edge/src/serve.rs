//! Serving: load the file, become a master of worker processes or serve in
//! one process, start the listeners, reload on SIGHUP, drain on SIGTERM.
//!
//! Kept whole although over 600 lines: it is the process's life from loading to
//! draining, and its steps (listeners, signals, reload) share the state the run
//! loop holds.

use std::convert::Infallible;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, StatusCode, Version};
use tokio::sync::watch;
use tower_http::compression::predicate::{Predicate, SizeAbove};
use tower_http::compression::CompressionLayer;
use wharf_config::{EnvMap, EXIT_CONFIG};
use wharf_http::{Health, Listener, PlainAcceptor, Server, ServerConfig, StatusInfo};
use wharf_proxy::proxy_protocol::ProxyProtocolAcceptor;
use wharf_supervisor::{Supervisor, WorkerContext};
use wharf_tls::TlsConfig;

use crate::acme::{AcmeOrder, Challenge};
use crate::app::{self, ConnLimits, EdgeAcceptor, EdgeApp, RedirectApp};
use crate::compress;
use crate::config::{self, ConfigError, EdgeConfig, Overrides, Source};
use crate::listeners::{ListenerSet, Wiring};
use crate::runtime::{self, Built, Current, ListenPlan};
use crate::tls::{
    development_certificates, file_ticket_secret, follow_redis_ticket_secret, session_store,
    ticket_secret, tls_settings, SESSION_SEGMENT, TICKET_SEGMENT,
};

/// Exit code when the service cannot start for a reason other than configuration.
const EXIT_UNAVAILABLE: u8 = 69;

/// What the binary was built from, for `/_status` (wharf-http's).
pub use wharf_http::BuildInfo;

/// The admin listener's address for `edge healthcheck`: the file's (or the
/// development default), after the environment overrides; an error says why
/// there is none.
pub fn admin_address(path: Option<&std::path::Path>) -> Result<std::net::SocketAddr, String> {
    let (mut config, _) = config::load(path).map_err(|error| error.to_string())?;
    Overrides::from_env(&EnvMap::from_process()).apply(&mut config);
    if !config.admin.enabled {
        return Err("the admin listener is off ([admin] enabled = false)".to_owned());
    }
    config
        .admin
        .address
        .parse()
        .map_err(|error| format!("admin address {:?}: {error}", config.admin.address))
}

/// Loads, applies environment overrides, builds and validates.
fn load(
    path: Option<&std::path::Path>,
    generation: u64,
) -> Result<(EdgeConfig, Source, Built), ConfigError> {
    let (mut config, source) = config::load(path)?;
    Overrides::from_env(&EnvMap::from_process()).apply(&mut config);
    if config
        .supervisor
        .as_ref()
        .is_some_and(|s| s.admin_address.is_some())
    {
        return Err(ConfigError {
            file: path.map(ToOwned::to_owned),
            line: None,
            message: "[supervisor] admin_address is not used by edge: the master serves /metrics and health on [admin] address".to_owned(),
        });
    }
    let built = runtime::build(&config, &source, generation)?;
    Ok((config, source, built))
}

fn config_exit(error: &ConfigError) -> ExitCode {
    eprintln!("edge: {error}");
    ExitCode::from(u8::try_from(EXIT_CONFIG).unwrap_or(1))
}

/// `edge check-config`: checks the file, the environment and that the
/// certificates load, as `nginx -t`; prints what nginx prints and exits 0, or
/// names the line and reason and exits 78.
pub fn check_config(path: Option<&std::path::Path>) -> ExitCode {
    if let Err(error) = validate(path) {
        return config_exit(&error);
    }
    let name = path.map_or_else(
        || "<development defaults>".to_owned(),
        |p| p.display().to_string(),
    );
    println!("edge: the configuration file {name} syntax is ok");
    println!("edge: configuration file {name} test is successful");
    ExitCode::SUCCESS
}

/// Everything `check-config` checks: the file, the environment, and that the
/// certificates load.
fn validate(path: Option<&std::path::Path>) -> Result<(), ConfigError> {
    let (config, _, built) = load(path, 0)?;
    let file = path.map(ToOwned::to_owned);
    config::load_env(&EnvMap::from_process()).map_err(|error| ConfigError {
        file: file.clone(),
        line: None,
        message: error.to_string(),
    })?;
    if !built.certificates.is_empty() {
        TlsConfig::load(&tls_settings(&config, built.certificates.clone())).map_err(|error| {
            ConfigError {
                file,
                line: None,
                message: error.to_string(),
            }
        })?;
    }
    Ok(())
}

pub(crate) fn server_config(config: &EdgeConfig, tls: bool) -> ServerConfig {
    let http = &config.http;
    let proxy = &config.proxy;
    // HSTS on errors wharf-http makes itself (413, 408, 504): parsed from the
    // configured header so they carry the same policy.
    let hsts_age = http
        .hsts
        .split(';')
        .find_map(|p| p.trim().strip_prefix("max-age="))
        .and_then(|n| n.trim().parse::<u64>().ok());
    ServerConfig {
        header_read_timeout: http.client_header_timeout,
        keepalive_timeout: http.keepalive_timeout,
        // The proxy enforces its own timeouts (502/504 pages); this is a backstop.
        request_timeout: proxy.connect_timeout
            + proxy.send_timeout
            + proxy.read_timeout
            + http.client_body_timeout
            + Duration::from_secs(60),
        graceful_timeout: http.shutdown_timeout,
        max_header_bytes: usize::try_from(http.max_header_size)
            .unwrap_or(usize::MAX)
            .max(8192),
        max_body_bytes: usize::try_from(http.client_max_body_size).unwrap_or(usize::MAX),
        max_connections: http.worker_connections.max(1),
        hsts_max_age: if tls {
            hsts_age.map(Duration::from_secs)
        } else {
            None
        },
        hsts_include_subdomains: http.hsts.to_ascii_lowercase().contains("includesubdomains"),
        access_log: http.access_log,
        ..ServerConfig::default()
    }
}

/// `edge`: serves the file at `path` (or, with none, the development
/// defaults) until SIGTERM, as a master of worker processes when the file
/// has `[supervisor]`. `build` is shown on `/_status`.
pub fn serve(path: Option<PathBuf>, build_info: BuildInfo) -> ExitCode {
    let (config, _, built) = match load(path.as_deref(), 1) {
        Ok(loaded) => loaded,
        Err(error) => return config_exit(&error),
    };
    let format = if path.is_some() {
        wharf_telemetry::LogFormat::Json
    } else {
        wharf_telemetry::LogFormat::Pretty
    };
    // The process environment, read once through wharf-config, as frontend does.
    let env = EnvMap::from_process();
    let filter = env.get("RUST_LOG").unwrap_or("info").to_owned();
    // Held to the end: dropping it writes the buffered access-log lines.
    let _log = match wharf_telemetry::init(&wharf_telemetry::LogSettings { format, filter }) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("edge: {error}");
            return ExitCode::from(u8::try_from(EXIT_CONFIG).unwrap_or(1));
        }
    };
    let supervised = config.supervisor.clone().filter(|s| s.workers != Some(0));
    // Traces (WHARF_TRACING=otlp), flushed when `serve` returns. The
    // variables are checked everywhere; the master of worker processes serves
    // no request, so only workers (or the single process) export spans.
    let serves_requests = supervised.is_none() || Supervisor::is_worker();
    let traces = match config::load_env(&env)
        .map_err(|error| error.to_string())
        .and_then(|env| {
            let section = if serves_requests {
                env.tracing
            } else {
                wharf_telemetry::trace::TraceSection::default()
            };
            wharf_telemetry::trace::init(&section, "edge").map_err(|error| error.to_string())
        }) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("edge: {error}");
            return ExitCode::from(u8::try_from(EXIT_CONFIG).unwrap_or(1));
        }
    };
    if let Some(section) = supervised {
        let code = serve_supervised(path, config, built, section, build_info);
        drop(traces);
        return code;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "Cannot start the async runtime");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    let code = runtime.block_on(run(path, config, built, None, build_info));
    drop(runtime);
    drop(traces);
    code
}

/// `[supervisor]`: this process becomes the master (binding the listeners
/// once, serving the instance's `/metrics` and health on the admin address)
/// and runs `run` in worker processes, each a re-execution of this binary
/// that loads the file afresh, so a HUP (checked here first) rolls the new
/// configuration and certificates out worker by worker.
fn serve_supervised(
    path: Option<PathBuf>,
    config: EdgeConfig,
    built: Built,
    mut section: wharf_supervisor::SupervisorSection,
    build_info: BuildInfo,
) -> ExitCode {
    section.admin_address = config.admin.enabled.then(|| config.admin.address.clone());
    let mut supervisor = Supervisor::new(section)
        .graceful_timeout(config.http.shutdown_timeout + Duration::from_secs(1))
        .shared_memory(runtime::ZONE_SEGMENT, runtime::zone_memory_bytes())
        .shared_memory(TICKET_SEGMENT, 64);
    if built.listeners.iter().any(|l| l.tls) && config.tls.session_cache > 0 {
        supervisor = supervisor.shared_memory(
            SESSION_SEGMENT,
            wharf_tls::SharedSessionCache::bytes_for(config.tls.session_cache),
        );
    }
    for plan in &built.listeners {
        supervisor = supervisor.listen_with_backlog(plan.addr, plan.backlog);
    }
    let check_path = path.clone();
    let listen_path = path.clone();
    // On HUP the master checks the file, then learns its `[[listen]]` set:
    // it keeps the sockets of addresses that stay, binds new ones (a failure
    // refuses the reload) and hands the new workers the set in the file's
    // order, which `run` checks against the file the worker loads.
    let supervisor = supervisor
        .reload_check(Arc::new(move || {
            validate(check_path.as_deref()).map_err(|error| error.to_string())
        }))
        .reload_listeners(Arc::new(move || {
            let (_, _, built) = load(listen_path.as_deref(), 0).map_err(|e| e.to_string())?;
            Ok(built
                .listeners
                .iter()
                .map(|plan| (plan.addr, plan.backlog))
                .collect())
        }));
    let result = supervisor.run(move |ctx| async move {
        if run(path, config, built, Some(ctx), build_info).await == ExitCode::SUCCESS {
            Ok(())
        } else {
            Err("the worker could not start (see the log above)")
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "edge stopped with an error");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

#[allow(clippy::too_many_lines)] // start-up in order: TLS, listeners, servers, signals
async fn run(
    path: Option<PathBuf>,
    config: EdgeConfig,
    built: Built,
    mut worker: Option<WorkerContext>,
    build_info: BuildInfo,
) -> ExitCode {
    let Built {
        runtime,
        listeners: plans,
        certificates,
        acme,
        admin,
        trusted,
    } = built;
    let needs_tls = plans.iter().any(|l| l.tls);
    let development = path.is_none();
    let certificates = if needs_tls && certificates.is_empty() && development {
        match development_certificates() {
            Ok(c) => c,
            Err(error) => {
                tracing::error!(%error, "Cannot make the development certificate");
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
        }
    } else {
        certificates
    };
    let tls = if needs_tls {
        let mut settings = tls_settings(&config, certificates);
        settings.acme_tls_alpn = acme_tls_alpn(&acme);
        settings.session_store = Some(session_store(&config, worker.as_mut()));
        settings.ticket_secret = match ticket_secret(&config, worker.as_mut()) {
            Ok(secret) => secret,
            Err(error) => {
                eprintln!("edge: {error}");
                return ExitCode::from(u8::try_from(EXIT_CONFIG).unwrap_or(1));
            }
        };
        match TlsConfig::load(&settings) {
            Ok(tls) => {
                let _ = tls.watch();
                follow_redis_ticket_secret(&config, &tls);
                Some(tls)
            }
            Err(error) => {
                eprintln!("edge: {error}");
                return ExitCode::from(u8::try_from(EXIT_CONFIG).unwrap_or(1));
            }
        }
    } else {
        None
    };
    for proxy in &runtime.proxies {
        let _ = proxy.spawn_health_checks();
    }
    runtime.start_redis();
    let renewals = Arc::new(Acme {
        tls_alpn: acme_tls_alpn(&acme),
        running: std::sync::Mutex::default(),
    });
    if let Some(tls) = &tls {
        renewals.follow(acme, tls);
    }
    let current = Arc::new(Current::new(runtime));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let mut tasks = Vec::new();
    // A worker serves the master's sockets, in the order they were listed;
    // in one process they are bound here, and a reload changes them.
    let inherited = worker.as_mut().map(|ctx| {
        let addrs = ctx.listen_addresses().to_vec();
        (ctx.take_listeners(), addrs)
    });
    let wiring = Wiring {
        config: config.clone(),
        current: Arc::clone(&current),
        limits: Arc::new(ConnLimits::default()),
        tls: tls.clone(),
        trusted: trusted.clone(),
    };
    let mut listeners = match ListenerSet::start(wiring, &plans, inherited) {
        Ok(set) => set,
        Err(error) => {
            tracing::error!(%error, "Cannot start");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    if let Some(ctx) = worker.as_mut() {
        // The master serves /metrics (the sum over workers) and health.
        let (current, tls) = (Arc::clone(&current), tls.clone());
        ctx.set_metrics_source(Arc::new(move || app::metrics(&current, tls.as_ref())));
        ctx.ready();
    } else if let Some(addr) = admin {
        match Listener::bind(addr) {
            Ok(listener) => {
                tracing::info!(address = %addr, "Admin listening: /metrics, /_status, /health/live, /health/ready");
                let health = Health::new(StatusInfo {
                    git_commit: build_info.git_commit.to_owned(),
                    build_time: build_info.build_time.to_owned(),
                    environment: if development {
                        "development"
                    } else {
                        "production"
                    }
                    .to_owned(),
                });
                let (current, tls) = (Arc::clone(&current), tls.clone());
                // In one process, this process's sockets (they follow a
                // reload); with workers, the master holds and reports them.
                let listening = listeners.listening();
                let app = tower::service_fn(move |request| {
                    let listening = match listening.read() {
                        Ok(sockets) => sockets.clone(),
                        Err(poisoned) => poisoned.into_inner().clone(),
                    };
                    std::future::ready(Ok::<_, Infallible>(app::admin(
                        &current,
                        tls.as_ref(),
                        &listening,
                        &request,
                    )))
                });
                let shutdown = stopped(stop_rx.clone());
                tasks.push(tokio::spawn(async move {
                    Server::new(ServerConfig {
                        access_log: false,
                        graceful_timeout: Duration::from_secs(1),
                        ..ServerConfig::default()
                    })
                    .with_health(health)
                    .serve(vec![listener], app, shutdown)
                    .await
                }));
            }
            Err(error) => {
                tracing::error!(%error, "Cannot start the admin listener");
                return ExitCode::from(EXIT_UNAVAILABLE);
            }
        }
    }

    match worker {
        // The supervisor's worker handles the signals (HUP is the master's).
        Some(ctx) => ctx.shutdown_signal().await,
        None => signals(path, &mut listeners, &current, tls.as_ref(), &renewals).await,
    }
    let _ = stop_tx.send(true);
    let mut forced = listeners.stop().await;
    for task in tasks {
        if let Ok(Ok(report)) = task.await {
            forced += report.forced;
        }
    }
    tracing::info!(forced_connections = forced, "Stopped");
    ExitCode::SUCCESS
}

pub(crate) type ServeTask =
    tokio::task::JoinHandle<Result<wharf_http::DrainReport, wharf_http::ServeError>>;

#[allow(clippy::too_many_arguments)] // one listener's whole wiring
pub(crate) fn spawn_listener(
    plan: &ListenPlan,
    listener: Listener,
    server: Server,
    shutdown: impl Future<Output = ()> + Send + 'static,
    current: &Arc<Current>,
    limits: &Arc<ConnLimits>,
    tls: Option<&TlsConfig>,
    trusted: &wharf_proxy::TrustedProxies,
    config: &EdgeConfig,
) -> ServeTask {
    let handshake_timeout = config.tls.handshake_timeout;
    let app = EdgeApp {
        current: Arc::clone(current),
    };
    // A server span per request when tracing is on (a pass-through when off);
    // the proxy's client span is its child.
    let facts_current = Arc::clone(current);
    let app = tower::Layer::layer(
        &wharf_telemetry::trace::ServerSpanLayer::new(move |parts: &http::request::Parts| {
            app::request_facts(&facts_current, parts)
        }),
        app,
    );
    let min = config.http.gzip_min_length;
    // Quality 4 for both: brotli's own default (11) costs tens of
    // milliseconds per page; gzip 4 is close to 6 in size and faster.
    let compression = CompressionLayer::new()
        .gzip(config.http.gzip)
        .br(config.http.brotli)
        .quality(tower_http::CompressionLevel::Precise(4));
    let predicate = SizeAbove::new(min).and(compressible as Compressible);
    let compressing = compress::Compress::new(app, compression, predicate);
    let listeners = vec![listener];
    if let Some(port) = plan.redirect_https_port {
        let app = RedirectApp {
            https_port: port,
            current: Arc::clone(current),
        };
        let acceptor = edge_acceptor(PlainAcceptor, current, limits);
        return tokio::spawn(server.serve_with(listeners, acceptor, app, shutdown));
    }
    // `limit_conn` is counted by the acceptor right around TLS (or plain):
    // before the handshake, and after a PROXY header, which names the client.
    match (plan.tls, plan.proxy_protocol, tls) {
        (true, false, Some(tls)) => {
            let acceptor = edge_acceptor(tls.acceptor(), current, limits);
            tokio::spawn(server.serve_with(listeners, acceptor, compressing, shutdown))
        }
        (true, true, Some(tls)) => {
            let inner = edge_acceptor(tls.acceptor(), current, limits);
            let acceptor = ProxyProtocolAcceptor::new(inner, trusted.clone(), handshake_timeout);
            tokio::spawn(server.serve_with(listeners, acceptor, compressing, shutdown))
        }
        (false, true, _) => {
            let inner = edge_acceptor(PlainAcceptor, current, limits);
            let acceptor = ProxyProtocolAcceptor::new(inner, trusted.clone(), handshake_timeout);
            tokio::spawn(server.serve_with(listeners, acceptor, compressing, shutdown))
        }
        _ => {
            let acceptor = edge_acceptor(PlainAcceptor, current, limits);
            tokio::spawn(server.serve_with(listeners, acceptor, compressing, shutdown))
        }
    }
}

fn edge_acceptor<A>(inner: A, current: &Arc<Current>, limits: &Arc<ConnLimits>) -> EdgeAcceptor<A> {
    EdgeAcceptor {
        inner,
        current: Arc::clone(current),
        limits: Arc::clone(limits),
    }
}

use std::future::Future;

/// The type of [`compressible`], named so the predicate can be copied.
type Compressible = fn(StatusCode, Version, &HeaderMap, &http::Extensions) -> bool;

/// Text types worth compressing (nginx `gzip_types` of the seeds, plus HTML).
fn compressible(
    _status: StatusCode,
    _version: Version,
    headers: &HeaderMap,
    _ext: &http::Extensions,
) -> bool {
    let Some(content_type) = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    if headers.contains_key(http::header::CONTENT_ENCODING) {
        return false;
    }
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime.starts_with("text/")
        || matches!(
            mime.as_str(),
            "application/json"
                | "application/javascript"
                | "application/xml"
                | "application/rss+xml"
                | "application/xml+rss"
                | "image/svg+xml"
        )
}

/// Waits for SIGTERM/SIGINT, reloading on every SIGHUP meanwhile.
async fn signals(
    path: Option<PathBuf>,
    listeners: &mut ListenerSet,
    current: &Arc<Current>,
    tls: Option<&TlsConfig>,
    renewals: &Acme,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut hangup), Ok(mut terminate)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("Cannot listen for signals; only Ctrl-C stops edge");
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    let mut generation = 1;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => { tracing::info!(signal = "SIGINT", "Shutting down"); return; }
            _ = terminate.recv() => { tracing::info!(signal = "SIGTERM", "Shutting down"); return; }
            _ = hangup.recv() => {
                generation += 1;
                reload(path.as_deref(), generation, listeners, current, tls, renewals);
            }
        }
    }
}

fn reload(
    path: Option<&std::path::Path>,
    generation: u64,
    listeners: &mut ListenerSet,
    current: &Arc<Current>,
    tls: Option<&TlsConfig>,
    renewals: &Acme,
) {
    tracing::info!(
        signal = "SIGHUP",
        generation,
        "Reloading configuration and certificates"
    );
    let refuse = |error: &dyn std::fmt::Display| {
        current.reloads_failed.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error = %error, "Configuration reload refused; the previous configuration keeps serving");
    };
    let (config, _, built) = match load(path, generation) {
        Ok(loaded) => loaded,
        Err(error) => return refuse(&error),
    };
    // The TLS-ALPN-01 answers' directory is the TLS configuration's, fixed
    // at start: answers written elsewhere would fail every validation.
    if acme_tls_alpn(&built.acme) != renewals.tls_alpn {
        return refuse(&"a change of the TLS-ALPN-01 answers' directory ([acme] storage, or the first or last tls-alpn-01 server) needs a restart");
    }
    // New addresses are bound first: one that cannot be bound refuses the
    // reload before anything has changed (dropping `prepared` closes them).
    let prepared = match listeners.prepare(&built.listeners) {
        Ok(prepared) => prepared,
        Err(error) => return refuse(&error),
    };
    if let Some(tls) = tls {
        let certificates = if built.certificates.is_empty() && path.is_none() {
            tls.certificates()
        } else {
            built.certificates.clone()
        };
        // A `session_ticket_key` file is read again (nginx re-reads it on
        // reload too), before anything changes: a bad file refuses the reload.
        let file_secret = match file_ticket_secret(&config) {
            Ok(secret) => secret,
            Err(error) => return refuse(&error),
        };
        if let Err(error) = tls.set_certificates(certificates) {
            return refuse(&error);
        }
        // Its new secret seals, the one before still opens.
        if file_secret.is_some_and(|secret| tls.set_ticket_secret(&secret)) {
            tracing::info!("Session tickets sealed with the new session_ticket_key");
        }
        follow_redis_ticket_secret(&config, tls);
        renewals.follow(built.acme, tls);
    }
    for proxy in &built.runtime.proxies {
        let _ = proxy.spawn_health_checks();
    }
    built.runtime.start_redis();
    current.set(built.runtime);
    listeners.apply(prepared);
    current.reloads_ok.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        generation,
        "Configuration reloaded; new connections use it, open ones finish on the previous one"
    );
}

/// Where TLS-ALPN-01 answers are read from, when a server answers them.
fn acme_tls_alpn(orders: &[AcmeOrder]) -> Option<PathBuf> {
    orders
        .iter()
        .find(|o| o.challenge == Challenge::TlsAlpn01)
        .map(|o| o.storage.join("tls-alpn-01"))
}

/// The tasks keeping `[[server]] acme` certificates obtained and renewed in
/// this process (every process runs them; the storage lock lets one order).
struct Acme {
    /// Where the TLS configuration reads TLS-ALPN-01 answers (fixed at start).
    tls_alpn: Option<PathBuf>,
    running: std::sync::Mutex<(Vec<AcmeOrder>, Vec<tokio::task::JoinHandle<()>>)>,
}

impl Acme {
    /// Runs `orders`, replacing the tasks of different ones (a reload).
    fn follow(&self, orders: Vec<AcmeOrder>, tls: &TlsConfig) {
        let Ok(mut running) = self.running.lock() else {
            return;
        };
        if running.0 == orders && !running.1.is_empty() {
            return;
        }
        for task in running.1.drain(..) {
            task.abort();
        }
        running.1 = orders
            .iter()
            .map(|order| tokio::spawn(crate::acme::manage(order.clone(), tls.clone())))
            .collect();
        running.0 = orders;
    }
}

#[allow(dead_code)]
fn _assert_infallible(_: Infallible) {}
