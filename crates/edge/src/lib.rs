//! `edge`, the TLS-terminating reverse proxy in front of `frontend` (the nginx
//! of the seeds' deployments), as a library: its TOML configuration in
//! nginx's vocabulary with line-numbered errors, the routing table built from
//! it, the request service, and serving (one process, or a master of worker
//! processes through wharf-supervisor, with SIGHUP reloads and SIGUSR2
//! upgrades). The `edge` binary is the command line around [`serve`],
//! [`check_config`] and [`admin_address`].
//!
//! **What it is for:** running or embedding the proxy, checking a
//! configuration before deploying it, and fuzzing or testing the parser
//! without a process. **What it is not for:** a general-purpose proxy
//! framework: the service types stay internal until a second user needs them.
//!
//! ```
//! // A file is checked as `edge check-config` checks it (certificates aside):
//! // the mistake names its line.
//! let good = r#"
//! [[listen]]
//! address = "127.0.0.1:8080"
//!
//! [[upstream]]
//! name = "app"
//! servers = [{ address = "127.0.0.1:7001" }]
//!
//! [[server]]
//! server_name = ["localhost"]
//! default_server = true
//! [[server.location]]
//! path = "/"
//! proxy_pass = "app"
//! "#;
//! assert!(wharf_edge::check_toml(good).is_ok());
//! let bad = good.replace("proxy_pass = \"app\"", "proxy_pass = \"nowhere\"");
//! let error = wharf_edge::check_toml(&bad).unwrap_err();
//! assert!(error.message.contains("nowhere"), "{error}");
//! assert_eq!(wharf_edge::parse_duration("1d").unwrap().as_secs(), 86_400);
//! ```

mod acme;
mod app;
mod compress;
mod config;
mod listeners;
mod runtime;
mod serve;
mod tls;

pub use config::{parse_duration, parse_size, ConfigError, CONFIG_VAR};
pub use serve::{admin_address, check_config, serve, BuildInfo};

/// Parses `text` as an edge configuration file and builds what serving it
/// would build (routes, upstreams, zones), without reading certificate
/// files or the environment: the checks of `edge check-config` a test or an
/// embedder can run on a string.
pub fn check_toml(text: &str) -> Result<(), ConfigError> {
    let (config, source) = config::parse(None, text.to_owned())?;
    runtime::build(&config, &source, 0).map(drop)
}

/// For `fuzz/fuzz_targets/edge_config.rs`: parses `text` and panics if a
/// property of the parser fails: an error's line is a line of the text;
/// `set_real_ip_from` entries that parse print back as themselves; every
/// zone's rate is positive and its key spec round-trips.
#[doc(hidden)]
pub fn fuzz_config(text: &str) {
    let lines = text.matches('\n').count() + 1;
    match config::parse(None, text.to_owned()) {
        Ok((config, _)) => {
            for net in &config.http.set_real_ip_from {
                if let Ok(parsed) = net.get_ref().parse::<wharf_http::IpNet>() {
                    assert_eq!(parsed.to_string().parse::<wharf_http::IpNet>(), Ok(parsed));
                }
            }
            for zone in &config.limit_req {
                assert!(zone.rate.interval_micros() >= 1);
                let key = String::from(zone.key.clone());
                assert_eq!(
                    wharf_ratelimit::KeySpec::try_from(key),
                    Ok(zone.key.clone())
                );
            }
        }
        Err(e) => {
            if let Some(line) = e.line {
                assert!((1..=lines).contains(&line), "line {line} of {lines}: {e}");
            }
        }
    }
}
