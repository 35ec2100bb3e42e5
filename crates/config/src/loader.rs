//! [`Loader`]: layers defaults < `.env` < environment through figment and checks
//! every variable, collecting all problems into one [`ConfigError`].

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use figment::providers::Serialized;
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::environment::Environment;
use crate::secret::REDACTED;
use crate::var::{Requirement, Var};

/// The variable that selects the [`Environment`].
pub const ENVIRONMENT_VAR: &str = "NOTIFY_ENVIRONMENT";

/// The exit code for a configuration error (`EX_CONFIG` from sysexits.h).
pub const EXIT_CONFIG: i32 = 78;

const DOTENV_NAME: &str = ".env";
const ENVIRONMENT_NAME: &str = "environment";

/// Where an effective value came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "variable", rename_all = "lowercase")]
pub enum Source {
    /// The section's default.
    Default,
    /// The `.env` file (development and test only), under this variable name.
    DotEnv(&'static str),
    /// The process environment, under this variable name.
    Env(&'static str),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("default"),
            Self::DotEnv(name) => write!(f, ".env {name}"),
            Self::Env(name) => write!(f, "env {name}"),
        }
    }
}

/// One problem with one variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The variable (or `.env` for a file that cannot be read).
    pub variable: String,
    /// What is wrong, as a sentence fragment.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.reason)
    }
}

/// Every problem found while loading, reported together so an operator fixes
/// them in one pass. Exit with [`EXIT_CONFIG`] on it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The environment the configuration was checked for.
    pub environment: Environment,
    /// Each problem, in variable order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid configuration for {ENVIRONMENT_VAR}={} ({n} problem{}):",
            self.environment,
            if n == 1 { "" } else { "s" }
        )?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        Ok(())
    }
}

/// One line of the effective-configuration report.
#[derive(Debug, Clone, Serialize)]
pub struct Effective {
    /// The environment variable.
    pub variable: &'static str,
    /// The configuration key it sets.
    pub key: String,
    /// The value, as JSON text; [`REDACTED`] for secrets, `null` when unset.
    pub value: String,
    /// Where it came from.
    pub source: Source,
}

/// A loaded configuration and what it was made from.
#[derive(Debug)]
pub struct Loaded<T> {
    /// The typed configuration.
    pub config: T,
    /// The environment it was loaded for.
    pub environment: Environment,
    figment: Figment,
    vars: Vec<Var>,
}

impl<T> Loaded<T> {
    /// The effective value and source of every variable, secrets redacted.
    pub fn report(&self) -> Vec<Effective> {
        self.vars
            .iter()
            .map(|var| {
                let value = self
                    .figment
                    .find_value(&var.key)
                    .ok()
                    .filter(|v| !matches!(v, figment::value::Value::Empty(..)));
                let source = self
                    .figment
                    .find_metadata(&var.key)
                    .map_or(Source::Default, |meta| match meta.name.as_ref() {
                        DOTENV_NAME => Source::DotEnv(var.name),
                        ENVIRONMENT_NAME => Source::Env(var.name),
                        _ => Source::Default,
                    });
                let value = match value {
                    Some(_) if var.secret => format!("\"{REDACTED}\""),
                    Some(v) => serde_json::to_string(&v).unwrap_or_else(|e| format!("<{e}>")),
                    None => "null".to_owned(),
                };
                Effective {
                    variable: var.name,
                    key: var.key.clone(),
                    value,
                    source,
                }
            })
            .collect()
    }
}

/// Where the process environment comes from: the real one, or a map in tests
/// (so no test ever mutates the process environment).
#[derive(Debug, Clone, Default)]
pub struct EnvMap(BTreeMap<String, String>);

impl EnvMap {
    /// The process environment. Variables whose value is not UTF-8 are kept as
    /// a lossy string; a variable we read will then fail its parser visibly.
    pub fn from_process() -> Self {
        Self(
            std::env::vars_os()
                .map(|(k, v)| {
                    (
                        k.to_string_lossy().into_owned(),
                        v.to_string_lossy().into_owned(),
                    )
                })
                .collect(),
        )
    }

    /// A fixed set of variables.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// A variable's value, treating an empty value as unset (platforms such as
    /// Cloud Foundry set empty variables).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// Loads a configuration `T` from defaults, `.env` and the environment.
///
/// `T::default()` supplies the defaults; each [`Var`] overrides its key when
/// set. In deployed environments `.env` is ignored and required variables
/// must be set. Every variable is checked before any error is returned.
#[derive(Debug, Clone)]
pub struct Loader {
    vars: Vec<Var>,
    env: EnvMap,
    dotenv: Option<PathBuf>,
    reserved_prefix: Option<&'static str>,
}

impl Loader {
    /// A loader for `vars` reading the process environment and `./.env`.
    pub fn new(vars: Vec<Var>) -> Self {
        Self {
            vars,
            env: EnvMap::from_process(),
            dotenv: Some(PathBuf::from(".env")),
            reserved_prefix: None,
        }
    }

    /// Uses `env` instead of the process environment.
    #[must_use]
    pub fn env(mut self, env: EnvMap) -> Self {
        self.env = env;
        self
    }

    /// Reads `.env` from `path` instead of `./.env`; `None` reads none.
    #[must_use]
    pub fn dotenv(mut self, path: Option<&Path>) -> Self {
        self.dotenv = path.map(Path::to_path_buf);
        self
    }

    /// Treats every variable starting with `prefix` (e.g. `WHARF_`) as ours: one
    /// that is not a known variable is an error, so a typo is never silently ignored.
    #[must_use]
    pub fn reserve_prefix(mut self, prefix: &'static str) -> Self {
        self.reserved_prefix = Some(prefix);
        self
    }

