//! `SHIPPED_SECRETS` cannot drift: every value the repository gives to
//! `SECRET_KEY`, `DANGEROUS_SALT` or `ADMIN_CLIENT_SECRET` (env files, YAML,
//! docs, Rust tests and examples, the download builder's keys, `Secret`
//! examples) must be on the list a deployed environment refuses.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};

const NAMES: [&str; 3] = ["SECRET_KEY", "DANGEROUS_SALT", "ADMIN_CLIENT_SECRET"];

/// Directories that hold no shipped text of ours (when git is not there to
/// say what ships).
const SKIP_DIRS: [&str; 8] = [
    ".git",
    "target",
    "node_modules",
    "corpus",
    "artifacts",
    "static",
    "__pycache__",
    ".venv",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every text file that ships, with its path relative to the root: what git
/// tracks or would add (never an ignored file such as a real `deploy/.env`);
/// without git, the tree less build output and `.env` files.
fn shipped_files(root: &Path) -> Vec<(String, String)> {
    let listed = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .ok()
        .filter(|out| out.status.success());
    let mut out = Vec::new();
    match listed {
        Some(listed) => {
            for path in String::from_utf8_lossy(&listed.stdout).split('\0') {
                let full = root.join(path);
                if path.is_empty() || std::fs::metadata(&full).map_or(true, |m| m.len() >= 1 << 20)
                {
                    continue;
                }
                if let Ok(text) = std::fs::read_to_string(&full) {
                    out.push((path.to_owned(), text));
                }
            }
        }
        None => walk(root, root, &mut out),
    }
    out
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<(String, String)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            if !SKIP_DIRS.contains(&name.as_str()) {
                walk(&path, root, out);
            }
        } else if kind.is_file() && name != ".env" && entry.metadata().unwrap().len() < 1 << 20 {
            if let Ok(text) = std::fs::read_to_string(&path) {
                let relative = path.strip_prefix(root).unwrap().display().to_string();
                out.push((relative, text));
            }
        }
    }
}

/// The string literal at the start of `text` (after blanks; `b"…"` too).
fn literal(text: &str) -> Option<String> {
    let text = text.trim_start();
    let text = text.strip_prefix('b').unwrap_or(text);
    let rest = text.strip_prefix('"')?;
    let mut value = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(value),
            '\\' => value.push(chars.next()?),
            c => value.push(c),
        }
    }
    None
}

fn unquote(value: &str) -> &str {
    let value = value.trim();
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value)
}

/// A value that is really a value: not empty, not an interpolation.
fn real(value: &str) -> bool {
    let value = value.trim();
    !value.is_empty() && !value.starts_with("${") && !value.starts_with("((")
}

/// Values found in one file, each with its line number.
type Found = Vec<(String, usize)>;

