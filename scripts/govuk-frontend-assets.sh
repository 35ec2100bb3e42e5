#!/usr/bin/env bash
# Installs the GOV.UK Frontend assets wharf-download serves under /static/.
#
# Usage: scripts/govuk-frontend-assets.sh [DEST]   (default: crates/download/static)
#
# Fetches the `govuk-frontend` npm package (version pinned below) with `npm pack`,
# copies its compiled stylesheet, script, fonts and images to DEST, and rewrites
# the stylesheet's `/assets/` URLs to `/static/assets/`. The app fingerprints every
# file by content when it loads DEST (pages link `/static/<name>.<hash>.<ext>`,
# served as immutable), so nothing here needs to be re-run after a deploy; a
# `manifest.txt` lists what was installed with each file's SHA-256. Without DEST
# the pages still work, unstyled. Set WHARF_DOWNLOAD_ASSETS_DIR to serve another DEST.
set -euo pipefail

VERSION="${GOVUK_FRONTEND_VERSION:-5.7.1}"
cd "$(dirname "$0")/.."
DEST="${1:-crates/download/static}"

command -v npm >/dev/null || { echo "govuk-frontend-assets: npm is needed (apt-get install npm)" >&2; exit 1; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "govuk-frontend@${VERSION}" >/dev/null)
tar -xzf "$work"/govuk-frontend-*.tgz -C "$work"
src="$work/package/dist/govuk"
[[ -f "$src/govuk-frontend.min.css" ]] || { echo "govuk-frontend-assets: unexpected package layout" >&2; exit 1; }

rm -rf "$DEST"
mkdir -p "$DEST/assets"
sed 's#url(/assets/#url(/static/assets/#g; s#url("/assets/#url("/static/assets/#g' \
  "$src/govuk-frontend.min.css" > "$DEST/govuk-frontend.min.css"
cp "$src/govuk-frontend.min.js" "$DEST/govuk-frontend.min.js"
cp -R "$src/assets/fonts" "$src/assets/images" "$DEST/assets/"
(cd "$DEST" && find . -type f ! -name manifest.txt | sort | xargs sha256sum > manifest.txt)
echo "govuk-frontend ${VERSION}: $(($(wc -l < "$DEST/manifest.txt"))) files in $DEST"
