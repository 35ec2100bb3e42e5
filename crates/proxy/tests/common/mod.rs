//! Shared by the test binaries: wharf-http serving a proxy, as `edge` does.

use std::net::SocketAddr;

use tokio::sync::oneshot;
use wharf_http::{Listener, Server, ServerConfig};
use wharf_proxy::{Proxy, ProxySettings, Upstream, UpstreamConfig};

/// `edge`-like front: wharf-http serving the proxy (with its health
/// checks, if the group has any).
pub(crate) struct Front {
    pub(crate) addr: SocketAddr,
    pub(crate) proxy: Proxy,
    _stop: oneshot::Sender<()>,
}

pub(crate) async fn front(upstream: UpstreamConfig, settings: ProxySettings) -> Front {
    let proxy = Proxy::new(Upstream::new(upstream).unwrap(), settings);
    let _ = proxy.spawn_health_checks();
    let listener = Listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let service = proxy.clone();
    tokio::spawn(async move {
        Server::new(ServerConfig {
            access_log: false,
            ..ServerConfig::default()
        })
        .serve(vec![listener], service, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Front {
        addr,
        proxy,
        _stop: tx,
    }
}
