//! Email address rules: the same checks as Notify's validator
//! (`notifications_utils.recipient_validation.email_address`), re-expressed
//! without regular expressions, plus the whitespace handling of its form.
//!
//! Checked against notifications-utils 120.1.0
//! (6c3744d9b7eb1c7554833737cceb2d25f2944824, the commit Document Download
//! Frontend's `requirements.txt` pins): `notifications_utils/formatters.py`
//! and `notifications_utils/recipient_validation/email_address.py`.

/// `OBSCURE_ZERO_WIDTH_WHITESPACE`: removed from anywhere in an address (they
/// arrive by copy and paste).
const OBSCURE_ZERO_WIDTH_WHITESPACE: &[char] = &[
    '\u{180E}', // Mongolian vowel separator
    '\u{200B}', // zero width space
    '\u{200C}', // zero width non-joiner
    '\u{200D}', // zero width joiner
    '\u{2060}', // word joiner
    '\u{FEFF}', // zero width no-break space
    '\u{2028}', // line separator
    '\u{2029}', // paragraph separator
];

/// `OBSCURE_FULL_WIDTH_WHITESPACE`: also removed from anywhere.
const OBSCURE_FULL_WIDTH_WHITESPACE: &[char] = &[
    '\u{00A0}', // no-break space
    '\u{202F}', // narrow no-break space
];

/// Python's `string.whitespace`.
fn is_ascii_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

fn is_obscure_whitespace(c: char) -> bool {
    OBSCURE_ZERO_WIDTH_WHITESPACE.contains(&c) || OBSCURE_FULL_WIDTH_WHITESPACE.contains(&c)
}

/// `ALL_WHITESPACE`: `string.whitespace` and both obscure lists.
fn is_all_whitespace(c: char) -> bool {
    is_ascii_space(c) || is_obscure_whitespace(c)
}

/// Python's `str.isspace()`: what `\s` matches in a `str` pattern and what
/// `str.strip()` removes (Unicode category Zs or bidirectional class WS, B or
/// S). Unlike `char::is_whitespace` (Unicode `White_Space`) it includes the
/// information separators U+001C to U+001F.
pub(crate) fn is_python_space(c: char) -> bool {
    matches!(
        c,
        '\t'..='\r'
            | '\x1c'..='\x1f'
            | ' '
            | '\u{0085}'
            | '\u{00A0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200A}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202F}'
            | '\u{205F}'
            | '\u{3000}'
    )
}

/// The form's filter (`strip_all_whitespace`): strips `ALL_WHITESPACE` from
/// both ends, nothing from the middle.
pub(crate) fn strip_all_whitespace(value: &str) -> &str {
    value.trim_matches(is_all_whitespace)
}

/// `strip_and_remove_obscure_whitespace`: both obscure lists removed
/// everywhere, then `string.whitespace` stripped from both ends.
fn strip_and_remove_obscure_whitespace(value: &str) -> String {
    let removed: String = value
        .chars()
        .filter(|&c| !is_obscure_whitespace(c))
        .collect();
    removed.trim_matches(is_ascii_space).to_owned()
}

fn is_local_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || ".!#$%&'*+/=?^_`{|}~-".contains(c)
}

/// `re.match(r"^[local chars]+@([^.@][^@\s]+)$", address)`: the hostname
/// (group 1) when `address` has that shape. As in Python, `\s` is
/// [`is_python_space`] and `$` also matches before a final newline.
pub(crate) fn email_shape(address: &str) -> Option<&str> {
    let address = address.strip_suffix('\n').unwrap_or(address);
    let (local, hostname) = address.split_once('@')?;
    if local.is_empty() || !local.chars().all(is_local_char) {
        return None;
    }
    let mut chars = hostname.chars();
    let first = chars.next()?;
    let rest = chars.as_str();
    if matches!(first, '.' | '@')
        || rest.is_empty()
        || rest.contains(|c| c == '@' || is_python_space(c))
    {
        return None;
    }
    Some(hostname)
}

