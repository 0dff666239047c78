use serde_json::json;

use super::*;
use crate::drafts::validator::CredentialTarget;

const BASE: &str = r#"
version: 1
network_policies:
  github_ro:
    endpoints:
      - host: api.example.test
        port: 443
        protocol: rest
        access: read-only
    binaries:
      - path: /usr/bin/curl
"#;

/// A sandbox without providers: the effective policy is the base.
fn same(p: &Policy) -> Result<Policy, String> {
    Ok(p.clone())
}

/// The one provider these tests know: `gh`, of type github.
fn github(names: &[String]) -> Vec<crate::providers::profile::Attached<'static>> {
    names
        .iter()
        .filter(|n| *n == "gh")
        .map(|_| crate::providers::profile::Attached {
            name: "gh",
            provider_type: "github",
            credential_keys: vec!["GITHUB_TOKEN"],
        })
        .collect()
}

fn compose_with(base: &Policy, names: &[String]) -> Result<Policy, String> {
    let attached = github(names);
    if attached.is_empty() {
        return Ok(base.clone());
    }
    crate::providers::profile::compose(base, &attached)
}

fn credentials_with(names: &[String]) -> CredentialSet {
    crate::daemon::providers::credential_set_of(&github(names))
}

fn policy(yaml: &str) -> Policy {
    Policy::parse("test", yaml).unwrap()
}

/// A proposal for `PUT <path>` on api.example.test by curl.
fn put_rule(path: &str) -> Value {
    json!({
        "endpoints": [{
            "host": "api.example.test", "port": 443, "protocol": "rest",
            "rules": [{"allow": {"method": "PUT", "path": path}}]
        }],
        "binaries": [{"path": "/usr/bin/curl"}]
    })
}

fn l4_rule(host: &str, port: u16) -> Value {
    json!({
        "endpoints": [{"host": host, "port": port}],
        "binaries": [{"path": "/usr/bin/curl"}]
    })
}

fn proposal(ops: &[(&str, Value)]) -> Proposal {
    Proposal {
        intent_summary: "write the file".into(),
        operations: ops
            .iter()
            .map(|(name, rule)| Operation::AddRule {
                rule_name: (*name).to_string(),
                rule: rule.clone(),
            })
            .collect(),
    }
}

struct Fixture {
    policy: Policy,
    version: u64,
    chunks: Vec<Chunk>,
    creds: CredentialSet,
    mode: ApprovalMode,
    next: u32,
    catalog: std::collections::BTreeMap<String, String>,
    attached: Vec<String>,
}

impl Fixture {
    fn new() -> Self {
        Self {
            policy: policy(BASE),
            version: 1,
            chunks: Vec::new(),
            creds: CredentialSet::default(),
            mode: ApprovalMode::Manual,
            next: 0,
            catalog: [("gh".to_string(), "github".to_string())].into(),
            attached: Vec::new(),
        }
    }

    fn state(&self) -> State<'_> {
        State {
            sandbox: "sb",
            policy: &self.policy,
            effective: &self.policy,
            compose: &same,
            providers: &self.catalog,
            attached: &self.attached,
            compose_with: &compose_with,
            credentials_with: &credentials_with,
            policy_version: self.version,
            latest_version: self.version,
            chunks: &self.chunks,
            credentials: &self.creds,
            approval_mode: self.mode,
            now_ms: 1_000 + i64::from(self.next),
        }
    }

    /// Applies an outcome the way the store and daemon would.
    fn apply(&mut self, out: &Outcome) {
        for c in &out.change.upsert_chunks {
            match self.chunks.iter_mut().find(|x| x.id == c.id) {
                Some(x) => *x = c.clone(),
                None => self.chunks.push(c.clone()),
            }
        }
        self.chunks
            .retain(|c| !out.change.delete_chunks.contains(&c.id));
        if let Some(load) = &out.load {
            self.policy = load.policy.clone();
            self.version = load.version;
        }
        if let Some((names, _)) = &out.providers {
            self.attached = names.clone();
        }
    }

    fn submit(&mut self, p: &Proposal) -> SubmitReply {
        let mut next = self.next;
        let (reply, out) = submit(&self.state(), p, &mut || {
            next += 1;
            format!("chunk-{next}")
        });
        self.next = next;
        assert!(out.error.is_none());
        self.apply(&out);
        reply
    }

    fn chunk(&self, id: &str) -> &Chunk {
        self.chunks.iter().find(|c| c.id == id).unwrap()
    }

    fn approve(&mut self, id: &str) -> Outcome {
        let token = self.chunk(id).review_token.clone();
        let out = approve(&self.state(), id, &token, "operator");
        self.apply(&out);
        out
    }
}

