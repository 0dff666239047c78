//! Draft processing (reference §5.5, §5.8–5.10; contract §2.7), pure.
//!
//! Every operation takes one sandbox's state as read from the store and
//! returns the change to commit, the policy to load after the commit and
//! the events to emit. Nothing here does I/O, so each rule (review tokens,
//! supersede, reconcile, auto-approval, exact undo) is unit-tested without
//! privileges; the daemon serialises operations and commits the result.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::{
    Chunk, ChunkStatus, HistoryEntry,
    proposal::{Operation, Proposal},
    validator::{self, CredentialSet, NO_NEW_FINDINGS},
};
use crate::{
    policy::{
        Policy, Rule,
        canonical::{canonical_bytes, sha256_hex},
        merge::{self, Grant, Merged, ProposedRule},
    },
    store::{ApprovalMode, ChangeSet, Revision, RevisionStatus},
};

/// `validation_result` when the candidate could not be evaluated.
pub const VALIDATION_UNAVAILABLE: &str = "validation unavailable";
/// Agent-authored chunks start here (reference §5.3).
const AGENT_CONFIDENCE: f64 = 0.75;
/// Bumped when the inputs of the review token change meaning.
const REVIEW_TOKEN_TAG: &str = "portcullis-review-v1";

/// Turns a base (user) policy into the effective one: the sandbox's
/// provider rules composed in. Merges apply to the base; coverage and
/// validation look at the effective policy.
pub type Compose<'a> = &'a (dyn Fn(&Policy) -> Result<Policy, String> + Sync);

/// `Compose`, as if exactly the named providers were attached.
pub type ComposeWith<'a> = &'a (dyn Fn(&Policy, &[String]) -> Result<Policy, String> + Sync);

/// One sandbox's draft state, as read from the store.
pub struct State<'a> {
    pub sandbox: &'a str,
    /// The base policy in force (what revisions store).
    pub policy: &'a Policy,
    /// `policy` with the providers composed in: what is enforced.
    pub effective: &'a Policy,
    pub compose: Compose<'a>,
    /// Providers that exist on the host: name -> type.
    pub providers: &'a std::collections::BTreeMap<String, String>,
    /// Providers attached to this sandbox, in order.
    pub attached: &'a [String],
    /// The effective policy of `base` as if exactly `names` were attached.
    pub compose_with: ComposeWith<'a>,
    /// The credentialed hosts as if exactly `names` were attached.
    pub credentials_with: &'a (dyn Fn(&[String]) -> CredentialSet + Sync),
    /// Its version; 0 when the sandbox never had one (all egress denied).
    pub policy_version: u64,
    /// The newest revision number, failed ones included.
    pub latest_version: u64,
    /// Every chunk of the sandbox, any order.
    pub chunks: &'a [Chunk],
    pub credentials: &'a CredentialSet,
    pub approval_mode: ApprovalMode,
    pub now_ms: i64,
}

/// A policy that becomes current once the change is committed.
#[derive(Debug)]
pub struct Load {
    /// The base policy written as the revision.
    pub policy: Policy,
    pub effective: Policy,
    pub version: u64,
    pub source: String,
}

/// What happened, for the audit log and the operators' watch stream.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A chunk was accepted for review (CONFIG PROPOSED).
    Proposed(Chunk),
    /// A chunk was approved and its policy version written.
    Approved {
        chunk: Chunk,
        auto: bool,
        version: u64,
        hash: String,
    },
    /// A pending chunk was rejected: by an operator, or by the system
    /// (superseded, already covered).
    Rejected(Chunk),
    /// An approved chunk was revoked (reject) or undone (back to pending);
    /// what its approval added is gone from policy `version`.
    Revoked {
        chunk: Chunk,
        version: u64,
        hash: String,
    },
    /// Pending chunks deleted by `rule clear`.
    Cleared(Vec<Chunk>),
    /// An operator replaced a pending chunk's rule; it was re-evaluated.
    Edited(Chunk),
}

/// Why an operation was refused; the text names the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DraftError {
    NotFound(String),
    /// The state does not allow it now (stale token, wrong status, ...).
    FailedPrecondition(String),
    InvalidArgument(String),
}

impl std::fmt::Display for DraftError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound(m) | Self::FailedPrecondition(m) | Self::InvalidArgument(m) => {
                f.write_str(m)
            }
        }
    }
}

impl std::error::Error for DraftError {}

/// The result of one operation. A refused operation may still carry a
/// change to commit: a refreshed evaluation after a stale approval.
#[derive(Debug, Default)]
pub struct Outcome {
    pub change: ChangeSet,
    pub load: Option<Load>,
    /// The attached providers and the effective policy after an approved
    /// (or revoked) provider request; applied after the commit.
    pub providers: Option<(Vec<String>, Policy)>,
    pub events: Vec<Event>,
    pub error: Option<DraftError>,
}

