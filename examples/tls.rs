//! wharf-tls alone: serve HTTPS (HTTP/2 and HTTP/1.1) with a certificate that
//! is reloaded when its files change or on SIGHUP.
//!
//! ```sh
//! cargo run --example tls             # https://localhost:8443/ (self-signed)
//! curl -sk --http2 https://localhost:8443/
//! ```

use std::convert::Infallible;

use http::{Request, Response};
use wharf_http::{body, Body, Listener, Server, ServerConfig, TlsInfo};
use wharf_tls::{KeyKind, SelfSigned, TlsConfig, TlsSettings};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join("wharf-tls-example");
    std::fs::create_dir_all(&dir)?;
    // In production these are certbot's fullchain.pem and privkey.pem.
    let pair =
        SelfSigned::generate(&["localhost"], KeyKind::EcdsaP256)?.write(&dir, "localhost")?;
    let tls = TlsConfig::load(&TlsSettings::with_certificates(vec![pair]))?;
    let _watcher = tls.watch();
    let _sighup = tls.reload_on_sighup()?;

    let app = tower::service_fn(|request: Request<Body>| async move {
        let info = request
            .extensions()
            .get::<TlsInfo>()
            .cloned()
            .unwrap_or_default();
        let text = format!("hello over {} ({:?})\n", info.version, info.alpn);
        Ok::<_, Infallible>(Response::new(body::full(text)))
    });
    let listener = Listener::bind("127.0.0.1:8443".parse()?)?;
    println!("https://localhost:8443/ (certificate in {})", dir.display());
    Server::new(ServerConfig::default())
        .serve_with(vec![listener], tls.acceptor(), app, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
