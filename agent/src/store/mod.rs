//! The durable store: sandboxes, policy revisions, draft chunks and their
//! history (reference §5.4, §5.8), providers with their credentials and
//! their attachment to sandboxes (§6.1–6.3), behind a trait so a
//! PostgreSQL backend can follow the SQLite one for multi-node use.
//!
//! Reads are plain queries; every write goes through [`Store::commit`] or
//! [`Store::put_provider`], which apply one change in one transaction or
//! not at all, so a crash (even `kill -9`) mid-approval leaves either the
//! state before the approval or the state after it. Credential values are
//! encrypted at rest (`secrets.rs`).

use serde::{Deserialize, Serialize};

use crate::{
    drafts::{Chunk, ChunkStatus, HistoryEntry},
    sandbox::registry::SandboxRecord,
};

pub mod legacy;
pub mod providers;
pub mod secrets;
pub mod sqlite;

#[cfg(test)]
mod provider_tests;
#[cfg(test)]
mod tests;

pub use providers::{MAX_PROVIDERS_PER_SANDBOX, ProviderChange, ProviderRecord};
pub use secrets::SecretValue;
pub use sqlite::SqliteStore;

/// Revisions kept per sandbox; the one in force is never pruned.
pub const REVISION_LIMIT: usize = 1000;
/// Draft history lines kept per sandbox; the oldest go first.
pub const HISTORY_LIMIT: usize = 10_000;

#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// Every sandbox, by name.
    async fn sandboxes(&self) -> Result<Vec<SandboxRow>, StoreError>;
    /// A fresh sandbox id, never reused (persisted counter).
    async fn allocate_sandbox_id(&self) -> Result<u32, StoreError>;
    /// Revisions of one sandbox, oldest first.
    async fn revisions(&self, sandbox: &str) -> Result<Vec<Revision>, StoreError>;
    /// The revision in force (status loaded), if any.
    async fn current_revision(&self, sandbox: &str) -> Result<Option<Revision>, StoreError>;
    /// Chunks of one sandbox, newest first (created_at_ms DESC, then id),
    /// optionally only those with one status.
    async fn chunks(
        &self,
        sandbox: &str,
        status: Option<ChunkStatus>,
    ) -> Result<Vec<Chunk>, StoreError>;
    /// One chunk, only if it belongs to `sandbox` (a chunk id of another
    /// sandbox is not found, §5.8).
    async fn chunk(&self, sandbox: &str, id: &str) -> Result<Option<Chunk>, StoreError>;
    /// Draft history of one sandbox, oldest first.
    async fn history(&self, sandbox: &str) -> Result<Vec<HistoryEntry>, StoreError>;
    /// Applies everything in one transaction, or nothing.
    async fn commit(&self, change: ChangeSet) -> Result<(), StoreError>;
    /// Every provider with its credentials, by name.
    async fn providers(&self) -> Result<Vec<ProviderRecord>, StoreError>;
    /// One provider with its credentials, if it exists.
    async fn provider(&self, name: &str) -> Result<Option<ProviderRecord>, StoreError>;
    /// Creates, rotates or deletes one provider in one transaction; returns
    /// the provider as stored (for a delete: as it was, without credentials).
    async fn put_provider(&self, change: ProviderChange) -> Result<ProviderRecord, StoreError>;
    /// Providers attached to a sandbox, in attachment order (none for an
    /// unknown sandbox).
    async fn attached(&self, sandbox: &str) -> Result<Vec<String>, StoreError>;
}

/// A sandbox as stored: the registry record plus its draft settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxRow {
    pub record: SandboxRecord,
    pub approval_mode: ApprovalMode,
}

/// Whether agent proposals need an operator (`manual`) or are approved
/// by the system when they validate cleanly (`auto`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalMode {
    #[default]
    Manual,
    Auto,
}

/// An approval mode typed by a user that is neither `manual` nor `auto`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown approval mode `{0}`: use `manual` or `auto`")]
pub struct UnknownApprovalMode(pub String);

