//! Property tests of wharf-config's value parsers and of the loader built on
//! them, each against a small reference model of the documented grammar
//! (docs/reliability.md, "Fuzzing and property tests").

// Test code: a failed unwrap is a failed test with a line number.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use wharf_config::{
    parse, EnvMap, Environment, Loader, LogSection, Parser, RedisSection, Secret, ServerSection,
    Var,
};

/// Model of the digits rule: text (after trimming) is one or more ASCII
/// digits, read as a number; `None` for anything else or past u64.
fn model_number(text: &str) -> Option<u64> {
    let t = text.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// Texts near the grammars: numbers with units, spaces and signs, words, and anything.
fn value_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        (0u64..100_000).prop_map(|n| n.to_string()),
        "[ \t]{0,2}[+-]?[0-9]{0,25}[ \t]{0,2}[a-zA-Z]{0,4}[ \t]{0,2}",
        "[a-zA-Z0-9:/.@_-]{0,30}",
        prop::sample::select(vec![
            "true",
            "FALSE",
            "Yes",
            "no",
            "on",
            "OFF",
            "1",
            "0",
            "maybe",
            "",
            " ",
            "json",
            "Pretty",
            "auto",
            "redis://h",
            "rediss://h:6380/0",
            "unix://x",
            "redis://",
            "http://h",
        ])
        .prop_map(str::to_owned),
        ".{0,40}",
    ]
}

fn run(p: &Parser, text: &str) -> Result<Value, String> {
    p(text)
}

proptest! {
    #[test]
    fn boolean_accepts_exactly_the_listed_words(text in value_text(), word in prop::sample::select(vec!["true", "1", "yes", "on", "false", "0", "no", "off"]), upper in any::<bool>(), pad in "[ \t]{0,2}") {
        let got = run(&parse::boolean(), &text);
        let want = match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(true),
            "false" | "0" | "no" | "off" => Some(false),
            _ => None,
        };
        prop_assert_eq!(got.ok(), want.map(Value::Bool));
        let written = if upper { word.to_ascii_uppercase() } else { word.to_owned() };
        let value = run(&parse::boolean(), &format!("{pad}{written}{pad}")).unwrap();
        prop_assert_eq!(value, json!(matches!(word, "true" | "1" | "yes" | "on")));
    }

    #[test]
    fn port_accepts_exactly_1_to_65535(text in value_text(), n in 1u16..) {
        let want = model_number(&text).filter(|n| (1..=65_535).contains(n));
        prop_assert_eq!(run(&parse::port(), &text).ok(), want.map(Value::from));
        prop_assert_eq!(run(&parse::port(), &n.to_string()).unwrap(), json!(n));
    }

    #[test]
    fn seconds_and_count_accept_exactly_whole_numbers_in_range(text in value_text(), min in 0u64..100, span in 0u64..100_000) {
        let n = model_number(&text);
        prop_assert_eq!(
            run(&parse::seconds(min), &text).ok(),
            n.filter(|n| *n >= min).map(Value::from)
        );
        let max = min + span;
        prop_assert_eq!(
            run(&parse::count(min, max), &text).ok(),
            n.filter(|n| (min..=max).contains(n)).map(Value::from)
        );
    }

    /// `bytes`: digits, optional white space, an optional unit from the list
    /// (any case); the product must fit in a u64 and be at least `min`.
    #[test]
    fn bytes_matches_the_model(text in value_text(), min in prop_oneof![Just(0u64), Just(8192), 0u64..1_000_000]) {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let multiplier: Option<u64> = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => Some(1),
            "k" | "kb" | "kib" => Some(1024),
            "m" | "mb" | "mib" => Some(1024 * 1024),
            "g" | "gb" | "gib" => Some(1024 * 1024 * 1024),
            _ => None,
        };
        let want = match (model_number(digits), multiplier) {
            (Some(n), Some(m)) => n.checked_mul(m).filter(|v| *v >= min),
            _ => None,
        };
        prop_assert_eq!(run(&parse::bytes(min), &text).ok(), want.map(Value::from));
    }

    /// Round trip: a size written with any spelling of its unit parses back to
    /// the product.
    #[test]
    fn bytes_round_trips_every_unit(n in 0u64..(1 << 33), unit in prop::sample::select(vec![
        ("", 1u64), ("b", 1), ("B", 1), ("k", 1 << 10), ("K", 1 << 10), ("KiB", 1 << 10), ("kb", 1 << 10),
        ("M", 1 << 20), ("MiB", 1 << 20), ("mb", 1 << 20), ("G", 1 << 30), ("GiB", 1 << 30), ("gb", 1 << 30),
    ]), space in "[ ]{0,1}") {
        let (suffix, multiplier) = unit;
        let text = format!("{n}{space}{suffix}");
        prop_assert_eq!(run(&parse::bytes(0), &text).ok(), n.checked_mul(multiplier).map(Value::from));
    }

    #[test]
    fn text_is_anything_not_blank_trimmed(text in value_text()) {
        let want = (!text.trim().is_empty()).then(|| Value::from(text.trim()));
        prop_assert_eq!(run(&parse::text(), &text).ok(), want);
    }

    /// `url`: `scheme://rest`, scheme from the list (any case), `rest` not
    /// empty, not starting with `/`, without white space.
    #[test]
    fn url_matches_the_model(text in value_text(), scheme in prop::sample::select(vec!["redis", "REDIS", "rediss", "unix", "http", "ftp"]), rest in "[a-z0-9:/@. ]{0,12}") {
        let schemes: &'static [&'static str] = &["redis", "rediss", "unix"];
        let model = |text: &str| {
            let t = text.trim();
            let ok = t.split_once("://").is_some_and(|(s, rest)| {
                schemes.iter().any(|x| x.eq_ignore_ascii_case(s))
                    && !rest.is_empty()
                    && !rest.starts_with('/')
                    && !rest.chars().any(char::is_whitespace)
            });
            ok.then(|| Value::from(t))
        };
        let url = parse::url(schemes);
        prop_assert_eq!(run(&url, &text).ok(), model(&text));
        let built = format!("{scheme}://{rest}");
        prop_assert_eq!(run(&url, &built).ok(), model(&built));
    }

    #[test]
    fn one_of_gives_the_listed_spelling(text in value_text()) {
        let choices: &'static [&'static str] = &["auto", "json", "pretty", "x-forwarded-for"];
        let want = choices.iter().find(|c| c.eq_ignore_ascii_case(text.trim())).map(|c| Value::from(*c));
        prop_assert_eq!(run(&parse::one_of(choices), &text).ok(), want);
    }

    #[test]
    fn ip_addr_round_trips(ip in any::<IpAddr>(), text in value_text(), pad in "[ \t]{0,2}") {
        let p = parse::ip_addr();
        prop_assert_eq!(run(&p, &format!("{pad}{ip}{pad}")).unwrap(), json!(ip.to_string()));
        let want = text.trim().parse::<IpAddr>().ok().map(|ip| Value::from(ip.to_string()));
        prop_assert_eq!(run(&p, &text).ok(), want);
    }

    #[test]
    fn environment_names_parse_in_any_case_and_nothing_else_does(text in value_text(), pick in 0usize..5, flips in any::<u64>()) {
        let want = Environment::ALL.into_iter().find(|e| e.as_str().eq_ignore_ascii_case(text.trim()));
        prop_assert_eq!(text.parse::<Environment>().ok(), want);
        let env = Environment::ALL[pick];
        let mixed: String = env.as_str().chars().enumerate().map(|(i, c)| {
            if (flips >> (i % 64)) & 1 == 1 { c.to_ascii_uppercase() } else { c }
        }).collect();
        prop_assert_eq!(mixed.parse::<Environment>(), Ok(env));
        prop_assert_eq!(env.to_string().parse::<Environment>(), Ok(env));
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    server: ServerSection,
    redis: RedisSection,
    log: LogSection,
    secret_key: Option<Secret<String>>,
}

