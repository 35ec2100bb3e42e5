//! `frontend`: the Document Download Frontend's app server.
//!
//! `frontend` (or `frontend serve`) loads configuration from the environment,
//! binds `PORT`, and serves until SIGTERM or SIGINT, then drains.
//! `frontend config` prints the effective configuration and where each value
//! came from; `frontend healthcheck` asks a running server's `/_status` (for a
//! container `HEALTHCHECK` without curl).

mod config;
mod healthcheck;

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::sync::Arc;
use std::time::Duration;

use wharf_config::{ConfigError, Environment, Loaded, Loader, LogFormat, Secret, EXIT_CONFIG};
use wharf_download::metrics::{observer, PublicMetrics};
use wharf_download::{route_template, DownloadApp};
use wharf_http::{Health, Listener, RequestHook, ServeError, Server, ServerConfig, StatusInfo};
use wharf_supervisor::{Supervisor, SupervisorError, WorkerContext};
use wharf_telemetry::metrics::HttpMetrics;

use crate::config::FrontendConfig;

/// Exit code when the service cannot start for a reason other than configuration
/// (`EX_UNAVAILABLE`).
const EXIT_UNAVAILABLE: u8 = 69;

/// The shared-memory segment holding the rate-limit zones of every worker.
const RATELIMIT_SEGMENT: &str = "ratelimit";

/// Signs CSRF tokens in development when `SECRET_KEY` is unset (never in a
/// deployed environment, where `SECRET_KEY` is required).
const DEVELOPMENT_SECRET_KEY: &str = "wharf-development-only-secret-key";

/// What bins/build.rs recorded: `--version` and `/_status`.
const BUILD: wharf_http::BuildInfo = wharf_http::build_info!();

#[derive(Debug, Parser)]
#[command(name = "frontend", version = BUILD.version, about = "GOV.UK Notify Document Download Frontend, served by wharf")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve HTTP (the default).
    Serve {
        /// Worker processes (overrides `WEB_CONCURRENCY`); 0 = one process, no master.
        #[arg(long)]
        workers: Option<u64>,
    },
    /// Print the effective configuration, the source of each value, secrets redacted.
    Config {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// GET this server's /_status; exit 0 when it answers 200, 1 otherwise.
    Healthcheck {
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut loaded = match Loader::new(config::vars())
        .reserve_prefix("WHARF_")
        .load::<FrontendConfig>()
    {
        Ok(loaded) => loaded,
        Err(error) => return config_error(&error),
    };
    match cli.command.unwrap_or(Command::Serve { workers: None }) {
        Command::Serve { workers } => {
            if workers.is_some() {
                loaded.config.supervisor.workers = workers;
            }
            serve(&loaded)
        }
        Command::Config { json } => print_config(&loaded, json),
        Command::Healthcheck { timeout } => healthcheck::run(
            &loaded.config.server,
            loaded.environment,
            std::time::Duration::from_secs(timeout),
        ),
    }
}

fn config_error(error: &ConfigError) -> ExitCode {
    eprintln!("frontend: {error}");
    ExitCode::from(u8::try_from(EXIT_CONFIG).unwrap_or(1))
}

fn print_config(loaded: &Loaded<FrontendConfig>, json: bool) -> ExitCode {
    let report = loaded.report();
    if json {
        let doc = serde_json::json!({
            "environment": loaded.environment,
            "variables": report,
        });
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return ExitCode::SUCCESS;
    }
    println!("NOTIFY_ENVIRONMENT={}", loaded.environment);
    let width = report.iter().map(|e| e.variable.len()).max().unwrap_or(0);
    let value_width = report
        .iter()
        .map(|e| e.value.len())
        .max()
        .unwrap_or(0)
        .min(40);
    for entry in report {
        println!(
            "{:width$}  {:value_width$}  {}",
            entry.variable, entry.value, entry.source
        );
    }
    ExitCode::SUCCESS
}

fn log_format(loaded: &Loaded<FrontendConfig>) -> wharf_telemetry::LogFormat {
    let json = match loaded.config.log.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => loaded.environment.is_deployed(),
    };
    if json {
        wharf_telemetry::LogFormat::Json
    } else {
        wharf_telemetry::LogFormat::Pretty
    }
}

