//! The daemon's view of sandboxes: registry, cgroups, kernel attachment and
//! policy snapshots, kept consistent with each other.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use tokio::sync::watch;

use super::{
    Agent,
    drafts::policy_facts,
    policies::{self, Candidate, Revision, Snapshot},
};
use crate::{
    audit::{ConfigStateChange, PolicyFacts, PolicyLoad},
    config::AgentConfig,
    datapath,
    policy::Policy,
    sandbox::{SandboxName, SandboxRecord, cgroup},
    store::{ApprovalMode, ChangeSet, SandboxRow},
};

/// A live sandbox.
#[derive(Clone)]
pub struct SandboxView {
    pub record: SandboxRecord,
    pub cgroup_id: u64,
    /// The cgroup path relative to the cgroup2 mount, as /proc shows it.
    pub cgroup_rel: PathBuf,
    /// The snapshot in force; relays subscribe to learn of reloads.
    pub policy: Arc<watch::Sender<Arc<Snapshot>>>,
    pub links: u32,
    pub approval_mode: ApprovalMode,
}

impl SandboxView {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.policy.borrow().clone()
    }
}

/// The live sandboxes, for lookups on the connection path. The store is
/// the durable record; this index mirrors what is attached.
pub struct SandboxIndex {
    live: HashMap<String, SandboxView>,
    by_cgroup: HashMap<u64, String>,
    /// Absolute directory that holds owned sandbox cgroups.
    parent: PathBuf,
    cgroup_root: PathBuf,
}

