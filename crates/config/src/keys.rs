//! Key material in deployed environments: what a [`Var`](crate::Var) marked
//! [`strong_secret`](crate::Var::strong_secret) must be when
//! `NOTIFY_ENVIRONMENT` is preview, staging or production.
//!
//! Development and test keep any value (and frontend's fixed development
//! key): `test` is for automated runs that read a `.env`, like development,
//! and serves nobody; anything reachable by real users runs as preview,
//! staging or production.

/// The fewest bytes a key may have when deployed (`openssl rand -base64 48`
/// gives 64).
pub const MIN_KEY_BYTES: usize = 32;

/// A value that ships in this repository, and so is no secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShippedSecret {
    /// The value, exactly as it ships.
    pub value: &'static str,
    /// Where it ships (a path in the repository).
    pub source: &'static str,
}

const fn shipped(value: &'static str, source: &'static str) -> ShippedSecret {
    ShippedSecret { value, source }
}

/// Every value given to `SECRET_KEY`, `DANGEROUS_SALT`, `ADMIN_CLIENT_SECRET`
/// (or to the same keys through `wharf-download`'s builder, or as a
/// [`Secret`](crate::Secret) example) anywhere in the repository: code,
/// tests, examples, documentation, deploy files. Each is public, so a
/// deployed environment refuses it whatever its length.
///
/// `crates/config/tests/shipped_secrets.rs` scans the repository for such
/// values and fails on one missing here: a new sample cannot be forgotten.
/// The deploy templates (`deploy/*.env.example`, the Kubernetes Secret, the
/// Cloud Foundry manifest, compose) ship empty values or interpolations,
/// which count as unset.
pub const SHIPPED_SECRETS: &[ShippedSecret] = &[
    // frontend's own key for development without SECRET_KEY (33 bytes: long
    // enough, but public).
    shipped(
        "wharf-development-only-secret-key",
        "bins/frontend/main.rs (DEVELOPMENT_SECRET_KEY)",
    ),
    // The documentation's placeholders, which an operator may paste as is,
    // and its example of refused keys.
    shipped(
        "…",
        "docs/deploy.md (kubectl --from-literal, Cloud Foundry vars.yml)",
    ),
    shipped(
        "salt-from-a-wiki",
        "docs/configuration.md (Keys in deployed environments)",
    ),
    // End-to-end fixtures.
    shipped(
        "very-secret-value",
        "tests/e2e/frontend.rs (config report test)",
    ),
    shipped(
        "secret-key-value-0x5ecret",
        "tests/e2e/reliability/secrets.rs",
    ),
    shipped(
        "dangerous-salt-value-0x5ecret",
        "tests/e2e/reliability/secrets.rs",
    ),
    shipped(
        "admin-client-secret-0x5ecret",
        "tests/e2e/reliability/secrets.rs",
    ),
    shipped(
        "admin-client-secret-value",
        "tests/e2e/reliability/mod.rs (api_env)",
    ),
    // Made by tests/e2e/deploy.rs `placeholder()` for every platform's
    // secrets until issue 26 (now random per run).
    shipped(
        "placeholder-secret_key",
        "tests/e2e/deploy.rs (before issue 26)",
    ),
    shipped(
        "placeholder-dangerous_salt",
        "tests/e2e/deploy.rs (before issue 26)",
    ),
    shipped(
        "placeholder-admin_client_secret",
        "tests/e2e/deploy.rs (before issue 26)",
    ),
    // Unit and integration tests of the crates.
    shipped("sk", "crates/config/src/tests.rs"),
    shipped("salt", "crates/config/src/tests.rs"),
    shipped("from-dotenv", "crates/config/src/tests.rs"),
    shipped("hunter2", "crates/config/src/secret.rs (Secret docs)"),
    shipped("s3cr3t", "crates/config/src/secret.rs (tests)"),
    shipped("s3cret", "crates/download/src/config.rs (tests)"),
    shipped("unit-test key", "crates/download/src/app.rs (tests)"),
    shipped("admin", "crates/download/src/app.rs (tests)"),
    shipped(
        "test-admin-secret",
        "crates/download/tests/support/mod.rs (ADMIN_SECRET)",
    ),
    shipped("test secret key", "crates/download/tests/support/mod.rs"),
    shipped("k", "crates/download/tests/app.rs"),
    shipped("x", "crates/download/tests/app.rs"),
    // Examples.
    shipped("example-secret", "examples/download.rs"),
];

/// Where `value` ships, when it is one of [`SHIPPED_SECRETS`].
pub fn shipped_secret(value: &str) -> Option<&'static ShippedSecret> {
    SHIPPED_SECRETS.iter().find(|s| s.value == value)
}

/// What is wrong with one key's `value`, given the keys checked before it
/// (`(name, value)`): too short, shipped, or the same as an earlier one. The
/// value is never in a reason.
pub(crate) fn problems(
    value: &str,
    earlier: &[(&'static str, String)],
    environment: crate::Environment,
) -> Vec<String> {
    let problem = |reason: String| format!("{reason} (value not shown: secret)");
    let mut found = Vec::new();
    if value.len() < MIN_KEY_BYTES {
        found.push(problem(format!(
            "too short for {environment}: {} bytes, at least {MIN_KEY_BYTES} needed \
             (e.g. `openssl rand -base64 48`)",
            value.len()
        )));
    }
    if let Some(sample) = shipped_secret(value) {
        found.push(problem(format!(
            "a value that ships in wharf's repository ({}), so not a secret; generate one",
            sample.source
        )));
    }
    let same: Vec<&str> = earlier
        .iter()
        .filter(|(_, other)| other == value)
        .map(|(other, _)| *other)
        .collect();
    if !same.is_empty() {
        found.push(problem(format!(
            "the same value as {}; every key must be different",
            same.join(" and ")
        )));
    }
    found
}
