//! Loader behaviour: layering, sources, production strictness, error listing.

use std::io::Write;

use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
struct AppConfig {
    server: ServerSection,
    redis: RedisSection,
    log: LogSection,
    api_host_name: Option<String>,
    secret_key: Option<Secret<String>>,
    dangerous_salt: Option<Secret<String>>,
    web_concurrency: Option<u64>,
}

fn vars() -> Vec<Var> {
    let mut vars = ServerSection::vars("server");
    vars.extend(RedisSection::vars("redis"));
    vars.extend(LogSection::vars("log"));
    vars.push(
        Var::new(
            "API_HOST_NAME",
            "api_host_name",
            parse::url(&["http", "https"]),
        )
        .required_when_deployed(),
    );
    vars.push(
        Var::new("SECRET_KEY", "secret_key", parse::text())
            .secret()
            .required_when_deployed(),
    );
    vars.push(
        Var::new("DANGEROUS_SALT", "dangerous_salt", parse::text())
            .secret()
            .required_when_deployed(),
    );
    vars.push(Var::new(
        "WEB_CONCURRENCY",
        "web_concurrency",
        parse::count(0, 1024),
    ));
    vars
}

fn load(pairs: &[(&str, &str)]) -> Result<Loaded<AppConfig>, ConfigError> {
    Loader::new(vars())
        .env(EnvMap::from_pairs(pairs.iter().copied()))
        .dotenv(None)
        .reserve_prefix("WHARF_")
        .load()
}

const PRODUCTION: &[(&str, &str)] = &[
    ("NOTIFY_ENVIRONMENT", "production"),
    ("PORT", "7001"),
    ("REDIS_ENABLED", "true"),
    ("REDIS_URL", "redis://:pw@redis:6379/0"),
    ("API_HOST_NAME", "https://download.example"),
    ("SECRET_KEY", "sk"),
    ("DANGEROUS_SALT", "salt"),
];

#[test]
fn no_environment_means_development_defaults() {
    let loaded = load(&[]).unwrap();
    assert_eq!(loaded.environment, Environment::Development);
    assert_eq!(loaded.config, AppConfig::default());
    assert_eq!(loaded.config.server.port, 7001);
    assert_eq!(loaded.config.server.keepalive_seconds, 90);
    assert_eq!(loaded.config.server.max_body_bytes, 10 * 1024 * 1024);
    assert_eq!(loaded.config.server.max_connections, 1000);
    assert_eq!(loaded.config.server.backlog, 1024);
}

#[test]
fn every_seed_variable_lands_in_its_field() {
    let mut env = PRODUCTION.to_vec();
    env.extend([
        ("HTTP_SERVE_TIMEOUT_SECONDS", "45"),
        ("WEB_CONCURRENCY", "4"),
        ("WHARF_KEEPALIVE_SECONDS", "75"),
        ("WHARF_HEADER_READ_TIMEOUT_SECONDS", "5"),
        ("WHARF_GRACEFUL_TIMEOUT_SECONDS", "20"),
        ("WHARF_MAX_HEADER_BYTES", "32KiB"),
        ("WHARF_MAX_BODY_BYTES", "1M"),
        ("WHARF_MAX_CONNECTIONS", "50"),
        ("WHARF_BACKLOG", "4096"),
        ("WHARF_BIND_ADDRESS", "::"),
        ("WHARF_HSTS_MAX_AGE_SECONDS", "31536000"),
        ("WHARF_LOG_FORMAT", "pretty"),
        ("WHARF_ACCESS_LOG", "false"),
        ("RUST_LOG", "debug"),
    ]);
    let c = load(&env).unwrap().config;
    assert_eq!(c.server.port, 7001);
    assert_eq!(c.server.request_timeout_seconds, 45);
    assert_eq!(c.server.keepalive_seconds, 75);
    assert_eq!(c.server.header_read_timeout_seconds, 5);
    assert_eq!(c.server.graceful_timeout_seconds, 20);
    assert_eq!(c.server.max_header_bytes, 32 * 1024);
    assert_eq!(c.server.max_body_bytes, 1024 * 1024);
    assert_eq!(c.server.max_connections, 50);
    assert_eq!(c.server.backlog, 4096);
    assert_eq!(
        c.server.bind_address(Environment::Production).to_string(),
        "::"
    );
    assert_eq!(c.server.hsts_max_age_seconds, 31_536_000);
    assert!(c.redis.enabled);
    assert_eq!(c.redis.url.unwrap().expose(), "redis://:pw@redis:6379/0");
    assert_eq!(c.api_host_name.as_deref(), Some("https://download.example"));
    assert_eq!(c.secret_key.unwrap().expose(), "sk");
    assert_eq!(c.dangerous_salt.unwrap().expose(), "salt");
    assert_eq!(c.web_concurrency, Some(4));
    assert_eq!(c.log.format, LogFormat::Pretty);
    assert!(!c.log.access_log);
    assert_eq!(c.log.filter, "debug");
}

