//! End-to-end tests: the built binaries run as processes against real clients.
//! One test binary with a module per area keeps link time down.

// Test support code: a failed unwrap is a failed test with a line number, and
// `pub` here only means "shared between the test modules".
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    unreachable_pub,
    missing_docs
)]

mod acme;
mod bench;
mod browser;
mod deploy;
mod docs;
mod drain;
mod edge;
mod frontend;
mod hardening;
mod listen;
mod load;
mod nginx_limit_req;
mod ratelimit;
mod reliability;
mod relisten;
mod shared_state;
mod supervisor;
mod support;
mod telemetry;
mod traces;