impl SandboxIndex {
    pub fn new(config: &AgentConfig, cgroup_root: &Path) -> Self {
        Self {
            live: HashMap::new(),
            by_cgroup: HashMap::new(),
            parent: cgroup_root.join(&config.cgroup_parent),
            cgroup_root: cgroup_root.to_path_buf(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&SandboxView> {
        self.live.get(name)
    }

    pub fn list(&self) -> impl Iterator<Item = &SandboxView> {
        self.live.values()
    }

    pub fn len(&self) -> usize {
        self.live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The sandbox a socket belongs to: by the cgroup id the kernel saw, or
    /// for processes in nested cgroups, by the process's cgroup path.
    pub fn find(&self, cgroup_id: u64, tgid: u32) -> Option<&SandboxView> {
        if let Some(name) = self.by_cgroup.get(&cgroup_id) {
            return self.live.get(name);
        }
        let path = cgroup::process_cgroup(tgid)?;
        self.live.values().find(|s| path.starts_with(&s.cgroup_rel))
    }

    /// True when `path` (relative to the cgroup2 mount) is inside a sandbox
    /// or the sandbox parent: such a process may not use the control plane.
    pub fn is_sandboxed_cgroup(&self, path: &Path) -> bool {
        let parent_rel = self
            .parent
            .strip_prefix(&self.cgroup_root)
            .unwrap_or(&self.parent);
        path.starts_with(parent_rel) || self.live.values().any(|s| path.starts_with(&s.cgroup_rel))
    }

    fn relative(&self, abs: &Path) -> PathBuf {
        abs.strip_prefix(&self.cgroup_root)
            .unwrap_or(abs)
            .to_path_buf()
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Attaches and registers one sandbox whose cgroup exists.
fn bring_up(agent: &Agent, row: SandboxRow, snapshot: Arc<Snapshot>) -> Result<SandboxView> {
    let record = row.record;
    let cgroup_id = cgroup::cgroup_id(&record.cgroup_path)?;
    let links = {
        let mut dp = agent.datapath.lock().unwrap_or_else(|p| p.into_inner());
        let links = dp.attach_sandbox(record.name.as_str(), &record.cgroup_path)?;
        dp.register_cgroup(cgroup_id, record.id)?;
        links
    };
    let mut index = agent.sandboxes.write().unwrap_or_else(|p| p.into_inner());
    let view = SandboxView {
        cgroup_rel: index.relative(&record.cgroup_path),
        record,
        cgroup_id,
        policy: Arc::new(watch::Sender::new(snapshot)),
        links,
        approval_mode: row.approval_mode,
    };
    index
        .by_cgroup
        .insert(cgroup_id, view.record.name.to_string());
    index
        .live
        .insert(view.record.name.to_string(), view.clone());
    Ok(view)
}

fn log_loaded(agent: &Agent, name: &str, snapshot: &Snapshot, load: PolicyLoad) {
    if snapshot.version > 0 {
        agent
            .audit
            .log(ConfigStateChange::policy_loaded(&policy_facts(name, snapshot), load).into());
    }
}

/// Brings back every stored sandbox after a start.
pub async fn restore(agent: &Agent) -> Result<()> {
    let _writer = agent.writer.lock().await;
    for row in agent.store.sandboxes().await? {
        let record = &row.record;
        let name = record.name.to_string();
        if !record.cgroup_path.exists() {
            if record.adopted {
                log::warn!(
                    "sandbox {name}: adopted cgroup {} is gone; delete the sandbox or adopt it again",
                    record.cgroup_path.display()
                );
                continue;
            }
            cgroup::create(&record.cgroup_path)?;
        }
        let current = agent.store.current_revision(&name).await?;
        let snapshot = {
            let providers = agent.providers();
            let compose = |base: &Policy| providers.compose(&name, base);
            policies::snapshot_of(&name, current.as_ref(), &compose)?
        };
        log_loaded(agent, &name, &snapshot, PolicyLoad::Initial);
        let view =
            bring_up(agent, row, snapshot).with_context(|| format!("restoring sandbox {name}"))?;
        log::info!("sandbox {name}: {} programs attached", view.links);
    }
    Ok(())
}

pub struct NewSandbox {
    pub name: String,
    /// Existing cgroup to adopt; None creates one under the parent.
    pub adopt: Option<PathBuf>,
    pub policy_yaml: Option<String>,
    pub policy_source: Option<String>,
    pub approval_mode: ApprovalMode,
}

pub async fn create(agent: &Agent, req: NewSandbox) -> Result<SandboxView> {
    let name = SandboxName::try_from(req.name.as_str())?;
    let policy_yaml = req.policy_yaml.filter(|y| !y.trim().is_empty());
    let source = req.policy_source.unwrap_or_else(|| "sandbox create".into());
    let _writer = agent.writer.lock().await;
    // Validate before touching the system.
    let candidate = match &policy_yaml {
        Some(yaml) => {
            // A new sandbox has no providers yet.
            match policies::candidate(
                0,
                &Snapshot::deny_all(),
                &source,
                "sandbox create",
                yaml,
                &|p: &Policy| Ok(p.clone()),
            ) {
                Candidate::Failed { error, .. } => bail!(error),
                other => Some(other),
            }
        }
        None => None,
    };
    if agent
        .store
        .sandboxes()
        .await?
        .iter()
        .any(|r| r.record.name == name)
    {
        bail!("sandbox `{name}` already exists; delete it first or pick another name");
    }
    let cgroup_path = {
        let index = agent.sandboxes.read().unwrap_or_else(|p| p.into_inner());
        match &req.adopt {
            Some(path) => adoptable(&index, path)?,
            None => index.parent.join(name.as_str()),
        }
    };
    if req.adopt.is_none() {
        cgroup::create(&cgroup_path)?;
    }
    let row = SandboxRow {
        record: SandboxRecord {
            name: name.clone(),
            id: agent.store.allocate_sandbox_id().await?,
            cgroup_path,
            adopted: req.adopt.is_some(),
            created_unix: now_unix(),
        },
        approval_mode: req.approval_mode,
    };
    let (snapshot, revision) = match candidate {
        Some(Candidate::Load { snapshot, revision }) => (snapshot, Some(revision)),
        _ => (Snapshot::deny_all(), None),
    };
    // Persist first: if attaching fails half-way, a restart or delete
    // still knows about the pins to clean up.
    let mut change = ChangeSet::for_sandbox(name.as_str());
    change.create_sandbox = Some(row.clone());
    change.revision = revision;
    agent.store.commit(change).await?;
    match bring_up(agent, row, snapshot.clone()) {
        Ok(view) => {
            log_loaded(agent, name.as_str(), &snapshot, PolicyLoad::Initial);
            Ok(view)
        }
        Err(e) => {
            if let Err(cleanup) = remove(agent, name.as_str()).await {
                log::warn!("sandbox {name}: cleanup after a failed create: {cleanup:#}");
            }
            Err(e)
        }
    }
}

fn adoptable(index: &SandboxIndex, path: &Path) -> Result<PathBuf> {
    let path = path
        .canonicalize()
        .with_context(|| format!("--cgroup {}: no such cgroup", path.display()))?;
    if !path.starts_with(&index.cgroup_root) || path == index.cgroup_root {
        bail!(
            "--cgroup {}: not a cgroup below the cgroup2 mount {}",
            path.display(),
            index.cgroup_root.display()
        );
    }
    if !path.join("cgroup.procs").exists() {
        bail!(
            "--cgroup {}: not a cgroup v2 directory (no cgroup.procs)",
            path.display()
        );
    }
    let rel = index.relative(&path);
    if index
        .live
        .values()
        .any(|s| rel.starts_with(&s.cgroup_rel) || s.cgroup_rel.starts_with(&rel))
    {
        bail!("--cgroup {}: overlaps an existing sandbox", path.display());
    }
    Ok(path)
}

/// Kills and removes the cgroup (owned sandboxes only), detaches, forgets.
pub async fn delete(agent: &Agent, name: &str) -> Result<u32> {
    let _writer = agent.writer.lock().await;
    remove(agent, name).await
}

async fn remove(agent: &Agent, name: &str) -> Result<u32> {
    let Some(row) = agent
        .store
        .sandboxes()
        .await?
        .into_iter()
        .find(|r| r.record.name.as_str() == name)
    else {
        bail!("no sandbox named `{name}` (see `portcullis sandbox list`)");
    };
    let record = row.record;
    // Owned sandboxes: kill first, so no process is ever running without
    // its programs attached.
    let killed = if record.adopted {
        0
    } else {
        cgroup::kill_and_remove(&record.cgroup_path)?
    };
    {
        let mut index = agent.sandboxes.write().unwrap_or_else(|p| p.into_inner());
        let mut dp = agent.datapath.lock().unwrap_or_else(|p| p.into_inner());
        datapath::detach_sandbox(dp.pins(), name)?;
        if let Some(view) = index.live.remove(name) {
            dp.unregister_cgroup(view.cgroup_id);
            index.by_cgroup.remove(&view.cgroup_id);
        }
    }
    let mut change = ChangeSet::for_sandbox(name);
    change.delete_sandbox = true;
    agent.store.commit(change).await?;
    agent
        .providers
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .forget_sandbox(name);
    agent.pools.forget(record.id);
    Ok(killed)
}

/// The outcome of `policy set`.
pub struct PolicySet {
    pub snapshot: Arc<Snapshot>,
    pub unchanged: bool,
}

fn live(agent: &Agent, name: &str) -> Result<SandboxView> {
    agent
        .sandbox(name)
        .with_context(|| format!("no sandbox named `{name}` (see `portcullis sandbox list`)"))
}

/// Validates a candidate and, if valid, swaps it in atomically. An invalid
/// candidate is recorded as failed and the snapshot in force stays.
pub async fn set_policy(agent: &Agent, name: &str, source: &str, yaml: &str) -> Result<PolicySet> {
    let _writer = agent.writer.lock().await;
    let view = live(agent, name)?;
    let latest = agent
        .store
        .revisions(name)
        .await?
        .last()
        .map_or(0, |r| r.version);
    let current = view.snapshot();
    let candidate = {
        let providers = agent.providers();
        let compose = |base: &Policy| providers.compose(name, base);
        policies::candidate(latest, &current, source, "operator", yaml, &compose)
    };
    match candidate {
        Candidate::Unchanged(snapshot) => Ok(PolicySet {
            snapshot,
            unchanged: true,
        }),
        Candidate::Load { snapshot, revision } => {
            let mut change = ChangeSet::for_sandbox(name);
            change.expect_latest_version = Some(latest);
            change.revision = Some(revision);
            agent.store.commit(change).await?;
            for w in snapshot.policy.warnings() {
                log::warn!("sandbox {name}: {w}");
            }
            // Relays authorised under the old snapshot re-check now.
            view.policy.send_replace(snapshot.clone());
            log_loaded(agent, name, &snapshot, PolicyLoad::Reload);
            if let Err(e) = super::drafts::after_policy_change(agent, name).await {
                log::warn!("sandbox {name}: pending chunks not re-evaluated: {e}");
            }
            Ok(PolicySet {
                snapshot,
                unchanged: false,
            })
        }
        Candidate::Failed { revision, error } => {
            let facts = PolicyFacts {
                sandbox: name.to_string(),
                path: Some(source.to_string()),
                version: Some(revision.version.to_string()),
                hash: None,
            };
            let mut change = ChangeSet::for_sandbox(name);
            change.expect_latest_version = Some(latest);
            change.revision = Some(revision);
            agent.store.commit(change).await?;
            agent
                .audit
                .log(ConfigStateChange::policy_failed(&facts, &error).into());
            bail!(
                "{error}\npolicy rejected; version {} (hash {}) stays in force",
                current.version,
                current.hash
            )
        }
    }
}

/// Changes how the sandbox's proposals are decided.
pub async fn set_approval_mode(
    agent: &Agent,
    name: &str,
    mode: ApprovalMode,
) -> Result<SandboxView> {
    let _writer = agent.writer.lock().await;
    live(agent, name)?;
    let mut change = ChangeSet::for_sandbox(name);
    change.set_approval_mode = Some(mode);
    agent.store.commit(change).await?;
    let mut index = agent.sandboxes.write().unwrap_or_else(|p| p.into_inner());
    let view = index
        .live
        .get_mut(name)
        .with_context(|| format!("sandbox `{name}` was deleted meanwhile"))?;
    view.approval_mode = mode;
    Ok(view.clone())
}

/// Revisions of one sandbox, oldest first.
pub async fn history(agent: &Agent, name: &str) -> Result<Vec<Revision>> {
    live(agent, name)?;
    Ok(agent.store.revisions(name).await?)
}
