//! wharf-telemetry alone: JSON log lines with structured fields.
//!
//! ```sh
//! cargo run --example telemetry
//! RUST_LOG=debug cargo run --example telemetry
//! ```

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    let _log = wharf_telemetry::init(&wharf_telemetry::LogSettings {
        format: wharf_telemetry::LogFormat::Json,
        filter,
    })?;
    tracing::info!(port = 7001, "Listening");
    tracing::debug!(detail = "only with RUST_LOG=debug", "Debugging");
    tracing::warn!(slot = 3, pid = 4242, "Worker restarted");
    Ok(())
}
