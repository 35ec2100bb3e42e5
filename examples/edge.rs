//! wharf-edge alone: check an edge configuration file the way a deploy
//! pipeline would before rolling it out (the parser and the routing table,
//! without certificates or the environment), then serve it.
//!
//! ```sh
//! cargo run --example edge -- examples/edge.toml          # check only
//! cargo run --example edge -- examples/edge.toml --serve  # then serve it
//! ```

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: edge FILE [--serve]");
        return ExitCode::from(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("{path}: {error}");
            return ExitCode::from(2);
        }
    };
    // A mistake names its line, as `edge check-config` does.
    if let Err(error) = wharf_edge::check_toml(&text) {
        match error.line {
            Some(line) => eprintln!("{path}:{line}: {}", error.message),
            None => eprintln!("{path}: {}", error.message),
        }
        return ExitCode::from(78);
    }
    println!("{path}: ok");
    if args.next().as_deref() != Some("--serve") {
        return ExitCode::SUCCESS;
    }
    // What the `edge` binary does, certificates and all.
    wharf_edge::serve(
        Some(path.into()),
        wharf_edge::BuildInfo {
            git_commit: "example",
            build_time: "unknown",
            version: "example",
        },
    )
}
