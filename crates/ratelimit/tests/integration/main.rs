//! Integration tests of wharf-ratelimit against real redis-server processes
//! (and real nginx for the differential test). One binary, several modules.

// Test support code: a failed unwrap is a failed test with a line number, and
// `pub` here only means "shared between the test modules". Casts between
// counts and floats are for error ratios.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    clippy::items_after_statements,
    clippy::format_collect,
    clippy::format_push_string,
    unreachable_pub,
    missing_docs
)]

mod cluster;
mod faults;
mod layer;
mod nginx;
mod redis;
mod support;