/// The 202 body of `POST /v1/proposals` (reference §4.3).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SubmitReply {
    pub status: &'static str,
    pub accepted_chunks: u32,
    pub rejected_chunks: u32,
    pub rejection_reasons: Vec<String>,
    pub accepted_chunk_ids: Vec<String>,
}

/// What approve-all did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApproveAllSummary {
    pub approved: Vec<String>,
    /// (chunk id, why it was skipped).
    pub skipped: Vec<(String, String)>,
}

/// A chunk's rule evaluated against a policy.
#[derive(Debug)]
pub struct Evaluation {
    /// What approval would do, and the effective policy it would leave.
    pub merged: Result<(Change, Policy), String>,
    pub validation_result: String,
    pub review_token: String,
    pub current_hash: String,
    pub candidate_hash: String,
    pub current_yaml: String,
    pub candidate_yaml: String,
}

/// What approving a chunk changes.
#[derive(Debug)]
pub enum Change {
    /// The base policy, merged.
    Rule(Merged),
    /// This provider, attached.
    Attach(String),
}

impl Evaluation {
    fn write_to(&self, chunk: &mut Chunk) {
        chunk.validation_result = self.validation_result.clone();
        chunk.review_token = self.review_token.clone();
        chunk.current_effective_policy_hash = self.current_hash.clone();
        chunk.candidate_effective_policy_hash = self.candidate_hash.clone();
        chunk.current_effective_policy = self.current_yaml.clone();
        chunk.candidate_effective_policy = self.candidate_yaml.clone();
        chunk.application_error = self.merged.as_ref().err().cloned().unwrap_or_default();
    }
}

/// Canonical YAML of a policy, as `policy.local` and reviewers see it.
pub fn policy_yaml(policy: &Policy) -> String {
    serde_yaml::to_string(&policy.canonical_json()).unwrap_or_default()
}

/// The proposed rule of a chunk, in the form merge and coverage take.
pub fn proposed(chunk: &Chunk) -> ProposedRule {
    ProposedRule {
        name: chunk.rule_name.clone(),
        canonical: chunk.proposed_rule.clone(),
    }
}

/// The proposed rule compiled, for security notes and rendering.
pub fn proposed_rule(chunk: &Chunk) -> Option<Rule> {
    let doc = json!({
        "version": 1,
        "network_policies": { chunk.rule_name.as_str(): chunk.proposed_rule },
    });
    let policy = Policy::parse("proposal", &doc.to_string()).ok()?;
    policy.rules().first().cloned()
}

/// Security notes of a chunk (reference §5.7), recomputed on every read.
pub fn security_notes(chunk: &Chunk) -> Vec<String> {
    match proposed_rule(chunk) {
        Some(rule) => validator::security_notes(&rule),
        None => vec!["the proposed rule no longer parses; reject it".into()],
    }
}

/// Evaluates `rule` as an AddRule on the base policy: merge, compose,
/// validate the effective policies, diff the findings, and bind it all in
/// a review token.
pub fn evaluate(
    state: &State<'_>,
    base: &Policy,
    effective: &Policy,
    rule: &ProposedRule,
) -> Evaluation {
    let merged = merge::add_rule(base, rule)
        .map_err(|e| format!("merge failed: {e}"))
        .and_then(|m| {
            let effective =
                (state.compose)(&m.policy).map_err(|e| format!("candidate invalid: {e}"))?;
            Ok((Change::Rule(m), effective))
        });
    judge(effective, rule, state.credentials, merged)
}

/// Validates a candidate against the policy in force and binds the result
/// in a review token: the part every kind of chunk shares.
fn judge(
    effective: &Policy,
    identity: &ProposedRule,
    creds: &CredentialSet,
    merged: Result<(Change, Policy), String>,
) -> Evaluation {
    let current_hash = effective.hash().to_string();
    let (validation_result, candidate_hash, candidate_yaml) = match &merged {
        Ok((_, candidate)) => (
            validator::validation_result(&validator::new_findings(effective, candidate, creds)),
            candidate.hash().to_string(),
            policy_yaml(candidate),
        ),
        Err(_) => (
            VALIDATION_UNAVAILABLE.to_string(),
            String::new(),
            String::new(),
        ),
    };
    let review_token = review_token(
        identity,
        &current_hash,
        &candidate_hash,
        creds,
        merged.as_ref().err(),
    );
    Evaluation {
        merged,
        validation_result,
        review_token,
        current_yaml: policy_yaml(effective),
        current_hash,
        candidate_hash,
        candidate_yaml,
    }
}