#[test]
fn a_proposal_becomes_a_pending_chunk_with_its_evaluation() {
    let mut f = Fixture::new();
    let reply = f.submit(&proposal(&[(
        "contents_write",
        put_rule("/repos/o/r/contents/x"),
    )]));
    assert_eq!(reply.status, "submitted");
    assert_eq!((reply.accepted_chunks, reply.rejected_chunks), (1, 0));
    let c = f.chunk(&reply.accepted_chunk_ids[0]);
    assert_eq!(c.status, ChunkStatus::Pending);
    assert_eq!(c.binary, "/usr/bin/curl");
    assert_eq!(c.stage, "agent");
    assert_eq!(c.rationale, "write the file");
    assert_eq!(c.validation_result, NO_NEW_FINDINGS);
    assert_eq!(c.review_token.len(), 64);
    assert_eq!(c.current_effective_policy_hash, f.policy.hash());
    assert!(!c.candidate_effective_policy_hash.is_empty());
    assert_ne!(
        c.candidate_effective_policy_hash,
        c.current_effective_policy_hash
    );
    assert!(c.application_error.is_empty());
}

#[test]
fn an_inapplicable_rule_is_refused_at_submit_and_not_stored() {
    let mut f = Fixture::new();
    let reply = f.submit(&proposal(&[
        ("meta", l4_rule("169.254.169.254", 80)),
        ("ok", l4_rule("other.example.test", 443)),
    ]));
    assert_eq!((reply.accepted_chunks, reply.rejected_chunks), (1, 1));
    assert!(
        reply.rejection_reasons[0].starts_with("chunk 'meta': "),
        "{:?}",
        reply.rejection_reasons
    );
    assert_eq!(f.chunks.len(), 1);
}

#[test]
fn a_newer_proposal_supersedes_a_pending_one_for_the_same_key() {
    let mut f = Fixture::new();
    let first = f
        .submit(&proposal(&[("wide", put_rule("/repos/**"))]))
        .accepted_chunk_ids[0]
        .clone();
    let second = f
        .submit(&proposal(&[("narrow", put_rule("/repos/o/r/contents/x"))]))
        .accepted_chunk_ids[0]
        .clone();
    let old = f.chunk(&first);
    assert_eq!(old.status, ChunkStatus::Rejected);
    assert_eq!(
        old.rejection_reason,
        format!("superseded by chunk {second}")
    );
    assert_eq!(f.chunk(&second).status, ChunkStatus::Pending);
    // A different port is a different key: nothing superseded.
    let third = f.submit(&proposal(&[(
        "other_port",
        l4_rule("api.example.test", 8443),
    )]));
    assert_eq!(f.chunk(&second).status, ChunkStatus::Pending);
    assert_eq!(
        f.chunk(&third.accepted_chunk_ids[0]).status,
        ChunkStatus::Pending
    );
}

#[test]
fn approval_writes_the_next_version_and_covers_the_rule() {
    let mut f = Fixture::new();
    let id = f
        .submit(&proposal(&[(
            "contents_write",
            put_rule("/repos/o/r/contents/x"),
        )]))
        .accepted_chunk_ids[0]
        .clone();
    let before = f.policy.clone();
    let out = f.approve(&id);
    assert!(out.error.is_none(), "{:?}", out.error);
    let rev = out.change.revision.as_ref().unwrap();
    assert_eq!(rev.version, 2);
    assert_eq!(rev.status, RevisionStatus::Loaded);
    assert_eq!(out.change.expect_latest_version, Some(1));
    assert_eq!(f.version, 2);
    let c = f.chunk(&id);
    assert_eq!(c.status, ChunkStatus::Approved);
    assert_eq!(c.approved_policy_version, Some(2));
    assert!(c.grant.is_some());
    assert!(merge::covers(&f.policy, &proposed(c)));
    assert!(!merge::covers(&before, &proposed(c)));
    assert!(matches!(
        out.events[0],
        Event::Approved {
            auto: false,
            version: 2,
            ..
        }
    ));
    assert_eq!(out.change.history.last().unwrap().event_type, "approved");
}

