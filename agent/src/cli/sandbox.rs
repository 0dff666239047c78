use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::{
    config::AgentConfig,
    control::{client, pb},
};

#[derive(Subcommand)]
pub enum SandboxCommand {
    /// Create a sandbox: a cgroup whose sockets the agent captures.
    Create {
        name: String,
        /// Policy YAML; without one the sandbox denies all egress.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// How proposals from the sandbox are decided: `manual` (an
        /// operator approves each) or `auto` (chunks with no new findings
        /// and no security notes are approved at once).
        #[arg(long, value_parser = ["manual", "auto"], default_value = "manual")]
        approval_mode: String,
    },
    /// Attach, detach or list a sandbox's providers.
    #[command(subcommand)]
    Provider(super::provider::SandboxProviderCommand),
    /// Change how a sandbox's proposals are decided: manual or auto.
    ApprovalMode {
        name: String,
        #[arg(value_parser = ["manual", "auto"])]
        mode: String,
    },
    /// Put an existing cgroup (for example a container's) under Portcullis.
    Adopt {
        name: String,
        /// Absolute path of the cgroup v2 directory.
        #[arg(long)]
        cgroup: PathBuf,
        #[arg(long)]
        policy: Option<PathBuf>,
    },
    /// List sandboxes.
    List,
    /// Delete a sandbox: kill its processes and remove its cgroup (adopted
    /// cgroups are only detached).
    Delete { name: String },
}

fn read_policy(path: &Option<PathBuf>) -> Result<(String, String)> {
    match path {
        None => Ok((String::new(), String::new())),
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("--policy {}: cannot read", p.display()))?;
            // Validate here too, so the error comes before any round trip.
            let policy = crate::policy::Policy::parse(&p.display().to_string(), &text)?;
            for w in policy.warnings() {
                eprintln!("warning: {}: {w}", p.display());
            }
            Ok((text, p.display().to_string()))
        }
    }
}

pub async fn run(config: &AgentConfig, cmd: SandboxCommand) -> Result<ExitCode> {
    let mut client = client::connect(&config.control_socket()).await?;
    match cmd {
        SandboxCommand::Create {
            name,
            policy,
            approval_mode,
        } => {
            let (policy_yaml, policy_source) = read_policy(&policy)?;
            let s = client
                .create_sandbox(pb::CreateSandboxRequest {
                    name,
                    policy_yaml,
                    policy_source,
                    approval_mode,
                })
                .await
                .map_err(client::status_error)?
                .into_inner();
            println!(
                "created sandbox {} (cgroup {}, {} programs attached, approval mode {})",
                s.name, s.cgroup_path, s.links_attached, s.approval_mode
            );
        }
        SandboxCommand::ApprovalMode { name, mode } => {
            let s = client
                .set_approval_mode(pb::SetApprovalModeRequest {
                    sandbox: name,
                    approval_mode: mode,
                })
                .await
                .map_err(client::status_error)?
                .into_inner();
            println!("sandbox {}: approval mode {}", s.name, s.approval_mode);
        }
        SandboxCommand::Adopt {
            name,
            cgroup,
            policy,
        } => {
            let (policy_yaml, policy_source) = read_policy(&policy)?;
            let s = client
                .adopt_sandbox(pb::AdoptSandboxRequest {
                    name,
                    cgroup_path: cgroup.display().to_string(),
                    policy_yaml,
                    policy_source,
                })
                .await
                .map_err(client::status_error)?
                .into_inner();
            println!(
                "adopted {} as sandbox {} ({} programs attached)",
                s.cgroup_path, s.name, s.links_attached
            );
            println!("note: sockets connected before adoption are not captured");
        }
        SandboxCommand::List => {
            let list = client
                .list_sandboxes(pb::ListSandboxesRequest {})
                .await
                .map_err(client::status_error)?
                .into_inner();
            println!(
                "{:<20} {:>4} {:>6} {:<8} {:<24} CGROUP",
                "NAME", "ID", "LINKS", "KIND", "POLICY"
            );
            for s in list.sandboxes {
                let policy = if s.policy.is_empty() {
                    "(deny all)".to_string()
                } else {
                    s.policy
                };
                let kind = if s.adopted { "adopted" } else { "owned" };
                println!(
                    "{:<20} {:>4} {:>6} {:<8} {:<24} {}",
                    s.name, s.id, s.links_attached, kind, policy, s.cgroup_path
                );
            }
        }
        SandboxCommand::Provider(cmd) => {
            return super::provider::run_sandbox(&mut client, cmd).await;
        }
        SandboxCommand::Delete { name } => {
            let r = client
                .delete_sandbox(pb::DeleteSandboxRequest { name: name.clone() })
                .await
                .map_err(client::status_error)?
                .into_inner();
            println!(
                "deleted sandbox {name} ({} processes killed)",
                r.processes_killed
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
