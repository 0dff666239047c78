//! Policy revisions per sandbox: every candidate gets the next version,
//! loaded or failed, and the history is kept on disk. The loaded snapshot
//! itself is published through a watch channel, so long-lived relays learn
//! of a reload the moment it happens.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{policy::Policy, sandbox::registry::write_atomic};

/// Revisions kept per sandbox; older ones are dropped from the history.
const HISTORY_LIMIT: usize = 1000;

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
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub version: u64,
    /// SHA-256 of the canonical policy; empty for a failed candidate.
    pub hash: String,
    pub status: RevisionStatus,
    /// Where the candidate came from (a file path, `sandbox create`, ...).
    pub source: String,
    pub created_unix_ms: u64,
    pub error: Option<String>,
    /// The YAML as submitted, kept for loaded revisions only.
    pub yaml: Option<String>,
}

/// A compiled policy with its revision identity: what a connection is
/// authorised under, and keeps.
#[derive(Debug)]
pub struct Snapshot {
    pub policy: Policy,
    /// 0 for the built-in deny-all of a sandbox without a policy.
    pub version: u64,
    pub hash: String,
    pub source: String,
}

impl Snapshot {
    pub fn deny_all() -> Arc<Self> {
        let policy = Policy::deny_all();
        Arc::new(Self {
            hash: policy.hash().to_string(),
            policy,
            version: 0,
            source: "(none: all egress denied)".into(),
        })
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct History {
    revisions: Vec<Revision>,
}

/// The on-disk history of every sandbox's policy.
pub struct PolicyStore {
    dir: PathBuf,
    histories: BTreeMap<String, History>,
}

/// What submitting a candidate did.
pub enum Submitted {
    Loaded {
        snapshot: Arc<Snapshot>,
        unchanged: bool,
    },
    Failed {
        revision: Revision,
        error: String,
    },
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl PolicyStore {
    pub fn open(state_dir: &Path) -> Result<Self> {
        let dir = state_dir.join("policies");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut histories = BTreeMap::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let Some(name) = path
                .file_stem()
                .and_then(|n| n.to_str())
                .map(str::to_string)
            else {
                continue;
            };
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let bytes = std::fs::read(&path)?;
            let history: History = serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "{} is corrupt; restore it from a backup or remove it",
                    path.display()
                )
            })?;
            histories.insert(name, history);
        }
        Ok(Self { dir, histories })
    }

    pub fn history(&self, sandbox: &str) -> &[Revision] {
        self.histories
            .get(sandbox)
            .map(|h| h.revisions.as_slice())
            .unwrap_or(&[])
    }

    /// The revision in force, if the sandbox ever had a valid policy.
    pub fn current(&self, sandbox: &str) -> Option<&Revision> {
        self.history(sandbox)
            .iter()
            .rev()
            .find(|r| r.status == RevisionStatus::Loaded)
    }

    /// Rebuilds the snapshot in force from the stored YAML (agent start).
    pub fn current_snapshot(&self, sandbox: &str) -> Result<Arc<Snapshot>> {
        let Some(rev) = self.current(sandbox) else {
            return Ok(Snapshot::deny_all());
        };
        let yaml = rev.yaml.as_deref().unwrap_or_default();
        let policy = Policy::parse(&rev.source, yaml).with_context(|| {
            format!(
                "sandbox {sandbox}: stored policy version {} no longer parses",
                rev.version
            )
        })?;
        Ok(Arc::new(Snapshot {
            hash: policy.hash().to_string(),
            policy,
            version: rev.version,
            source: rev.source.clone(),
        }))
    }

    /// Validates and records a candidate. A candidate identical to the one
    /// in force (same hash) keeps its version.
    pub fn submit(&mut self, sandbox: &str, source: &str, yaml: &str) -> Result<Submitted> {
        let parsed = Policy::parse(source, yaml);
        let history = self.histories.entry(sandbox.to_string()).or_default();
        let version = history.revisions.last().map(|r| r.version).unwrap_or(0) + 1;
        let result = match parsed {
            Ok(policy) => {
                let hash = policy.hash().to_string();
                if let Some(current) = history
                    .revisions
                    .iter()
                    .rev()
                    .find(|r| r.status == RevisionStatus::Loaded)
                    && current.hash == hash
                {
                    let snapshot = Arc::new(Snapshot {
                        policy,
                        version: current.version,
                        hash,
                        source: current.source.clone(),
                    });
                    return Ok(Submitted::Loaded {
                        snapshot,
                        unchanged: true,
                    });
                }
                for r in history
                    .revisions
                    .iter_mut()
                    .filter(|r| r.status == RevisionStatus::Loaded)
                {
                    r.status = RevisionStatus::Superseded;
                }
                history.revisions.push(Revision {
                    version,
                    hash: hash.clone(),
                    status: RevisionStatus::Loaded,
                    source: source.to_string(),
                    created_unix_ms: now_ms(),
                    error: None,
                    yaml: Some(yaml.to_string()),
                });
                Submitted::Loaded {
                    snapshot: Arc::new(Snapshot {
                        policy,
                        version,
                        hash,
                        source: source.to_string(),
                    }),
                    unchanged: false,
                }
            }
            Err(e) => {
                let revision = Revision {
                    version,
                    hash: String::new(),
                    status: RevisionStatus::Failed,
                    source: source.to_string(),
                    created_unix_ms: now_ms(),
                    error: Some(e.to_string()),
                    yaml: None,
                };
                history.revisions.push(revision.clone());
                Submitted::Failed {
                    revision,
                    error: e.to_string(),
                }
            }
        };
        if history.revisions.len() > HISTORY_LIMIT {
            let excess = history.revisions.len() - HISTORY_LIMIT;
            // Never drop the revision in force.
            let keep_from = history
                .revisions
                .iter()
                .position(|r| r.status == RevisionStatus::Loaded)
                .map_or(excess, |loaded| loaded.min(excess));
            history.revisions.drain(..keep_from);
        }
        self.save(sandbox)?;
        Ok(result)
    }

    pub fn remove(&mut self, sandbox: &str) -> Result<()> {
        self.histories.remove(sandbox);
        match std::fs::remove_file(self.path(sandbox)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn path(&self, sandbox: &str) -> PathBuf {
        self.dir.join(format!("{sandbox}.json"))
    }

    fn save(&self, sandbox: &str) -> Result<()> {
        let history = self.histories.get(sandbox).context("no history")?;
        write_atomic(
            &self.path(sandbox),
            &serde_json::to_vec_pretty(history)?,
            0o600,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "version: 1\nnetwork_policies:\n  a:\n    endpoints:\n      - host: example.test\n        port: 443\n";

    fn loaded(s: Submitted) -> (Arc<Snapshot>, bool) {
        match s {
            Submitted::Loaded {
                snapshot,
                unchanged,
            } => (snapshot, unchanged),
            Submitted::Failed { error, .. } => panic!("failed: {error}"),
        }
    }

    #[test]
    fn versions_increase_and_identical_candidates_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = PolicyStore::open(dir.path()).unwrap();
        let (v1, _) = loaded(store.submit("demo", "a.yaml", GOOD).unwrap());
        assert_eq!(v1.version, 1);
        let (again, unchanged) = loaded(store.submit("demo", "a.yaml", GOOD).unwrap());
        assert!(unchanged);
        assert_eq!(again.version, 1);
        let (v2, _) = loaded(
            store
                .submit("demo", "b.yaml", &GOOD.replace("443", "8443"))
                .unwrap(),
        );
        assert_eq!(v2.version, 2);
        assert_ne!(v1.hash, v2.hash);
        let statuses: Vec<_> = store.history("demo").iter().map(|r| r.status).collect();
        assert_eq!(
            statuses,
            [RevisionStatus::Superseded, RevisionStatus::Loaded]
        );
    }

    #[test]
    fn a_failed_candidate_is_recorded_and_the_previous_stays_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = PolicyStore::open(dir.path()).unwrap();
        loaded(store.submit("demo", "a.yaml", GOOD).unwrap());
        match store.submit("demo", "bad.yaml", "version: 2\n").unwrap() {
            Submitted::Failed { revision, error } => {
                assert_eq!(revision.version, 2);
                assert!(error.contains("bad.yaml"), "{error}");
            }
            Submitted::Loaded { .. } => panic!("version 2 must fail"),
        }
        assert_eq!(store.current("demo").unwrap().version, 1);
    }

    #[test]
    fn history_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = PolicyStore::open(dir.path()).unwrap();
            loaded(store.submit("demo", "a.yaml", GOOD).unwrap());
            let _ = store.submit("demo", "bad.yaml", "nope: [").unwrap();
        }
        let store = PolicyStore::open(dir.path()).unwrap();
        assert_eq!(store.history("demo").len(), 2);
        let snap = store.current_snapshot("demo").unwrap();
        assert_eq!(snap.version, 1);
        assert_eq!(store.current_snapshot("other").unwrap().version, 0);
    }
}
