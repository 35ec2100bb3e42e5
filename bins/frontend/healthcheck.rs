//! `frontend healthcheck`: a dependency-free HTTP/1.1 GET of our own `/_status`,
//! so container images need no curl.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use wharf_config::{Environment, ServerSection};

/// Exits 0 when `/_status` answers 200 within `timeout`, 1 otherwise (saying why on stderr).
pub(crate) fn run(server: &ServerSection, environment: Environment, timeout: Duration) -> ExitCode {
    let ip = match server.bind_address(environment) {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let addr = SocketAddr::new(ip, server.port);
    match wharf_http::probe(addr, "/_status", timeout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("frontend healthcheck: http://{addr}/_status: {why}");
            ExitCode::FAILURE
        }
    }
}