    /// The environment named by `NOTIFY_ENVIRONMENT` (development when unset).
    fn environment(&self, problems: &mut Vec<Problem>) -> Environment {
        match self.env.get(ENVIRONMENT_VAR) {
            None => Environment::Development,
            Some(text) => text.parse().unwrap_or_else(|e| {
                problems.push(Problem {
                    variable: ENVIRONMENT_VAR.to_owned(),
                    reason: format!("{e}, got {text:?}"),
                });
                // Check the rest as strictly as production would.
                Environment::Production
            }),
        }
    }

    fn read_dotenv(&self, problems: &mut Vec<Problem>) -> HashMap<String, String> {
        let Some(path) = &self.dotenv else {
            return HashMap::new();
        };
        let iter = match dotenvy::from_path_iter(path) {
            Ok(iter) => iter,
            Err(dotenvy::Error::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return HashMap::new()
            }
            Err(e) => {
                problems.push(Problem {
                    variable: DOTENV_NAME.to_owned(),
                    reason: format!("cannot read {}: {e}", path.display()),
                });
                return HashMap::new();
            }
        };
        let mut values = HashMap::new();
        for item in iter {
            match item {
                Ok((k, v)) => {
                    values.insert(k, v);
                }
                Err(e) => problems.push(Problem {
                    variable: DOTENV_NAME.to_owned(),
                    reason: format!("{}: {e}", path.display()),
                }),
            }
        }
        values
    }

    /// Loads and checks the configuration.
    pub fn load<T>(&self) -> Result<Loaded<T>, ConfigError>
    where
        T: Serialize + DeserializeOwned + Default,
    {
        let mut problems = Vec::new();
        let environment = self.environment(&mut problems);
        let dotenv = if environment.reads_dotenv() {
            self.read_dotenv(&mut problems)
        } else {
            HashMap::new()
        };

        let mut from_dotenv = Value::Object(serde_json::Map::new());
        let mut from_env = Value::Object(serde_json::Map::new());
        // Key material seen so far (deployed environments only), to find a
        // key equal to another.
        let mut keys: Vec<(&'static str, String)> = Vec::new();
        for var in &self.vars {
            let (text, layer) = match (self.env.get(var.name), dotenv.get(var.name)) {
                (Some(text), _) => (text, &mut from_env),
                (None, Some(text)) if !text.is_empty() => (text.as_str(), &mut from_dotenv),
                _ => {
                    if var.requirement == Requirement::Deployed && environment.is_deployed() {
                        problems.push(Problem {
                            variable: var.name.to_owned(),
                            reason: format!("required in {environment}, not set"),
                        });
                    }
                    continue;
                }
            };
            match var.parse(text) {
                Ok(value) => {
                    if var.strong && environment.is_deployed() {
                        let key = value.as_str().unwrap_or(text).to_owned();
                        problems.extend(
                            crate::keys::problems(&key, &keys, environment)
                                .into_iter()
                                .map(|reason| Problem {
                                    variable: var.name.to_owned(),
                                    reason,
                                }),
                        );
                        keys.push((var.name, key));
                    }
                    insert_at(layer, &var.key, value);
                }
                Err(why) if var.secret => problems.push(Problem {
                    variable: var.name.to_owned(),
                    reason: format!("{why} (value not shown: secret)"),
                }),
                Err(why) => problems.push(Problem {
                    variable: var.name.to_owned(),
                    reason: format!("{why}, got {text:?}"),
                }),
            }
        }

        if let Some(prefix) = self.reserved_prefix {
            for name in self.env.0.keys().filter(|k| k.starts_with(prefix)) {
                if !self.vars.iter().any(|v| v.name == name) {
                    problems.push(Problem {
                        variable: name.clone(),
                        reason: format!("unknown variable: no setting is called {name}"),
                    });
                }
            }
        }

        if !problems.is_empty() {
            return Err(ConfigError {
                environment,
                problems,
            });
        }

        let figment = Figment::from(Serialized::defaults(T::default()))
            .merge(Layer::new(DOTENV_NAME, from_dotenv))
            .merge(Layer::new(ENVIRONMENT_NAME, from_env));
        match figment.extract::<T>() {
            Ok(config) => Ok(Loaded {
                config,
                environment,
                figment,
                vars: self.vars.clone(),
            }),
            Err(errors) => Err(ConfigError {
                environment,
                problems: errors
                    .into_iter()
                    .map(|e| {
                        let key = e.path.join(".");
                        let variable = self
                            .vars
                            .iter()
                            .find(|v| v.key == key)
                            .map_or_else(|| key.clone(), |v| v.name.to_owned());
                        Problem {
                            variable,
                            reason: e.kind.to_string(),
                        }
                    })
                    .collect(),
            }),
        }
    }
}

/// Puts `value` at the dotted `key` inside the JSON object `root`.
fn insert_at(root: &mut Value, key: &str, value: Value) {
    let mut node = root;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let Value::Object(map) = node else { return };
        if parts.peek().is_none() {
            map.insert(part.to_owned(), value);
            return;
        }
        node = map
            .entry(part.to_owned())
            .or_insert_with(|| Value::Object(serde_json::Map::new()));
    }
}

/// A figment provider for one layer of parsed variables, named for its source.
struct Layer {
    name: &'static str,
    values: Arc<Value>,
}

impl Layer {
    fn new(name: &'static str, values: Value) -> Self {
        Self {
            name,
            values: Arc::new(values),
        }
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.name)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(self.values.as_ref()).data()
    }
}