#[test]
fn production_with_nothing_set_lists_every_missing_variable_once() {
    let err = load(&[("NOTIFY_ENVIRONMENT", "production")]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid configuration for NOTIFY_ENVIRONMENT=production (6 problems):\n  \
         PORT: required in production, not set\n  \
         REDIS_ENABLED: required in production, not set\n  \
         REDIS_URL: required in production, not set\n  \
         API_HOST_NAME: required in production, not set\n  \
         SECRET_KEY: required in production, not set\n  \
         DANGEROUS_SALT: required in production, not set"
    );
}

#[test]
fn bad_values_are_all_reported_with_what_was_expected() {
    let mut env = PRODUCTION.to_vec();
    env.retain(|(k, _)| *k != "PORT" && *k != "SECRET_KEY");
    env.extend([
        ("PORT", "seventy"),
        ("HTTP_SERVE_TIMEOUT_SECONDS", "3o"),
        ("REDIS_ENABLED", "yes please"),
        ("WHARF_MAX_BODY_BYTES", "lots"),
        ("SECRET_KEY", "   "),
    ]);
    let err = load(&env).unwrap_err();
    let lines: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "PORT: expected a port number between 1 and 65535, got \"seventy\"",
            "HTTP_SERVE_TIMEOUT_SECONDS: expected a whole number of seconds, got \"3o\"",
            "WHARF_MAX_BODY_BYTES: expected a size in bytes of at least 0 (e.g. 10485760 or 10MiB), got \"lots\"",
            "REDIS_ENABLED: expected true or false, got \"yes please\"",
            "SECRET_KEY: expected a value that is not blank (value not shown: secret)",
        ]
    );
}

#[test]
fn an_unknown_environment_is_reported_and_checked_strictly() {
    let err = load(&[("NOTIFY_ENVIRONMENT", "prod")]).unwrap_err();
    assert_eq!(
        err.problems[0].to_string(),
        "NOTIFY_ENVIRONMENT: expected one of development, test, preview, staging, production, got \"prod\""
    );
    assert!(err.problems.len() > 1, "{err}");
}

/// Development listens on loopback only (its local document API and sample
/// documents must not be reachable from the network); every other
/// environment on all interfaces; `WHARF_BIND_ADDRESS` wins in any.
#[test]
fn development_binds_loopback_and_deployed_environments_all_interfaces() {
    let development = load(&[]).unwrap().config.server;
    assert_eq!(development.bind, None);
    assert_eq!(
        development
            .bind_address(Environment::Development)
            .to_string(),
        "127.0.0.1"
    );
    for environment in &Environment::ALL[1..] {
        assert_eq!(
            development.bind_address(*environment).to_string(),
            "0.0.0.0",
            "{environment}"
        );
    }
    let explicit = load(&[("WHARF_BIND_ADDRESS", "0.0.0.0")]).unwrap();
    assert_eq!(
        explicit
            .config
            .server
            .bind_address(explicit.environment)
            .to_string(),
        "0.0.0.0"
    );
}

#[test]
fn a_typo_in_a_wharf_variable_is_an_error() {
    // The issue #20 example: one letter short of WHARF_ACCESS_LOG.
    let err = load(&[("WHARF_ACESS_LOG", "false")]).unwrap_err();
    assert_eq!(
        err.problems[0].to_string(),
        "WHARF_ACESS_LOG: unknown variable: no setting is called WHARF_ACESS_LOG"
    );
    let err = load(&[("WHARF_KEEPALIVE_SECS", "5")]).unwrap_err();
    assert_eq!(
        err.problems[0].to_string(),
        "WHARF_KEEPALIVE_SECS: unknown variable: no setting is called WHARF_KEEPALIVE_SECS"
    );
}

#[test]
fn secrets_never_appear_in_errors_or_reports() {
    let mut env = PRODUCTION.to_vec();
    env.push(("REDIS_URL", "not-a-url-with-password"));
    env.retain(|(k, v)| *k != "REDIS_URL" || !v.starts_with("redis://"));
    let err = load(&env).unwrap_err();
    assert!(!err.to_string().contains("password"), "{err}");

    let loaded = load(PRODUCTION).unwrap();
    let report = serde_json::to_string(&loaded.report()).unwrap();
    assert!(!report.contains("pw@redis"), "{report}");
    assert!(!report.contains("\"sk\""), "{report}");
    assert!(!format!("{:?}", loaded.config).contains("salt\""));
}

