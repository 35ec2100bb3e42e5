//! Docs that are output (issue #26): the examples of what the binaries print
//! and the tables of what they handle are checked against the binaries and
//! their source, so they cannot drift.

use std::process::Command;

use crate::reliability::FRONTEND;

fn read(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The fenced code blocks of a Markdown text.
fn code_blocks(text: &str) -> Vec<Vec<&str>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in text.lines() {
        if line.starts_with("```") {
            match current.take() {
                Some(block) => blocks.push(block),
                None => current = Some(Vec::new()),
            }
        } else if let Some(block) = current.as_mut() {
            block.push(line);
        }
    }
    blocks
}

/// Every example in docs/configuration.md that runs `frontend` with only
/// variables on its command line (no `…`) prints exactly what the block
/// shows, on stderr, with exit 78.
#[test]
fn the_configuration_docs_show_what_frontend_prints() {
    let doc = read("docs/configuration.md");
    let mut checked = 0;
    for block in code_blocks(&doc) {
        let Some(command) = block.first().and_then(|l| l.strip_prefix("$ ")) else {
            continue;
        };
        if command.contains('…') || !command.split_whitespace().any(|w| w == "frontend") {
            continue;
        }
        let words: Vec<&str> = command.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "frontend").unwrap();
        let mut run = Command::new(FRONTEND);
        run.env_clear().env("PATH", "/usr/bin:/bin");
        for assignment in &words[..at] {
            let (name, value) = assignment.split_once('=').unwrap();
            run.env(name, value);
        }
        run.args(&words[at + 1..]);
        let out = run.output().unwrap();
        let expected = block[1..].join("\n");
        if expected.contains("invalid configuration") {
            assert_eq!(out.status.code(), Some(78), "{command}");
            assert_eq!(
                String::from_utf8_lossy(&out.stderr).trim_end(),
                expected.trim_end(),
                "docs/configuration.md, `{command}`: the binary prints something else"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 1,
        "no runnable error example found in docs/configuration.md"
    );
}

/// The signals table of docs/operations.md names every signal the master
/// handles (crates/supervisor/src/master/).
#[test]
fn the_signal_table_lists_every_signal_the_master_handles() {
    // The master's modules (crates/supervisor/src/master/), all of them.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crates/supervisor/src/master");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    assert!(files.len() > 1, "{files:?}");
    let master: String = files
        .iter()
        .map(|path| std::fs::read_to_string(path).unwrap())
        .collect();
    let operations = read("docs/operations.md");
    let table = operations
        .split("## Signals")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("a Signals section in docs/operations.md");
    let known = [
        ("SignalKind::terminate()", "SIGTERM"),
        ("SignalKind::interrupt()", "SIGINT"),
        ("SignalKind::quit()", "SIGQUIT"),
        ("SignalKind::hangup()", "SIGHUP"),
        ("SignalKind::user_defined1()", "SIGUSR1"),
        ("SignalKind::user_defined2()", "SIGUSR2"),
        ("libc::SIGTTIN)", "SIGTTIN"),
        ("libc::SIGTTOU)", "SIGTTOU"),
    ];
    let mut handled = 0;
    for (code, name) in known {
        if master.contains(&format!("signal({code}"))
            || master.contains(&format!("from_raw({code}"))
        {
            handled += 1;
            assert!(
                table.contains(&format!("`{name}`")),
                "the master handles {name}; docs/operations.md's signal table does not say what it does"
            );
        }
    }
    // The master's own loop: TERM, INT, QUIT, HUP, TTIN, TTOU, USR2 at least.
    assert!(
        handled >= 7,
        "found {handled} handled signals: the scan is broken"
    );
}
