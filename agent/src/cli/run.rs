use std::{os::unix::process::ExitStatusExt, path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::Args;

use crate::{
    config::AgentConfig,
    control::{client, pb},
    sandbox::spawn,
};

#[derive(Args)]
pub struct RunArgs {
    /// The sandbox to run in.
    #[arg(long)]
    sandbox: String,
    /// User to run as (name or uid); root is refused. Default: the
    /// configuration's `default_user` (nobody).
    #[arg(long)]
    user: Option<String>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

pub async fn run(config: &AgentConfig, args: RunArgs) -> Result<ExitCode> {
    let mut client = client::connect(&config.control_socket()).await?;
    let sandbox = client
        .get_sandbox(pb::GetSandboxRequest {
            name: args.sandbox.clone(),
        })
        .await
        .map_err(client::status_error)?
        .into_inner();
    let workload = spawn::resolve_user(args.user.as_deref().unwrap_or(&config.default_user))?;
    let mut env = spawn::sandbox_env(&sandbox.name, &PathBuf::from(&sandbox.trust_bundle));
    // Attached credentials: the workload gets placeholders, never values.
    let providers = client
        .list_sandbox_providers(pb::ListSandboxProvidersRequest {
            sandbox: sandbox.name.clone(),
        })
        .await
        .map_err(client::status_error)?
        .into_inner();
    for key in providers.providers.iter().flat_map(|p| &p.credential_keys) {
        env.push((
            key.clone(),
            crate::providers::placeholder::placeholder(key).into(),
        ));
    }
    let mut cmd = spawn::command(
        &PathBuf::from(&sandbox.cgroup_path),
        &workload,
        &env,
        &args.command,
    )?;
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting `{}`", args.command[0]))?;
    // The child shares our terminal and process group: Ctrl-C reaches it.
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    Ok(match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(signal)) => ExitCode::from(128 + signal as u8),
        _ => ExitCode::FAILURE,
    })
}