#[test]
fn report_names_the_source_of_each_value() {
    let dir = tempfile::tempdir().unwrap();
    let dotenv = dir.path().join(".env");
    let mut f = std::fs::File::create(&dotenv).unwrap();
    writeln!(
        f,
        "# local settings\nHTTP_SERVE_TIMEOUT_SECONDS=12\nPORT=9000"
    )
    .unwrap();
    let loaded: Loaded<AppConfig> = Loader::new(vars())
        .env(EnvMap::from_pairs([("PORT", "8000")]))
        .dotenv(Some(&dotenv))
        .load()
        .unwrap();
    assert_eq!(loaded.config.server.port, 8000, "environment beats .env");
    assert_eq!(loaded.config.server.request_timeout_seconds, 12);
    let report = loaded.report();
    let find = |name: &str| report.iter().find(|e| e.variable == name).unwrap().clone();
    assert_eq!(find("PORT").source, Source::Env("PORT"));
    assert_eq!(find("PORT").value, "8000");
    assert_eq!(
        find("HTTP_SERVE_TIMEOUT_SECONDS").source,
        Source::DotEnv("HTTP_SERVE_TIMEOUT_SECONDS")
    );
    assert_eq!(find("WHARF_KEEPALIVE_SECONDS").source, Source::Default);
    assert_eq!(find("WHARF_KEEPALIVE_SECONDS").value, "90");
    assert_eq!(find("SECRET_KEY").value, "null");
}

#[test]
fn dotenv_is_ignored_in_production() {
    let dir = tempfile::tempdir().unwrap();
    let dotenv = dir.path().join(".env");
    std::fs::write(
        &dotenv,
        "HTTP_SERVE_TIMEOUT_SECONDS=12\nSECRET_KEY=from-dotenv\n",
    )
    .unwrap();
    let mut env = PRODUCTION.to_vec();
    env.retain(|(k, _)| *k != "SECRET_KEY");
    let err = Loader::new(vars())
        .env(EnvMap::from_pairs(env.iter().copied()))
        .dotenv(Some(&dotenv))
        .load::<AppConfig>()
        .unwrap_err();
    assert_eq!(err.problems.len(), 1);
    assert_eq!(
        err.problems[0].to_string(),
        "SECRET_KEY: required in production, not set"
    );
    let loaded: Loaded<AppConfig> = Loader::new(vars())
        .env(EnvMap::from_pairs(PRODUCTION.iter().copied()))
        .dotenv(Some(&dotenv))
        .load()
        .unwrap();
    assert_eq!(loaded.config.server.request_timeout_seconds, 30);
}

#[test]
fn dotenv_is_read_in_test_and_a_broken_one_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let dotenv = dir.path().join(".env");
    std::fs::write(&dotenv, "PORT=9100\n").unwrap();
    let loaded: Loaded<AppConfig> = Loader::new(vars())
        .env(EnvMap::from_pairs([("NOTIFY_ENVIRONMENT", "test")]))
        .dotenv(Some(&dotenv))
        .load()
        .unwrap();
    assert_eq!(loaded.config.server.port, 9100);

    std::fs::write(&dotenv, "PORT='unterminated\n").unwrap();
    let err = Loader::new(vars())
        .env(EnvMap::from_pairs([("NOTIFY_ENVIRONMENT", "test")]))
        .dotenv(Some(&dotenv))
        .load::<AppConfig>()
        .unwrap_err();
    assert_eq!(err.problems[0].variable, ".env");
}

#[test]
fn empty_values_count_as_unset() {
    let mut env = PRODUCTION.to_vec();
    env.retain(|(k, _)| *k != "DANGEROUS_SALT");
    env.push(("DANGEROUS_SALT", ""));
    let err = load(&env).unwrap_err();
    assert_eq!(
        err.problems[0].to_string(),
        "DANGEROUS_SALT: required in production, not set"
    );
}

/// Key material: three strong secrets, as frontend's `SECRET_KEY`,
/// `DANGEROUS_SALT` and `ADMIN_CLIENT_SECRET`.
fn key_vars() -> Vec<Var> {
    let mut vars = vec![Var::new("PORT", "server.port", parse::port()).required_when_deployed()];
    for (name, key) in [
        ("SECRET_KEY", "secret_key"),
        ("DANGEROUS_SALT", "dangerous_salt"),
        ("ADMIN_CLIENT_SECRET", "admin_client_secret"),
    ] {
        vars.push(
            Var::new(name, key, parse::text())
                .strong_secret()
                .required_when_deployed(),
        );
    }
    vars
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct Keys {
    server: ServerSection,
    secret_key: Option<Secret<String>>,
    dangerous_salt: Option<Secret<String>>,
    admin_client_secret: Option<Secret<String>>,
}

fn load_keys(pairs: &[(&str, &str)]) -> Result<Loaded<Keys>, ConfigError> {
    Loader::new(key_vars())
        .env(EnvMap::from_pairs(pairs.iter().copied()))
        .dotenv(None)
        .load()
}

/// A fresh 64-character key (std's per-process random hash keys): a fixed
/// one would ship in the repository, and so be refused.
fn fresh_key() -> String {
    use std::fmt::Write as _;
    use std::hash::{BuildHasher, Hasher};
    let mut key = String::new();
    for _ in 0..4 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u8(0);
        let _ = write!(key, "{:016x}", hasher.finish());
    }
    key
}

