//! [`Var`]: one environment variable, where it lands in the configuration and how
//! its text is checked.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value;

/// Turns a variable's text into a typed value, or says what was expected.
///
/// The message completes the sentence `NAME: <message>, got "<value>"`, so it
/// reads like `expected a whole number of seconds`.
pub type Parser = Arc<dyn Fn(&str) -> Result<Value, String> + Send + Sync>;

/// When a variable must be set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// Never required: the section's default applies.
    Optional,
    /// Required in deployed environments (preview, staging, production);
    /// development and test fall back to the default.
    Deployed,
}

/// One environment variable of a configuration.
///
/// ```
/// use wharf_config::{parse, Var};
/// let var = Var::new("PORT", "server.port", parse::port()).help("TCP port to listen on");
/// assert_eq!(var.name(), "PORT");
/// ```
#[derive(Clone)]
pub struct Var {
    pub(crate) name: &'static str,
    pub(crate) key: String,
    pub(crate) parser: Parser,
    pub(crate) requirement: Requirement,
    pub(crate) secret: bool,
    pub(crate) strong: bool,
    pub(crate) help: &'static str,
}

impl Var {
    /// A variable `name` whose parsed value is stored at the dotted `key`
    /// (e.g. `server.port`). Optional and not secret by default.
    pub fn new(name: &'static str, key: impl Into<String>, parser: Parser) -> Self {
        Self {
            name,
            key: key.into(),
            parser,
            requirement: Requirement::Optional,
            secret: false,
            strong: false,
            help: "",
        }
    }

    /// Marks the variable as required in deployed environments.
    #[must_use]
    pub fn required_when_deployed(mut self) -> Self {
        self.requirement = Requirement::Deployed;
        self
    }

    /// Marks the variable as a secret: its value is never echoed in an error or
    /// in the effective-configuration report.
    #[must_use]
    pub fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    /// Marks the variable as key material: a [secret](Self::secret) that, in
    /// deployed environments (preview, staging, production), must be at least
    /// [`MIN_KEY_BYTES`](crate::MIN_KEY_BYTES) long, differ from every other
    /// such variable, and not be a value that ships with wharf
    /// ([`SHIPPED_SECRETS`](crate::SHIPPED_SECRETS)). The loader lists every
    /// such problem with the others, never the value.
    #[must_use]
    pub fn strong_secret(mut self) -> Self {
        self.secret = true;
        self.strong = true;
        self
    }

    /// A one-line description for `config` output and docs.
    #[must_use]
    pub fn help(mut self, help: &'static str) -> Self {
        self.help = help;
        self
    }

    /// Moves the variable under a section: key `port` becomes `server.port`.
    #[must_use]
    pub fn under(mut self, section: &str) -> Self {
        self.key = format!("{section}.{}", self.key);
        self
    }

    /// The environment variable's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The dotted configuration key it sets.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// When it must be set.
    pub fn requirement(&self) -> Requirement {
        self.requirement
    }

    /// Whether it is a secret.
    pub fn is_secret(&self) -> bool {
        self.secret
    }

    /// Whether it is key material ([`strong_secret`](Self::strong_secret)).
    pub fn is_strong_secret(&self) -> bool {
        self.strong
    }

    /// Its one-line description.
    pub fn description(&self) -> &'static str {
        self.help
    }

    /// Parses a value as this variable would.
    pub fn parse(&self, text: &str) -> Result<Value, String> {
        (self.parser)(text)
    }
}

impl fmt::Debug for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Var")
            .field("name", &self.name)
            .field("key", &self.key)
            .field("requirement", &self.requirement)
            .field("secret", &self.secret)
            .field("strong", &self.strong)
            .finish_non_exhaustive()
    }
}

/// Ready-made [`Parser`]s for the value shapes configuration needs.
pub mod parse {
    use super::{IpAddr, Parser, Value};
    use std::sync::Arc;

    fn parser(f: impl Fn(&str) -> Result<Value, String> + Send + Sync + 'static) -> Parser {
        Arc::new(f)
    }