#[test]
fn a_wrong_or_stale_token_is_refused() {
    let mut f = Fixture::new();
    let id = f
        .submit(&proposal(&[("w", put_rule("/x"))]))
        .accepted_chunk_ids[0]
        .clone();
    let out = approve(&f.state(), &id, "not-the-token", "operator");
    assert_eq!(
        out.error,
        Some(DraftError::FailedPrecondition(
            "review token does not match the fetched proposal; refetch and review again".into()
        ))
    );
    assert!(out.change.revision.is_none());
    // The policy changed under the chunk: the evaluation is refreshed and
    // the approval refused until the operator looks again.
    let token = f.chunk(&id).review_token.clone();
    f.policy = policy(&BASE.replace("read-only", "read-write"));
    let out = approve(&f.state(), &id, &token, "operator");
    assert!(
        matches!(&out.error, Some(DraftError::FailedPrecondition(m)) if m.contains("inputs changed"))
    );
    assert!(out.change.revision.is_none());
    let refreshed = &out.change.upsert_chunks[0];
    assert_ne!(refreshed.review_token, token);
    assert_eq!(refreshed.current_effective_policy_hash, f.policy.hash());
}

#[test]
fn rejecting_a_pending_chunk_keeps_the_reason_verbatim() {
    let mut f = Fixture::new();
    let id = f
        .submit(&proposal(&[("w", put_rule("/x"))]))
        .accepted_chunk_ids[0]
        .clone();
    let reason = "scope to docs/ paths only, not the whole repo";
    let out = reject(&f.state(), &id, reason, "operator");
    f.apply(&out);
    assert!(out.load.is_none());
    assert_eq!(f.chunk(&id).status, ChunkStatus::Rejected);
    assert_eq!(f.chunk(&id).rejection_reason, reason);
    let again = reject(&f.state(), &id, "x", "operator");
    assert!(matches!(
        again.error,
        Some(DraftError::FailedPrecondition(_))
    ));
}

#[test]
fn rejecting_an_approved_chunk_removes_exactly_what_it_added() {
    let mut f = Fixture::new();
    let original = f.policy.hash().to_string();
    let id = f
        .submit(&proposal(&[("w", put_rule("/x"))]))
        .accepted_chunk_ids[0]
        .clone();
    f.approve(&id);
    assert_ne!(f.policy.hash(), original);
    let out = reject(&f.state(), &id, "too broad", "operator");
    assert!(out.error.is_none(), "{:?}", out.error);
    f.apply(&out);
    assert_eq!(
        f.policy.hash(),
        original,
        "the revoke restores the policy exactly"
    );
    assert_eq!(f.version, 3);
    assert_eq!(f.chunk(&id).status, ChunkStatus::Rejected);
    assert!(
        out.events
            .iter()
            .any(|e| matches!(e, Event::Revoked { .. }))
    );
}

#[test]
fn undo_puts_an_approved_chunk_back_to_pending() {
    let mut f = Fixture::new();
    let original = f.policy.hash().to_string();
    let id = f
        .submit(&proposal(&[("w", put_rule("/x"))]))
        .accepted_chunk_ids[0]
        .clone();
    f.approve(&id);
    let out = undo(&f.state(), &id, "operator");
    f.apply(&out);
    assert_eq!(f.policy.hash(), original);
    let c = f.chunk(&id);
    assert_eq!(c.status, ChunkStatus::Pending);
    assert!(c.rejection_reason.is_empty());
    assert_eq!(c.current_effective_policy_hash, original);
    // And it can be approved again.
    assert!(f.approve(&id).error.is_none());
}