impl ApprovalMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Manual => "manual",
            Self::Auto => "auto",
        }
    }

    /// Reads a stored or foreign value. Only exactly `auto` turns
    /// approval off; anything else keeps the operator in the loop.
    pub fn from_stored(value: &str) -> Self {
        if value == "auto" {
            Self::Auto
        } else {
            Self::Manual
        }
    }

    /// Parses user input (CLI, API), rejecting anything but the two modes.
    pub fn parse(input: &str) -> Result<Self, UnknownApprovalMode> {
        match input {
            "manual" => Ok(Self::Manual),
            "auto" => Ok(Self::Auto),
            other => Err(UnknownApprovalMode(other.to_string())),
        }
    }
}

impl std::str::FromStr for ApprovalMode {
    type Err = UnknownApprovalMode;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        Self::parse(input)
    }
}

impl std::fmt::Display for ApprovalMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevisionStatus {
    /// In force.
    Loaded,
    /// Rejected by validation; the previous revision stayed in force.
    Failed,
    /// Was in force, replaced by a later revision.
    Superseded,
}

impl RevisionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loaded => "loaded",
            Self::Failed => "failed",
            Self::Superseded => "superseded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "loaded" => Some(Self::Loaded),
            "failed" => Some(Self::Failed),
            "superseded" => Some(Self::Superseded),
            _ => None,
        }
    }
}

/// One candidate policy of one sandbox, loaded or not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub version: u64,
    /// SHA-256 of the canonical policy; empty for a failed candidate.
    pub hash: String,
    pub status: RevisionStatus,
    /// Where the candidate came from (a file path, `sandbox create`, ...).
    pub source: String,
    /// Who or what produced it: `operator`, `chunk:<id>`, `sandbox create`,
    /// `import`, ...
    pub provenance: String,
    pub created_unix_ms: u64,
    pub error: Option<String>,
    /// The YAML as submitted, kept for loaded revisions only.
    pub yaml: Option<String>,
}

/// Everything one logical operation writes about one sandbox. Applied in
/// this order: create, checks, approval mode, revision, chunk deletes,
/// chunk upserts, history, provider detaches, provider attaches; or, with
/// `delete_sandbox`, only the delete.
#[derive(Debug, Default)]
pub struct ChangeSet {
    pub sandbox: String,
    /// Optimistic concurrency: when Some(v), commit fails with
    /// [`StoreError::Conflict`] unless the sandbox's latest revision version
    /// (0 if none) is v. Checked inside the transaction.
    pub expect_latest_version: Option<u64>,
    /// Inserted; Conflict if the name (or the id) is already used.
    pub create_sandbox: Option<SandboxRow>,
    pub set_approval_mode: Option<ApprovalMode>,
    /// Deletes the sandbox and all its revisions, chunks, history and
    /// provider attachments. Must not be combined with other changes
    /// (Invalid).
    pub delete_sandbox: bool,
    /// Appended. If its status is Loaded, every earlier Loaded revision of
    /// the sandbox becomes Superseded in the same transaction. Its version
    /// must be latest+1 (else Conflict).
    pub revision: Option<Revision>,
    /// Inserted or replaced by id; each must name this sandbox.
    pub upsert_chunks: Vec<Chunk>,
    /// Chunk ids of this sandbox to delete; unknown ids are ignored.
    pub delete_chunks: Vec<String>,
    /// Appended, in order.
    pub history: Vec<HistoryEntry>,
    /// Providers to attach after the ones already attached, in order;
    /// repeated names count once and attached ones are left as they are.
    /// Conflict if a provider does not exist, if more than
    /// [`MAX_PROVIDERS_PER_SANDBOX`] would be attached, or if two attached
    /// providers would give the same credential key.
    pub attach_providers: Vec<String>,
    /// Providers to detach (before attaching); ones not attached are
    /// ignored. A name in both lists is Invalid.
    pub detach_providers: Vec<String>,
}

impl ChangeSet {
    /// An empty change to `sandbox`, to fill in field by field.
    pub fn for_sandbox(sandbox: impl Into<String>) -> Self {
        Self {
            sandbox: sandbox.into(),
            ..Self::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store changed under the caller (a newer revision, a taken name,
    /// a deleted sandbox); re-read and retry or report.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A stored row no longer decodes; the message names table and key.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// A change the store cannot represent or that contradicts itself
    /// (a caller bug, not a race); retrying will not help.
    #[error("invalid change: {0}")]
    Invalid(String),
    /// The database itself failed; the message names its path.
    #[error("{0}")]
    Backend(String),
}
