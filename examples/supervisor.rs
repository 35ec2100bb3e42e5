//! wharf-supervisor alone: a tiny hello service run as a master and worker
//! processes, with readiness-gated reloads (`kill -HUP`), crash restarts and
//! one `/metrics` for the instance.
//!
//! ```sh
//! WEB_CONCURRENCY=2 WHARF_ADMIN_ADDRESS=127.0.0.1:9101 cargo run --example supervisor
//! curl -s localhost:8080/; curl -s localhost:9101/metrics | grep wharf_workers
//! kill -HUP <master pid>    # workers replaced one by one, nothing dropped
//! ```

use std::convert::Infallible;
use std::sync::Arc;

use http::{Request, Response};
use wharf_config::{EnvMap, Loader};
use wharf_http::{body, Body, Listener, RequestHook, Server, ServerConfig};
use wharf_supervisor::{Supervisor, SupervisorSection};

#[derive(Default, serde::Serialize, serde::Deserialize)]
#[serde(default)]
struct Config {
    supervisor: SupervisorSection,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let _log = wharf_telemetry::init(&wharf_telemetry::LogSettings {
        format: wharf_telemetry::LogFormat::Pretty,
        filter: "info".into(),
    })?;
    // WEB_CONCURRENCY, WHARF_ADMIN_ADDRESS, WHARF_MAX_REQUESTS, … from the environment.
    let config = Loader::new(SupervisorSection::vars("supervisor"))
        .env(EnvMap::from_process())
        .dotenv(None)
        .load::<Config>()?
        .config;
    Supervisor::new(config.supervisor)
        .listen("127.0.0.1:8080".parse()?)
        .run(|mut ctx| async move {
            let listeners = ctx
                .take_listeners()
                .into_iter()
                .map(Listener::from_std)
                .collect();
            let slot = ctx.slot();
            let app = tower::service_fn(move |_request: Request<Body>| async move {
                Ok::<_, Infallible>(Response::new(body::full(format!(
                    "hello from worker {slot:?}\n"
                ))))
            });
            // Count every request for the master's heartbeats and max_requests.
            let stats = ctx.stats();
            let hook: RequestHook = Arc::new(move || Box::new(stats.start_request()));
            let serving = Server::new(ServerConfig::default())
                .with_request_hook(hook)
                .serve(listeners, app, ctx.shutdown_signal());
            ctx.ready();
            serving.await.map(|_| ())
        })?;
    Ok(())
}
