//! What the harness's two Rust helpers (`bare-hyper`, `stub-apis`) share:
//! reading their settings from the environment and building their runtime.

use std::error::Error;

/// The result type of the helpers' `main` and its parts.
pub type BoxResult<T> = Result<T, Box<dyn Error>>;

/// Reads and parses the environment variable `name`; `Ok(None)` when it is unset.
pub fn env_parse<T>(name: &str) -> BoxResult<Option<T>>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(raw) => raw
            .trim()
            .parse()
            .map(Some)
            .map_err(|e| format!("{name}={raw:?} is not valid: {e}").into()),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(e) => Err(format!("{name}: {e}").into()),
    }
}

/// A multi-thread tokio runtime with `WORKER_THREADS` threads (default: one
/// per CPU); 0 is an error.
pub fn runtime() -> BoxResult<tokio::runtime::Runtime> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = env_parse::<usize>("WORKER_THREADS")? {
        if threads == 0 {
            return Err("WORKER_THREADS must be at least 1".into());
        }
        runtime.worker_threads(threads);
    }
    Ok(runtime.build()?)
}
