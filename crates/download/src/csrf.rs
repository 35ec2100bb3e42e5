//! CSRF protection for the confirm form, as Flask-WTF gave the old service: a
//! token bound to a per-browser secret cookie and signed with `SECRET_KEY`,
//! valid for an hour.

use crate::ids::{decode_url_safe, encode_url_safe};
use crate::signing::{hmac_sha256, verify};

/// The cookie holding the browser's CSRF secret.
pub(crate) const CSRF_COOKIE: &str = "document_download_csrf";

/// How long a token is accepted (Flask-WTF's default).
const TOKEN_LIFETIME_SECONDS: u64 = 3600;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A new browser secret for the cookie; the generator's error when it has
/// none (never a secret made up from anything else).
pub(crate) fn new_session() -> Result<String, crate::random::Error> {
    crate::random::bytes::<18>().map(|b| encode_url_safe(&b))
}

/// A form token for `session`, issued now.
pub(crate) fn token(secret_key: &[u8], session: &str) -> String {
    token_at(secret_key, session, now())
}

fn token_at(secret_key: &[u8], session: &str, issued: u64) -> String {
    let issued = issued.to_string();
    let mac = hmac_sha256(
        secret_key,
        &[b"csrf:", session.as_bytes(), b":", issued.as_bytes()],
    );
    format!("{issued}.{}", encode_url_safe(&mac))
}

/// Whether `token` was issued for `session` within the last hour.
pub(crate) fn is_valid(secret_key: &[u8], session: Option<&str>, token: Option<&str>) -> bool {
    is_valid_at(secret_key, session, token, now())
}

fn is_valid_at(secret_key: &[u8], session: Option<&str>, token: Option<&str>, now: u64) -> bool {
    let (Some(session), Some(token)) = (session, token) else {
        return false;
    };
    let Some((issued, mac)) = token.split_once('.') else {
        return false;
    };
    let Ok(issued_at) = issued.parse::<u64>() else {
        return false;
    };
    if issued_at > now + 60 || now.saturating_sub(issued_at) > TOKEN_LIFETIME_SECONDS {
        return false;
    }
    decode_url_safe(mac).is_some_and(|mac| {
        verify(
            secret_key,
            &[b"csrf:", session.as_bytes(), b":", issued.as_bytes()],
            &mac,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_bound_to_the_session_key_and_time() {
        let key = b"secret";
        let token = token_at(key, "session-a", 1000);
        assert!(is_valid_at(key, Some("session-a"), Some(&token), 1000));
        assert!(is_valid_at(
            key,
            Some("session-a"),
            Some(&token),
            1000 + 3600
        ));
        assert!(!is_valid_at(
            key,
            Some("session-a"),
            Some(&token),
            1000 + 3601
        ));
        assert!(!is_valid_at(key, Some("session-b"), Some(&token), 1000));
        assert!(!is_valid_at(
            b"other",
            Some("session-a"),
            Some(&token),
            1000
        ));
        assert!(!is_valid_at(key, None, Some(&token), 1000));
        assert!(!is_valid_at(key, Some("session-a"), None, 1000));
        assert!(!is_valid_at(
            key,
            Some("session-a"),
            Some("1000.AAAA"),
            1000
        ));
        assert!(!is_valid_at(key, Some("session-a"), Some("garbage"), 1000));
    }
}
