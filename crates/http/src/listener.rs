//! [`Listener`]: an already-bound TCP listening socket the server accepts on.

use std::io;
use std::net::SocketAddr;
#[cfg(unix)]
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Why a listener could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenerError {
    /// Binding the address failed (in use, not permitted, …).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's reason.
        source: io::Error,
    },
    /// An inherited file descriptor is not a listening TCP socket.
    #[error("inherited socket is not a listening TCP socket: {0}")]
    NotListening(String),
    /// Another operating-system failure while preparing the socket.
    #[error("cannot prepare listening socket: {0}")]
    Io(#[from] io::Error),
}

/// A bound, listening TCP socket. Make one with [`Listener::bind`], from a
/// `std` listener, or from a file descriptor inherited from a supervisor or
/// systemd ([`Listener::from_owned_fd`]).
#[derive(Debug)]
pub struct Listener {
    socket: std::net::TcpListener,
}

/// The accept backlog requested for sockets wharf binds itself when none is
/// given (the kernel caps it at `net.core.somaxconn`).
pub const BACKLOG: u32 = 1024;

impl Listener {
    /// Binds `addr` with `SO_REUSEADDR` (a restart does not wait for
    /// `TIME_WAIT`) and a backlog of [`BACKLOG`]. An IPv6 unspecified address
    /// also accepts IPv4 where the system allows it.
    pub fn bind(addr: SocketAddr) -> Result<Self, ListenerError> {
        Self::bind_with_backlog(addr, BACKLOG)
    }

    /// [`bind`](Self::bind) with an accept queue of `backlog` connections
    /// (handshake complete, not yet accepted); the kernel caps it at
    /// `net.core.somaxconn` and drops connection attempts beyond it.
    pub fn bind_with_backlog(addr: SocketAddr, backlog: u32) -> Result<Self, ListenerError> {
        let bind = || -> io::Result<Socket> {
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            if addr.is_ipv6() {
                socket.set_only_v6(false)?;
            }
            socket.bind(&addr.into())?;
            socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
            Ok(socket)
        };
        let socket = bind().map_err(|source| ListenerError::Bind { addr, source })?;
        Ok(Self {
            socket: socket.into(),
        })
    }

    /// Wraps a listening `std` listener.
    pub fn from_std(listener: std::net::TcpListener) -> Self {
        Self { socket: listener }
    }

    /// Adopts an inherited socket (a supervisor's or systemd's `LISTEN_FDS`),
    /// checking that it is a listening TCP socket.
    #[cfg(unix)]
    pub fn from_owned_fd(fd: OwnedFd) -> Result<Self, ListenerError> {
        let socket = Socket::from(fd);
        match socket.r#type() {
            Ok(t) if t == Type::STREAM => {}
            Ok(t) => return Err(ListenerError::NotListening(format!("socket type {t:?}"))),
            Err(e) => return Err(ListenerError::NotListening(e.to_string())),
        }
        if !socket.is_listener()? {
            return Err(ListenerError::NotListening(
                "listen() was not called on it".to_owned(),
            ));
        }
        if socket.local_addr()?.as_socket().is_none() {
            return Err(ListenerError::NotListening("not an IP socket".to_owned()));
        }
        Ok(Self {
            socket: socket.into(),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// A second handle on the same socket (e.g. to read its accept queue
    /// while a server accepts on this one).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            socket: self.socket.try_clone()?,
        })
    }

    /// Converts to a tokio listener; must run inside a tokio runtime.
    pub(crate) fn into_tokio(self) -> io::Result<tokio::net::TcpListener> {
        self.socket.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(self.socket)
    }
}

#[cfg(unix)]
impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl From<std::net::TcpListener> for Listener {
    fn from(listener: std::net::TcpListener) -> Self {
        Self::from_std(listener)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_reports_the_address_in_use() {
        let first = Listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        let err = Listener::bind(addr).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot listen on {addr}")),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn an_inherited_fd_must_be_a_listening_tcp_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let adopted = Listener::from_owned_fd(OwnedFd::from(listener)).unwrap();
        assert_eq!(adopted.local_addr().unwrap(), addr);

        let stream = std::net::TcpStream::connect(addr).unwrap();
        let err = Listener::from_owned_fd(OwnedFd::from(stream)).unwrap_err();
        assert!(matches!(err, ListenerError::NotListening(_)), "{err}");

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert!(Listener::from_owned_fd(OwnedFd::from(udp)).is_err());
    }
}