#[test]
fn auto_mode_approves_clean_chunks_and_holds_credentialed_expansions() {
    let mut f = Fixture::new();
    f.mode = ApprovalMode::Auto;
    f.creds = CredentialSet {
        targets: vec![CredentialTarget {
            provider: "github".into(),
            host: "api.example.test".into(),
            ports: vec![443],
        }],
    };
    // Un-credentialed host: approved at once.
    let raw = f.submit(&proposal(&[(
        "raw_content",
        json!({
            "endpoints": [{"host": "raw.example.test", "port": 443, "protocol": "rest",
                           "rules": [{"allow": {"method": "GET", "path": "/o/r/**"}}]}],
            "binaries": [{"path": "/usr/bin/curl"}]
        }),
    )]));
    let raw = f.chunk(&raw.accepted_chunk_ids[0]);
    assert_eq!(
        raw.status,
        ChunkStatus::Approved,
        "{}",
        raw.validation_result
    );
    assert_eq!(raw.validation_result, NO_NEW_FINDINGS);
    // A new method on the credentialed host: held for a person.
    let put = f.submit(&proposal(&[("write", put_rule("/repos/o/r/contents/y"))]));
    let put = f.chunk(&put.accepted_chunk_ids[0]);
    assert_eq!(put.status, ChunkStatus::Pending);
    assert!(
        put.validation_result.starts_with("prover: 1 new finding"),
        "{}",
        put.validation_result
    );
    assert!(
        put.validation_result
            .contains("capability_expansion: PUT on api.example.test:443 via /usr/bin/curl")
    );
}

#[test]
fn auto_mode_holds_chunks_with_security_notes() {
    let mut f = Fixture::new();
    f.mode = ApprovalMode::Auto;
    let reply = f.submit(&proposal(&[("db", l4_rule("db.example.test", 5432))]));
    let c = f.chunk(&reply.accepted_chunk_ids[0]);
    assert_eq!(c.validation_result, NO_NEW_FINDINGS);
    assert_eq!(c.status, ChunkStatus::Pending);
    assert!(!security_notes(c).is_empty());
}

#[test]
fn approve_all_writes_one_version_and_skips_flagged_chunks() {
    let mut f = Fixture::new();
    let a = f
        .submit(&proposal(&[("a", l4_rule("a.example.test", 443))]))
        .accepted_chunk_ids[0]
        .clone();
    let b = f
        .submit(&proposal(&[("b", l4_rule("b.example.test", 443))]))
        .accepted_chunk_ids[0]
        .clone();
    let db = f
        .submit(&proposal(&[("db", l4_rule("db.example.test", 6379))]))
        .accepted_chunk_ids[0]
        .clone();
    let approvals: Vec<(String, String)> = f
        .chunks
        .iter()
        .map(|c| (c.id.clone(), c.review_token.clone()))
        .collect();
    let (summary, out) = approve_all(&f.state(), false, &approvals, "operator");
    f.apply(&out);
    assert_eq!(summary.approved, [a.clone(), b.clone()]);
    assert_eq!(summary.skipped.len(), 1);
    assert_eq!(summary.skipped[0].0, db);
    assert_eq!(f.version, 2, "one version for the batch");
    assert_eq!(f.chunk(&db).status, ChunkStatus::Pending);
    let (summary, out) = approve_all(&f.state(), true, &[], "operator");
    f.apply(&out);
    assert_eq!(summary.approved, std::slice::from_ref(&db));
    assert_eq!(f.chunk(&db).status, ChunkStatus::Approved);
    let (_, out) = approve_all(&f.state(), true, &[], "operator");
    assert!(
        matches!(out.error, Some(DraftError::FailedPrecondition(m)) if m.contains("no pending"))
    );
}