fn server_config(section: &wharf_config::ServerSection) -> ServerConfig {
    ServerConfig {
        header_read_timeout: section.header_read_timeout(),
        keepalive_timeout: section.keepalive(),
        request_timeout: section.request_timeout(),
        graceful_timeout: section.graceful_timeout(),
        max_header_bytes: usize::try_from(section.max_header_bytes).unwrap_or(usize::MAX),
        max_body_bytes: usize::try_from(section.max_body_bytes).unwrap_or(usize::MAX),
        max_connections: usize::try_from(section.max_connections).unwrap_or(usize::MAX),
        hsts_max_age: (section.hsts_max_age_seconds > 0)
            .then(|| std::time::Duration::from_secs(section.hsts_max_age_seconds)),
        ..ServerConfig::default()
    }
}

fn serve(loaded: &Loaded<FrontendConfig>) -> ExitCode {
    let config = &loaded.config;
    let settings = wharf_telemetry::LogSettings {
        format: log_format(loaded),
        filter: config.log.filter.clone(),
    };
    // Held to the end: dropping it writes the buffered access-log lines
    // (a request served just before SIGTERM is in the log).
    let _log = match wharf_telemetry::init(&settings) {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("frontend: {error}");
            return ExitCode::from(u8::try_from(EXIT_CONFIG).unwrap_or(1));
        }
    };
    let environment = loaded.environment;
    let addr = SocketAddr::new(config.server.bind_address(environment), config.server.port);
    // In development without SECRET_KEY every worker must still sign CSRF
    // tokens with the same key; deployed environments require SECRET_KEY.
    let development_key = Secret::new(DEVELOPMENT_SECRET_KEY.to_owned());
    let secret_key = match (&config.secret_key, environment.is_deployed()) {
        (Some(key), _) => Some(key),
        (None, false) => Some(&development_key),
        (None, true) => None,
    };
    let app = match DownloadApp::from_section(
        &config.download,
        config.api_host_name.as_deref(),
        secret_key,
        environment,
    ) {
        Ok(app) => app,
        // The machine, not the configuration: no random generator, no key.
        Err(error) if error.is_random_failure() => {
            tracing::error!(%error, "Cannot start");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
        Err(error) => {
            eprintln!("frontend: {error}");
            return ExitCode::from(u8::try_from(EXIT_CONFIG).unwrap_or(1));
        }
    };
    let mut supervisor = Supervisor::new(config.supervisor.clone())
        .graceful_timeout(config.server.graceful_timeout())
        .listen_with_backlog(addr, config.server.backlog);
    if config.ratelimit.enabled {
        supervisor =
            supervisor.shared_memory(RATELIMIT_SEGMENT, config.ratelimit.zone_memory_bytes());
    }
    if !Supervisor::is_worker() {
        tracing::info!(
            address = %addr,
            environment = %environment,
            git_commit = BUILD.git_commit,
            workers = config.supervisor.worker_count(),
            "Starting"
        );
    }
    if !Supervisor::is_worker() {
        log_samples(&app, addr);
    }
    let result = supervisor.run(|ctx| run(ctx, environment, config, app));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ SupervisorError::Bind { .. }) => {
            tracing::error!(%error, "Cannot start");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
        Err(error) => {
            tracing::error!(%error, "Stopped with an error");
            ExitCode::FAILURE
        }
    }
}

