//! What a binary says about itself and whether a server answers: the build
//! facts its build script recorded ([`build_info!`](crate::build_info)), and
//! a dependency-free HTTP/1.1 GET ([`probe`]) for `healthcheck` subcommands,
//! so container images need no curl.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// What a binary was built from: shown by `--version` and `/_status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildInfo {
    /// The git commit, or `unknown`.
    pub git_commit: &'static str,
    /// When it was built (RFC 3339), or `unknown`.
    pub build_time: &'static str,
    /// `--version` text: the package version, commit and build time.
    pub version: &'static str,
}

/// The calling binary's [`BuildInfo`], from the `BUILD_INFO_GIT_COMMIT` and
/// `BUILD_INFO_TIME` its build script sets (expanded in the caller's crate,
/// so they are the binary's, not this library's). A binary's `main.rs`
/// (its build script must set both variables, as `bins/build.rs` does):
///
/// ```text
/// const BUILD: wharf_http::BuildInfo = wharf_http::build_info!();
/// #[derive(clap::Parser)]
/// #[command(version = BUILD.version)]
/// struct Cli {}
/// ```
#[macro_export]
macro_rules! build_info {
    () => {
        $crate::BuildInfo {
            git_commit: env!("BUILD_INFO_GIT_COMMIT"),
            build_time: env!("BUILD_INFO_TIME"),
            version: concat!(
                env!("CARGO_PKG_VERSION"),
                " (",
                env!("BUILD_INFO_GIT_COMMIT"),
                ", built ",
                env!("BUILD_INFO_TIME"),
                ")"
            ),
        }
    };
}

/// Why [`probe`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// No TCP connection within the timeout.
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The request could not be written.
    #[error("cannot send: {0}")]
    Send(#[source] std::io::Error),
    /// Nothing came back within the timeout.
    #[error("no answer: {0}")]
    NoAnswer(#[source] std::io::Error),
    /// An answer other than 200: its status line.
    #[error("answered {0:?}")]
    Status(String),
}

/// GETs `path` from `addr` with HTTP/1.1; `Ok` when the answer is 200 within
/// `timeout` (for each of connect, send and the first read).
///
/// ```no_run
/// use std::time::Duration;
/// let addr = "127.0.0.1:7001".parse().unwrap();
/// match wharf_http::probe(addr, "/_status", Duration::from_secs(2)) {
///     Ok(()) => println!("healthy"),
///     Err(why) => eprintln!("unhealthy: {why}"),
/// }
/// ```
pub fn probe(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(), ProbeError> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(ProbeError::Connect)?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(ProbeError::Send)?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: wharf-healthcheck\r\nConnection: close\r\n\r\n"
    )
    .map_err(ProbeError::Send)?;
    let mut head = [0_u8; 64];
    let n = stream.read(&mut head).map_err(ProbeError::NoAnswer)?;
    let line = String::from_utf8_lossy(&head[..n]);
    if line.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(ProbeError::Status(
            line.lines().next().unwrap_or_default().to_owned(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-shot server answering `answer` to the first request.
    fn answering(answer: &'static str) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = [0_u8; 512];
            let n = stream.read(&mut request).unwrap();
            assert!(String::from_utf8_lossy(&request[..n]).starts_with("GET /_status HTTP/1.1\r\n"));
            stream.write_all(answer.as_bytes()).unwrap();
        });
        addr
    }

    #[test]
    fn a_200_is_healthy_and_anything_else_says_what_came() {
        let timeout = Duration::from_secs(2);
        let ok = answering("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert!(probe(ok, "/_status", timeout).is_ok());
        let busy = answering("HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let error = probe(busy, "/_status", timeout).unwrap_err();
        assert_eq!(
            error.to_string(),
            "answered \"HTTP/1.1 503 Service Unavailable\""
        );
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(matches!(
            probe(closed, "/_status", timeout),
            Err(ProbeError::Connect(_))
        ));
    }
}
