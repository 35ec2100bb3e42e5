//! What the build script embedded: shown by `--version` and `/_status`.

/// The git commit the binary was built from, or `unknown`.
pub(crate) const GIT_COMMIT: &str = env!("WHARF_GIT_COMMIT");
/// When the binary was built (RFC 3339), or `unknown`.
pub(crate) const BUILD_TIME: &str = env!("WHARF_BUILD_TIME");
/// `--version` text: the package version, commit and build time.
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("WHARF_GIT_COMMIT"),
    ", built ",
    env!("WHARF_BUILD_TIME"),
    ")"
);