/// One worker (or the only process): serve on the inherited listeners until
/// told to stop.
async fn run(
    mut ctx: WorkerContext,
    environment: Environment,
    config: &FrontendConfig,
    app: DownloadApp,
) -> Result<(), ServeError> {
    // Traces (WHARF_TRACING=otlp): one exporter per worker process, flushed
    // when this function returns.
    let _traces = wharf_telemetry::trace::init(&config.tracing, "frontend")
        .map_err(|error| ServeError::Config(error.to_string()))?;
    let listeners: Vec<Listener> = ctx
        .take_listeners()
        .into_iter()
        .map(Listener::from_std)
        .collect();
    let local = listeners.first().and_then(|l| l.local_addr().ok());
    // Rate limiting: Redis-backed when REDIS_ENABLED, in memory otherwise
    // (the instance's shared segment: one count however many workers serve,
    // kept across worker replacement and upgrades); no zones when off.
    let limit = config
        .ratelimit
        .layer(&config.redis, ctx.take_shared_memory(RATELIMIT_SEGMENT))
        .map_err(|e| ServeError::Config(format!("rate limiting: {e}")))?;
    let limiter = limit.limiter().clone();
    // A Redis outage fails readiness only for zones that fail closed.
    let health = Health::new(StatusInfo {
        git_commit: BUILD.git_commit.to_owned(),
        build_time: BUILD.build_time.to_owned(),
        environment: environment.to_string(),
    })
    .readiness_check("ratelimit", Duration::from_secs(1), move || {
        let limiter = limiter.clone();
        async move { limiter.readiness().await }
    });
    let app = tower::Layer::layer(&limit, app);
    // Metrics: this worker's requests (every route, health checks included)
    // and the limiter's, sent to the master, which serves one scrape for the
    // whole instance; `/metrics` on this port too when a token is set.
    // `WHARF_METRICS=false` leaves them out (to measure what they cost).
    let metrics_on = config.metrics != Some(false);
    let http_metrics = metrics_on.then(|| Arc::new(HttpMetrics::new()));
    if let Some(rendered) = http_metrics.clone() {
        let limiter_metrics = limit.limiter().clone();
        ctx.set_metrics_source(Arc::new(move || {
            let mut snapshot = rendered.snapshot();
            snapshot.extend(limiter_metrics.metrics().snapshot());
            snapshot
        }));
    }
    let instance = ctx.instance_metrics();
    let app = PublicMetrics::new(
        app,
        config.metrics_token.clone(),
        Arc::new(move || instance.text()),
    );
    // A server span per request when tracing is on (a pass-through when off),
    // named by route template.
    let app = tower::Layer::layer(
        &wharf_telemetry::trace::ServerSpanLayer::new(|parts: &http::request::Parts| {
            wharf_telemetry::trace::RequestFacts::new(route_template(parts.uri.path()))
        }),
        app,
    );
    let mut server_config = server_config(&config.server);
    server_config.access_log = config.log.access_log;
    // Trusted proxies (`WHARF_RATELIMIT_TRUSTED_PROXIES`): the client is
    // resolved once per request; the limiter and the access log read it.
    server_config.client_addr = config.ratelimit.client_addr();
    let shutdown = ctx.shutdown_signal();
    // Every request counts toward the worker's heartbeat figures (and
    // `WHARF_MAX_REQUESTS`), health checks included.
    let stats = ctx.stats();
    let hook: RequestHook = Arc::new(move || Box::new(stats.start_request()));
    let mut server = Server::new(server_config)
        .with_health(health)
        .with_request_hook(hook);
    if let Some(http_metrics) = http_metrics {
        server = server.with_observer(observer(http_metrics));
    }
    let serving = server.serve(listeners, app, shutdown);
    if let Some(local) = local {
        let host = if local.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            local.ip().to_string()
        };
        tracing::info!(
            address = %local,
            url = %format!("http://{host}:{}/_status", local.port()),
            slot = ctx.slot(),
            pid = std::process::id(),
            "Listening"
        );
    }
    ctx.ready();
    let report = serving.await?;
    tracing::info!(forced_connections = report.forced, "Drained");
    Ok(())
}

/// Logs the local API's sample documents (development), so a browser shows
/// the whole flow at once.
fn log_samples(app: &DownloadApp, addr: SocketAddr) {
    // A wildcard listener is reached on loopback; an IPv6 host is bracketed.
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv6() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip => ip,
    };
    let origin = SocketAddr::new(host, addr.port());
    for sample in app.samples() {
        tracing::info!(
            url = %format!("http://{origin}{}", sample.path),
            description = sample.description,
            confirm_email_address = sample.confirm_email_address.as_deref().unwrap_or("-"),
            "Sample document"
        );
    }
}
