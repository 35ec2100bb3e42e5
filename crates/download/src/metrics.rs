//! The app's request metrics: the observer that feeds wharf-telemetry's
//! [`HttpMetrics`] by [route template](crate::route_template) (bounded
//! cardinality). `/metrics` on the public port behind a token is
//! wharf-telemetry's [`PublicMetrics`], re-exported here.

use std::sync::Arc;

use wharf_http::{Exchange, RequestObserver};
use wharf_telemetry::metrics::{HttpMetrics, Observation};
pub use wharf_telemetry::metrics::{MetricsText, PublicMetrics, METRICS_PATH};

use crate::app::route_template;

/// Feeds every finished request into `metrics`, by route template (give it
/// to `wharf_http::Server::with_observer`).
pub fn observer(metrics: Arc<HttpMetrics>) -> RequestObserver {
    Arc::new(move |exchange: &Exchange<'_>| {
        metrics.observe(&Observation {
            method: exchange.method.as_str(),
            host: exchange.host.unwrap_or(""),
            route: route_template(exchange.path),
            status: exchange.status.as_u16(),
            duration: exchange.duration,
        });
    })
}

#[cfg(test)]
mod tests {
    use http::{header, Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use wharf_config::Secret;
    use wharf_http::body;

    use super::*;

    #[test]
    fn the_metrics_path_has_its_own_template() {
        assert_eq!(route_template(METRICS_PATH), METRICS_PATH);
    }

    /// In front of the app: `/metrics` with the token is the text, every
    /// other path the app's (its `/_status`; without a token its 404 page).
    #[tokio::test]
    async fn public_metrics_in_front_of_the_app() {
        let dir = tempfile::tempdir().unwrap();
        let app = crate::DownloadApp::builder()
            .local_api(dir.path())
            .build()
            .unwrap();
        let text: MetricsText = Arc::new(|| "wharf_up 1\n".to_owned());
        let status = |service: PublicMetrics<crate::DownloadApp>, path: &'static str| async move {
            let request = Request::get(path)
                .header(header::AUTHORIZATION, "Bearer s3cret")
                .body(body::empty())
                .unwrap();
            let response = service.oneshot(request).await.unwrap();
            let status = response.status();
            let _ = response.into_body().collect().await.unwrap();
            status
        };
        let token = Some(Secret::new("s3cret".to_owned()));
        let guarded = PublicMetrics::new(app.clone(), token, Arc::clone(&text));
        assert_eq!(status(guarded.clone(), "/metrics").await, StatusCode::OK);
        assert_eq!(status(guarded, "/_status").await, StatusCode::OK);
        let open = PublicMetrics::new(app, None, text);
        assert_eq!(status(open, "/metrics").await, StatusCode::NOT_FOUND);
    }
}
