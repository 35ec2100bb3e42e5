//! Property tests of edge's configuration parser (docs/reliability.md,
//! "Fuzzing and property tests"): it never panics, a mistake's line is a
//! line of the file, durations and sizes follow their grammar without
//! overflowing, and a file written from known values reads back as them.

use std::fmt::Write as _;
use std::time::Duration;

use proptest::prelude::*;

use super::{parse, parse_duration, parse_size};

const DURATION_UNITS: [(&str, u64); 7] = [
    ("s", 1),
    ("m", 60),
    ("h", 3600),
    ("d", 86_400),
    ("w", 7 * 86_400),
    ("M", 30 * 86_400),
    ("y", 365 * 86_400),
];
const SIZE_UNITS: [(&str, u64); 7] = [
    ("", 1),
    ("k", 1 << 10),
    ("K", 1 << 10),
    ("m", 1 << 20),
    ("M", 1 << 20),
    ("g", 1 << 30),
    ("G", 1 << 30),
];

/// Model of `digits unit?` after trimming; `Err(())` for anything else,
/// including a value past u64.
fn model_duration(text: &str) -> Result<Duration, ()> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| ())?;
    if unit == "ms" {
        return Ok(Duration::from_millis(n));
    }
    let unit = if unit.is_empty() { "s" } else { unit };
    let (_, factor) = DURATION_UNITS.iter().find(|(u, _)| *u == unit).ok_or(())?;
    n.checked_mul(*factor).map(Duration::from_secs).ok_or(())
}

fn model_size(text: &str) -> Result<u64, ()> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits.parse().map_err(|_| ())?;
    let (_, factor) = SIZE_UNITS.iter().find(|(u, _)| *u == unit).ok_or(())?;
    n.checked_mul(*factor).ok_or(())
}

fn unit_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        (any::<u64>(), "(ms|s|m|h|d|w|M|y|k|K|g|G|x|S|mb|)").prop_map(|(n, u)| format!("{n}{u}")),
        ((0u64..1_000_000), "(ms|s|m|h|d|w|M|y|k|K|g|G|)").prop_map(|(n, u)| format!("{n}{u}")),
        "[ ]?[+-]?[0-9]{0,22}[ ]?[a-zA-Z]{0,2}[ ]?",
        ".{0,12}",
    ]
}

/// Pieces of edge configuration files, to assemble into near-valid ones.
fn toml_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "[http]",
            "[tls]",
            "[proxy]",
            "[admin]",
            "[[listen]]",
            "[[upstream]]",
            "[[upstream.servers]]",
            "[[server]]",
            "[[server.location]]",
            "[[limit_req]]",
            "[server.location.return]",
            "address = \"127.0.0.1:8080\"",
            "ssl = true",
            "proxy_protocol = true",
            "name = \"app\"",
            "path = \"/\"",
            "proxy_pass = \"app\"",
            "set_real_ip_from = [\"10.0.0.0/8\", \"::1\"]",
            "zone = \"api\"",
            "rate = \"10r/s\"",
            "key = \"header:X-Key\"",
            "burst = 20",
            "nodelay = true",
            "limit_req_status = 503",
            "ssl_certificate = [\"a.pem\", \"b.pem\"]",
            "server_name = [\"*.example.com\"]",
            "add_header = { X-A = \"1\" }",
            "balance = \"least_conn\"",
            "weight = 3",
            "status = 301",
            "health_check = { path = \"/h\", interval = \"1s\" }",
            "=",
            "[",
            "\"",
        ])
        .prop_map(str::to_owned),
        (
            prop::sample::select(vec![
                "client_max_body_size",
                "max_header_size",
                "client_header_timeout",
                "keepalive_timeout",
                "handshake_timeout",
                "read_timeout",
                "fail_timeout",
                "expires",
                "gzip_min_length",
                "worker_connections",
                "https_port",
            ]),
            unit_text(),
            any::<bool>(),
        )
            .prop_map(|(key, value, quoted)| {
                if quoted {
                    format!("{key} = {value:?}")
                } else {
                    format!("{key} = {value}")
                }
            }),
        "[a-z_]{1,10} = [0-9a-z\"]{0,6}",
    ]
}

/// Known values of the `[http]` section and a `[[limit_req]]` zone.
#[derive(Debug, Clone)]
struct Known {
    body: (u64, usize),
    header_timeout: (u64, usize),
    keepalive: (u64, usize),
    nets: Vec<String>,
    rate: u32,
    per_minute: bool,
    burst: u32,
    key: &'static str,
}

fn known() -> impl Strategy<Value = Known> {
    (
        (0u64..1 << 20, 0..SIZE_UNITS.len()),
        (0u64..1 << 20, 0..DURATION_UNITS.len()),
        (0u64..1 << 20, 0..DURATION_UNITS.len()),
        prop::collection::vec(
            (any::<[u8; 4]>(), 0u8..=32)
                .prop_map(|(o, p)| format!("{}/{p}", std::net::Ipv4Addr::from(o))),
            0..3,
        ),
        1u32..1_000_000,
        any::<bool>(),
        any::<u32>(),
        prop::sample::select(vec!["client_ip", "route", "global", "header:x-api-key"]),
    )
        .prop_map(
            |(body, header_timeout, keepalive, nets, rate, per_minute, burst, key)| Known {
                body,
                header_timeout,
                keepalive,
                nets,
                rate,
                per_minute,
                burst,
                key,
            },
        )
}

