//! `portcullis`: transparent, per-binary egress control for sandboxes.

use std::process::ExitCode;

/// mimalloc: the proxy allocates per request (heads, events); with glibc's
/// allocator `cargo xtask bench` measured a fifth fewer L7 requests a
/// second. Transparent huge pages stay off (`no_thp`): with them, resident
/// memory at 1,000 idle connections grew by half.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