#[test]
fn a_pending_chunk_the_policy_already_covers_is_rejected_as_redundant() {
    let mut f = Fixture::new();
    let a = f
        .submit(&proposal(&[("a", l4_rule("a.example.test", 443))]))
        .accepted_chunk_ids[0]
        .clone();
    let dup = f
        .submit(&proposal(&[(
            "a_too",
            json!({
                "endpoints": [{"host": "a.example.test", "port": 443}],
                "binaries": [{"path": "/usr/bin/wget"}]
            }),
        )]))
        .accepted_chunk_ids[0]
        .clone();
    // An operator widens the policy by hand to cover `dup`.
    f.policy = policy(&format!(
        "{BASE}  by_hand:\n    endpoints:\n      - host: a.example.test\n        port: 443\n    binaries:\n      - path: /usr/bin/wget\n"
    ));
    f.version = 2;
    let out = after_policy_change(&f.state());
    f.apply(&out);
    assert_eq!(f.chunk(&dup).status, ChunkStatus::Rejected);
    assert_eq!(
        f.chunk(&dup).rejection_reason,
        "covered by active policy revision 2"
    );
    let still = f.chunk(&a);
    assert_eq!(still.status, ChunkStatus::Pending);
    assert_eq!(
        still.current_effective_policy_hash,
        f.policy.hash(),
        "re-evaluated"
    );
}

#[test]
fn clear_deletes_only_pending_chunks() {
    let mut f = Fixture::new();
    let a = f
        .submit(&proposal(&[("a", l4_rule("a.example.test", 443))]))
        .accepted_chunk_ids[0]
        .clone();
    let b = f
        .submit(&proposal(&[("b", l4_rule("b.example.test", 443))]))
        .accepted_chunk_ids[0]
        .clone();
    f.approve(&a);
    let out = clear(&f.state(), "operator");
    assert_eq!(out.change.delete_chunks, [b]);
    f.apply(&out);
    assert_eq!(f.chunks.len(), 1);
    assert_eq!(f.chunk(&a).status, ChunkStatus::Approved);
}

#[test]
fn unknown_chunks_are_not_found() {
    let f = Fixture::new();
    for out in [
        approve(&f.state(), "nope", "t", "op"),
        reject(&f.state(), "nope", "", "op"),
        undo(&f.state(), "nope", "op"),
    ] {
        assert!(matches!(out.error, Some(DraftError::NotFound(_))));
    }
}

#[test]
fn review_tokens_bind_the_rule_the_policy_and_the_credentials() {
    let base = policy(BASE);
    let rule = |path: &str| ProposedRule {
        name: "w".into(),
        canonical: merge::propose("w", &put_rule(path)).unwrap().canonical,
    };
    let none = CredentialSet::default();
    let t = |p: &Policy, r: &ProposedRule, c: &CredentialSet| {
        let state = State {
            sandbox: "sb",
            policy: p,
            effective: p,
            compose: &same,
            providers: &Default::default(),
            attached: &[],
            compose_with: &compose_with,
            credentials_with: &credentials_with,
            policy_version: 1,
            latest_version: 1,
            chunks: &[],
            credentials: c,
            approval_mode: ApprovalMode::Manual,
            now_ms: 0,
        };
        evaluate(&state, p, p, r).review_token
    };
    let token = t(&base, &rule("/x"), &none);
    assert_eq!(token, t(&base, &rule("/x"), &none), "stable");
    assert_ne!(token, t(&base, &rule("/y"), &none));
    assert_ne!(
        token,
        t(
            &policy(&BASE.replace("read-only", "read-write")),
            &rule("/x"),
            &none
        )
    );
    let creds = CredentialSet {
        targets: vec![CredentialTarget {
            provider: "p".into(),
            host: "api.example.test".into(),
            ports: vec![],
        }],
    };
    assert_ne!(token, t(&base, &rule("/x"), &creds));
}

