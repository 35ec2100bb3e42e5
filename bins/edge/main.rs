//! `edge`: the TLS-terminating reverse proxy in front of `frontend`, the nginx
//! of the seeds' deployments. The proxy is the `wharf-edge` library; this is
//! its command line, its allocator and its build facts.
//!
//! `edge [--config FILE]` serves; `edge check-config [--config FILE]`
//! validates a file and exits 78 naming the line and reason (like `nginx -t`).
//! The file also comes from `WHARF_EDGE_CONFIG`; with none, in development,
//! `edge` redirects 8080 to 8443, where it terminates TLS with a self-signed
//! certificate made at start and proxies to `frontend` on 127.0.0.1:7001.
//! SIGHUP reloads configuration and certificates (new connections get the new
//! configuration, open ones finish on the old; an invalid file is refused and
//! the old one keeps serving). SIGTERM/SIGINT drain and stop.
//! See docs/edge.md for the configuration and its nginx equivalents.

mod alloc;

/// mimalloc: per-thread free lists without glibc's fastbin consolidation;
/// measured in bench/ (edge-tls, idle, instructions.sh). See `alloc` for why
/// it is entered through edge's own wrapper.
#[global_allocator]
static GLOBAL: alloc::MiMalloc = alloc::MiMalloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// What bins/build.rs recorded: `--version` and `/_status`.
const BUILD: wharf_http::BuildInfo = wharf_http::build_info!();

#[derive(Debug, Parser)]
#[command(name = "edge", version = BUILD.version, about = "TLS-terminating reverse proxy, served by wharf")]
struct Cli {
    /// The TOML configuration file (default: `$WHARF_EDGE_CONFIG`; none: development defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve (the default).
    Serve,
    /// Validate the configuration (and load its certificates); exit 78 with the line and reason if wrong.
    CheckConfig,
    /// GET the admin listener's /health/live; exit 0 when it answers 200, 1
    /// otherwise (a container HEALTHCHECK without curl).
    Healthcheck {
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let path = cli
        .config
        .clone()
        .or_else(|| std::env::var_os(wharf_edge::CONFIG_VAR).map(PathBuf::from))
        .filter(|p| !p.as_os_str().is_empty());
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => wharf_edge::check_config(path.as_deref()),
        Command::Healthcheck { timeout } => healthcheck(path.as_deref(), timeout),
        Command::Serve => wharf_edge::serve(path, BUILD),
    }
}

fn healthcheck(path: Option<&std::path::Path>, timeout: u64) -> ExitCode {
    let addr = match wharf_edge::admin_address(path) {
        Ok(addr) => addr,
        Err(error) => {
            eprintln!("edge healthcheck: {error}");
            return ExitCode::FAILURE;
        }
    };
    match wharf_http::probe(
        addr,
        "/health/live",
        std::time::Duration::from_secs(timeout),
    ) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("edge healthcheck: http://{addr}/health/live: {why}");
            ExitCode::FAILURE
        }
    }
}
