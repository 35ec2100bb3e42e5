//! The app's rate limits (`wharf_download::RateLimitSection`) in front of a
//! plain service: the two zones together, the `WHARF_RATELIMIT_*` variables
//! and their errors. The limiter itself is tested in wharf-ratelimit.

use std::convert::Infallible;

use http::{Request, Response, StatusCode};
use tower::{Layer, Service, ServiceExt};
use wharf_config::{EnvMap, Loader, RedisSection};
use wharf_download::{frontend_layer, frontend_limiter, RateLimitSection};
use wharf_ratelimit::FailureMode;

type App = tower::util::ServiceFn<
    fn(Request<String>) -> std::future::Ready<Result<Response<String>, Infallible>>,
>;

fn app() -> App {
    fn ok(_req: Request<String>) -> std::future::Ready<Result<Response<String>, Infallible>> {
        std::future::ready(Ok(Response::new("ok".to_owned())))
    }
    tower::service_fn(ok as fn(_) -> _)
}

/// The app's section, as `frontend` nests it.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct Config {
    ratelimit: RateLimitSection,
}

#[allow(clippy::unwrap_used)] // a test helper: a bad request is a failed test
fn request(peer: &str, method: &str, path: &str) -> Request<String> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .body(String::new())
        .unwrap();
    req.extensions_mut().insert(
        format!("{peer}:1234")
            .parse::<std::net::SocketAddr>()
            .unwrap(),
    );
    req
}

#[tokio::test]
async fn frontend_zones_limit_documents_and_the_confirmation_post_together() {
    let section = RateLimitSection::default();
    let layer = frontend_layer(&RedisSection::default(), &section, None)
        .unwrap()
        .unwrap();
    let limiter = layer.limiter().clone();
    let mut svc = layer.layer(app());
    let confirm = "/d/service/doc/confirm-email-address";
    // The confirmation POST is limited 1r/s burst 5: 6 pass at once...
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(request("198.51.100.7", "POST", confirm))
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429]);
    // ...and the two rejected POSTs were not charged to the document zone
    // (all or nothing): 21 - 6 = 15 document requests remain.
    let mut passed = 0;
    for _ in 0..20 {
        let r = svc
            .ready()
            .await
            .unwrap()
            .call(request("198.51.100.7", "GET", "/d/service/doc"))
            .await
            .unwrap();
        passed += usize::from(r.status() == StatusCode::OK);
    }
    assert_eq!(passed, 15);
    // Health and other routes are not limited.
    let r = svc
        .ready()
        .await
        .unwrap()
        .call(request("198.51.100.7", "GET", "/_status"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers().get("ratelimit").is_none());
    let document = limiter.metrics().zone("document").unwrap();
    assert_eq!(
        (document.checks(), document.allowed(), document.limited()),
        (28, 21, 7)
    );
    let text = limiter.metrics().render_prometheus();
    assert!(
        text.contains("wharf_ratelimit_limited_total{zone=\"confirm\"} 2"),
        "{text}"
    );
    // No Redis, memory of its own: the scrape says where each zone counts.
    assert!(
        text.contains("wharf_ratelimit_zone_info{zone=\"document\",store=\"memory\"} 1"),
        "{text}"
    );
    assert_eq!(limiter.metrics().store("confirm"), Some("memory"));
}

#[test]
fn section_reads_the_environment_and_names_bad_variables() {
    let env = EnvMap::from_pairs([
        ("WHARF_RATELIMIT_DOCUMENT_RATE", "30r/m"),
        ("WHARF_RATELIMIT_TRUSTED_PROXIES", "10.0.0.0/8, ::1"),
        ("WHARF_RATELIMIT_ON_REDIS_FAILURE", "local"),
    ]);
    let loaded = Loader::new(RateLimitSection::vars("ratelimit"))
        .env(env)
        .dotenv(None)
        .load::<Config>()
        .unwrap();
    let section = loaded.config.ratelimit;
    assert_eq!(section.document_rate.to_string(), "30r/m");
    assert_eq!(section.trusted_proxies, ["10.0.0.0/8", "::1/128"]);
    assert_eq!(section.on_redis_failure, FailureMode::Local);
    assert_eq!(section.confirm_burst, 5);

    let env = EnvMap::from_pairs([
        ("WHARF_RATELIMIT_DOCUMENT_RATE", "10 per second"),
        ("WHARF_RATELIMIT_TRUSTED_PROXIES", "10.0.0.0/33"),
        ("WHARF_RATELIMIT_STATUS", "500"),
    ]);
    let err = Loader::new(RateLimitSection::vars("ratelimit"))
        .env(env)
        .dotenv(None)
        .load::<Config>()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("WHARF_RATELIMIT_DOCUMENT_RATE: expected a rate like 10r/s or 30r/m"),
        "{err}"
    );
    assert!(
        err.contains("WHARF_RATELIMIT_TRUSTED_PROXIES: expected an IP address or range"),
        "{err}"
    );
    assert!(
        err.contains("WHARF_RATELIMIT_STATUS: expected one of 429, 503"),
        "{err}"
    );
}

#[test]
fn redis_enabled_without_url_is_an_error() {
    let redis = RedisSection {
        enabled: true,
        url: None,
    };
    let err = frontend_limiter(&redis, &RateLimitSection::default(), None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "REDIS_ENABLED is true but REDIS_URL is not set"
    );
}

#[tokio::test]
async fn switched_off_the_layer_has_no_zones_and_lets_everything_through() {
    let section = RateLimitSection {
        enabled: false,
        ..RateLimitSection::default()
    };
    assert!(frontend_layer(&RedisSection::default(), &section, None)
        .unwrap()
        .is_none());
    let layer = section
        .layer::<Vec<std::sync::atomic::AtomicU64>>(&RedisSection::default(), None)
        .unwrap();
    assert!(layer.limiter().metrics().zone("document").is_none());
    let svc = layer.layer(app());
    for _ in 0..30 {
        let r = svc
            .clone()
            .oneshot(request("198.51.100.7", "GET", "/d/service/doc"))
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
}

#[test]
fn the_client_is_resolved_by_the_server_only_behind_trusted_proxies() {
    assert!(RateLimitSection::default().client_addr().is_none());
    let section = RateLimitSection {
        trusted_proxies: vec!["10.0.0.0/8".to_owned()],
        ..RateLimitSection::default()
    };
    let resolver = section.client_addr().unwrap();
    assert_eq!(
        resolver.trusted(),
        section.client_ip().unwrap().resolver().trusted()
    );
}