fn render(k: &Known, comments: bool) -> String {
    let mut text = String::new();
    let comment = if comments { " # a comment" } else { "" };
    writeln!(text, "[http]{comment}").unwrap();
    writeln!(
        text,
        "client_max_body_size = \"{}{}\"",
        k.body.0, SIZE_UNITS[k.body.1].0
    )
    .unwrap();
    writeln!(
        text,
        "client_header_timeout = \"{}{}\"",
        k.header_timeout.0, DURATION_UNITS[k.header_timeout.1].0
    )
    .unwrap();
    writeln!(text, "keepalive_timeout = {}{comment}", k.keepalive.0).unwrap();
    writeln!(text, "set_real_ip_from = {:?}", k.nets).unwrap();
    writeln!(text, "\n[[limit_req]]").unwrap();
    writeln!(text, "zone = \"z\"").unwrap();
    writeln!(
        text,
        "rate = \"{}r/{}\"",
        k.rate,
        if k.per_minute { "m" } else { "s" }
    )
    .unwrap();
    writeln!(text, "burst = {}", k.burst).unwrap();
    writeln!(text, "key = \"{}\"", k.key).unwrap();
    text
}

proptest! {
    #[test]
    fn durations_follow_the_grammar(text in unit_text()) {
        prop_assert_eq!(parse_duration(&text).ok(), model_duration(&text).ok());
    }

    #[test]
    fn sizes_follow_the_grammar(text in unit_text()) {
        prop_assert_eq!(parse_size(&text).ok(), model_size(&text).ok());
    }

    #[test]
    fn durations_and_sizes_round_trip(n in any::<u64>(), d in 0..DURATION_UNITS.len(), s in 0..SIZE_UNITS.len()) {
        let (unit, factor) = DURATION_UNITS[d];
        prop_assert_eq!(
            parse_duration(&format!("{n}{unit}")).ok(),
            n.checked_mul(factor).map(Duration::from_secs)
        );
        prop_assert_eq!(parse_duration(&format!("{n}ms")).ok(), Some(Duration::from_millis(n)));
        let (unit, factor) = SIZE_UNITS[s];
        prop_assert_eq!(parse_size(&format!("{n}{unit}")).ok(), n.checked_mul(factor));
    }

    /// Any text: no panic, and an error's line is a line of the text.
    #[test]
    fn any_file_parses_or_names_a_line(text in prop_oneof![
        ".{0,200}",
        prop::collection::vec(toml_piece(), 0..12).prop_map(|lines| lines.join("\n")),
    ]) {
        let lines = text.matches('\n').count() + 1;
        if let Err(e) = parse(None, text.clone()) {
            prop_assert!(e.line.is_none_or(|l| (1..=lines).contains(&l)), "{e} in {text:?}");
        }
    }

    /// A file written from known values reads back as them.
    #[test]
    fn a_written_file_reads_back(k in known(), comments in any::<bool>()) {
        let text = render(&k, comments);
        let (config, _) = parse(None, text.clone()).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(config.http.client_max_body_size, k.body.0 * SIZE_UNITS[k.body.1].1);
        prop_assert_eq!(
            config.http.client_header_timeout,
            Duration::from_secs(k.header_timeout.0 * DURATION_UNITS[k.header_timeout.1].1)
        );
        prop_assert_eq!(config.http.keepalive_timeout, Duration::from_secs(k.keepalive.0));
        let nets: Vec<&str> = config.http.set_real_ip_from.iter().map(|n| n.get_ref().as_str()).collect();
        prop_assert_eq!(nets, k.nets.iter().map(String::as_str).collect::<Vec<_>>());
        for net in &config.http.set_real_ip_from {
            prop_assert!(net.get_ref().parse::<wharf_http::IpNet>().is_ok());
        }
        let zone = &config.limit_req[0];
        prop_assert_eq!(zone.rate.requests(), k.rate);
        prop_assert_eq!(zone.burst, k.burst);
        prop_assert_eq!(String::from(zone.key.clone()), k.key);
    }

    /// A misspelt key is an error on its own line.
    #[test]
    fn an_unknown_key_is_named_on_its_line(k in known(), at in any::<prop::sample::Index>(), key in "[a-z]{3,8}_typo") {
        let text = render(&k, false);
        let mut lines: Vec<&str> = text.lines().collect();
        // After a line inside a table (not before the first header).
        let i = 1 + at.index(lines.len() - 1);
        let typo = format!("{key} = 1");
        lines.insert(i, &typo);
        let text = lines.join("\n");
        let err = parse(None, text.clone()).map(|_| ()).unwrap_err();
        prop_assert!(err.message.contains(&key), "{err}");
        prop_assert_eq!(err.line, Some(i + 1), "{}\n{}", err, text);
    }
}
