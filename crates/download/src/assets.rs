//! Static assets under `/static/`: loaded once, fingerprinted by content.
//!
//! Every file of the assets directory is served at its own path
//! (`/static/assets/fonts/x.woff2`, cached for a day: the stylesheet refers to
//! those) and at a fingerprinted path (`/static/govuk-frontend.min.3f2a9c1b0d.css`,
//! cached as immutable for a year), which is the one pages link to.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// Where assets are served from.
pub(crate) const STATIC_PREFIX: &str = "/static/";

/// One loaded file.
#[derive(Debug, Clone)]
pub(crate) struct Asset {
    pub(crate) body: Bytes,
    pub(crate) content_type: &'static str,
    /// Whether this path carries the content hash (so may be cached forever).
    pub(crate) immutable: bool,
}

/// The loaded asset set. Empty is fine: pages then render unstyled.
#[derive(Debug, Clone, Default)]
pub struct Assets {
    /// Path below `/static/` → file.
    files: HashMap<String, Asset>,
    /// Logical path → fingerprinted URL.
    urls: HashMap<String, String>,
}

/// Why assets could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AssetsError {
    /// A file or directory could not be read.
    #[error("cannot read asset {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or_default() {
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "map" | "json" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "webmanifest" => "application/manifest+json",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// `name.ext` → `name.HASH.ext` (the hash before the last extension).
fn fingerprinted(logical: &str, hash: &str) -> String {
    let (dir, file) = logical
        .rsplit_once('/')
        .map_or(("", logical), |(d, f)| (d, f));
    let named = match file.split_once('.') {
        Some((stem, ext)) => format!("{stem}.{hash}.{ext}"),
        None => format!("{file}.{hash}"),
    };
    if dir.is_empty() {
        named
    } else {
        format!("{dir}/{named}")
    }
}

impl Assets {
    /// No assets.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Loads every file under `dir` (recursively). A missing directory gives
    /// an empty set.
    pub fn load(dir: &Path) -> Result<Self, AssetsError> {
        let mut assets = Self::default();
        if !dir.is_dir() {
            return Ok(assets);
        }
        let mut pending = vec![dir.to_path_buf()];
        while let Some(current) = pending.pop() {
            let entries = std::fs::read_dir(&current).map_err(|source| AssetsError::Read {
                path: current.clone(),
                source,
            })?;
            for entry in entries {
                let entry = entry.map_err(|source| AssetsError::Read {
                    path: current.clone(),
                    source,
                })?;
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                    continue;
                }
                let body = std::fs::read(&path).map_err(|source| AssetsError::Read {
                    path: path.clone(),
                    source,
                })?;
                let Some(logical) = path
                    .strip_prefix(dir)
                    .ok()
                    .and_then(Path::to_str)
                    .map(|p| p.replace('\\', "/"))
                else {
                    continue;
                };
                assets.insert(&logical, Bytes::from(body));
            }
        }
        Ok(assets)
    }

    /// Adds one file at `logical` (a path below `/static/`).
    pub fn insert(&mut self, logical: &str, body: Bytes) {
        let digest = Sha256::digest(&body);
        let hash = crate::random::to_hex(&digest[..5]);
        let fingerprinted = fingerprinted(logical, &hash);
        let content_type = content_type(logical);
        self.files.insert(
            logical.to_owned(),
            Asset {
                body: body.clone(),
                content_type,
                immutable: false,
            },
        );
        self.files.insert(
            fingerprinted.clone(),
            Asset {
                body,
                content_type,
                immutable: true,
            },
        );
        self.urls.insert(
            logical.to_owned(),
            format!("{STATIC_PREFIX}{fingerprinted}"),
        );
    }

    /// The fingerprinted URL of a logical path, when that file is loaded.
    pub fn url(&self, logical: &str) -> Option<&str> {
        self.urls.get(logical).map(String::as_str)
    }

    /// How many files were loaded.
    pub fn len(&self) -> usize {
        self.urls.len()
    }

    /// Whether no file was loaded.
    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    pub(crate) fn get(&self, path_below_static: &str) -> Option<&Asset> {
        self.files.get(path_below_static)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_by_content_and_serves_both_paths() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("assets/fonts")).unwrap();
        std::fs::write(dir.path().join("govuk-frontend.min.css"), "body{}").unwrap();
        std::fs::write(dir.path().join("assets/fonts/a.woff2"), [0u8, 1, 2]).unwrap();
        let assets = Assets::load(dir.path()).unwrap();
        assert_eq!(assets.len(), 2);
        let url = assets.url("govuk-frontend.min.css").unwrap();
        assert!(url.starts_with("/static/govuk-frontend."), "{url}");
        assert_eq!(
            Path::new(url).extension().and_then(|e| e.to_str()),
            Some("css")
        );
        let fp = assets.get(&url["/static/".len()..]).unwrap();
        assert!(fp.immutable);
        assert_eq!(fp.content_type, "text/css; charset=utf-8");
        assert!(!assets.get("govuk-frontend.min.css").unwrap().immutable);
        assert!(assets
            .url("assets/fonts/a.woff2")
            .unwrap()
            .starts_with("/static/assets/fonts/a."));
        assert!(Assets::load(&dir.path().join("missing"))
            .unwrap()
            .is_empty());
    }
}
