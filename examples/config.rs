//! wharf-config alone: a service's own configuration from the environment.
//!
//! ```sh
//! cargo run --example config
//! GREETING=hi PORT=9000 cargo run --example config
//! NOTIFY_ENVIRONMENT=production PORT=x cargo run --example config   # exits 78
//! ```

use serde::{Deserialize, Serialize};
use wharf_config::{parse, Loader, Secret, ServerSection, Var, EXIT_CONFIG};

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
struct HelloConfig {
    server: ServerSection,
    greeting: Option<String>,
    api_token: Option<Secret<String>>,
}

fn main() {
    let mut vars = ServerSection::vars("server");
    vars.push(Var::new("GREETING", "greeting", parse::text()).help("what to say"));
    vars.push(
        Var::new("API_TOKEN", "api_token", parse::text())
            .secret()
            .required_when_deployed(),
    );
    match Loader::new(vars).load::<HelloConfig>() {
        Ok(loaded) => {
            println!("environment: {}", loaded.environment);
            println!("config: {:?}", loaded.config);
            for entry in loaded.report() {
                println!("  {} = {} ({})", entry.variable, entry.value, entry.source);
            }
        }
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(EXIT_CONFIG);
        }
    }
}
