//! edge's TOML configuration parser (wharf-edge): never panics; an error's
//! line is a line of the file; durations and sizes follow their grammar
//! without overflow; `set_real_ip_from` entries that parse are networks that
//! print back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The parser's properties, asserted inside the library.
    wharf_edge::fuzz_config(text);
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
    let got = wharf_edge::parse_duration(text).ok().map(|d| {
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
        wharf_edge::parse_size(text).ok(),
        n.zip(factor).and_then(|(n, f)| n.checked_mul(f))
    );
});
