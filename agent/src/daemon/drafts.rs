//! The approval loop inside the daemon: reads a sandbox's draft state from
//! the store, runs one pure operation of `drafts::engine`, commits its
//! change in one transaction, then loads the new policy, writes the audit
//! trail and tells the watchers. Operations are serialised by the agent's
//! writer lock, so each one sees the state the previous one left.

use anyhow::{Context, Result};
use serde_json::Value;
use tokio::sync::broadcast;

use super::{Agent, policies::Snapshot};
use crate::{
    audit::{AutoApproval, ConfigStateChange, DecidedVersion, PolicyFacts, PolicyLoad},
    drafts::{
        Chunk, ChunkStatus,
        engine::{self, ApproveAllSummary, DraftError, Event, Outcome, State, SubmitReply},
        proposal::Proposal,
    },
    store::{ApprovalMode, StoreError},
};

/// Updates sent to `WatchDrafts` subscribers and `/wait` callers.
#[derive(Clone, Debug)]
pub struct DraftUpdate {
    pub sandbox: String,
    pub chunk: Chunk,
    /// `proposed`, `approved`, `rejected`, `undone`, `cleared`, `updated`.
    pub change: &'static str,
}

/// Capacity of the update channel; a slower subscriber re-reads the store.
pub const UPDATE_CHANNEL: usize = 1024;

pub fn update_channel() -> broadcast::Sender<DraftUpdate> {
    broadcast::channel(UPDATE_CHANNEL).0
}

/// A refused operation, or a failure of the store or the datapath.
#[derive(Debug)]
pub enum OpError {
    Draft(DraftError),
    Internal(anyhow::Error),
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Draft(e) => e.fmt(f),
            Self::Internal(e) => write!(f, "{e:#}"),
        }
    }
}

impl From<anyhow::Error> for OpError {
    fn from(e: anyhow::Error) -> Self {
        Self::Internal(e)
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => Self::Draft(DraftError::FailedPrecondition(format!(
                "the policy changed while this was decided ({m}); refetch and try again"
            ))),
            other => Self::Internal(other.into()),
        }
    }
}

fn no_sandbox(name: &str) -> OpError {
    OpError::Draft(DraftError::NotFound(format!(
        "no sandbox named `{name}` (see `portcullis sandbox list`)"
    )))
}

fn now_ms() -> i64 {
    crate::audit::event::now_ms()
}

