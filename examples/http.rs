//! wharf-http alone: serve any tower service with production limits, health
//! routes and graceful drain.
//!
//! ```sh
//! cargo run --example http            # http://127.0.0.1:8080/ and /_status
//! curl -s localhost:8080/hello; curl -s localhost:8080/_status
//! ```

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use wharf_http::{body, Body, Health, Listener, Server, ServerConfig, StatusInfo};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _log = wharf_telemetry::init(&wharf_telemetry::LogSettings {
        format: wharf_telemetry::LogFormat::Pretty,
        filter: "info".into(),
    })?;
    let app = tower::service_fn(|request: Request<Body>| async move {
        let text = format!("hello from {}\n", request.uri().path());
        Ok::<_, Infallible>(Response::new(body::full(text)))
    });
    let health = Health::new(StatusInfo {
        git_commit: "example".into(),
        build_time: "unknown".into(),
        environment: "development".into(),
    })
    .readiness_check("always", Duration::from_millis(100), || async { Ok(()) });
    let listener = Listener::bind("127.0.0.1:8080".parse()?)?;
    tracing::info!(address = %listener.local_addr()?, "Listening");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let report = Server::new(ServerConfig::default())
        .with_health(health)
        .serve(vec![listener], app, shutdown)
        .await?;
    tracing::info!(forced = report.forced, "Stopped");
    Ok(())
}