/// Whether `address` is one Notify accepts.
///
/// ```
/// # use wharf_download::is_valid_email_address;
/// assert!(is_valid_email_address("test@example.gov.uk"));
/// assert!(is_valid_email_address("  firstname-o'surname@domain.com "));
/// assert!(!is_valid_email_address("fake address"));
/// assert!(!is_valid_email_address("a..b@example.com"));
/// ```
pub fn is_valid_email_address(address: &str) -> bool {
    let address = strip_and_remove_obscure_whitespace(address);
    let Some(hostname) = email_shape(&address) else {
        return false;
    };
    if address.chars().count() > 320 || address.contains("..") {
        return false;
    }
    let Some(hostname) = idna_to_ascii(hostname) else {
        return false;
    };
    let parts: Vec<&str> = hostname.split('.').collect();
    if hostname.len() > 253 || parts.len() < 2 {
        return false;
    }
    if !parts
        .iter()
        .all(|part| !part.is_empty() && part.len() <= 63 && is_hostname_part(part))
    {
        return false;
    }
    parts.last().is_some_and(|tld| is_tld(tld))
}

/// `^(xn|[a-z0-9]+)(-?-[a-z0-9]+)*$`: alphanumeric runs joined by one or two hyphens.
fn is_hostname_part(part: &str) -> bool {
    let bytes = part.as_bytes();
    if !bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        || !bytes.last().is_some_and(u8::is_ascii_alphanumeric)
    {
        return false;
    }
    bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && !part.contains("---")
}

/// `^([a-z]{2,63}|xn--([a-z0-9]+-)*[a-z0-9]+)$`.
fn is_tld(tld: &str) -> bool {
    if (2..=63).contains(&tld.len()) && tld.bytes().all(|b| b.is_ascii_alphabetic()) {
        return true;
    }
    let Some(rest) = tld
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("xn--"))
        .map(|_| &tld[4..])
    else {
        return false;
    };
    !rest.is_empty()
        && rest
            .split('-')
            .all(|run| !run.is_empty() && run.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Python's `str.encode("idna")` for a hostname, close enough for validation:
/// ASCII labels pass through (each must be 1–63 characters, a trailing empty
/// label allowed); others go through [`nameprep`] and, unless that leaves
/// them ASCII, are Punycode-encoded with `xn--`.
fn idna_to_ascii(hostname: &str) -> Option<String> {
    let labels: Vec<&str> = hostname
        .split(['.', '\u{3002}', '\u{FF0E}', '\u{FF61}'])
        .collect();
    let mut out = Vec::with_capacity(labels.len());
    let count = labels.len();
    for (i, label) in labels.into_iter().enumerate() {
        if label.is_empty() {
            if i + 1 == count && i > 0 {
                out.push(String::new());
                continue;
            }
            return None;
        }
        let ascii = if label.is_ascii() {
            label.to_owned()
        } else {
            let prepared = nameprep(label)?;
            if prepared.is_ascii() {
                prepared
            } else if prepared.starts_with("xn--") {
                return None;
            } else {
                format!("xn--{}", punycode_encode(&prepared)?)
            }
        };
        if ascii.is_empty() || ascii.len() > 63 {
            return None;
        }
        out.push(ascii);
    }
    Some(out.join("."))
}

/// RFC 3491 nameprep as `encodings.idna.nameprep` does it, in part: table B.1
/// characters are removed, the rest lower-cased (B.2 case folding, roughly),
/// and a label with a prohibited character refused. Not done: NFKC (so a
/// compatibility character is never turned into ASCII punctuation or a dot)
/// and the bidirectional check (a label mixing right-to-left and
/// left-to-right letters is accepted).
fn nameprep(label: &str) -> Option<String> {
    let mapped = label
        .chars()
        .filter(|&c| !is_mapped_to_nothing(c))
        .collect::<String>()
        .to_lowercase();
    (!mapped.chars().any(is_nameprep_prohibited)).then_some(mapped)
}

/// RFC 3454 table B.1, "commonly mapped to nothing".
fn is_mapped_to_nothing(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{1806}'
            | '\u{180B}'..='\u{180D}'
            | '\u{200B}'..='\u{200D}'
            | '\u{2060}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
    )
}

