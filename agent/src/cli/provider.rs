//! `portcullis provider create|update|get|list|delete` and
//! `portcullis sandbox provider attach|detach|list`. Values travel from
//! here to the agent over the control socket and are never printed.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use crate::{
    config::AgentConfig,
    control::{client, pb},
};

#[derive(Subcommand)]
pub enum ProviderCommand {
    /// Register credentials on the host. A `--credential KEY` without a
    /// value takes it from this shell's environment (or --from-file).
    Create {
        name: String,
        /// The provider type: a profile (github, gitlab, generic).
        #[arg(long = "type")]
        provider_type: String,
        /// `KEY=VALUE` or `KEY`; repeatable.
        #[arg(long = "credential", required = true)]
        credentials: Vec<String>,
        /// Read the value of a bare `--credential KEY` from this file
        /// (one credential only; a trailing newline is dropped).
        #[arg(long)]
        from_file: Option<PathBuf>,
    },
    /// Rotate: set (or with --remove, drop) credential values atomically.
    Update {
        name: String,
        #[arg(long = "credential")]
        credentials: Vec<String>,
        #[arg(long)]
        from_file: Option<PathBuf>,
        #[arg(long)]
        remove: Vec<String>,
    },
    /// One provider: type, credential key names, where they may go.
    Get {
        name: String,
    },
    List,
    /// Delete a provider; refused while a sandbox has it attached.
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum SandboxProviderCommand {
    /// Attach a provider; its credential keys appear as placeholders in
    /// new workloads and its profile's rule joins the effective policy.
    Attach {
        sandbox: String,
        provider: String,
    },
    Detach {
        sandbox: String,
        provider: String,
    },
    List {
        sandbox: String,
    },
}

/// `KEY=VALUE`, `KEY` (from the environment) or `KEY` with --from-file.
fn credentials(args: &[String], from_file: Option<&PathBuf>) -> Result<Vec<pb::Credential>> {
    let bare = args.iter().filter(|a| !a.contains('=')).count();
    if from_file.is_some() && bare != 1 {
        bail!("--from-file gives one value: pass exactly one --credential KEY without `=`");
    }
    let mut out = Vec::new();
    for arg in args {
        let (key, value) = match arg.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => {
                let value = match from_file {
                    Some(path) => {
                        let text = std::fs::read_to_string(path)
                            .with_context(|| format!("--from-file {}: cannot read", path.display()))?;
                        text.strip_suffix('\n').unwrap_or(&text).to_string()
                    }
                    None => std::env::var(arg).with_context(|| {
                        format!(
                            "--credential {arg}: no value given and `{arg}` is not set in this environment; use {arg}=VALUE, export it, or --from-file"
                        )
                    })?,
                };
                (arg.clone(), value)
            }
        };
        if key.is_empty() {
            bail!("--credential {arg}: the key is empty; write KEY=VALUE");
        }
        if value.is_empty() {
            bail!("--credential {key}: the value is empty");
        }
        out.push(pb::Credential { key, value });
    }
    Ok(out)
}

fn print_provider(p: &pb::Provider) {
    println!("Name:        {}", p.name);
    println!("Type:        {}", p.r#type);
    println!("Credentials: {}", p.credential_keys.join(", "));
    println!("Revision:    {}", p.revision);
    if !p.bound_to.is_empty() {
        println!("Bound to:    {}", p.bound_to.join(", "));
    }
    if !p.sandboxes.is_empty() {
        println!("Sandboxes:   {}", p.sandboxes.join(", "));
    }
}

fn print_table(providers: &[pb::Provider]) {
    println!("{:<24} {:<10} {:<8} CREDENTIAL_KEYS", "NAME", "TYPE", "REV");
    for p in providers {
        println!(
            "{:<24} {:<10} {:<8} {}",
            p.name,
            p.r#type,
            p.revision,
            p.credential_keys.join(",")
        );
    }
}

pub async fn run(config: &AgentConfig, cmd: ProviderCommand) -> Result<ExitCode> {
    let mut client = client::connect(&config.control_socket()).await?;
    match cmd {
        ProviderCommand::Create {
            name,
            provider_type,
            credentials: args,
            from_file,
        } => {
            let p = client
                .create_provider(pb::CreateProviderRequest {
                    name,
                    r#type: provider_type,
                    credentials: credentials(&args, from_file.as_ref())?,
                })
                .await
                .map_err(client::status_error)?
                .into_inner();
            println!(
                "created provider {} ({} credential(s))",
                p.name,
                p.credential_keys.len()
            );
        }
        ProviderCommand::Update {
            name,
            credentials: args,
            from_file,
            remove,
        } => {
            if args.is_empty() && remove.is_empty() {
                bail!("nothing to update: pass --credential KEY[=VALUE] or --remove KEY");
            }
            let p = client
                .update_provider(pb::UpdateProviderRequest {
                    name,
                    set: credentials(&args, from_file.as_ref())?,
                    remove,
                })
                .await
                .map_err(client::status_error)?
                .into_inner();
            println!("updated provider {} (revision {})", p.name, p.revision);
        }
        ProviderCommand::Get { name } => {
            let p = client
                .get_provider(pb::GetProviderRequest { name })
                .await
                .map_err(client::status_error)?
                .into_inner();
            print_provider(&p);
        }
        ProviderCommand::List => {
            let list = client
                .list_providers(pb::ListProvidersRequest {})
                .await
                .map_err(client::status_error)?
                .into_inner();
            print_table(&list.providers);
        }
        ProviderCommand::Delete { name } => {
            client
                .delete_provider(pb::DeleteProviderRequest { name: name.clone() })
                .await
                .map_err(client::status_error)?;
            println!("deleted provider {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `sandbox provider ...`, on the `sandbox` command's connection.
pub async fn run_sandbox(
    client: &mut pb::control_client::ControlClient<tonic::transport::Channel>,
    cmd: SandboxProviderCommand,
) -> Result<ExitCode> {
    match cmd {
        SandboxProviderCommand::Attach { sandbox, provider } => {
            let r = client
                .attach_provider(pb::AttachProviderRequest {
                    sandbox: sandbox.clone(),
                    provider: provider.clone(),
                })
                .await
                .map_err(client::status_error)?
                .into_inner();
            if r.changed {
                println!("attached provider {provider} to sandbox {sandbox}");
            } else {
                println!("provider {provider} was already attached to sandbox {sandbox}");
            }
        }
        SandboxProviderCommand::Detach { sandbox, provider } => {
            let r = client
                .detach_provider(pb::AttachProviderRequest {
                    sandbox: sandbox.clone(),
                    provider: provider.clone(),
                })
                .await
                .map_err(client::status_error)?
                .into_inner();
            if r.changed {
                println!("detached provider {provider} from sandbox {sandbox}");
            } else {
                println!("provider {provider} was not attached to sandbox {sandbox}");
            }
        }
        SandboxProviderCommand::List { sandbox } => {
            let list = client
                .list_sandbox_providers(pb::ListSandboxProvidersRequest { sandbox })
                .await
                .map_err(client::status_error)?
                .into_inner();
            print_table(&list.providers);
        }
    }
    Ok(ExitCode::SUCCESS)
}
