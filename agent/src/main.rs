//! `portcullis`: transparent, per-binary egress control for sandboxes.

use std::process::ExitCode;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    match portcullis_agent::cli::main() {
        Ok(code) => code,
        Err(err) => {
            eprintln!("portcullis: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