#[test]
fn deployed_keys_long_distinct_and_not_shipped_are_accepted() {
    let (a, c) = (fresh_key(), fresh_key());
    let exactly_32 = &a[..32];
    let padded = format!("  {c}  ");
    for environment in ["preview", "staging", "production"] {
        let loaded = load_keys(&[
            ("NOTIFY_ENVIRONMENT", environment),
            ("PORT", "7001"),
            ("SECRET_KEY", exactly_32),
            ("DANGEROUS_SALT", &padded),
            ("ADMIN_CLIENT_SECRET", &a),
        ])
        .unwrap();
        assert_eq!(loaded.config.secret_key.unwrap().expose(), exactly_32);
        assert_eq!(loaded.config.dangerous_salt.unwrap().expose(), &c);
    }
}

#[test]
fn deployed_keys_short_shared_or_shipped_are_all_listed_never_shown() {
    let short = "0123456789abcdefghijklmnopqrstu"; // 31 bytes
    let shipped = "wharf-development-only-secret-key";
    let err = load_keys(&[
        ("NOTIFY_ENVIRONMENT", "staging"),
        ("PORT", "seventy"),
        ("SECRET_KEY", short),
        ("DANGEROUS_SALT", shipped),
        ("ADMIN_CLIENT_SECRET", short),
    ])
    .unwrap_err();
    let text = err.to_string();
    assert!(!text.contains(short) && !text.contains(shipped), "{text}");
    let lines: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "PORT: expected a port number between 1 and 65535, got \"seventy\"",
            "SECRET_KEY: too short for staging: 31 bytes, at least 32 needed \
             (e.g. `openssl rand -base64 48`) (value not shown: secret)",
            "DANGEROUS_SALT: a value that ships in wharf's repository \
             (bins/frontend/main.rs (DEVELOPMENT_SECRET_KEY)), so not a secret; \
             generate one (value not shown: secret)",
            "ADMIN_CLIENT_SECRET: too short for staging: 31 bytes, at least 32 needed \
             (e.g. `openssl rand -base64 48`) (value not shown: secret)",
            "ADMIN_CLIENT_SECRET: the same value as SECRET_KEY; every key must be different \
             (value not shown: secret)",
        ]
    );
    // All three the same, and a missing variable: one error for all of it.
    let key = fresh_key();
    let err = load_keys(&[
        ("NOTIFY_ENVIRONMENT", "production"),
        ("SECRET_KEY", &key),
        ("DANGEROUS_SALT", &key),
        ("ADMIN_CLIENT_SECRET", &key),
    ])
    .unwrap_err();
    let lines: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "PORT: required in production, not set",
            "DANGEROUS_SALT: the same value as SECRET_KEY; every key must be different \
             (value not shown: secret)",
            "ADMIN_CLIENT_SECRET: the same value as SECRET_KEY and DANGEROUS_SALT; \
             every key must be different (value not shown: secret)",
        ]
    );
    assert!(!err.to_string().contains(&key));
}

#[test]
fn development_and_test_keep_any_key() {
    for environment in ["development", "test"] {
        let loaded = load_keys(&[
            ("NOTIFY_ENVIRONMENT", environment),
            ("SECRET_KEY", "sk"),
            ("DANGEROUS_SALT", "sk"),
            ("ADMIN_CLIENT_SECRET", "wharf-development-only-secret-key"),
        ])
        .unwrap();
        assert_eq!(loaded.config.secret_key.unwrap().expose(), "sk");
    }
}

#[test]
fn every_shipped_secret_is_refused_and_named_by_its_source() {
    assert!(SHIPPED_SECRETS.len() > 10);
    for sample in SHIPPED_SECRETS {
        assert_eq!(shipped_secret(sample.value), Some(sample));
        assert!(!sample.source.is_empty());
    }
    // Long enough, but shipped.
    let long = shipped_secret("wharf-development-only-secret-key").unwrap();
    assert!(long.value.len() >= MIN_KEY_BYTES);
    assert_eq!(shipped_secret(&fresh_key()), None);
}
