//! Test support shared by every wharf test suite (the crates' `tests/` and
//! `benches/`, and the end-to-end tests in `tests/e2e`): one copy of each
//! helper that used to be written again in each suite.
//!
//! - [`free_port`] and [`wait_for_port`]: loopback ports for servers a test
//!   starts.
//! - [`RedisServer`]: a `redis-server` of the test's own on a free port, with
//!   no persistence, answering `PING` before it is handed over, killed on
//!   drop; [`RedisServer::cmd`] sends it a command without a client library.
//! - [`Process`]: a child process whose stdout and stderr are read all the
//!   time (a chatty child never blocks on a full pipe), so that its output
//!   can be shown when a test fails; killed on drop.
//!
//! Certificates are not here: every suite makes its self-signed ones with
//! `wharf_tls::SelfSigned`, the generator edge itself uses.
//!
//! A dev-dependency only (`publish = false`): its helpers panic, since a
//! failed helper is a failed test.
//!
//! ```no_run
//! use std::process::Command;
//! use wharf_test::{free_port, Process, RedisServer};
//!
//! // Its own Redis, already answering PING.
//! let redis = RedisServer::start();
//! assert_eq!(redis.cmd(&["SET", "k", "v"]), "OK");
//!
//! // A server under test, pointed at it; returned once its port accepts.
//! let port = free_port();
//! let server = Process::serve(
//!     Command::new("frontend")
//!         .arg("serve")
//!         .env("PORT", port.to_string())
//!         .env("REDIS_URL", redis.url()),
//!     port,
//! );
//! assert_eq!(server.addr().port(), port);
//! // Everything it printed so far, stdout and stderr as they arrived.
//! println!("{}", server.logs());
//! // SIGTERM, then up to 10 s for the exit: its last words.
//! let last = server.stop();
//! # let _ = last;
//! ```

// A helper's failure is the test's failure: it panics with what it saw.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::missing_panics_doc)]

mod net;
mod process;
mod redis;

pub use net::{free_port, wait_for_port};
pub use process::Process;
pub use redis::RedisServer;
