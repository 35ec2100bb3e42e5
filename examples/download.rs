//! wharf-download embedded alone: the Document Download Frontend on wharf-http,
//! fully offline.
//!
//! ```sh
//! cargo run --example download                 # offline app on 127.0.0.1:7001
//! cargo run --example download -- 127.0.0.1:7101 127.0.0.1:7102
//! ```
//!
//! With one address it serves the offline default: pages plus the local
//! document API and service directory, and logs the two sample URLs. With two,
//! it also serves a second app on the second address whose upstream calls go
//! over HTTP to the first one's local APIs (what `bench/download.sh` measures).

use std::net::SocketAddr;
use std::time::Duration;

use wharf_download::{default_assets_dir, Assets, DownloadApp};
use wharf_http::{Health, Listener, Server, ServerConfig, StatusInfo};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let local_addr: SocketAddr = args.next().as_deref().unwrap_or("127.0.0.1:7001").parse()?;
    let http_addr: Option<SocketAddr> = args.next().map(|a| a.parse()).transpose()?;
    let assets = Assets::load(&default_assets_dir())?;
    let local_dir = std::env::temp_dir().join("wharf-download-example");

    let offline = DownloadApp::builder()
        .local_api(&local_dir)
        .local_public_base(&format!("http://{local_addr}"))
        .assets(assets.clone())
        .build()?;
    for sample in offline.samples() {
        println!(
            "Sample ({}): http://{local_addr}{}{}",
            sample.description,
            sample.path,
            sample
                .confirm_email_address
                .as_deref()
                .map(|e| format!("  (confirm with {e})"))
                .unwrap_or_default()
        );
    }
    let health = || {
        Health::new(StatusInfo {
            git_commit: "example".into(),
            build_time: "unknown".into(),
            environment: "development".into(),
        })
    };
    let config = ServerConfig {
        access_log: false,
        ..ServerConfig::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let shutdown = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut servers = Vec::new();
    servers.push(tokio::spawn(
        Server::new(config.clone()).with_health(health()).serve(
            vec![Listener::bind(local_addr)?],
            offline,
            shutdown(stop_rx.clone()),
        ),
    ));
    if let Some(http_addr) = http_addr {
        let upstream = format!("http://{local_addr}");
        let app = DownloadApp::builder()
            .notify_api(&upstream, "example-secret")
            .document_api(&upstream, &upstream)
            .assets(assets)
            .request_timeout(Duration::from_secs(5))
            .build()?;
        println!("Pages with upstream calls over HTTP: http://{http_addr}/d/... (same paths)");
        servers.push(tokio::spawn(
            Server::new(config).with_health(health()).serve(
                vec![Listener::bind(http_addr)?],
                app,
                shutdown(stop_rx),
            ),
        ));
    }
    tokio::signal::ctrl_c().await?;
    let _ = stop_tx.send(true);
    for server in servers {
        server.await??;
    }
    Ok(())
}
