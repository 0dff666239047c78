//! Policy revisions per sandbox: every candidate gets the next version,
//! loaded or failed; the store keeps the history. The loaded snapshot is
//! published through a watch channel, so long-lived relays learn of a
//! reload the moment it happens.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};

use crate::policy::Policy;
pub use crate::store::{Revision, RevisionStatus};

/// A compiled policy with its revision identity: what a connection is
/// authorised under, and keeps.
#[derive(Debug)]
pub struct Snapshot {
    /// What is enforced: the base policy with the sandbox's provider rules
    /// composed in.
    pub policy: Policy,
    /// The policy the revision stores, without provider rules; merges and
    /// `policy set` work on it.
    pub base: Policy,
    /// 0 for the built-in deny-all of a sandbox without a policy.
    pub version: u64,
    /// Hash of the enforced policy.
    pub hash: String,
    pub source: String,
}

/// Composes a sandbox's providers into a base policy.
pub type Compose<'a> = crate::drafts::engine::Compose<'a>;

/// Source shown for a sandbox that never had a policy.
const NO_POLICY: &str = "(none: all egress denied)";

impl Snapshot {
    pub fn new(base: Policy, effective: Policy, version: u64, source: &str) -> Arc<Self> {
        Arc::new(Self {
            hash: effective.hash().to_string(),
            policy: effective,
            base,
            version,
            source: source.to_string(),
        })
    }

    /// No policy and no providers: everything denied.
    pub fn deny_all() -> Arc<Self> {
        Self::new(Policy::deny_all(), Policy::deny_all(), 0, NO_POLICY)
    }

    /// The same base, composed again (providers attached or detached).
    pub fn recompose(&self, compose: Compose<'_>) -> Result<Arc<Self>> {
        let effective = compose(&self.base).map_err(anyhow::Error::msg)?;
        Ok(Self::new(
            self.base.clone(),
            effective,
            self.version,
            &self.source,
        ))
    }
}

/// What a candidate policy would do to a sandbox.
pub enum Candidate {
    /// The same policy as the one in force (same hash): nothing to write.
    Unchanged(Arc<Snapshot>),
    /// Valid: write `revision`, then put `snapshot` in force.
    Load {
        snapshot: Arc<Snapshot>,
        revision: Revision,
    },
    /// Invalid: write `revision` as failed; the policy in force stays.
    Failed { revision: Revision, error: String },
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Validates `yaml` as the next revision after `latest_version`, against
/// the snapshot in force.
pub fn candidate(
    latest_version: u64,
    current: &Snapshot,
    source: &str,
    provenance: &str,
    yaml: &str,
    compose: Compose<'_>,
) -> Candidate {
    let version = latest_version + 1;
    let revision = |hash: String, status, error: Option<String>, yaml: Option<String>| Revision {
        version,
        hash,
        status,
        source: source.to_string(),
        provenance: provenance.to_string(),
        created_unix_ms: now_ms(),
        error,
        yaml,
    };
    let failed = |error: String| Candidate::Failed {
        revision: revision(
            String::new(),
            RevisionStatus::Failed,
            Some(error.clone()),
            None,
        ),
        error,
    };
    let policy = match Policy::parse(source, yaml) {
        Ok(policy) => policy,
        Err(e) => return failed(e.to_string()),
    };
    if current.version > 0 && policy.hash() == current.base.hash() {
        return Candidate::Unchanged(Snapshot::new(
            current.base.clone(),
            current.policy.clone(),
            current.version,
            &current.source,
        ));
    }
    let effective = match compose(&policy) {
        Ok(effective) => effective,
        Err(e) => {
            return failed(format!(
                "{source}: the policy does not compose with the sandbox's providers: {e}"
            ));
        }
    };
    Candidate::Load {
        revision: revision(
            policy.hash().to_string(),
            RevisionStatus::Loaded,
            None,
            Some(yaml.to_string()),
        ),
        snapshot: Snapshot::new(policy, effective, version, source),
    }
}

/// Rebuilds the snapshot of a stored revision (agent start).
pub fn snapshot_of(
    sandbox: &str,
    rev: Option<&Revision>,
    compose: Compose<'_>,
) -> Result<Arc<Snapshot>> {
    let Some(rev) = rev else {
        return Snapshot::deny_all().recompose(compose);
    };
    let yaml = rev.yaml.as_deref().unwrap_or_default();
    let policy = Policy::parse(&rev.source, yaml).with_context(|| {
        format!(
            "sandbox {sandbox}: stored policy version {} no longer parses",
            rev.version
        )
    })?;
    let effective = compose(&policy)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("sandbox {sandbox}: composing its providers"))?;
    Ok(Snapshot::new(policy, effective, rev.version, &rev.source))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "version: 1\nnetwork_policies:\n  a:\n    endpoints:\n      - host: example.test\n        port: 443\n";

    fn same(p: &Policy) -> Result<Policy, String> {
        Ok(p.clone())
    }

    fn load(c: Candidate) -> (Arc<Snapshot>, Revision) {
        match c {
            Candidate::Load { snapshot, revision } => (snapshot, revision),
            Candidate::Unchanged(_) => panic!("unchanged"),
            Candidate::Failed { error, .. } => panic!("failed: {error}"),
        }
    }

    #[test]
    fn versions_follow_the_latest_and_identical_candidates_keep_theirs() {
        let (v1, rev) = load(candidate(
            0,
            &Snapshot::deny_all(),
            "a.yaml",
            "operator",
            GOOD,
            &same,
        ));
        assert_eq!((v1.version, rev.version), (1, 1));
        assert_eq!(rev.status, RevisionStatus::Loaded);
        assert!(matches!(
            candidate(1, &v1, "a.yaml", "operator", GOOD, &same),
            Candidate::Unchanged(s) if s.version == 1
        ));
        // A failed revision 2 in between: the next valid one is 3.
        let (v3, _) = load(candidate(
            2,
            &v1,
            "b.yaml",
            "operator",
            &GOOD.replace("443", "8443"),
            &same,
        ));
        assert_eq!(v3.version, 3);
        assert_ne!(v1.hash, v3.hash);
    }

    #[test]
    fn a_failed_candidate_names_its_source() {
        match candidate(
            1,
            &Snapshot::deny_all(),
            "bad.yaml",
            "operator",
            "version: 2\n",
            &same,
        ) {
            Candidate::Failed { revision, error } => {
                assert_eq!(revision.version, 2);
                assert_eq!(revision.status, RevisionStatus::Failed);
                assert!(error.contains("bad.yaml"), "{error}");
            }
            _ => panic!("version 2 must fail"),
        }
    }

    #[test]
    fn a_stored_revision_rebuilds_its_snapshot() {
        let (_, rev) = load(candidate(
            0,
            &Snapshot::deny_all(),
            "a.yaml",
            "operator",
            GOOD,
            &same,
        ));
        let snap = snapshot_of("demo", Some(&rev), &same).unwrap();
        assert_eq!(snap.version, 1);
        assert_eq!(snapshot_of("demo", None, &same).unwrap().version, 0);
    }
}
