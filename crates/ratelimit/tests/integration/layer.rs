//! The tower layer over an in-memory limiter: statuses, headers, bodies,
//! delays, and edge's zone configuration.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::{Layer, ServiceExt};
use wharf_ratelimit::{KeySource, Limiter, Rate, RateLimitLayer, ResponseSettings, Zone};

type App = tower::util::ServiceFn<
    fn(Request<String>) -> std::future::Ready<Result<Response<String>, Infallible>>,
>;

fn app() -> App {
    fn ok(_req: Request<String>) -> std::future::Ready<Result<Response<String>, Infallible>> {
        std::future::ready(Ok(Response::new("ok".to_owned())))
    }
    tower::service_fn(ok as fn(_) -> _)
}

fn request(peer: &str, method: &str, path: &str, accept: Option<&str>) -> Request<String> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(accept) = accept {
        builder = builder.header("accept", accept);
    }
    let mut req = builder.body(String::new()).unwrap();
    req.extensions_mut().insert(
        format!("{peer}:1234")
            .parse::<std::net::SocketAddr>()
            .unwrap(),
    );
    req
}

fn limiter(zone: Zone) -> Limiter {
    Limiter::builder().zone(zone).build().unwrap()
}

#[tokio::test]
async fn rejection_is_429_with_retry_after_ratelimit_headers_and_html() {
    let layer = RateLimitLayer::new(limiter(
        Zone::new("docs", "2r/s".parse().unwrap())
            .burst(1)
            .nodelay(),
    ));
    let svc = layer.layer(app());
    for _ in 0..2 {
        let ok = svc
            .clone()
            .oneshot(request("192.0.2.1", "GET", "/", None))
            .await
            .unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()["ratelimit-policy"], "\"docs\";q=2;w=1");
    }
    let limited = svc
        .clone()
        .oneshot(request("192.0.2.1", "GET", "/", Some("text/html")))
        .await
        .unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    // 2r/s burst 1: the next request passes in 500 ms: Retry-After rounds up to 1.
    assert_eq!(limited.headers()["retry-after"], "1");
    assert_eq!(limited.headers()["ratelimit"], "\"docs\";r=0;t=1");
    assert!(limited.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let body = limited.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("Too many requests"));
    // Another client is unaffected.
    let other = svc
        .oneshot(request("192.0.2.2", "GET", "/", None))
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
}

#[tokio::test]
async fn json_body_for_json_clients_and_503_when_configured() {
    let layer = RateLimitLayer::new(limiter(Zone::new("api", "1r/m".parse().unwrap())))
        .with_settings(ResponseSettings {
            status: StatusCode::SERVICE_UNAVAILABLE,
            headers_on_success: false,
        });
    let svc = layer.layer(app());
    let first = svc
        .clone()
        .oneshot(request("192.0.2.1", "GET", "/", None))
        .await
        .unwrap();
    assert!(
        first.headers().get("ratelimit-policy").is_none(),
        "headers_on_success off"
    );
    let limited = svc
        .oneshot(request("192.0.2.1", "GET", "/", Some("application/json")))
        .await
        .unwrap();
    assert_eq!(limited.status(), StatusCode::SERVICE_UNAVAILABLE);
    // 1r/m: the next request passes in 60 s.
    assert_eq!(limited.headers()["retry-after"], "60");
    assert_eq!(limited.headers()["content-type"], "application/json");
    let body = limited.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["retry_after"], 60);
}

#[tokio::test]
async fn retry_after_rounds_up_whole_seconds() {
    // 1 request per 2.5 s: after one, the next passes in 2.5 s → Retry-After 3.
    let rate = Rate::per_minute(24).unwrap();
    let svc = RateLimitLayer::new(limiter(Zone::new("z", rate))).layer(app());
    let _ = svc
        .clone()
        .oneshot(request("192.0.2.1", "GET", "/", None))
        .await
        .unwrap();
    let limited = svc
        .oneshot(request("192.0.2.1", "GET", "/", None))
        .await
        .unwrap();
    assert_eq!(limited.headers()["retry-after"], "3");
}

#[tokio::test]
async fn delaying_mode_serves_the_burst_at_the_rate() {
    // 20r/s burst 3, no nodelay: 4 pass, spaced 50 ms apart; the 5th is rejected.
    let svc = RateLimitLayer::new(limiter(Zone::new("z", "20r/s".parse().unwrap()).burst(3)))
        .layer(app());
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..5 {
        let svc = svc.clone();
        handles.push(tokio::spawn(async move {
            let response = svc
                .oneshot(request("192.0.2.1", "GET", "/", None))
                .await
                .unwrap();
            (response.status(), start.elapsed())
        }));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.unwrap());
    }
    let served: Vec<Duration> = results
        .iter()
        .filter(|r| r.0 == StatusCode::OK)
        .map(|r| r.1)
        .collect();
    assert_eq!(served.len(), 4, "{results:?}");
    assert_eq!(
        results
            .iter()
            .filter(|r| r.0 == StatusCode::TOO_MANY_REQUESTS)
            .count(),
        1
    );
    let mut sorted = served.clone();
    sorted.sort();
    assert!(sorted[0] < Duration::from_millis(30), "{sorted:?}");
    assert!(
        sorted[3] >= Duration::from_millis(145),
        "the 4th waits ~150 ms: {sorted:?}"
    );
}

#[tokio::test]
async fn custom_and_header_keys_skip_requests_without_a_key() {
    let zone = Zone::new("tenant", "1r/m".parse().unwrap())
        .key(KeySource::Header(http::HeaderName::from_static("x-tenant")));
    let svc = RateLimitLayer::new(limiter(zone)).layer(app());
    let with = |t: &str| {
        let mut r = request("192.0.2.1", "GET", "/", None);
        r.headers_mut().insert("x-tenant", t.parse().unwrap());
        r
    };
    assert_eq!(svc.clone().oneshot(with("a")).await.unwrap().status(), 200);
    assert_eq!(svc.clone().oneshot(with("a")).await.unwrap().status(), 429);
    assert_eq!(svc.clone().oneshot(with("b")).await.unwrap().status(), 200);
    for _ in 0..3 {
        assert_eq!(
            svc.clone()
                .oneshot(request("192.0.2.1", "GET", "/", None))
                .await
                .unwrap()
                .status(),
            200
        );
    }
}

#[test]
fn edge_zone_config_parses_from_json() {
    let zone: wharf_ratelimit::ZoneConfig = serde_json::from_value(serde_json::json!({
        "zone": "login", "key": "header:X-Api-Key", "rate": "1r/s", "burst": 5, "nodelay": true,
        "store": "memory", "on_redis_failure": "local", "path_prefix": "/login"
    }))
    .unwrap();
    let zone = zone.to_zone();
    assert_eq!(zone.policy().capacity(), 6);
    assert!(zone.policy().is_nodelay());
    let bad = serde_json::from_value::<wharf_ratelimit::ZoneConfig>(
        serde_json::json!({"zone": "x", "rate": "1r/s", "key": "cookie"}),
    );
    assert!(bad
        .unwrap_err()
        .to_string()
        .contains("expected client_ip, route, global or header:<Name>"));
    let unknown = serde_json::from_value::<wharf_ratelimit::ZoneConfig>(
        serde_json::json!({"zone": "x", "rate": "1r/s", "brust": 1}),
    );
    assert!(unknown.is_err());
}