    fn whole_number(text: &str) -> Option<u64> {
        let text = text.trim();
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`, any case).
    pub fn boolean() -> Parser {
        parser(|text| match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(Value::Bool(true)),
            "false" | "0" | "no" | "off" => Ok(Value::Bool(false)),
            _ => Err("expected true or false".to_owned()),
        })
    }

    /// A TCP port, 1–65535.
    pub fn port() -> Parser {
        parser(|text| match whole_number(text) {
            Some(n @ 1..=65_535) => Ok(Value::from(n)),
            _ => Err("expected a port number between 1 and 65535".to_owned()),
        })
    }

    /// A whole number of seconds, at least `min`.
    pub fn seconds(min: u64) -> Parser {
        parser(move |text| match whole_number(text) {
            Some(n) if n >= min => Ok(Value::from(n)),
            Some(_) => Err(format!("expected at least {min} seconds")),
            None => Err("expected a whole number of seconds".to_owned()),
        })
    }

    /// A whole number in `min..=max`.
    pub fn count(min: u64, max: u64) -> Parser {
        parser(move |text| match whole_number(text) {
            Some(n) if (min..=max).contains(&n) => Ok(Value::from(n)),
            _ => Err(format!("expected a whole number from {min} to {max}")),
        })
    }

    /// A size in bytes, at least `min`: plain bytes (`10485760`) or with a
    /// binary suffix (`16KiB`, `10MiB`, `1GiB`; `K`, `M`, `G` mean the same).
    pub fn bytes(min: u64) -> Parser {
        parser(move |text| {
            let expected =
                || format!("expected a size in bytes of at least {min} (e.g. 10485760 or 10MiB)");
            let trimmed = text.trim();
            let split = trimmed
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(trimmed.len());
            let (digits, unit) = trimmed.split_at(split);
            let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
                "" | "b" => 1,
                "k" | "kb" | "kib" => 1 << 10,
                "m" | "mb" | "mib" => 1 << 20,
                "g" | "gb" | "gib" => 1 << 30,
                _ => return Err(expected()),
            };
            match whole_number(digits).and_then(|n| n.checked_mul(multiplier)) {
                Some(n) if n >= min => Ok(Value::from(n)),
                _ => Err(expected()),
            }
        })
    }

    /// Any text that is not blank.
    pub fn text() -> Parser {
        parser(|text| {
            if text.trim().is_empty() {
                Err("expected a value that is not blank".to_owned())
            } else {
                Ok(Value::from(text.trim()))
            }
        })
    }

    /// A URL whose scheme is one of `schemes` (e.g. `["http", "https"]`), with a host.
    pub fn url(schemes: &'static [&'static str]) -> Parser {
        parser(move |text| {
            let text = text.trim();
            let ok = text.split_once("://").is_some_and(|(scheme, rest)| {
                schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme))
                    && !rest.is_empty()
                    && !rest.starts_with('/')
                    && !rest.contains(char::is_whitespace)
            });
            if ok {
                Ok(Value::from(text))
            } else {
                let list = schemes
                    .iter()
                    .map(|s| format!("{s}://"))
                    .collect::<Vec<_>>()
                    .join(" or ");
                Err(format!("expected a {list} URL with a host"))
            }
        })
    }

    /// One of a fixed set of words (any case); the value stored is the listed spelling.
    pub fn one_of(choices: &'static [&'static str]) -> Parser {
        parser(move |text| {
            choices
                .iter()
                .find(|c| c.eq_ignore_ascii_case(text.trim()))
                .map(|c| Value::from(*c))
                .ok_or_else(|| format!("expected one of {}", choices.join(", ")))
        })
    }

    /// An IPv4 or IPv6 address.
    pub fn ip_addr() -> Parser {
        parser(|text| {
            text.trim()
                .parse::<IpAddr>()
                .map(|ip| Value::from(ip.to_string()))
                .map_err(|_| "expected an IP address such as 0.0.0.0 or ::".to_owned())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::parse;
    use serde_json::json;

    #[test]
    fn seconds_accepts_whole_numbers_only() {
        let p = parse::seconds(1);
        assert_eq!(p("30").unwrap(), json!(30));
        assert_eq!(p(" 5 ").unwrap(), json!(5));
        assert_eq!(p("3o").unwrap_err(), "expected a whole number of seconds");
        assert_eq!(p("-1").unwrap_err(), "expected a whole number of seconds");
        assert_eq!(p("1.5").unwrap_err(), "expected a whole number of seconds");
        assert_eq!(p("0").unwrap_err(), "expected at least 1 seconds");
    }

    #[test]
    fn bytes_understands_suffixes() {
        let p = parse::bytes(1);
        assert_eq!(p("10MiB").unwrap(), json!(10 * 1024 * 1024));
        assert_eq!(p("16k").unwrap(), json!(16 * 1024));
        assert_eq!(p("1024").unwrap(), json!(1024));
        assert!(p("ten").is_err());
        assert!(p("10TB").is_err());
        assert!(p("99999999999999999999G").is_err());
    }

    #[test]
    fn port_boolean_url_choice_ip() {
        assert_eq!(parse::port()("7001").unwrap(), json!(7001));
        assert!(parse::port()("0").is_err());
        assert!(parse::port()("70000").is_err());
        assert_eq!(parse::boolean()("TRUE").unwrap(), json!(true));
        assert_eq!(parse::boolean()("0").unwrap(), json!(false));
        assert!(parse::boolean()("maybe").is_err());
        let url = parse::url(&["http", "https"]);
        assert!(url("https://api.example").is_ok());
        assert_eq!(
            url("api.example").unwrap_err(),
            "expected a http:// or https:// URL with a host"
        );
        assert!(url("ftp://x").is_err());
        assert!(url("http://").is_err());
        assert_eq!(
            parse::one_of(&["json", "pretty"])("JSON").unwrap(),
            json!("json")
        );
        assert!(parse::ip_addr()("::1").is_ok());
        assert!(parse::ip_addr()("localhost").is_err());
        assert!(parse::text()("  ").is_err());
    }
}
