//! edge's TOML configuration parser (bins/edge/config.rs, compiled here as
//! it is): never panics; an error's line is a line of the file; durations and
//! sizes follow their grammar without overflow; `set_real_ip_from` entries
//! that parse are networks that print back.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The binary's own module, unchanged: a fuzz crate cannot depend on a binary.
#[allow(dead_code, unused_imports, unreachable_pub)]
#[path = "../../bins/edge/config.rs"]
mod config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
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
    // The value grammars on the raw text: digits then a unit; no overflow.
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n = digits.parse::<u64>().ok();
    let factor = match unit {
        "" | "s" => Some(1),
        "m" => Some(60),
        "h" => Some(3600),
        "d" => Some(86_400),
        "w" => Some(7 * 86_400),
        "M" => Some(30 * 86_400),
        "y" => Some(365 * 86_400),
        _ => None,
    };
    // Milliseconds for `ms`, else seconds; `None` past u64 or off the grammar.
    let want = if unit == "ms" {
        n.map(u128::from)
    } else {
        n.zip(factor)
            .and_then(|(n, f)| n.checked_mul(f))
            .map(u128::from)
    };
    let got = config::parse_duration(text).ok().map(|d| {
        if unit == "ms" {
            d.as_millis()
        } else {
            u128::from(d.as_secs())
        }
    });
    assert_eq!(got, want, "{text:?}");
    let factor = match unit {
        "" => Some(1),
        "k" | "K" => Some(1 << 10),
        "m" | "M" => Some(1 << 20),
        "g" | "G" => Some(1 << 30),
        _ => None,
    };
    assert_eq!(
        config::parse_size(text).ok(),
        n.zip(factor).and_then(|(n, f)| n.checked_mul(f))
    );
});