/// The first binary a rule names: the chunk's `binary`; empty for none.
fn first_binary(rule: &Value) -> String {
    rule.get("binaries")
        .and_then(|b| b.get(0))
        .and_then(|b| b.get("path"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// What a provider of `provider_type` would add, in rule form: its
/// profile's endpoints and binaries, for reviewers to read.
fn provider_rule(provider_type: &str) -> Value {
    match crate::providers::profile::find(provider_type) {
        Some(p) => json!({
            "endpoints": p.endpoints,
            "binaries": p.binaries.iter().map(|b| json!({"path": b})).collect::<Vec<_>>(),
        }),
        None => json!({"endpoints": [], "binaries": []}),
    }
}

/// A `requestProvider` as a rule-like identity for its review token.
fn provider_identity(req: &super::ProviderRequest) -> ProposedRule {
    ProposedRule {
        name: format!("provider:{}", req.name),
        canonical: json!({"provider": req.name, "type": req.provider_type}),
    }
}

/// Evaluates attaching a provider: it must exist (with the type the agent
/// named, if any) and fit; the findings compare the effective policies
/// under the candidate's credentials.
pub fn evaluate_provider(
    state: &State<'_>,
    base: &Policy,
    effective: &Policy,
    attached: &[String],
    req: &super::ProviderRequest,
) -> Evaluation {
    let mut names = attached.to_vec();
    names.push(req.name.clone());
    let creds = (state.credentials_with)(&names);
    let merged = match state.providers.get(&req.name) {
        None => Err(format!(
            "provider '{}' not found; the operator must create it on the host first",
            req.name
        )),
        Some(actual) if !req.provider_type.is_empty() && *actual != req.provider_type => {
            Err(format!(
                "provider '{}' is of type '{actual}', not '{}'",
                req.name, req.provider_type
            ))
        }
        Some(_) if attached.contains(&req.name) => Err(format!(
            "provider '{}' is already attached to this sandbox; retry the request",
            req.name
        )),
        Some(_) if attached.len() >= crate::store::MAX_PROVIDERS_PER_SANDBOX => Err(format!(
            "the sandbox already has {} providers attached, the most allowed",
            attached.len()
        )),
        Some(_) => (state.compose_with)(base, &names)
            .map(|candidate| (Change::Attach(req.name.clone()), candidate))
            .map_err(|e| format!("candidate invalid: {e}")),
    };
    judge(effective, &provider_identity(req), &creds, merged)
}

/// SHA-256 over everything an operator's decision depends on: the rule,
/// the policy it applies to, the result, and the (non-secret) credential
/// scopes. Any change makes a reviewed token stale.
fn review_token(
    rule: &ProposedRule,
    current_hash: &str,
    candidate_hash: &str,
    creds: &CredentialSet,
    error: Option<&String>,
) -> String {
    let mut scopes: Vec<String> = creds
        .targets
        .iter()
        .map(|t| format!("{}|{}|{:?}", t.provider, t.host, t.ports))
        .collect();
    scopes.sort();
    let input = json!([
        REVIEW_TOKEN_TAG,
        rule.name,
        String::from_utf8_lossy(&canonical_bytes(&rule.canonical)),
        current_hash,
        candidate_hash,
        scopes,
        error,
    ]);
    sha256_hex(&canonical_bytes(&input))
}

fn history(
    state: &State<'_>,
    event_type: &str,
    chunk_id: &str,
    actor: &str,
    text: String,
) -> HistoryEntry {
    HistoryEntry {
        timestamp_ms: state.now_ms,
        event_type: event_type.to_string(),
        description: text,
        chunk_id: chunk_id.to_string(),
        actor: actor.to_string(),
    }
}

/// Working copy of a sandbox's drafts during one operation.
struct Work<'a> {
    state: &'a State<'a>,
    chunks: Vec<Chunk>,
    changed: HashSet<String>,
    /// The base policy, as this operation leaves it.
    policy: Policy,
    effective: Policy,
    attached: Vec<String>,
    version: u64,
    out: Outcome,
}

impl<'a> Work<'a> {
    fn new(state: &'a State<'a>) -> Self {
        Self {
            state,
            chunks: state.chunks.to_vec(),
            changed: HashSet::new(),
            policy: state.policy.clone(),
            effective: state.effective.clone(),
            attached: state.attached.to_vec(),
            version: state.latest_version,
            out: Outcome {
                change: ChangeSet {
                    sandbox: state.sandbox.to_string(),
                    expect_latest_version: Some(state.latest_version),
                    ..Default::default()
                },
                ..Default::default()
            },
        }
    }

    fn find(&self, id: &str) -> Result<usize, DraftError> {
        self.chunks.iter().position(|c| c.id == id).ok_or_else(|| {
            DraftError::NotFound(format!(
                "no chunk `{id}` in sandbox `{}` (see `portcullis rule get {}`)",
                self.state.sandbox, self.state.sandbox
            ))
        })
    }

    fn touch(&mut self, i: usize) {
        self.changed.insert(self.chunks[i].id.clone());
    }

    fn log(&mut self, event_type: &str, i: usize, actor: &str, text: String) {
        let entry = history(self.state, event_type, &self.chunks[i].id, actor, text);
        self.out.change.history.push(entry);
    }

    fn reject(&mut self, i: usize, reason: String, actor: &str) {
        let chunk = &mut self.chunks[i];
        chunk.status = ChunkStatus::Rejected;
        chunk.decided_at_ms = Some(self.state.now_ms);
        chunk.decided_by = actor.to_string();
        chunk.rejection_reason = reason.clone();
        let text = format!(
            "Rule '{}' rejected: {}",
            chunk.rule_name,
            reason_or_none(&reason)
        );
        self.touch(i);
        self.log("rejected", i, actor, text);
        self.out
            .events
            .push(Event::Rejected(self.chunks[i].clone()));
    }

    /// Writes `policy` (with its effective form) as the next version, to
    /// load after the commit.
    fn write_policy(
        &mut self,
        policy: Policy,
        effective: Policy,
        source: String,
        provenance: &str,
    ) {
        self.version += 1;
        self.policy = policy;
        self.effective = effective;
        self.out.load = Some(Load {
            policy: self.policy.clone(),
            effective: self.effective.clone(),
            version: self.version,
            source: source.clone(),
        });
        self.out.change.revision = Some(Revision {
            version: self.version,
            hash: self.policy.hash().to_string(),
            status: RevisionStatus::Loaded,
            source,
            provenance: provenance.to_string(),
            created_unix_ms: u64::try_from(self.state.now_ms).unwrap_or(0),
            error: None,
            yaml: Some(policy_yaml(&self.policy)),
        });
    }

    /// Marks chunk `i` approved under the merged policy.
    fn approve(
        &mut self,
        i: usize,
        (change, effective): (Change, Policy),
        actor: &str,
        auto: bool,
    ) {
        let id = self.chunks[i].id.clone();
        let (grant, into) = match change {
            Change::Rule(merged) => {
                self.write_policy(merged.policy, effective, format!("chunk {id}"), actor);
                let grant = serde_json::to_value(&merged.grant).ok();
                (grant, format!("rule '{}'", merged.target_rule))
            }
            Change::Attach(name) => {
                self.set_attached(effective, |names| names.push(name.clone()));
                self.out.change.attach_providers.push(name.clone());
                (None, format!("the sandbox (provider '{name}' attached)"))
            }
        };
        let version = self.version;
        let hash = self.effective.hash().to_string();
        let chunk = &mut self.chunks[i];
        chunk.status = ChunkStatus::Approved;
        chunk.decided_at_ms = Some(self.state.now_ms);
        chunk.decided_by = actor.to_string();
        chunk.rejection_reason.clear();
        chunk.application_error.clear();
        chunk.grant = grant;
        chunk.approved_policy_version = Some(version);
        let text = format!(
            "Rule '{}' {} into {into}; policy version {version}",
            chunk.rule_name,
            if auto { "auto-approved" } else { "approved" },
        );
        self.touch(i);
        self.log("approved", i, actor, text);
        self.out.events.push(Event::Approved {
            chunk: self.chunks[i].clone(),
            auto,
            version,
            hash,
        });
    }

    /// §5.8: after any policy write, pending chunks the policy already
    /// covers are rejected as redundant; the others are re-evaluated, so
    /// what an operator reviews is always against the policy in force (and
    /// a token fetched before the write is stale).
    fn reconcile(&mut self) {
        let version = self.version;
        for i in 0..self.chunks.len() {
            if self.chunks[i].status != ChunkStatus::Pending {
                continue;
            }
            if self.covered(&self.chunks[i]) {
                self.reject(
                    i,
                    format!("covered by active policy revision {version}"),
                    "system:reconcile",
                );
                continue;
            }
            let eval = self.evaluate(&self.chunks[i]);
            if eval.review_token != self.chunks[i].review_token {
                eval.write_to(&mut self.chunks[i]);
                self.touch(i);
            }
        }
    }

    /// Removes what approved chunk `i` added; the chunk's status is the
    /// caller's to set.
    fn revoke(&mut self, i: usize, actor: &str) -> Result<(), DraftError> {
        if let Some(req) = self.chunks[i].provider_request.clone() {
            let names: Vec<String> = self
                .attached
                .iter()
                .filter(|n| **n != req.name)
                .cloned()
                .collect();
            let effective = (self.state.compose_with)(&self.policy, &names).map_err(|e| {
                DraftError::FailedPrecondition(format!(
                    "cannot detach provider '{}': {e}",
                    req.name
                ))
            })?;
            self.set_attached(effective, |list| list.retain(|n| *n != req.name));
            self.out.change.detach_providers.push(req.name.clone());
            let chunk = &mut self.chunks[i];
            chunk.approved_policy_version = None;
            self.out.events.push(Event::Revoked {
                chunk: chunk.clone(),
                version: self.version,
                hash: self.effective.hash().to_string(),
            });
            return Ok(());
        }
        let chunk = &self.chunks[i];
        let grant: Grant = chunk
            .grant
            .clone()
            .and_then(|g| serde_json::from_value(g).ok())
            .ok_or_else(|| {
                DraftError::FailedPrecondition(format!(
                    "chunk {} has no record of what its approval added; edit the policy with `portcullis policy set` instead",
                    chunk.id
                ))
            })?;
        let policy = merge::revoke(&self.policy, &grant).map_err(|e| {
            DraftError::FailedPrecondition(format!("cannot remove chunk {}: {e}", chunk.id))
        })?;
        let effective = (self.state.compose)(&policy).map_err(|e| {
            DraftError::FailedPrecondition(format!("cannot remove chunk {}: {e}", chunk.id))
        })?;
        let id = chunk.id.clone();
        self.write_policy(policy, effective, format!("revoke chunk {id}"), actor);
        let chunk = &mut self.chunks[i];
        chunk.grant = None;
        chunk.approved_policy_version = None;
        self.out.events.push(Event::Revoked {
            chunk: chunk.clone(),
            version: self.version,
            hash: self.effective.hash().to_string(),
        });
        Ok(())
    }

    /// Whether the sandbox already has what the chunk asks for.
    fn covered(&self, chunk: &Chunk) -> bool {
        match &chunk.provider_request {
            Some(req) => self.attached.contains(&req.name),
            None => merge::covers(&self.effective, &proposed(chunk)),
        }
    }

    /// The chunk evaluated against the state as this operation left it.
    fn evaluate(&self, chunk: &Chunk) -> Evaluation {
        match &chunk.provider_request {
            Some(req) => evaluate_provider(
                self.state,
                &self.policy,
                &self.effective,
                &self.attached,
                req,
            ),
            None => evaluate(self.state, &self.policy, &self.effective, &proposed(chunk)),
        }
    }

    /// Records a new set of attached providers and the effective policy.
    fn set_attached(&mut self, effective: Policy, edit: impl FnOnce(&mut Vec<String>)) {
        edit(&mut self.attached);
        self.effective = effective;
        self.out.providers = Some((self.attached.clone(), self.effective.clone()));
    }

    fn finish(mut self) -> Outcome {
        for c in self.chunks {
            if self.changed.contains(&c.id) {
                self.out.change.upsert_chunks.push(c);
            }
        }
        // Only a policy write needs the version guard; chunk-only changes
        // are serialised by the caller.
        if self.out.change.revision.is_none() {
            self.out.change.expect_latest_version = None;
        }
        self.out
    }
}

/// An operation refused before it changed anything.
fn refused(error: DraftError) -> Outcome {
    Outcome {
        error: Some(error),
        ..Default::default()
    }
}

fn reason_or_none(reason: &str) -> &str {
    if reason.is_empty() {
        "(no guidance)"
    } else {
        reason
    }
}

/// `POST /v1/proposals`: one chunk per operation (reference §5.5).
pub fn submit(
    state: &State<'_>,
    proposal: &Proposal,
    new_id: &mut dyn FnMut() -> String,
) -> (SubmitReply, Outcome) {
    let mut w = Work::new(state);
    let mut reply = SubmitReply {
        status: "submitted",
        ..Default::default()
    };
    // Step 2: pending chunks the live policy already covers are redundant.
    let live_version = state.policy_version;
    for i in 0..w.chunks.len() {
        let c = &w.chunks[i];
        if c.status == ChunkStatus::Pending && w.covered(c) {
            w.reject(
                i,
                format!("covered by active policy revision {live_version}"),
                "system:reconcile",
            );
        }
    }
    let actor = format!("sandbox:{}", state.sandbox);
    let mut accepted = Vec::new();
    for op in &proposal.operations {
        let (rule_name, proposed_rule, provider_request, eval) = match op {
            Operation::AddRule { rule_name, rule } => match merge::propose(rule_name, rule) {
                Ok(p) => {
                    let eval = evaluate(state, &w.policy, &w.effective, &p);
                    (p.name, p.canonical, None, eval)
                }
                Err(e) => {
                    reply.rejected_chunks += 1;
                    reply
                        .rejection_reasons
                        .push(format!("chunk '{rule_name}': {e}"));
                    continue;
                }
            },
            Operation::RequestProvider {
                provider_name,
                provider_type,
            } => {
                let actual = state.providers.get(provider_name).cloned();
                let req = super::ProviderRequest {
                    name: provider_name.clone(),
                    provider_type: actual.clone().unwrap_or_else(|| provider_type.clone()),
                };
                let asked = super::ProviderRequest {
                    provider_type: provider_type.clone(),
                    ..req.clone()
                };
                let eval = evaluate_provider(state, &w.policy, &w.effective, &w.attached, &asked);
                (
                    format!("request_provider_{provider_name}"),
                    provider_rule(&req.provider_type),
                    Some(req),
                    eval,
                )
            }
        };
        if let Err(e) = &eval.merged {
            // Agent-authored chunks that cannot apply are refused at
            // submit, not stored (§5.5 step 4).
            reply.rejected_chunks += 1;
            reply
                .rejection_reasons
                .push(format!("chunk '{rule_name}': {e}"));
            continue;
        }
        // A provider request names the profile's binaries, not one caller.
        let binary = if provider_request.is_none() {
            first_binary(&proposed_rule)
        } else {
            String::new()
        };
        let mut chunk = Chunk {
            id: new_id(),
            sandbox: state.sandbox.to_string(),
            status: ChunkStatus::Pending,
            rule_name,
            proposed_rule,
            rationale: proposal.intent_summary.clone(),
            confidence: AGENT_CONFIDENCE,
            stage: "agent".into(),
            analysis_mode: "agent_authored".into(),
            binary,
            hit_count: 1,
            created_at_ms: state.now_ms,
            first_seen_ms: state.now_ms,
            last_seen_ms: state.now_ms,
            decided_at_ms: None,
            validation_result: String::new(),
            rejection_reason: String::new(),
            application_error: String::new(),
            review_token: String::new(),
            current_effective_policy_hash: String::new(),
            candidate_effective_policy_hash: String::new(),
            current_effective_policy: String::new(),
            candidate_effective_policy: String::new(),
            grant: None,
            approved_policy_version: None,
            provider_request,
            decided_by: String::new(),
        };
        eval.write_to(&mut chunk);
        let key = chunk.observation_key();
        let id = chunk.id.clone();
        w.chunks.push(chunk);
        let i = w.chunks.len() - 1;
        w.touch(i);
        let text = format!(
            "Rule '{}' proposed (confidence: {:.0}%)",
            w.chunks[i].rule_name,
            AGENT_CONFIDENCE * 100.0
        );
        w.log("proposed", i, &actor, text);
        w.out.events.push(Event::Proposed(w.chunks[i].clone()));
        // Step 6: a newer proposal for the same (host, port, binary)
        // replaces a pending one.
        if let Some(key) = key {
            for j in 0..w.chunks.len() {
                let other = &w.chunks[j];
                if j != i
                    && other.status == ChunkStatus::Pending
                    && other.observation_key().as_ref() == Some(&key)
                {
                    w.reject(j, format!("superseded by chunk {id}"), "system:supersede");
                }
            }
        }
        reply.accepted_chunks += 1;
        reply.accepted_chunk_ids.push(id.clone());
        accepted.push(id);
    }
    if state.approval_mode == ApprovalMode::Auto {
        for id in &accepted {
            auto_approve(&mut w, id);
        }
    }
    (reply, w.finish())
}

/// §5.5 step 8: approve only what is still pending, evaluates cleanly
/// against the policy as it is now, has no new findings and no security
/// notes. Anything else waits for a person.
fn auto_approve(w: &mut Work<'_>, id: &str) {
    let Ok(i) = w.find(id) else { return };
    if w.chunks[i].status != ChunkStatus::Pending || !security_notes(&w.chunks[i]).is_empty() {
        return;
    }
    let eval = w.evaluate(&w.chunks[i]);
    if eval.validation_result != NO_NEW_FINDINGS {
        return;
    }
    eval.write_to(&mut w.chunks[i]);
    if let Ok(merged) = eval.merged {
        w.approve(i, merged, "system:auto", true);
        w.reconcile();
    }
}

/// `rule approve`: the operator approves the chunk as reviewed.
pub fn approve(state: &State<'_>, chunk_id: &str, review_token: &str, actor: &str) -> Outcome {
    let mut w = Work::new(state);
    let i = match w.find(chunk_id) {
        Ok(i) => i,
        Err(e) => return refused(e),
    };
    let chunk = &w.chunks[i];
    if chunk.status == ChunkStatus::Approved {
        return refused(DraftError::FailedPrecondition(format!(
            "chunk {chunk_id} is already approved (policy version {})",
            chunk.approved_policy_version.unwrap_or_default()
        )));
    }
    if review_token != chunk.review_token {
        return refused(DraftError::FailedPrecondition(
            "review token does not match the fetched proposal; refetch and review again".into(),
        ));
    }
    let eval = w.evaluate(chunk);
    if eval.review_token != chunk.review_token {
        eval.write_to(&mut w.chunks[i]);
        w.touch(i);
        let mut out = w.finish();
        out.error = Some(DraftError::FailedPrecondition(
            "proposal inputs changed; evaluation refreshed, refetch and review again".into(),
        ));
        return out;
    }
    let merged = match eval.merged {
        Ok(m) => m,
        Err(e) => {
            return refused(DraftError::FailedPrecondition(format!(
                "proposal is not applicable: {e}"
            )));
        }
    };
    w.approve(i, merged, actor, false);
    w.reconcile();
    w.finish()
}

/// `rule reject`: a pending chunk is rejected; an approved one is revoked,
/// removing exactly what its approval added.
pub fn reject(state: &State<'_>, chunk_id: &str, reason: &str, actor: &str) -> Outcome {
    let mut w = Work::new(state);
    let i = match w.find(chunk_id) {
        Ok(i) => i,
        Err(e) => return refused(e),
    };
    match w.chunks[i].status {
        ChunkStatus::Rejected => {
            return refused(DraftError::FailedPrecondition(format!(
                "chunk {chunk_id} is already rejected"
            )));
        }
        ChunkStatus::Approved => {
            if let Err(e) = w.revoke(i, actor) {
                return refused(e);
            }
        }
        ChunkStatus::Pending => {}
    }
    w.reject(i, reason.to_string(), actor);
    w.finish()
}

/// `rule undo`: an approved chunk goes back to pending, re-evaluated
/// against the policy without it.
pub fn undo(state: &State<'_>, chunk_id: &str, actor: &str) -> Outcome {
    let mut w = Work::new(state);
    let i = match w.find(chunk_id) {
        Ok(i) => i,
        Err(e) => return refused(e),
    };
    if w.chunks[i].status != ChunkStatus::Approved {
        return refused(DraftError::FailedPrecondition(format!(
            "chunk {chunk_id} is {}; only approved chunks can be undone",
            w.chunks[i].status.as_str()
        )));
    }
    if let Err(e) = w.revoke(i, actor) {
        return refused(e);
    }
    let eval = w.evaluate(&w.chunks[i]);
    let chunk = &mut w.chunks[i];
    eval.write_to(chunk);
    chunk.status = ChunkStatus::Pending;
    chunk.decided_at_ms = None;
    chunk.decided_by.clear();
    chunk.rejection_reason.clear();
    let text = format!("Rule '{}' undone; back to pending", chunk.rule_name);
    w.touch(i);
    w.log("undone", i, actor, text);
    w.finish()
}

/// `rule approve-all`: stages every selected pending chunk against one
/// policy and writes one version. Chunks with security notes (unless
/// included), stale tokens, application errors or conflicts are skipped.
pub fn approve_all(
    state: &State<'_>,
    include_security_flagged: bool,
    approvals: &[(String, String)],
    actor: &str,
) -> (ApproveAllSummary, Outcome) {
    let mut w = Work::new(state);
    let mut summary = ApproveAllSummary::default();
    let mut pending: Vec<usize> = (0..w.chunks.len())
        .filter(|&i| w.chunks[i].status == ChunkStatus::Pending)
        .collect();
    if pending.is_empty() {
        return (
            summary,
            refused(DraftError::FailedPrecondition(format!(
                "sandbox `{}` has no pending chunks",
                state.sandbox
            ))),
        );
    }
    pending.sort_by(|&a, &b| {
        let (a, b) = (&w.chunks[a], &w.chunks[b]);
        (a.created_at_ms, &a.id).cmp(&(b.created_at_ms, &b.id))
    });
    let mut staged = w.policy.clone();
    let mut approved: Vec<(usize, Merged)> = Vec::new();
    for i in pending {
        let chunk = &w.chunks[i];
        let token = if approvals.is_empty() {
            Some(chunk.review_token.as_str())
        } else {
            approvals
                .iter()
                .find(|(id, _)| *id == chunk.id)
                .map(|(_, t)| t.as_str())
        };
        let Some(token) = token else { continue };
        let skip = |why: &str| (chunk.id.clone(), why.to_string());
        if token != chunk.review_token {
            summary
                .skipped
                .push(skip("review token is stale; refetch and review again"));
            continue;
        }
        if !chunk.application_error.is_empty() {
            summary
                .skipped
                .push(skip("not applicable to the current policy"));
            continue;
        }
        if chunk.provider_request.is_some() {
            summary.skipped.push(skip(
                "a provider request is approved on its own, with `rule approve`",
            ));
            continue;
        }
        if !include_security_flagged && !security_notes(chunk).is_empty() {
            summary.skipped.push(skip(
                "has security notes; review it alone or pass --include-security-flagged",
            ));
            continue;
        }
        // The token binds the evaluation against the policy in force;
        // staging on top of earlier chunks must still merge cleanly.
        let fresh = w.evaluate(chunk);
        if fresh.review_token != chunk.review_token {
            summary.skipped.push(skip(
                "inputs changed since review; refetch and review again",
            ));
            continue;
        }
        match merge::add_rule(&staged, &proposed(chunk)) {
            Ok(m) => {
                staged = m.policy.clone();
                approved.push((i, m));
            }
            Err(e) => summary.skipped.push(skip(&format!(
                "conflicts with another chunk in this batch: {e}"
            ))),
        }
    }
    if approved.is_empty() {
        return (summary, w.finish());
    }
    let effective = match (state.compose)(&staged) {
        Ok(effective) => effective,
        Err(e) => {
            return (
                summary,
                refused(DraftError::FailedPrecondition(format!(
                    "the approved chunks do not compose with the sandbox's providers: {e}"
                ))),
            );
        }
    };
    w.write_policy(staged, effective, "approve-all".into(), actor);
    let version = w.version;
    let hash = w.effective.hash().to_string();
    for (i, merged) in approved {
        let chunk = &mut w.chunks[i];
        chunk.status = ChunkStatus::Approved;
        chunk.decided_at_ms = Some(state.now_ms);
        chunk.decided_by = actor.to_string();
        chunk.grant = serde_json::to_value(&merged.grant).ok();
        chunk.approved_policy_version = Some(version);
        summary.approved.push(chunk.id.clone());
        let text = format!(
            "Rule '{}' approved (approve-all) into '{}'; policy version {version}",
            chunk.rule_name, merged.target_rule
        );
        w.touch(i);
        w.log("approved", i, actor, text);
        w.out.events.push(Event::Approved {
            chunk: w.chunks[i].clone(),
            auto: false,
            version,
            hash: hash.clone(),
        });
    }
    w.reconcile();
    (summary, w.finish())
}

/// `rule edit` / the inbox's editor: replaces a pending chunk's rule and
/// evaluates it again, so the operator approves what they now read.
pub fn edit(state: &State<'_>, chunk_id: &str, rule: &Value, actor: &str) -> Outcome {
    let mut w = Work::new(state);
    let i = match w.find(chunk_id) {
        Ok(i) => i,
        Err(e) => return refused(e),
    };
    let chunk = &w.chunks[i];
    if chunk.status != ChunkStatus::Pending {
        return refused(DraftError::FailedPrecondition(format!(
            "chunk {chunk_id} is {}; only pending chunks can be edited",
            chunk.status.as_str()
        )));
    }
    if chunk.provider_request.is_some() {
        return refused(DraftError::FailedPrecondition(format!(
            "chunk {chunk_id} asks for a provider; there is no rule to edit"
        )));
    }
    let proposed = match merge::propose(&chunk.rule_name, rule) {
        Ok(p) => p,
        Err(e) => {
            return refused(DraftError::InvalidArgument(format!(
                "the edited rule is invalid: {e}"
            )));
        }
    };
    let eval = evaluate(state, &w.policy, &w.effective, &proposed);
    let chunk = &mut w.chunks[i];
    chunk.binary = first_binary(&proposed.canonical);
    chunk.proposed_rule = proposed.canonical;
    eval.write_to(chunk);
    let text = format!("Rule '{}' edited by the operator", chunk.rule_name);
    w.touch(i);
    w.log("edited", i, actor, text);
    w.out.events.push(Event::Edited(w.chunks[i].clone()));
    w.finish()
}

/// `rule clear`: deletes every pending chunk.
pub fn clear(state: &State<'_>, actor: &str) -> Outcome {
    let mut w = Work::new(state);
    let cleared: Vec<Chunk> = w
        .chunks
        .iter()
        .filter(|c| c.status == ChunkStatus::Pending)
        .cloned()
        .collect();
    for c in &cleared {
        w.out.change.delete_chunks.push(c.id.clone());
        w.out.change.history.push(history(
            state,
            "cleared",
            &c.id,
            actor,
            format!("Rule '{}' cleared while pending", c.rule_name),
        ));
    }
    if !cleared.is_empty() {
        w.out.events.push(Event::Cleared(cleared));
    }
    w.finish()
}

/// Re-evaluates pending chunks after the policy changed outside the draft
/// flow (`policy set`): covered ones are rejected as redundant, the others
/// get fresh tokens against the new policy.
pub fn after_policy_change(state: &State<'_>) -> Outcome {
    let mut w = Work::new(state);
    w.version = state.policy_version;
    w.reconcile();
    w.finish()
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
