//! The response headers every page, redirect and error carries.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// A fresh CSP nonce: 16 random bytes, URL-safe base64; the generator's
/// error when it has none.
pub(crate) fn new_nonce() -> Result<String, crate::random::Error> {
    crate::random::bytes::<16>().map(|b| crate::ids::encode_url_safe(&b))
}

/// The Content-Security-Policy for a response whose inline script and style
/// carry `nonce`; with no nonce (the generator failed), no inline script or
/// style runs at all.
pub(crate) fn content_security_policy(nonce: Option<&str>) -> String {
    let (script, style) = match nonce {
        Some(nonce) => (
            format!("script-src 'self' 'nonce-{nonce}'"),
            format!("style-src 'self' 'nonce-{nonce}'"),
        ),
        None => (
            "script-src 'self'".to_owned(),
            "style-src 'self'".to_owned(),
        ),
    };
    format!(
        "default-src 'self'; {script}; {style}; \
         img-src 'self' data:; font-src 'self' data:; connect-src 'self'; object-src 'none'; \
         base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )
}

/// `Cache-Control` for pages, redirects and errors.
pub(crate) const NO_STORE: &str = "no-store, no-cache, private, must-revalidate";

/// HSTS: one year, subdomains, preload list.
pub(crate) const HSTS: &str = "max-age=31536000; includeSubDomains; preload";

/// Permissions-Policy: nothing this service does needs a powerful feature.
pub(crate) const PERMISSIONS_POLICY: &str = "accelerometer=(), autoplay=(), camera=(), \
    display-capture=(), encrypted-media=(), fullscreen=(), geolocation=(), gyroscope=(), \
    interest-cohort=(), magnetometer=(), microphone=(), midi=(), payment=(), \
    picture-in-picture=(), publickey-credentials-get=(), screen-wake-lock=(), sync-xhr=(), \
    usb=(), xr-spatial-tracking=()";

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// Sets the full header set. `nonce` is the one the body used (none when the
/// generator failed); `cache_control` overrides [`NO_STORE`] (static assets).
pub(crate) fn apply(headers: &mut HeaderMap, nonce: Option<&str>, cache_control: Option<&str>) {
    set(
        headers,
        HeaderName::from_static("x-robots-tag"),
        "noindex, nofollow",
    );
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(
        headers,
        HeaderName::from_static("x-permitted-cross-domain-policies"),
        "none",
    );
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        &content_security_policy(nonce),
    );
    set(
        headers,
        header::CACHE_CONTROL,
        cache_control.unwrap_or(NO_STORE),
    );
    set(headers, header::STRICT_TRANSPORT_SECURITY, HSTS);
    set(
        headers,
        HeaderName::from_static("cross-origin-embedder-policy"),
        "require-corp",
    );
    set(
        headers,
        HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        headers,
        HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    set(
        headers,
        HeaderName::from_static("permissions-policy"),
        PERMISSIONS_POLICY,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_fresh_and_header_safe() {
        let a = new_nonce().unwrap();
        assert_ne!(a, new_nonce().unwrap());
        assert_eq!(a.len(), 22);
        let mut headers = HeaderMap::new();
        apply(&mut headers, Some(&a), None);
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains(&format!("'nonce-{a}'")));
        assert!(!csp.contains("unsafe-inline"));
        assert_eq!(headers[header::CACHE_CONTROL], NO_STORE);
        assert_eq!(headers.len(), 12);
    }

    #[test]
    fn no_generator_no_nonce_and_no_inline_code() {
        assert!(crate::random::tests::failing(new_nonce).is_err());
        let mut headers = HeaderMap::new();
        apply(&mut headers, None, None);
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(!csp.contains("nonce"), "{csp}");
        assert!(csp.contains("script-src 'self';"), "{csp}");
        assert!(csp.contains("style-src 'self';"), "{csp}");
        assert!(!csp.contains("unsafe-inline"));
        assert_eq!(headers.len(), 12);
    }
}