fn line_of(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

fn has_extension(path: &str, extensions: &[&str]) -> bool {
    Path::new(path)
        .extension()
        .is_some_and(|e| extensions.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// `NAME=value`: env files, shell, docs, strings holding a `.env`.
fn assignments(text: &str, found: &mut Found) {
    for name in NAMES {
        for (at, _) in text.match_indices(&format!("{name}=")) {
            // A name of its own, or after an escaped newline in a string.
            let before = &text[..at];
            let escaped = before.ends_with("\\n") || before.ends_with("\\t");
            let joined = before
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            if joined && !escaped {
                continue;
            }
            let tail = &text[at + name.len() + 1..];
            let end = tail
                .find(|c: char| c.is_whitespace() || "\"'\\,;)`".contains(c))
                .unwrap_or(tail.len());
            found.push((unquote(&tail[..end]).to_owned(), line_of(text, at)));
        }
    }
}

/// `NAME: value` (YAML) and `name: value` (Cloud Foundry vars, in YAML or
/// in the docs).
fn mappings(text: &str, upper_case: bool, found: &mut Found) {
    for name in NAMES {
        let lower = name.to_ascii_lowercase();
        for (number, line) in text.lines().enumerate() {
            let trimmed = line.trim_start();
            let value = trimmed.strip_prefix(&format!("{lower}:")).or_else(|| {
                upper_case
                    .then(|| trimmed.strip_prefix(&format!("{name}:")))
                    .flatten()
            });
            if let Some(value) = value {
                let value = value.split(" #").next().unwrap_or_default();
                found.push((unquote(value).to_owned(), number + 1));
            }
        }
    }
}

/// Rust: `("NAME", "value")`, `insert("NAME", "value".into())`,
/// `const …SECRET…/…SALT…: &str = "value"`, the download builder's
/// `.secret_key(…)` and `.notify_api(…, "secret")`, `Secret::new("…")`.
fn rust_values(text: &str, found: &mut Found) {
    for name in NAMES {
        for (at, _) in text.match_indices(&format!("\"{name}\"")) {
            let tail = text[at + name.len() + 2..].trim_start();
            if let Some(value) = tail.strip_prefix(',').and_then(literal) {
                // Var::new("NAME", "name", …) names the key, and a list of
                // names is no value.
                if value != name.to_ascii_lowercase() && !NAMES.contains(&value.as_str()) {
                    found.push((value, line_of(text, at)));
                }
            }
        }
    }
    for (at, _) in text.match_indices("const ") {
        let Some((ident, after)) = text[at + 6..].split_once(": &str =") else {
            continue;
        };
        if ident.len() < 60
            && ident
                .chars()
                .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
            && (ident.contains("SECRET") || ident.contains("SALT"))
        {
            if let Some(value) = literal(after) {
                found.push((value, line_of(text, at)));
            }
        }
    }
    for call in [".secret_key(", "Secret::new("] {
        for (at, _) in text.match_indices(call) {
            if let Some(value) = literal(&text[at + call.len()..]) {
                found.push((value, line_of(text, at)));
            }
        }
    }
    for (at, _) in text.match_indices(".notify_api(") {
        let args = &text[at + ".notify_api(".len()..];
        // Up to the closing parenthesis; the secret is the last argument.
        let mut depth = 0_usize;
        let Some(end) = args.find(|c| {
            match c {
                '(' => depth += 1,
                ')' if depth == 0 => return true,
                ')' => depth -= 1,
                _ => {}
            }
            false
        }) else {
            continue;
        };
        if let Some(value) = args[..end].rsplit(',').next().and_then(literal) {
            found.push((value, line_of(text, at)));
        }
    }
}

/// (value, where) for every secret value given in `text` of file `path`.
fn values(path: &str, text: &str) -> Vec<(String, String)> {
    let mut found = Found::new();
    assignments(text, &mut found);
    if has_extension(path, &["yml", "yaml"]) {
        mappings(text, true, &mut found);
    } else if has_extension(path, &["md"]) {
        mappings(text, false, &mut found);
    } else if has_extension(path, &["rs"]) {
        rust_values(text, &mut found);
    }
    found
        .into_iter()
        .filter(|(value, _)| real(value))
        .map(|(value, line)| (value, format!("{path}:{line}")))
        .collect()
}

#[test]
fn every_secret_value_in_the_repository_is_refused_when_deployed() {
    let root = workspace_root();
    let all = shipped_files(&root);
    assert!(all.len() > 100, "read only {} files", all.len());
    let found: Vec<(String, String)> = all
        .iter()
        // This scanner's own patterns are no values.
        .filter(|(path, _)| !path.ends_with("config/tests/shipped_secrets.rs"))
        .flat_map(|(path, text)| values(path, text))
        .collect();
    // The scan sees what it must (so it is not vacuous).
    for (expected, place) in [
        ("wharf-development-only-secret-key", "bins/frontend/main.rs"),
        ("…", "docs/deploy.md"),
        (
            "secret-key-value-0x5ecret",
            "tests/e2e/reliability/secrets.rs",
        ),
        ("admin-client-secret-value", "tests/e2e/reliability/mod.rs"),
        ("very-secret-value", "tests/e2e/frontend.rs"),
        ("from-dotenv", "crates/config/src/tests.rs"),
        ("test secret key", "crates/download/tests/support/mod.rs"),
        ("example-secret", "examples/download.rs"),
    ] {
        assert!(
            found
                .iter()
                .any(|(value, at)| value == expected && at.starts_with(place)),
            "the scan missed {expected:?} in {place}: {found:?}"
        );
    }
    let missing: Vec<&(String, String)> = found
        .iter()
        .filter(|(value, _)| wharf_config::shipped_secret(value).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "these values ship in the repository but are not in SHIPPED_SECRETS \
         (crates/config/src/keys.rs), so a deployed frontend would accept them: {missing:?}"
    );
}
