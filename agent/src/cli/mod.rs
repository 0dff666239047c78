//! Command-line entry: parse, dispatch, exit codes.

mod down;
mod logs;
mod policy;
pub mod provider;
pub mod rule;
mod run;
mod sandbox;
mod status;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::config::AgentConfig;

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "Transparent, per-binary egress control for sandboxed workloads"
)]
struct Cli {
    /// Agent configuration (YAML). Defaults to /etc/portcullis/agent.yaml
    /// when present, else the embedded defaults.
    #[arg(long, global = true, env = "PORTCULLIS_CONFIG")]
    config: Option<PathBuf>,
    /// Talk to a remote agent's `control_tcp` listener (https://host:port)
    /// instead of the local socket; needs the three --remote-* files.
    #[arg(long, global = true, env = "PORTCULLIS_REMOTE", requires_all = ["remote_ca", "remote_cert", "remote_key"])]
    remote: Option<String>,
    /// PEM CA that signed the agent's listener certificate.
    #[arg(long, global = true, env = "PORTCULLIS_REMOTE_CA")]
    remote_ca: Option<PathBuf>,
    /// This operator's PEM certificate and key.
    #[arg(long, global = true, env = "PORTCULLIS_REMOTE_CERT")]
    remote_cert: Option<PathBuf>,
    #[arg(long, global = true, env = "PORTCULLIS_REMOTE_KEY")]
    remote_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent daemon (as root).
    Agent,
    /// Show the agent's health: programs attached, sandboxes, connections, drops.
    Status,
    /// Manage sandboxes.
    #[command(subcommand)]
    Sandbox(sandbox::SandboxCommand),
    /// Run a command inside a sandbox.
    Run(run::RunArgs),
    /// Manage sandbox policies: set (hot reload), get, list, history.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Review what agents proposed: get, approve, reject, approve-all,
    /// undo, clear, history, watch.
    #[command(subcommand, alias = "draft")]
    Rule(rule::RuleCommand),
    /// Manage providers: credentials that stay on the host.
    #[command(subcommand)]
    Provider(provider::ProviderCommand),
    /// A live inbox of proposals from every sandbox: review, approve,
    /// reject with guidance, edit, undo.
    Inbox,
    /// Show a sandbox's audit events.
    Logs(logs::LogsArgs),
    /// Stop the agent and remove programs, pins and sandbox cgroups.
    Down,
}

pub fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let config = AgentConfig::load(cli.config.as_deref())?;
    if let (Some(url), Some(ca), Some(cert), Some(key)) =
        (cli.remote, cli.remote_ca, cli.remote_cert, cli.remote_key)
    {
        crate::control::client::use_remote(crate::control::client::Remote { url, ca, cert, key });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.command {
        Command::Agent => {
            let result = runtime.block_on(crate::daemon::run(config));
            // The audit log is flushed by now; do not wait for tasks that
            // serve forever (listeners, ring readers, the audit writer).
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            result.map(|()| ExitCode::SUCCESS)
        }
        Command::Status => runtime.block_on(status::run(&config)),
        Command::Sandbox(cmd) => runtime.block_on(sandbox::run(&config, cmd)),
        Command::Run(args) => runtime.block_on(run::run(&config, args)),
        Command::Policy(cmd) => runtime.block_on(policy::run(&config, cmd)),
        Command::Rule(cmd) => runtime.block_on(rule::run(&config, cmd)),
        Command::Provider(cmd) => runtime.block_on(provider::run(&config, cmd)),
        Command::Inbox => runtime.block_on(crate::inbox::run(&config)),
        Command::Logs(args) => logs::run(&config, args),
        Command::Down => runtime.block_on(down::run(&config)),
    }
}
