//! 12-factor configuration for wharf services, on [figment].
//!
//! **What it is for:** turning environment variables into a typed, `serde`
//! configuration with defaults in one place, in three layers:
//! section defaults < a `.env` file (development and test only) < the process
//! environment. Every variable is checked before anything is reported, so a
//! bad deployment fails at start-up with **one** message listing every missing
//! or invalid variable and why; exit with [`EXIT_CONFIG`] (78) on it.
//! [`Secret`] values never show in `Debug`, `Display`, serialised output or
//! errors. [`Loaded::report`] says where each effective value came from.
//! A variable marked [`Var::strong_secret`] is key material: deployed
//! environments refuse it shorter than [`MIN_KEY_BYTES`], equal to another
//! such variable, or equal to a value that ships with wharf
//! ([`SHIPPED_SECRETS`]), in the same one error.
//!
//! **What it is not for:** files of nested settings or live reload.
//!
//! A service composes the reusable sections ([`ServerSection`],
//! [`RedisSection`], [`LogSection`]) with its own:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use wharf_config::{parse, EnvMap, Loader, Secret, ServerSection, Var};
//!
//! #[derive(Debug, Default, Serialize, Deserialize)]
//! #[serde(default)]
//! struct MyConfig {
//!     server: ServerSection,
//!     api_key: Option<Secret<String>>,
//! }
//!
//! let mut vars = ServerSection::vars("server");
//! vars.push(Var::new("API_KEY", "api_key", parse::text()).secret().required_when_deployed());
//!
//! // Tests pass a map; a binary uses `Loader::new(vars)` to read the real environment.
//! let env = EnvMap::from_pairs([("PORT", "8080"), ("API_KEY", "k")]);
//! let loaded = Loader::new(vars.clone()).env(env).dotenv(None).load::<MyConfig>().unwrap();
//! assert_eq!(loaded.config.server.port, 8080);
//! assert_eq!(loaded.config.server.request_timeout_seconds, 30);
//! assert_eq!(format!("{:?}", loaded.config.api_key), "Some([redacted])");
//!
//! let env = EnvMap::from_pairs([("NOTIFY_ENVIRONMENT", "production"), ("HTTP_SERVE_TIMEOUT_SECONDS", "3o")]);
//! let err = Loader::new(vars).env(env).dotenv(None).load::<MyConfig>().unwrap_err();
//! assert_eq!(err.to_string(), "invalid configuration for NOTIFY_ENVIRONMENT=production (3 problems):
//!   PORT: required in production, not set
//!   HTTP_SERVE_TIMEOUT_SECONDS: expected a whole number of seconds, got \"3o\"
//!   API_KEY: required in production, not set");
//! ```
#![forbid(unsafe_code)]

mod environment;
mod keys;
mod loader;
mod secret;
mod sections;
mod var;

pub use environment::{Environment, UnknownEnvironment};
pub use keys::{shipped_secret, ShippedSecret, MIN_KEY_BYTES, SHIPPED_SECRETS};
pub use loader::{
    ConfigError, Effective, EnvMap, Loaded, Loader, Problem, Source, ENVIRONMENT_VAR, EXIT_CONFIG,
};
pub use secret::{Secret, REDACTED};
pub use sections::{LogFormat, LogSection, RedisSection, ServerSection};
pub use var::{parse, Parser, Requirement, Var};

#[cfg(test)]
mod tests;
