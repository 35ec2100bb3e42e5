//! [`Environment`]: which deployment this process runs in (`NOTIFY_ENVIRONMENT`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The deployment a process runs in, from `NOTIFY_ENVIRONMENT` (the seed's names).
///
/// Development and test read a `.env` file and fill in development defaults;
/// every other environment is *deployed*: `.env` is ignored and every variable
/// marked [`Requirement::Deployed`](crate::Requirement::Deployed) must be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// A developer's machine: `.env` read, Redis optional, pretty logs.
    #[default]
    Development,
    /// Automated tests: like development.
    Test,
    /// A deployed preview environment.
    Preview,
    /// The deployed staging environment.
    Staging,
    /// Production.
    Production,
}

impl Environment {
    /// Every environment, in the order above.
    pub const ALL: [Self; 5] = [
        Self::Development,
        Self::Test,
        Self::Preview,
        Self::Staging,
        Self::Production,
    ];

    /// The name used in `NOTIFY_ENVIRONMENT`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Test => "test",
            Self::Preview => "preview",
            Self::Staging => "staging",
            Self::Production => "production",
        }
    }

    /// Whether this is a deployed environment (preview, staging, production):
    /// `.env` is ignored and required variables must be set.
    pub const fn is_deployed(self) -> bool {
        matches!(self, Self::Preview | Self::Staging | Self::Production)
    }

    /// Whether a `.env` file is read (development and test only).
    pub const fn reads_dotenv(self) -> bool {
        !self.is_deployed()
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error for a `NOTIFY_ENVIRONMENT` value that names no environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected one of development, test, preview, staging, production")]
pub struct UnknownEnvironment;

impl FromStr for Environment {
    type Err = UnknownEnvironment;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|env| env.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or(UnknownEnvironment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_name_and_rejects_others() {
        for env in Environment::ALL {
            assert_eq!(env.as_str().parse::<Environment>(), Ok(env));
        }
        assert_eq!(
            "Production".parse::<Environment>(),
            Ok(Environment::Production)
        );
        assert_eq!("prod".parse::<Environment>(), Err(UnknownEnvironment));
        assert!(Environment::Staging.is_deployed());
        assert!(Environment::Test.reads_dotenv());
    }
}
