//! `portcullis policy set|get|list|history`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::{
    config::AgentConfig,
    control::{client, pb},
};

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy and swap it in for a sandbox, without restarting
    /// anything. An invalid policy is rejected and the current one stays.
    Set {
        sandbox: String,
        #[arg(long)]
        policy: PathBuf,
        /// Return only once the new snapshot is in force. The swap is
        /// synchronous, so this is the default behaviour; the flag is kept
        /// for OpenShell scripts.
        #[arg(long)]
        wait: bool,
    },
    /// Show the policy in force: version, hash, source; --full adds the policy.
    Get {
        sandbox: String,
        #[arg(long)]
        full: bool,
    },
    /// The policy in force for every sandbox.
    List,
    /// Every revision of a sandbox's policy, loaded, failed and superseded.
    History { sandbox: String },
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

pub async fn run(config: &AgentConfig, cmd: PolicyCommand) -> Result<ExitCode> {
    let mut client = client::connect(&config.control_socket()).await?;
    match cmd {
        PolicyCommand::Set {
            sandbox,
            policy,
            wait: _,
        } => {
            let yaml = std::fs::read_to_string(&policy)
                .with_context(|| format!("--policy {}: cannot read", policy.display()))?;
            let rev = client
                .set_policy(pb::SetPolicyRequest {
                    sandbox: sandbox.clone(),
                    policy_yaml: yaml,
                    source: policy.display().to_string(),
                })
                .await
                .map_err(client::status_error)?
                .into_inner();
            for w in &rev.warnings {
                eprintln!("warning: {w}");
            }
            if rev.unchanged {
                println!(
                    "sandbox {sandbox}: policy unchanged (version {}, hash {})",
                    rev.version, rev.hash
                );
            } else {
                println!(
                    "sandbox {sandbox}: policy version {} loaded (hash {}, {} rules)",
                    rev.version, rev.hash, rev.rules
                );
            }
        }
        PolicyCommand::Get { sandbox, full } => {
            let reply = client
                .get_policy(pb::GetPolicyRequest { sandbox, full })
                .await
                .map_err(client::status_error)?
                .into_inner();
            let rev = reply.revision.unwrap_or_default();
            println!("sandbox   {}", rev.sandbox);
            println!("version   {}", rev.version);
            println!("hash      {}", rev.hash);
            println!("status    {}", rev.status);
            println!("source    {}", rev.source);
            println!("rules     {}", rev.rules);
            for w in &rev.warnings {
                println!("warning   {w}");
            }
            if full {
                println!("--- policy (as submitted)");
                print!("{}", reply.yaml);
                println!("--- canonical (hashed)");
                println!("{}", reply.canonical_json);
            }
        }
        PolicyCommand::List => {
            let reply = client
                .list_policies(pb::ListPoliciesRequest {})
                .await
                .map_err(client::status_error)?
                .into_inner();
            println!(
                "{:<20} {:>7} {:<14} {:>6} SOURCE",
                "SANDBOX", "VERSION", "HASH", "RULES"
            );
            for p in reply.policies {
                println!(
                    "{:<20} {:>7} {:<14} {:>6} {}",
                    p.sandbox,
                    p.version,
                    short(&p.hash),
                    p.rules,
                    p.source
                );
            }
        }
        PolicyCommand::History { sandbox } => {
            let reply = client
                .policy_history(pb::PolicyHistoryRequest { sandbox })
                .await
                .map_err(client::status_error)?
                .into_inner();
            println!(
                "{:>7} {:<11} {:<14} {:<24} SOURCE / ERROR",
                "VERSION", "STATUS", "HASH", "CREATED (UTC)"
            );
            for r in reply.revisions {
                let created = crate::audit::format_timestamp(r.created_unix_ms as i64);
                let detail = if r.error.is_empty() {
                    r.source
                } else {
                    format!("{}: {}", r.source, r.error)
                };
                println!(
                    "{:>7} {:<11} {:<14} {:<24} {}",
                    r.version,
                    r.status,
                    short(&r.hash),
                    created,
                    detail
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
