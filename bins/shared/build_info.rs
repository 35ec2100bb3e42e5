//! What the build script embedded: shown by `--version` and `/_status`.

/// The git commit the binary was built from, or `unknown`.
pub(crate) const GIT_COMMIT: &str = env!("BUILD_INFO_GIT_COMMIT");
/// When the binary was built (RFC 3339), or `unknown`.
pub(crate) const BUILD_TIME: &str = env!("BUILD_INFO_TIME");
/// `--version` text: the package version, commit and build time.
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("BUILD_INFO_GIT_COMMIT"),
    ", built ",
    env!("BUILD_INFO_TIME"),
    ")"
);
