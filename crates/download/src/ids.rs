//! UUIDs as the Document Download URLs carry them (URL-safe base64 without
//! padding, 22 characters), and the base64 codec (the `base64` crate) behind
//! them and the app's tokens.

use std::fmt;
use std::str::FromStr;

use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;

/// URL-safe base64: no padding written, none expected (trailing `=` are
/// trimmed before decoding), and the spare bits of the last character
/// ignored, as Python's decoder ignores them.
const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// URL-safe base64 without padding.
pub(crate) fn encode_url_safe(bytes: &[u8]) -> String {
    URL_SAFE_LENIENT.encode(bytes)
}

/// Decodes URL-safe base64 without padding. Any run of trailing `=` is
/// tolerated (the crate's padding modes would reject a wrong count, which
/// was always accepted here); `=` anywhere else is not.
pub(crate) fn decode_url_safe(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_LENIENT.decode(text.trim_end_matches('=')).ok()
}

/// A UUID, shown hyphenated in upstream API paths and as 22 characters of
/// URL-safe base64 in the frontend's own URLs.
///
/// ```
/// use wharf_download::Uuid;
/// let id: Uuid = "5e3a2a1c-9f3c-4b1e-8a2c-1d3e5f7a9b0c".parse().unwrap();
/// assert_eq!(id.to_base64(), "XjoqHJ88Sx6KLB0-X3qbDA");
/// assert_eq!(Uuid::from_base64("XjoqHJ88Sx6KLB0-X3qbDA"), Some(id));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uuid([u8; 16]);

impl Uuid {
    /// A UUID from its 16 bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// A random (version 4) UUID; the operating system generator's error
    /// when it has no random bytes.
    pub fn new_v4() -> Result<Self, getrandom::Error> {
        let mut bytes = crate::random::bytes::<16>()?;
        bytes[6] = (bytes[6] & 0x0f) | 0x40;
        bytes[8] = (bytes[8] & 0x3f) | 0x80;
        Ok(Self(bytes))
    }

    /// The 16 bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses the frontend's URL form: exactly 22 URL-safe base64 characters.
    pub fn from_base64(text: &str) -> Option<Self> {
        if text.len() != 22 {
            return None;
        }
        let bytes = decode_url_safe(text)?;
        bytes.try_into().ok().map(Self)
    }

    /// The frontend's URL form.
    pub fn to_base64(&self) -> String {
        encode_url_safe(&self.0)
    }
}

impl fmt::Display for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Uuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The error for text that is not a hyphenated UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a UUID such as 00000000-0000-4000-8000-000000000000")]
pub struct InvalidUuid;

impl FromStr for Uuid {
    type Err = InvalidUuid;

