//! Draft chunks: proposed policy changes waiting for an operator
//! (reference §5.4–5.10, contract §1 "Drafts").
//!
//! The model lives here; the pure decision code (validation, supersede,
//! reconcile, approval) is in the submodules, and the store persists it.

pub mod engine;
pub mod proposal;
pub mod render;
pub mod validator;

use serde::{Deserialize, Serialize};

/// Where a chunk is in its life. There is no `superseded` status:
/// superseded and redundant chunks are `rejected` with a reason (§5.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkStatus {
    Pending,
    Approved,
    Rejected,
}

impl ChunkStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "approved" => Some(Self::Approved),
            "rejected" => Some(Self::Rejected),
            _ => None,
        }
    }

    pub fn is_decided(self) -> bool {
        self != Self::Pending
    }
}

/// One proposed change to one sandbox's policy, with everything an
/// operator needs to decide on it. Field names follow `PolicyChunk`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// UUID v4.
    pub id: String,
    pub sandbox: String,
    pub status: ChunkStatus,
    pub rule_name: String,
    /// The proposed rule in the canonical policy form (`ports`, explicit
    /// `enforcement`, ...), as one `network_policies` entry.
    pub proposed_rule: serde_json::Value,
    /// The agent's `intent_summary`.
    pub rationale: String,
    pub confidence: f64,
    /// `agent` for agent-authored chunks.
    pub stage: String,
    /// `agent_authored` (policy.local) or `mechanistic`.
    pub analysis_mode: String,
    /// The first proposed binary; empty when the rule names none.
    pub binary: String,
    pub hit_count: u32,
    pub created_at_ms: i64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub decided_at_ms: Option<i64>,
    /// `prover: no new findings`, `prover: N new finding(s)` plus category
    /// lines, or `validation unavailable`.
    pub validation_result: String,
    /// The reviewer's text, verbatim; or why the system rejected it.
    pub rejection_reason: String,
    /// Why the chunk cannot be applied to the current policy; a chunk with
    /// one cannot be approved until it is re-evaluated cleanly.
    pub application_error: String,
    pub review_token: String,
    pub current_effective_policy_hash: String,
    pub candidate_effective_policy_hash: String,
    /// Canonical YAML of the policy the chunk was evaluated against.
    pub current_effective_policy: String,
    /// Canonical YAML of the policy approval would produce.
    pub candidate_effective_policy: String,
    /// What approval added to the policy (a serialised
    /// `policy::merge::Grant`), so rejecting an approved chunk removes
    /// exactly that and nothing more (contract §2.7). None until approved.
    pub grant: Option<serde_json::Value>,
    /// The policy version approval produced. None until approved.
    pub approved_policy_version: Option<u64>,
    /// Set for a `requestProvider` chunk: approval attaches this provider
    /// instead of merging a rule.
    #[serde(default)]
    pub provider_request: Option<ProviderRequest>,
    /// Who made the last decision: `operator:...`, `system:auto`,
    /// `system:supersede`, `system:reconcile`; empty while undecided.
    #[serde(default)]
    pub decided_by: String,
}

/// What a `requestProvider` chunk asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRequest {
    pub name: String,
    /// The provider's type, as the operator registered it.
    pub provider_type: String,
}

impl Chunk {
    /// The (host, port, binary) key that supersede works on (§5.5 step 6):
    /// the first endpoint's host (lower-cased) and first port.
    pub fn observation_key(&self) -> Option<(String, u16, String)> {
        let ep = self.proposed_rule.get("endpoints")?.get(0)?;
        let host = ep.get("host")?.as_str()?.to_ascii_lowercase();
        let port = ep.get("ports")?.get(0)?.as_u64()?;
        if host.is_empty() || self.binary.is_empty() {
            return None;
        }
        Some((host, u16::try_from(port).ok()?, self.binary.clone()))
    }
}

/// One line of a sandbox's draft history (`rule history`): proposals and
/// every decision, with who made it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub timestamp_ms: i64,
    /// `proposed`, `approved`, `rejected`, `undone`, `cleared`, `loaded`.
    pub event_type: String,
    pub description: String,
    /// Empty for events about the policy rather than one chunk.
    pub chunk_id: String,
    /// `operator:<uid>`, `system:auto`, `system:supersede`, `sandbox:<name>`.
    pub actor: String,
}
