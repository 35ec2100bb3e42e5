//! HMAC-SHA256 uses: the Notify API's HS256 token, CSRF tokens, and the local
//! document API's signed cookie.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ids::{decode_url_safe, encode_url_safe};

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 of `parts` (joined without separators) under `key`.
pub(crate) fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return [0; 32];
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Compares two MACs in constant time.
pub(crate) fn verify(key: &[u8], parts: &[&[u8]], expected: &[u8]) -> bool {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    for part in parts {
        mac.update(part);
    }
    mac.verify_slice(expected).is_ok()
}

/// An HS256 JSON Web Token as notifications-python-client makes them:
/// header `{"typ":"JWT","alg":"HS256"}`, claims `iss` and `iat`.
pub(crate) fn notify_api_token(issuer: &str, secret: &str, issued_at: u64) -> String {
    let header = encode_url_safe(br#"{"typ":"JWT","alg":"HS256"}"#);
    let claims = serde_json::json!({ "iss": issuer, "iat": issued_at });
    let claims = encode_url_safe(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{claims}");
    let signature = hmac_sha256(secret.as_bytes(), &[signing_input.as_bytes()]);
    format!("{signing_input}.{}", encode_url_safe(&signature))
}

/// Verifies an HS256 token and returns its claims (for the tests' stub API).
pub fn verify_notify_api_token(token: &str, secret: &str) -> Option<serde_json::Value> {
    let (signing_input, signature) = token.rsplit_once('.')?;
    let (header, claims) = signing_input.split_once('.')?;
    let header: serde_json::Value = serde_json::from_slice(&decode_url_safe(header)?).ok()?;
    if header.get("alg")?.as_str()? != "HS256" {
        return None;
    }
    if !verify(
        secret.as_bytes(),
        &[signing_input.as_bytes()],
        &decode_url_safe(signature)?,
    ) {
        return None;
    }
    serde_json::from_slice(&decode_url_safe(claims)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        let hex = crate::random::to_hex(&mac);
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn notify_tokens_verify_and_carry_the_claims() {
        let token = notify_api_token("notify-admin", "s3cret", 1_700_000_000);
        assert_eq!(token.matches('.').count(), 2);
        let claims = verify_notify_api_token(&token, "s3cret").unwrap();
        assert_eq!(claims["iss"], "notify-admin");
        assert_eq!(claims["iat"], 1_700_000_000);
        assert!(verify_notify_api_token(&token, "other").is_none());
    }
}