#[test]
fn a_provider_request_attaches_on_approval_and_detaches_on_reject() {
    let mut f = Fixture::new();
    let ask = |name: &str, t: &str| Proposal {
        intent_summary: "push to GitHub".into(),
        operations: vec![Operation::RequestProvider {
            provider_name: name.into(),
            provider_type: t.into(),
        }],
    };
    // Unknown providers and wrong types are refused at submit.
    let reply = f.submit(&ask("nope", ""));
    assert_eq!(reply.rejected_chunks, 1);
    assert!(
        reply.rejection_reasons[0].contains("provider 'nope' not found"),
        "{:?}",
        reply.rejection_reasons
    );
    let reply = f.submit(&ask("gh", "gitlab"));
    assert!(reply.rejection_reasons[0].contains("is of type 'github', not 'gitlab'"));

    let id = f.submit(&ask("gh", "github")).accepted_chunk_ids[0].clone();
    let c = f.chunk(&id);
    assert_eq!(c.provider_request.as_ref().unwrap().name, "gh");
    assert_eq!(c.rule_name, "request_provider_gh");
    assert!(
        c.validation_result
            .contains("credential_reach_expansion: api.github.com:443"),
        "{}",
        c.validation_result
    );
    // Never folded into a batch, never merged as a rule.
    let (summary, _) = approve_all(&f.state(), true, &[], "operator");
    assert!(summary.approved.is_empty());
    let base = f.policy.hash().to_string();
    let out = f.approve(&id);
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.change.attach_providers, ["gh"]);
    assert!(
        out.change.revision.is_none(),
        "the base policy is unchanged"
    );
    assert_eq!(f.policy.hash(), base);
    let (names, effective) = out.providers.as_ref().unwrap();
    assert_eq!(names, &["gh"]);
    assert!(effective.rule("_provider_gh").is_some());
    assert_eq!(f.chunk(&id).status, ChunkStatus::Approved);

    // Asking again says it is there.
    let again = f.submit(&ask("gh", ""));
    assert!(
        again.rejection_reasons[0].contains("already attached"),
        "{:?}",
        again.rejection_reasons
    );

    let out = reject(&f.state(), &id, "use a narrower token", "operator");
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.change.detach_providers, ["gh"]);
    f.apply(&out);
    assert!(f.attached.is_empty());
}

#[test]
fn an_edited_chunk_is_evaluated_again_and_approved_as_edited() {
    let mut f = Fixture::new();
    let id = f
        .submit(&proposal(&[("w", put_rule("/repos/**"))]))
        .accepted_chunk_ids[0]
        .clone();
    let before = f.chunk(&id).review_token.clone();
    let out = edit(
        &f.state(),
        &id,
        &put_rule("/repos/o/r/contents/x"),
        "operator",
    );
    assert!(out.error.is_none(), "{:?}", out.error);
    f.apply(&out);
    let c = f.chunk(&id);
    assert_ne!(
        c.review_token, before,
        "a new token: the old review is stale"
    );
    assert_eq!(
        c.proposed_rule["endpoints"][0]["rules"][0]["allow"]["path"],
        "/repos/o/r/contents/x"
    );
    assert_eq!(out.change.history[0].event_type, "edited");
    assert!(matches!(out.events[0], Event::Edited(_)));
    // The stale token is refused; the fresh one approves the edited rule.
    let stale = approve(&f.state(), &id, &before, "operator");
    assert!(matches!(
        stale.error,
        Some(DraftError::FailedPrecondition(_))
    ));
    assert!(f.approve(&id).error.is_none());
    assert_eq!(f.chunk(&id).decided_by, "operator");
    assert!(merge::covers(
        &f.policy,
        &merge::propose("w", &put_rule("/repos/o/r/contents/x")).unwrap()
    ));
    // Bad edits name the problem; decided chunks cannot be edited.
    let bad = edit(&f.state(), &id, &json!({"endpoints": []}), "operator");
    assert!(matches!(bad.error, Some(DraftError::FailedPrecondition(_))));
    let id2 = f
        .submit(&proposal(&[("v", l4_rule("v.example.test", 443))]))
        .accepted_chunk_ids[0]
        .clone();
    let bad = edit(
        &f.state(),
        &id2,
        &json!({"endpoints": [{"host": "169.254.169.254", "port": 80}]}),
        "operator",
    );
    assert!(
        matches!(&bad.error, Some(DraftError::InvalidArgument(m)) if m.contains("always blocked")),
        "{:?}",
        bad.error
    );
}
