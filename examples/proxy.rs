//! wharf-proxy alone: a reverse proxy on 8080 to two servers and a backup,
//! as the seeds' nginx `upstream` block, with passive health.
//!
//! ```sh
//! PORT=8000 cargo run --bin frontend & PORT=8001 cargo run --bin frontend &
//! cargo run --example proxy           # then: curl -s localhost:8080/_status
//! ```

use std::time::Duration;

use wharf_http::{Listener, Server, ServerConfig};
use wharf_proxy::{Proxy, ProxySettings, Upstream, UpstreamConfig, UpstreamServer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let upstream = Upstream::new(UpstreamConfig::new(
        "backend",
        vec![
            UpstreamServer::new("127.0.0.1:8000".parse()?).weight(3),
            UpstreamServer::new("127.0.0.1:8001".parse()?).weight(3),
            UpstreamServer::new("127.0.0.1:8002".parse()?)
                .weight(1)
                .backup(),
        ],
    ))
    .ok_or("no servers")?;
    let proxy = Proxy::new(
        upstream,
        ProxySettings {
            connect_timeout: Duration::from_secs(30),
            ..ProxySettings::default()
        },
    );
    let listener = Listener::bind("127.0.0.1:8080".parse()?)?;
    println!("http://127.0.0.1:8080/ -> backend");
    Server::new(ServerConfig::default())
        .serve(vec![listener], proxy, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