/// RFC 3454 tables C.1.2, C.2.2, C.3, C.4, C.6, C.7, C.8 and C.9 (C.5, the
/// surrogates, cannot be in a `str`), as nameprep applies them: after NFKC,
/// which turns U+0340 and U+0341 (C.8) into allowed accents.
fn is_nameprep_prohibited(c: char) -> bool {
    matches!(
        c,
        '\u{0080}'..='\u{00A0}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{1680}'
            | '\u{180E}'
            | '\u{2000}'..='\u{200F}'
            | '\u{2028}'..='\u{202F}'
            | '\u{205F}'..='\u{2063}'
            | '\u{206A}'..='\u{206F}'
            | '\u{2FF0}'..='\u{2FFB}'
            | '\u{3000}'
            | '\u{E000}'..='\u{F8FF}'
            | '\u{FDD0}'..='\u{FDEF}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFD}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
            | '\u{F0000}'..='\u{10FFFF}'
    ) || u32::from(c) & 0xFFFE == 0xFFFE
}

/// RFC 3492 Punycode encoding (the RFC's variable names kept).
#[allow(clippy::many_single_char_names)]
fn punycode_encode(input: &str) -> Option<String> {
    const BASE: u32 = 36;
    const T_MIN: u32 = 1;
    const T_MAX: u32 = 26;
    const SKEW: u32 = 38;
    const DAMP: u32 = 700;
    fn adapt(mut delta: u32, points: u32, first: bool) -> u32 {
        delta /= if first { DAMP } else { 2 };
        delta += delta / points;
        let mut k = 0;
        while delta > ((BASE - T_MIN) * T_MAX) / 2 {
            delta /= BASE - T_MIN;
            k += BASE;
        }
        k + (BASE - T_MIN + 1) * delta / (delta + SKEW)
    }
    fn digit(d: u32) -> char {
        // 0–25 are a–z, 26–35 are 0–9; d < 36 by construction.
        let d = u8::try_from(d).unwrap_or(0);
        char::from(if d < 26 { b'a' + d } else { b'0' + (d - 26) })
    }
    let code_points: Vec<u32> = input.chars().map(u32::from).collect();
    let mut output: String = input.chars().filter(char::is_ascii).collect();
    let basic = u32::try_from(output.len()).ok()?;
    let mut handled = basic;
    if basic > 0 {
        output.push('-');
    }
    let (mut n, mut delta, mut bias) = (128u32, 0u32, 72u32);
    let total = u32::try_from(code_points.len()).ok()?;
    while handled < total {
        let m = code_points.iter().copied().filter(|&c| c >= n).min()?;
        delta = delta.checked_add((m - n).checked_mul(handled + 1)?)?;
        n = m;
        for &c in &code_points {
            if c < n {
                delta = delta.checked_add(1)?;
            }
            if c == n {
                let mut q = delta;
                let mut k = BASE;
                loop {
                    let t = if k <= bias {
                        T_MIN
                    } else if k >= bias + T_MAX {
                        T_MAX
                    } else {
                        k - bias
                    };
                    if q < t {
                        break;
                    }
                    output.push(digit(t + (q - t) % (BASE - t)));
                    q = (q - t) / (BASE - t);
                    k += BASE;
                }
                output.push(digit(q));
                bias = adapt(delta, handled + 1, handled == basic);
                delta = 0;
                handled += 1;
            }
        }
        delta += 1;
        n += 1;
    }
    Some(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_addresses() {
        for address in [
            "email@domain.com",
            "email@domain.COM",
            "firstname.lastname@domain.com",
            "firstname.o'lastname@domain.com",
            "email@subdomain.domain.com",
            "firstname+lastname@domain.com",
            "1234567890@domain.com",
            "email@domain-one.com",
            "_______@domain.com",
            "email@domain.name",
            "email@domain.superlongtld",
            "email@domain.co.jp",
            "firstname-lastname@domain.com",
            "info@german-financial-services.vermögensberatung",
            "info@german-financial-services.reallylongarbitrarytldthatiswaytoohugejustincase",
            "japanese-info@例え.テスト",
            "email@double--hyphen.com",
            "  email@domain.com \t",
            "email@domain.com\u{200B}",
        ] {
            assert!(
                is_valid_email_address(address),
                "{address:?} should be valid"
            );
        }
    }

    #[test]
    fn invalid_addresses() {
        let too_long_local = format!("{}@example.com", "a".repeat(310));
        let long_label = format!("a@{}.com", "b".repeat(64));
        for address in [
            "email@123.123.123.123",
            "email@[123.123.123.123]",
            "plainaddress",
            "@no-local-part.com",
            "Outlook Contact <outlook-contact@domain.com>",
            "no-at.domain.com",
            "no-tld@domain",
            ";beginning-semicolon@domain.co.uk",
            "middle-semicolon@domain.co;uk",
            "trailing-semicolon@domain.com;",
            "\"email+leading-quotes@domain.com",
            "email+middle\"-quotes@domain.com",
            "\"quoted-local-part\"@domain.com",
            "\"quoted@domain.com\"",
            "lots-of-dots@domain..gov..uk",
            "two-dots..in-local@domain.com",
            "multiple@domains@domain.com",
            "spaces in local@domain.com",
            "spaces-in-domain@dom ain.com",
            "underscores-in-domain@dom_ain.com",
            "pipe-in-domain@example.com|gov.uk",
            "comma,in-local@gov.uk",
            "comma-in-domain@domain,gov.uk",
            "pound-sign-in-local£@domain.com",
            "local-with-’-apostrophe@domain.com",
            "local-with-”-quotes@domain.com",
            "domain-starts-with-a-dot@.domain.com",
            "brackets(in)local@domain.com",
            "incorrect-punycode@xn---something.com",
            "hyphen-start@-domain.com",
            "hyphen-end@domain-.com",
            "triple@dom---ain.com",
            "fake address",
            "",
        ] {
            assert!(
                !is_valid_email_address(address),
                "{address:?} should be invalid"
            );
        }
        assert!(!is_valid_email_address(&too_long_local));
        assert!(!is_valid_email_address(&long_label));
    }

    #[test]
    fn punycode_matches_known_encodings() {
        assert_eq!(punycode_encode("例え").unwrap(), "r8jz45g");
        assert_eq!(punycode_encode("テスト").unwrap(), "zckzah");
        assert_eq!(punycode_encode("bücher").unwrap(), "bcher-kva");
        assert_eq!(
            idna_to_ascii("例え.テスト").unwrap(),
            "xn--r8jz45g.xn--zckzah"
        );
    }

    #[test]
    fn form_filter_strips_only_the_ends() {
        assert_eq!(strip_all_whitespace(" \u{200B}a b\u{00A0}\n"), "a b");
    }

    // The whitespace table. Upstream: alphagov/notifications-utils at
    // 6c3744d9b7eb1c7554833737cceb2d25f2944824 (120.1.0, the commit
    // document-download-frontend's requirements.txt pins at ece8794):
    // tests/recipient_validation/test_email_address.py
    // (`test_validate_email_address_strips_whitespace`) and tests/test_formatters.py
    // (`test_strip_all_whitespace`, `test_strip_and_remove_obscure_whitespace*`,
    // `test_normalise_whitespace`, whose input ends "\u2028\u2029"), plus the
    // lists they test (notifications_utils/formatters.py: `string.whitespace`,
    // `OBSCURE_ZERO_WIDTH_WHITESPACE`, `OBSCURE_FULL_WIDTH_WHITESPACE`). Rows
    // the upstream tests do not spell out were checked by running that
    // commit's formatters.py and recipient_validation/email_address.py under
    // CPython.

    /// Where a character goes in `email@domain.com`.
    const POSITIONS: [&str; 4] = ["start", "local middle", "domain middle", "end"];

    fn placed(c: char, position: usize) -> String {
        match position {
            0 => format!("{c}email@domain.com"),
            1 => format!("ema{c}il@domain.com"),
            2 => format!("email@dom{c}ain.com"),
            _ => format!("email@domain.com{c}"),
        }
    }

    /// Each character; whether the form's filter (`strip_all_whitespace`)
    /// strips it from the ends (it never touches the middle); and whether
    /// `validate_email_address` accepts `email@domain.com` with it at each of
    /// [`POSITIONS`].
    const WHITESPACE_TABLE: &[(char, &str, bool, [bool; 4])] = &[
        // `string.whitespace`: stripped from the ends only.
        (' ', "space", true, [true, false, false, true]),
        ('\t', "tab", true, [true, false, false, true]),
        ('\n', "line feed", true, [true, false, false, true]),
        ('\r', "carriage return", true, [true, false, false, true]),
        ('\x0b', "vertical tab", true, [true, false, false, true]),
        ('\x0c', "form feed", true, [true, false, false, true]),
        // `OBSCURE_ZERO_WIDTH_WHITESPACE`: removed everywhere.
        ('\u{180E}', "Mongolian vowel separator", true, [true; 4]),
        ('\u{200B}', "zero width space", true, [true; 4]),
        ('\u{200C}', "zero width non-joiner", true, [true; 4]),
        ('\u{200D}', "zero width joiner", true, [true; 4]),
        ('\u{2060}', "word joiner", true, [true; 4]),
        ('\u{FEFF}', "zero width no-break space", true, [true; 4]),
        ('\u{2028}', "line separator", true, [true; 4]),
        ('\u{2029}', "paragraph separator", true, [true; 4]),
        // `OBSCURE_FULL_WIDTH_WHITESPACE`: removed everywhere.
        ('\u{00A0}', "no-break space", true, [true; 4]),
        ('\u{202F}', "narrow no-break space", true, [true; 4]),
        // Whitespace to Python (`str.isspace`, so `\s`) in neither list:
        // never removed, and refused wherever it is.
        ('\x1c', "file separator", false, [false; 4]),
        ('\x1d', "group separator", false, [false; 4]),
        ('\x1e', "record separator", false, [false; 4]),
        ('\x1f', "unit separator", false, [false; 4]),
        ('\u{0085}', "next line", false, [false; 4]),
        ('\u{1680}', "Ogham space mark", false, [false; 4]),
        ('\u{2000}', "en quad", false, [false; 4]),
        ('\u{2001}', "em quad", false, [false; 4]),
        ('\u{2002}', "en space", false, [false; 4]),
        ('\u{2003}', "em space", false, [false; 4]),
        ('\u{2004}', "three-per-em space", false, [false; 4]),
        ('\u{2005}', "four-per-em space", false, [false; 4]),
        ('\u{2006}', "six-per-em space", false, [false; 4]),
        ('\u{2007}', "figure space", false, [false; 4]),
        ('\u{2008}', "punctuation space", false, [false; 4]),
        ('\u{2009}', "thin space", false, [false; 4]),
        ('\u{200A}', "hair space", false, [false; 4]),
        ('\u{205F}', "medium mathematical space", false, [false; 4]),
        ('\u{3000}', "ideographic space", false, [false; 4]),
    ];

    #[test]
    fn whitespace_table_matches_notifications_utils() {
        let mut failures = Vec::new();
        for &(c, name, form_strips, accepted) in WHITESPACE_TABLE {
            for (position, accepted) in accepted.into_iter().enumerate() {
                let address = placed(c, position);
                let row = format!("{name} (U+{:04X}) at {}", u32::from(c), POSITIONS[position]);
                if is_valid_email_address(&address) != accepted {
                    failures.push(format!("validate {row}: want {accepted}"));
                }
                let at_an_end = position == 0 || position == POSITIONS.len() - 1;
                let filtered = if form_strips && at_an_end {
                    "email@domain.com"
                } else {
                    &address
                };
                if strip_all_whitespace(&address) != filtered {
                    failures.push(format!("strip_all_whitespace {row}: want {filtered:?}"));
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Addresses and what `validate_email_address` says of them.
    const ADDRESS_TABLE: &[(&str, bool)] = &[
        // test_validate_email_address_strips_whitespace
        (" email@domain.com ", true),
        ("\temail@domain.com", true),
        ("\temail@domain.com\n", true),
        ("\u{200B}email@domain.com\u{200B}", true),
        // Several at once, from both lists.
        (
            "\u{2028} \u{2029}email@do\u{2028}main.com\u{00A0}\n\u{2029}",
            true,
        ),
        ("\u{2029}\u{2028}", false),
        (" \u{2028}\t", false),
        // Refused by `idna`'s nameprep (RFC 3454 tables C.2.2, C.3, C.4, C.7,
        // C.8, C.9) in a non-ASCII hostname.
        ("a@ex\u{200E}ample.com", false),
        ("a@ex\u{202E}ample.com", false),
        ("a@ex\u{0080}ample.com", false),
        ("a@ex\u{2061}ample.com", false),
        ("a@ex\u{E000}ample.com", false),
        ("a@ex\u{FDD0}ample.com", false),
        ("a@ex\u{2FF0}ample.com", false),
        ("a@ex\u{E0001}ample.com", false),
        // Mapped to nothing by nameprep (table B.1): a label of only that is
        // empty; otherwise the rest is the label.
        ("a@\u{00AD}.com", false),
        ("a@exam\u{00AD}ple.com", true),
        ("a@xn--\u{00AD}abc.com", true),
        // NFKC turns U+0340 into U+0300, which is allowed.
        ("a@ex\u{0340}ample.com", true),
    ];

    #[test]
    fn address_table_matches_notifications_utils() {
        let failures: Vec<String> = ADDRESS_TABLE
            .iter()
            .filter(|(address, expected)| is_valid_email_address(address) != *expected)
            .map(|(address, expected)| format!("{address:?}: want {expected}"))
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// `re.match(EMAIL_REGEX_PATTERN, s).group(1)`: `\s` is `str.isspace`
    /// and `$` also matches before a final newline.
    const SHAPE_TABLE: &[(&str, Option<&str>)] = &[
        ("email@domain.com", Some("domain.com")),
        ("email@domain.com\n", Some("domain.com")),
        ("email@domain.com\n\n", None),
        ("email@domain.com\r", None),
        ("a@@bc.com", None),
        ("a@ b.com", Some(" b.com")),
        ("a@bc\x1c.com", None),
        ("a@bc\u{0085}.com", None),
        ("a@bc\u{2028}.com", None),
        ("a@bc\u{200B}.com", Some("bc\u{200B}.com")),
    ];

    #[test]
    fn shape_table_matches_the_pattern() {
        let failures: Vec<String> = SHAPE_TABLE
            .iter()
            .filter(|(address, expected)| email_shape(address) != *expected)
            .map(|(address, expected)| format!("{address:?}: want {expected:?}"))
            .collect();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn formatter_cases_from_upstream() {
        for value in [
            "bar",
            " bar ",
            "\n        \t    bar\n    ",
            " \u{180E}\u{200B} \u{200C} bar \u{200D} \u{2060}\u{FEFF} ",
            "\u{2028}bar\u{2029}",
        ] {
            assert_eq!(strip_all_whitespace(value), "bar", "{value:?}");
        }
        for value in [
            "notifications-email",
            "  \tnotifications-email \x0c ",
            "\rn\u{200C}oti\u{200D}fi\u{200B}cati\u{2060}ons-\u{180E}emai\u{FEFF}l\u{FEFF}",
            "\u{2028}notifi\u{2029}cations-email\u{2028}",
        ] {
            assert_eq!(
                strip_and_remove_obscure_whitespace(value),
                "notifications-email",
                "{value:?}"
            );
        }
        assert_eq!(
            strip_and_remove_obscure_whitespace("   words \n over multiple lines with \ttabs\t   "),
            "words \n over multiple lines with \ttabs"
        );
    }
}