/// Runs one decision (`engine::approve`, `reject`, `undo`, `edit`, ...)
/// on the sandbox's current state and applies its outcome.
pub async fn decide(
    agent: &Agent,
    sandbox: &str,
    op: impl FnOnce(&State<'_>) -> Outcome,
) -> Result<(), OpError> {
    run(agent, sandbox, |state| ((), op(state))).await
}

/// Runs `op` on the sandbox's current state and applies its outcome.
async fn run<T>(
    agent: &Agent,
    sandbox: &str,
    op: impl FnOnce(&State<'_>) -> (T, Outcome),
) -> Result<T, OpError> {
    let _writer = agent.writer.lock().await;
    run_locked(agent, sandbox, op).await
}

/// `run`, for a caller that holds the writer lock already.
async fn run_locked<T>(
    agent: &Agent,
    sandbox: &str,
    op: impl FnOnce(&State<'_>) -> (T, Outcome),
) -> Result<T, OpError> {
    let view = agent.sandbox(sandbox).ok_or_else(|| no_sandbox(sandbox))?;
    let chunks = agent.store.chunks(sandbox, None).await?;
    let latest_version = agent
        .store
        .revisions(sandbox)
        .await?
        .last()
        .map_or(0, |r| r.version);
    let snapshot = view.snapshot();
    let (value, outcome) = {
        let providers = agent.providers();
        let compose = |base: &crate::policy::Policy| providers.compose(sandbox, base);
        let compose_with =
            |base: &crate::policy::Policy, names: &[String]| providers.compose_with(names, base);
        let credentials_with = |names: &[String]| providers.credential_set_with(names);
        let creds = providers.credential_set(sandbox);
        let catalog: std::collections::BTreeMap<String, String> = providers
            .providers()
            .map(|p| (p.name.clone(), p.provider_type.clone()))
            .collect();
        let state = State {
            sandbox,
            policy: &snapshot.base,
            effective: &snapshot.policy,
            compose: &compose,
            providers: &catalog,
            attached: providers.attached_names(sandbox),
            compose_with: &compose_with,
            credentials_with: &credentials_with,
            policy_version: snapshot.version,
            latest_version,
            chunks: &chunks,
            credentials: &creds,
            approval_mode: view.approval_mode,
            now_ms: now_ms(),
        };
        op(&state)
    };
    apply(agent, sandbox, &view, outcome).await?;
    Ok(value)
}

/// Commits, loads, audits and notifies, in that order: nothing is
/// announced that is not durable.
async fn apply(
    agent: &Agent,
    sandbox: &str,
    view: &super::SandboxView,
    outcome: Outcome,
) -> Result<(), OpError> {
    let Outcome {
        change,
        load,
        providers,
        events,
        error,
    } = outcome;
    let has_change = change.revision.is_some()
        || !change.attach_providers.is_empty()
        || !change.detach_providers.is_empty()
        || !change.upsert_chunks.is_empty()
        || !change.delete_chunks.is_empty()
        || !change.history.is_empty();
    if has_change {
        agent.store.commit(change).await?;
    }
    for event in &events {
        audit(agent, sandbox, view, event);
    }
    // An attached or detached provider: same base, new effective policy.
    if let Some((names, effective)) = providers
        && load.is_none()
    {
        agent
            .providers
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .set_attached(sandbox, names);
        let current = view.snapshot();
        let snapshot = Snapshot::new(
            current.base.clone(),
            effective,
            current.version,
            &current.source,
        );
        view.policy.send_replace(snapshot.clone());
        agent.audit.log(
            ConfigStateChange::policy_loaded(&policy_facts(sandbox, &snapshot), PolicyLoad::Reload)
                .into(),
        );
    }
    if let Some(load) = load {
        let snapshot = Snapshot::new(load.policy, load.effective, load.version, &load.source);
        view.policy.send_replace(snapshot.clone());
        agent.audit.log(
            ConfigStateChange::policy_loaded(&policy_facts(sandbox, &snapshot), PolicyLoad::Reload)
                .into(),
        );
    }
    for event in events {
        notify(agent, sandbox, event);
    }
    match error {
        Some(e) => Err(OpError::Draft(e)),
        None => Ok(()),
    }
}

pub fn policy_facts(sandbox: &str, snapshot: &Snapshot) -> PolicyFacts {
    PolicyFacts {
        sandbox: sandbox.to_string(),
        path: Some(snapshot.source.clone()),
        version: Some(snapshot.version.to_string()),
        hash: Some(snapshot.hash.clone()),
    }
}

/// `<host>:<port>[ <METHOD> <path>][ by <binary>]`: the first endpoint and
/// allow rule of the chunk, as the audit trail names it.
pub fn chunk_summary(chunk: &Chunk) -> String {
    let ep = chunk.proposed_rule.get("endpoints").and_then(|e| e.get(0));
    let host = ep
        .and_then(|e| e.get("host"))
        .and_then(Value::as_str)
        .unwrap_or("-");
    let port = ep
        .and_then(|e| e.get("ports"))
        .and_then(|p| p.get(0))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let mut s = format!("{host}:{port}");
    if let Some(allow) = ep
        .and_then(|e| e.get("rules"))
        .and_then(|r| r.get(0))
        .and_then(|r| r.get("allow"))
    {
        let method = allow.get("method").and_then(Value::as_str).unwrap_or("*");
        let path = allow.get("path").and_then(Value::as_str).unwrap_or("**");
        s.push_str(&format!(" {method} {path}"));
    }
    if !chunk.binary.is_empty() {
        s.push_str(&format!(" by {}", chunk.binary));
    }
    s
}

fn audit(agent: &Agent, sandbox: &str, view: &super::SandboxView, event: &Event) {
    let e = match event {
        Event::Proposed(c) => {
            ConfigStateChange::proposal_accepted(sandbox, &c.id, &chunk_summary(c))
        }
        Event::Approved {
            chunk,
            auto,
            version,
            hash,
        } => {
            let auto = auto.then(|| AutoApproval {
                source: chunk.analysis_mode.clone(),
                resolved_from: if view.approval_mode == ApprovalMode::Auto {
                    "sandbox".into()
                } else {
                    "default".into()
                },
            });
            ConfigStateChange::chunk_approved(
                sandbox,
                &chunk.id,
                &format!("add-rule {} {}", chunk.rule_name, chunk_summary(chunk)),
                &DecidedVersion {
                    version: *version,
                    hash: hash.clone(),
                },
                auto.as_ref(),
            )
        }
        Event::Rejected(c) => ConfigStateChange::chunk_rejected(
            sandbox,
            &c.id,
            &format!("add-rule {} {}", c.rule_name, chunk_summary(c)),
            &c.rejection_reason,
        ),
        Event::Revoked {
            chunk,
            version,
            hash,
        } => ConfigStateChange::chunk_removed(
            sandbox,
            &chunk.id,
            &format!("add-rule {} {}", chunk.rule_name, chunk_summary(chunk)),
            &DecidedVersion {
                version: *version,
                hash: hash.clone(),
            },
        ),
        Event::Cleared(_) | Event::Edited(_) => return,
    };
    agent.audit.log(e.into());
}

fn notify(agent: &Agent, sandbox: &str, event: Event) {
    let send = |chunk: Chunk, change: &'static str| {
        // No subscriber is fine.
        let _ = agent.drafts.send(DraftUpdate {
            sandbox: sandbox.to_string(),
            chunk,
            change,
        });
    };
    match event {
        Event::Proposed(c) => send(c, "proposed"),
        Event::Approved { chunk, .. } => send(chunk, "approved"),
        Event::Rejected(c) => send(c, "rejected"),
        Event::Revoked { chunk, .. } => {
            let change = if chunk.status == ChunkStatus::Pending {
                "undone"
            } else {
                "revoked"
            };
            send(chunk, change)
        }
        Event::Cleared(chunks) => {
            for c in chunks {
                send(c, "cleared");
            }
        }
        Event::Edited(c) => send(c, "updated"),
    }
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub async fn submit(
    agent: &Agent,
    sandbox: &str,
    proposal: &Proposal,
) -> Result<SubmitReply, OpError> {
    run(agent, sandbox, |state| {
        engine::submit(state, proposal, &mut new_id)
    })
    .await
}

pub async fn approve_all(
    agent: &Agent,
    sandbox: &str,
    include_security_flagged: bool,
    approvals: &[(String, String)],
    actor: &str,
) -> Result<ApproveAllSummary, OpError> {
    run(agent, sandbox, |state| {
        engine::approve_all(state, include_security_flagged, approvals, actor)
    })
    .await
}

pub async fn clear(agent: &Agent, sandbox: &str, actor: &str) -> Result<usize, OpError> {
    run(agent, sandbox, |state| {
        let out = engine::clear(state, actor);
        (out.change.delete_chunks.len(), out)
    })
    .await
}

/// After `policy set`: redundant pending chunks are rejected, the others
/// re-evaluated against the new policy. Called with the writer lock held.
pub async fn after_policy_change(agent: &Agent, sandbox: &str) -> Result<(), OpError> {
    run_locked(agent, sandbox, |state| {
        ((), engine::after_policy_change(state))
    })
    .await
}

/// A chunk of one sandbox, security notes not included.
pub async fn chunk(agent: &Agent, sandbox: &str, id: &str) -> Result<Option<Chunk>> {
    agent
        .store
        .chunk(sandbox, id)
        .await
        .with_context(|| format!("reading chunk {id} of sandbox {sandbox}"))
}