    /// Parses the hyphenated form (any case); plain 32 hex digits are accepted too.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex: Vec<u8> = s.bytes().filter(|b| *b != b'-').collect();
        let hyphens = s.len() - hex.len();
        if hex.len() != 32 || !(hyphens == 0 || hyphens == 4) {
            return Err(InvalidUuid);
        }
        if hyphens == 4
            && s.char_indices()
                .any(|(i, c)| (c == '-') != matches!(i, 8 | 13 | 18 | 23))
        {
            return Err(InvalidUuid);
        }
        let mut bytes = [0u8; 16];
        for (i, pair) in hex.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| InvalidUuid)?;
            bytes[i] = u8::from_str_radix(text, 16).map_err(|_| InvalidUuid)?;
        }
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_every_length() {
        for len in 0..40u8 {
            let bytes: Vec<u8> = (0..len)
                .map(|i| i.wrapping_mul(37).wrapping_add(200))
                .collect();
            let text = encode_url_safe(&bytes);
            assert!(!text.contains('='));
            assert_eq!(decode_url_safe(&text).unwrap(), bytes, "length {len}");
        }
        assert_eq!(encode_url_safe(b"\xfb\xff"), "-_8");
        assert_eq!(decode_url_safe("a"), None);
        assert_eq!(decode_url_safe("ab+c"), None);
    }

    /// What the codec accepts and rejects today, pinned so a change of
    /// implementation cannot change it: URL-safe alphabet only, no padding
    /// written, any run of trailing `=` ignored, `=` anywhere else, a length
    /// of 4n+1, whitespace or any other byte rejected, and the spare bits of
    /// the last character ignored (Python's decoder ignores them too).
    #[test]
    fn base64_accepts_and_rejects_exactly_these() {
        for (bytes, text) in [
            (&b""[..], ""),
            (b"A", "QQ"),
            (b"AB", "QUI"),
            (b"ABC", "QUJD"),
            (b"ABCD", "QUJDRA"),
            (b"\xfb\xff", "-_8"),
            (b"\xfb\xef\xbe", "----"),
            (b"\xff\xff\xff", "____"),
            (b"\x00\x00\x00", "AAAA"),
            (b"\x3e\x3f", "Pj8"),
        ] {
            assert_eq!(encode_url_safe(bytes), text, "{bytes:?}");
        }
        for (text, want) in [
            ("", Some(&b""[..])),
            ("QQ", Some(b"A")),
            ("QUI", Some(b"AB")),
            ("QUJD", Some(b"ABC")),
            ("-_8", Some(b"\xfb\xff")),
            ("____", Some(b"\xff\xff\xff")),
            // Padding: none, canonical, short or long, all ignored at the end.
            ("QQ=", Some(b"A")),
            ("QQ==", Some(b"A")),
            ("QQ===", Some(b"A")),
            ("QQ========", Some(b"A")),
            ("QUI=", Some(b"AB")),
            ("QUJD=", Some(b"ABC")),
            ("QUJD====", Some(b"ABC")),
            ("=", Some(b"")),
            ("====", Some(b"")),
            // Spare bits of the last character are ignored.
            ("QR", Some(b"A")),
            ("QT", Some(b"A")),
            ("QUJ", Some(b"AB")),
            ("QUL", Some(b"AB")),
            // Padding anywhere but at the end.
            ("QQ==QQ", None),
            ("Q=Q=", None),
            ("=QQ", None),
            ("QQ=A", None),
            // A length of 4n+1 once trailing `=` are gone.
            ("Q", None),
            ("Q=", None),
            ("Q===", None),
            ("QUJDR", None),
            ("QUJDR===", None),
            // The standard alphabet's `+` and `/` are not URL-safe base64.
            ("+/8", None),
            ("ab+c", None),
            ("ab/c", None),
            ("Pj+/", None),
            // Whitespace, other ASCII, non-ASCII.
            ("QQ ", None),
            (" QQ", None),
            ("QU\nJD", None),
            ("QUJD\n", None),
            ("QU.D", None),
            ("QU%D", None),
            ("QU\u{e9}", None),
            ("QUJ\0", None),
        ] {
            assert_eq!(decode_url_safe(text).as_deref(), want, "{text:?}");
        }
    }

    #[test]
    fn uuid_base64_form_is_exactly_22_url_safe_characters() {
        let id: Uuid = "00000000-0000-0000-0000-000000000000".parse().unwrap();
        assert_eq!(id.to_base64(), "AAAAAAAAAAAAAAAAAAAAAA");
        assert_eq!(Uuid::from_base64("AAAAAAAAAAAAAAAAAAAAAA"), Some(id));
        assert_eq!(Uuid::from_base64("AAAAAAAAAAAAAAAAAAAAA"), None);
        assert_eq!(Uuid::from_base64("AAAAAAAAAAAAAAAAAAAAAAA"), None);
        assert_eq!(Uuid::from_base64("AAAAAAAAAAAAAAAAAAAAA+"), None);
        assert_eq!(Uuid::from_base64("AAAAAAAAAAAAAAAAAAAAA/"), None);
        // Python ignores the 4 leftover bits of the last character; so do we.
        assert_eq!(Uuid::from_base64("AAAAAAAAAAAAAAAAAAAAAB"), Some(id));
    }

    #[test]
    fn uuid_text_forms() {
        let id = Uuid::new_v4().unwrap();
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text.parse::<Uuid>().unwrap(), id);
        assert_eq!(text.to_uppercase().parse::<Uuid>().unwrap(), id);
        assert_eq!(text.replace('-', "").parse::<Uuid>().unwrap(), id);
        assert_eq!(&text[14..15], "4");
        assert!("not-a-uuid".parse::<Uuid>().is_err());
        assert!("0000000-00000-0000-0000-000000000000"
            .parse::<Uuid>()
            .is_err());
        assert!("g0000000-0000-0000-0000-000000000000"
            .parse::<Uuid>()
            .is_err());
    }
}
