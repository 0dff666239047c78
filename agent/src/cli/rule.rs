//! `portcullis rule` (alias `draft`): review the chunks agents proposed
//! (reference §8.1): get, approve, reject, approve-all, undo, clear,
//! history, watch.

use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use tokio_stream::StreamExt;

use crate::{
    audit::format_timestamp,
    config::AgentConfig,
    control::{client, pb},
    drafts::render,
};

#[derive(Subcommand)]
pub enum RuleCommand {
    /// List a sandbox's chunks, newest first.
    Get {
        sandbox: String,
        /// Only chunks in this status: pending, approved or rejected.
        #[arg(long, value_parser = ["pending", "approved", "rejected"])]
        status: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Approve one chunk as it reads now (its review token is fetched and
    /// checked, so a chunk that changed since is refused).
    Approve {
        sandbox: String,
        #[arg(long)]
        chunk_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Reject a pending chunk, or revoke an approved one. The reason is
    /// returned to the agent verbatim.
    Reject {
        sandbox: String,
        #[arg(long)]
        chunk_id: String,
        #[arg(long, default_value = "")]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Approve every pending chunk in one policy version. Chunks with
    /// security notes are skipped unless --include-security-flagged.
    ApproveAll {
        sandbox: String,
        #[arg(long)]
        include_security_flagged: bool,
        #[arg(long)]
        json: bool,
    },
    /// Put an approved chunk back to pending, removing what it added.
    Undo {
        sandbox: String,
        #[arg(long)]
        chunk_id: String,
    },
    /// Delete every pending chunk of a sandbox.
    Clear { sandbox: String },
    /// Proposals and decisions, oldest first.
    History {
        sandbox: String,
        #[arg(long)]
        json: bool,
    },
    /// Print chunks as they are proposed and decided (all sandboxes when
    /// none is named). Runs until interrupted.
    Watch {
        sandbox: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

fn short(text: &str, n: usize) -> &str {
    text.get(..n).unwrap_or(text)
}

fn chunk_json(c: &pb::DraftChunk) -> Value {
    json!({
        "id": c.id,
        "sandbox": c.sandbox,
        "status": c.status,
        "rule_name": c.rule_name,
        "proposed_rule": serde_json::from_str::<Value>(&c.proposed_rule_json).unwrap_or(Value::Null),
        "rationale": c.rationale,
        "security_notes": c.security_notes,
        "confidence": c.confidence,
        "stage": c.stage,
        "analysis_mode": c.analysis_mode,
        "binary": c.binary,
        "hit_count": c.hit_count,
        "created_at_ms": c.created_at_ms,
        "decided_at_ms": c.decided_at_ms,
        "first_seen_ms": c.first_seen_ms,
        "last_seen_ms": c.last_seen_ms,
        "validation_result": c.validation_result,
        "rejection_reason": c.rejection_reason,
        "application_error": c.application_error,
        "review_token": c.review_token,
        "current_effective_policy_hash": c.current_effective_policy_hash,
        "candidate_effective_policy_hash": c.candidate_effective_policy_hash,
        "approved_policy_version": c.approved_policy_version,
        "provider_name": c.provider_name,
        "provider_type": c.provider_type,
    })
}

/// One chunk in the reference's layout: labelled lines, continuation
/// lines indented under the value.
pub fn format_chunk(c: &pb::DraftChunk) -> String {
    let rule: Value = serde_json::from_str(&c.proposed_rule_json).unwrap_or(Value::Null);
    let mut lines: Vec<(&str, String)> = vec![
        ("Chunk:", c.id.clone()),
        ("Status:", c.status.clone()),
        ("Rule:", c.rule_name.clone()),
    ];
    if !c.provider_name.is_empty() {
        lines.push((
            "Provider:",
            format!(
                "attach '{}' ({}) to the sandbox; its credentials go to the endpoints below",
                c.provider_name, c.provider_type
            ),
        ));
    }
    lines.extend([
        ("Binary:", c.binary.clone()),
        ("Confidence:", format!("{:.0}%", c.confidence * 100.0)),
    ]);
    if !c.rationale.is_empty() {
        lines.push(("Rationale:", c.rationale.clone()));
    }
    if !c.security_notes.is_empty() {
        lines.push(("Security:", c.security_notes.clone()));
    }
    if !c.validation_result.is_empty() {
        lines.push(("Prover:", c.validation_result.clone()));
    }
    if !c.application_error.is_empty() {
        lines.push(("Application:", c.application_error.clone()));
    }
    if !c.rejection_reason.is_empty() {
        lines.push(("Reason:", c.rejection_reason.clone()));
    }
    if !c.candidate_effective_policy_hash.is_empty() {
        lines.push((
            "Candidate:",
            short(&c.candidate_effective_policy_hash, 12).to_string(),
        ));
    }
    if c.approved_policy_version > 0 {
        lines.push(("Version:", c.approved_policy_version.to_string()));
    }
    lines.push(("Endpoints:", render::endpoints(&rule).join("\n")));
    lines.push(("Binaries:", render::binaries(&rule).join("\n")));
    if c.hit_count > 1 {
        lines.push((
            "Hits:",
            format!(
                "{} (first seen {}, last seen {})",
                c.hit_count,
                format_timestamp(c.first_seen_ms),
                format_timestamp(c.last_seen_ms)
            ),
        ));
    }
    let mut out = String::new();
    for (label, value) in lines {
        for (i, line) in value.lines().enumerate() {
            let label = if i == 0 { label } else { "" };
            out.push_str(&format!("  {label:<13}{}\n", line.trim_start()));
        }
        if value.is_empty() {
            out.push_str(&format!("  {label}\n"));
        }
    }
    out
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

async fn fetch_token(
    client: &mut pb::control_client::ControlClient<tonic::transport::Channel>,
    sandbox: &str,
    chunk_id: &str,
) -> Result<String> {
    let reply = client
        .get_draft_policy(pb::GetDraftPolicyRequest {
            sandbox: sandbox.to_string(),
            status_filter: String::new(),
        })
        .await
        .map_err(client::status_error)?
        .into_inner();
    match reply.chunks.iter().find(|c| c.id == chunk_id) {
        Some(c) => Ok(c.review_token.clone()),
        None => bail!(
            "--chunk-id {chunk_id}: no such chunk in sandbox `{sandbox}` (see `portcullis rule get {sandbox}`)"
        ),
    }
}

pub async fn run(config: &AgentConfig, cmd: RuleCommand) -> Result<ExitCode> {
    let mut client = client::connect(&config.control_socket()).await?;
    match cmd {
        RuleCommand::Get {
            sandbox,
            status,
            json,
        } => {
            let reply = client
                .get_draft_policy(pb::GetDraftPolicyRequest {
                    sandbox: sandbox.clone(),
                    status_filter: status.unwrap_or_default(),
                })
                .await
                .map_err(client::status_error)?
                .into_inner();
            if json {
                print_json(&json!({
                    "sandbox": sandbox,
                    "policy_version": reply.policy_version,
                    "draft_version": reply.draft_version,
                    "approval_mode": reply.approval_mode,
                    "chunks": reply.chunks.iter().map(chunk_json).collect::<Vec<_>>(),
                }));
            } else if reply.chunks.is_empty() {
                println!("No network rules for sandbox '{sandbox}'");
            } else {
                println!(
                    "Network Rules:  (version {}, {} chunks)",
                    reply.policy_version,
                    reply.chunks.len()
                );
                for c in &reply.chunks {
                    println!();
                    print!("{}", format_chunk(c));
                }
            }
        }
        RuleCommand::Approve {
            sandbox,
            chunk_id,
            json,
        } => {
            let review_token = fetch_token(&mut client, &sandbox, &chunk_id).await?;
            let rev = client
                .approve_draft_chunk(pb::ApproveDraftChunkRequest {
                    sandbox,
                    chunk_id,
                    review_token,
                })
                .await
                .map_err(client::status_error)?
                .into_inner();
            if json {
                print_json(&json!({"policy_version": rev.version, "policy_hash": rev.hash}));
            } else {
                println!(
                    "Chunk approved. Policy version: {}, hash: {}",
                    rev.version,
                    short(&rev.hash, 12)
                );
            }
        }
        RuleCommand::Reject {
            sandbox,
            chunk_id,
            reason,
            json,
        } => {
            let reply = client
                .reject_draft_chunk(pb::RejectDraftChunkRequest {
                    sandbox,
                    chunk_id,
                    reason,
                })
                .await
                .map_err(client::status_error)?
                .into_inner();
            if json {
                print_json(&json!({
                    "chunk": reply.chunk.as_ref().map(chunk_json),
                    "policy_version": reply.revision.as_ref().map(|r| r.version),
                }));
            } else if let Some(rev) = reply.revision {
                println!(
                    "Chunk revoked and rejected. Policy version: {}, hash: {}",
                    rev.version,
                    short(&rev.hash, 12)
                );
            } else {
                println!("Chunk rejected.");
            }
        }
        RuleCommand::ApproveAll {
            sandbox,
            include_security_flagged,
            json,
        } => {
            let pending = client
                .get_draft_policy(pb::GetDraftPolicyRequest {
                    sandbox: sandbox.clone(),
                    status_filter: "pending".into(),
                })
                .await
                .map_err(client::status_error)?
                .into_inner();
            let approvals = pending
                .chunks
                .iter()
                .map(|c| pb::ChunkApproval {
                    chunk_id: c.id.clone(),
                    review_token: c.review_token.clone(),
                })
                .collect();
            let reply = client
                .approve_all_draft_chunks(pb::ApproveAllDraftChunksRequest {
                    sandbox,
                    include_security_flagged,
                    approvals,
                })
                .await
                .map_err(client::status_error)?
                .into_inner();
            if json {
                print_json(&json!({
                    "chunks_approved": reply.chunks_approved,
                    "chunks_skipped": reply.chunks_skipped,
                    "skipped": reply.skipped.iter().map(|s| json!({"chunk_id": s.chunk_id, "reason": s.reason})).collect::<Vec<_>>(),
                    "policy_version": reply.revision.as_ref().map(|r| r.version),
                }));
            } else {
                print!(
                    "Approved {} chunk(s), skipped {}.",
                    reply.chunks_approved, reply.chunks_skipped
                );
                match &reply.revision {
                    Some(rev) => println!(
                        " Policy version: {}, hash: {}",
                        rev.version,
                        short(&rev.hash, 12)
                    ),
                    None => println!(),
                }
                for s in &reply.skipped {
                    println!("  skipped [{}] {}", short(&s.chunk_id, 8), s.reason);
                }
            }
        }
        RuleCommand::Undo { sandbox, chunk_id } => {
            let reply = client
                .undo_draft_chunk(pb::UndoDraftChunkRequest { sandbox, chunk_id })
                .await
                .map_err(client::status_error)?
                .into_inner();
            match reply.revision {
                Some(rev) => println!(
                    "Chunk back to pending. Policy version: {}, hash: {}",
                    rev.version,
                    short(&rev.hash, 12)
                ),
                None => println!("Chunk back to pending."),
            }
        }
        RuleCommand::Clear { sandbox } => {
            let reply = client
                .clear_draft_chunks(pb::ClearDraftChunksRequest { sandbox })
                .await
                .map_err(client::status_error)?
                .into_inner();
            println!("Cleared {} pending chunk(s).", reply.chunks_cleared);
        }
        RuleCommand::History { sandbox, json } => {
            let reply = client
                .get_draft_history(pb::GetDraftHistoryRequest { sandbox })
                .await
                .map_err(client::status_error)?
                .into_inner();
            if json {
                print_json(&json!(
                    reply
                        .entries
                        .iter()
                        .map(|e| json!({
                            "timestamp_ms": e.timestamp_ms,
                            "event_type": e.event_type,
                            "description": e.description,
                            "chunk_id": e.chunk_id,
                            "actor": e.actor,
                        }))
                        .collect::<Vec<_>>()
                ));
            } else {
                for e in &reply.entries {
                    println!(
                        "{} {} [{}] {} ({})",
                        format_timestamp(e.timestamp_ms),
                        e.event_type,
                        short(&e.chunk_id, 8),
                        e.description,
                        e.actor
                    );
                }
            }
        }
        RuleCommand::Watch { sandbox, json } => {
            let mut stream = client
                .watch_drafts(pb::WatchDraftsRequest {
                    sandbox: sandbox.unwrap_or_default(),
                })
                .await
                .map_err(client::status_error)?
                .into_inner();
            while let Some(update) = stream.next().await {
                let update = update.map_err(client::status_error)?;
                let Some(c) = update.chunk else { continue };
                if json {
                    println!(
                        "{}",
                        json!({"sandbox": update.sandbox, "change": update.change, "chunk": chunk_json(&c)})
                    );
                } else {
                    println!(
                        "== {} {} [{}]",
                        update.sandbox,
                        update.change,
                        short(&c.id, 8)
                    );
                    print!("{}", format_chunk(&c));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