fn vars() -> Vec<Var> {
    let mut vars = ServerSection::vars("server");
    vars.extend(RedisSection::vars("redis"));
    vars.extend(LogSection::vars("log"));
    vars.push(Var::new("SECRET_KEY", "secret_key", parse::text()).secret());
    vars
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// The loader: whatever the variables hold, it never panics; it loads
    /// exactly when every set variable's parser accepts its value (so no
    /// parser accepts a value its field cannot hold); a failure names every
    /// rejected variable; a secret's value never appears in an error.
    #[test]
    fn the_loader_loads_exactly_when_every_parser_accepts(
        values in prop::collection::vec(proptest::option::of(value_text()), 14),
        secret in "[a-z]{0,6}",
    ) {
        let vars = vars();
        let mut pairs: Vec<(String, String)> = vars
            .iter()
            .zip(&values)
            .filter_map(|(var, value)| value.clone().map(|v| (var.name().to_owned(), v)))
            .collect();
        // Secrets carry a marker that must never reach an error message.
        for (name, value) in &mut pairs {
            if vars.iter().any(|v| v.name() == name && v.is_secret()) {
                *value = format!("{value} S3CR3T-{secret}");
            }
        }
        let rejected: Vec<&str> = vars
            .iter()
            .filter(|var| {
                pairs.iter().any(|(name, value)| {
                    name == var.name() && !value.is_empty() && var.parse(value).is_err()
                })
            })
            .map(Var::name)
            .collect();
        let loaded = Loader::new(vars.clone())
            .env(EnvMap::from_pairs(pairs.clone()))
            .dotenv(None)
            .load::<Config>();
        match loaded {
            Ok(_) => prop_assert!(rejected.is_empty(), "loaded although {rejected:?} were rejected"),
            Err(err) => {
                let named: Vec<&str> = err.problems.iter().map(|p| p.variable.as_str()).collect();
                prop_assert_eq!(&named, &rejected, "{}", err);
                prop_assert!(!err.to_string().contains("S3CR3T-"), "{}", err);
            }
        }
    }
}
