//! Email address rules: the same checks as Notify's validator
//! (`notifications_utils.recipient_validation.email_address`), re-expressed
//! without regular expressions, plus the whitespace handling of its form.

/// Zero-width and non-breaking spaces that Notify removes from anywhere in an
/// address (they arrive by copy and paste).
const OBSCURE_WHITESPACE: &[char] = &[
    '\u{180E}', '\u{200B}', '\u{200C}', '\u{200D}', '\u{2060}', '\u{FEFF}', '\u{00A0}', '\u{202F}',
];

/// Python's `string.whitespace`.
fn is_ascii_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

/// The form's filter (`strip_all_whitespace`): strips ASCII and obscure
/// whitespace from both ends.
pub(crate) fn strip_all_whitespace(value: &str) -> &str {
    value.trim_matches(|c| is_ascii_space(c) || OBSCURE_WHITESPACE.contains(&c))
}

/// `strip_and_remove_obscure_whitespace`: obscure whitespace removed
/// everywhere, then ASCII whitespace stripped from both ends.
fn strip_and_remove_obscure_whitespace(value: &str) -> String {
    let removed: String = value
        .chars()
        .filter(|c| !OBSCURE_WHITESPACE.contains(c))
        .collect();
    removed.trim_matches(is_ascii_space).to_owned()
}

fn is_local_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || ".!#$%&'*+/=?^_`{|}~-".contains(c)
}

/// `^[local chars]+@([^.@][^@\s]+)$`: the hostname when `address` has that shape.
pub(crate) fn email_shape(address: &str) -> Option<&str> {
    let (local, hostname) = address.split_once('@')?;
    if local.is_empty() || !local.chars().all(is_local_char) {
        return None;
    }
    let mut chars = hostname.chars();
    let first = chars.next()?;
    let rest = chars.as_str();
    if first == '.' || rest.is_empty() || rest.contains(['@']) || rest.contains(char::is_whitespace)
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
/// label allowed), others are lower-cased and Punycode-encoded with `xn--`.
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
            let lower = label.to_lowercase();
            if lower.starts_with("xn--") {
                return None;
            }
            format!("xn--{}", punycode_encode(&lower)?)
        };
        if ascii.len() > 63 {
            return None;
        }
        out.push(ascii);
    }
    Some(out.join("."))
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
}
