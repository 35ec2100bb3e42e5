//! wharf-config's value parsers and the loader: never panic; each parser
//! accepts exactly its grammar (checked against a small model) and what it
//! accepts reads back; the loader loads exactly when every parser accepts.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use wharf_config::{
    parse, EnvMap, Environment, Loader, LogSection, RedisSection, ServerSection, Var,
};

/// `Some(n)` when the trimmed text is all ASCII digits (`Some(None)` past u64).
fn number(text: &str) -> Option<Option<u64>> {
    let t = text.trim();
    (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())).then(|| t.parse().ok())
}

fn values(text: &str) {
    let n = number(text).flatten();
    assert_eq!(
        parse::boolean()(text).ok(),
        match text.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Some(Value::Bool(true)),
            "false" | "0" | "no" | "off" => Some(Value::Bool(false)),
            _ => None,
        }
    );
    assert_eq!(
        parse::port()(text).ok(),
        n.filter(|p| (1..=65_535).contains(p)).map(Value::from)
    );
    assert_eq!(
        parse::seconds(1)(text).ok(),
        n.filter(|s| *s >= 1).map(Value::from)
    );
    assert_eq!(
        parse::count(1, 1_000_000)(text).ok(),
        n.filter(|c| (1..=1_000_000).contains(c)).map(Value::from)
    );
    // bytes: digits, optional space, optional unit; the product fits in u64.
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let multiplier: Option<u64> = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => Some(1),
        "k" | "kb" | "kib" => Some(1 << 10),
        "m" | "mb" | "mib" => Some(1 << 20),
        "g" | "gb" | "gib" => Some(1 << 30),
        _ => None,
    };
    let want = match (number(digits).flatten(), multiplier) {
        (Some(n), Some(m)) => n.checked_mul(m).filter(|v| *v >= 8192),
        _ => None,
    };
    assert_eq!(parse::bytes(8192)(text).ok(), want.map(Value::from));
    assert_eq!(
        parse::text()(text).ok(),
        (!t.is_empty()).then(|| Value::from(t))
    );
    let url_ok = t.split_once("://").is_some_and(|(scheme, rest)| {
        ["redis", "rediss"]
            .iter()
            .any(|s| s.eq_ignore_ascii_case(scheme))
            && !rest.is_empty()
            && !rest.starts_with('/')
            && !rest.chars().any(char::is_whitespace)
    });
    assert_eq!(parse::url(&["redis", "rediss"])(text).is_ok(), url_ok);
    assert_eq!(
        parse::one_of(&["auto", "json", "pretty"])(text).ok(),
        ["auto", "json", "pretty"]
            .iter()
            .find(|c| c.eq_ignore_ascii_case(t))
            .map(|c| Value::from(*c))
    );
    match parse::ip_addr()(text) {
        Ok(Value::String(ip)) => {
            let parsed: IpAddr = ip.parse().expect("stored as an address");
            assert_eq!(t.parse::<IpAddr>().ok(), Some(parsed));
        }
        Ok(other) => panic!("not a string: {other}"),
        Err(_) => assert!(t.parse::<IpAddr>().is_err()),
    }
    match text.parse::<Environment>() {
        Ok(env) => assert!(env.as_str().eq_ignore_ascii_case(t)),
        Err(_) => assert!(Environment::ALL
            .iter()
            .all(|e| !e.as_str().eq_ignore_ascii_case(t))),
    }
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct Config {
    server: ServerSection,
    redis: RedisSection,
    log: LogSection,
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    values(text);

    // The loader: one line per variable, in order.
    let mut vars = ServerSection::vars("server");
    vars.extend(RedisSection::vars("redis"));
    vars.extend(LogSection::vars("log"));
    let lines: Vec<&str> = text.split('\n').collect();
    let pairs: Vec<(&str, &str)> = vars
        .iter()
        .map(Var::name)
        .zip(lines.iter().copied())
        .collect();
    let rejected: Vec<&str> = vars
        .iter()
        .zip(&lines)
        .filter(|(var, value)| !value.is_empty() && var.parse(value).is_err())
        .map(|(var, _)| var.name())
        .collect();
    match Loader::new(vars.clone())
        .env(EnvMap::from_pairs(pairs))
        .dotenv(None)
        .load::<Config>()
    {
        Ok(_) => assert!(rejected.is_empty(), "{rejected:?}"),
        Err(err) => {
            let named: Vec<&str> = err.problems.iter().map(|p| p.variable.as_str()).collect();
            assert_eq!(named, rejected, "{err}");
        }
    }
});
