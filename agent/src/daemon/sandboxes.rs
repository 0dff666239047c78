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
    policies::{PolicyStore, Revision, Snapshot, Submitted},
};
use crate::{
    audit::{ConfigStateChange, PolicyFacts, PolicyLoad},
    config::AgentConfig,
    datapath,
    policy::Policy,
    sandbox::{Registry, SandboxName, SandboxRecord, cgroup},
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
}

impl SandboxView {
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.policy.borrow().clone()
    }
}

pub struct SandboxIndex {
    registry: Registry,
    pub policies: PolicyStore,
    live: HashMap<String, SandboxView>,
    by_cgroup: HashMap<u64, String>,
    /// Absolute directory that holds owned sandbox cgroups.
    parent: PathBuf,
    cgroup_root: PathBuf,
}

impl SandboxIndex {
    pub fn open(config: &AgentConfig, cgroup_root: &Path) -> Result<Self> {
        Ok(Self {
            registry: Registry::open(&config.state_dir)?,
            policies: PolicyStore::open(&config.state_dir)?,
            live: HashMap::new(),
            by_cgroup: HashMap::new(),
            parent: cgroup_root.join(&config.cgroup_parent),
            cgroup_root: cgroup_root.to_path_buf(),
        })
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

fn policy_facts(sandbox: &str, snapshot: &Snapshot) -> PolicyFacts {
    PolicyFacts {
        sandbox: sandbox.to_string(),
        path: Some(snapshot.source.clone()),
        version: Some(snapshot.version.to_string()),
        hash: Some(snapshot.hash.clone()),
    }
}

/// Attaches and registers one sandbox whose cgroup exists.
fn bring_up(
    agent: &Agent,
    index: &mut SandboxIndex,
    record: SandboxRecord,
    snapshot: Arc<Snapshot>,
) -> Result<SandboxView> {
    let cgroup_id = cgroup::cgroup_id(&record.cgroup_path)?;
    let links = {
        let mut dp = agent.datapath.lock().unwrap_or_else(|p| p.into_inner());
        let links = dp.attach_sandbox(record.name.as_str(), &record.cgroup_path)?;
        dp.register_cgroup(cgroup_id, record.id)?;
        links
    };
    let view = SandboxView {
        cgroup_rel: index.relative(&record.cgroup_path),
        record,
        cgroup_id,
        policy: Arc::new(watch::Sender::new(snapshot)),
        links,
    };
    index
        .by_cgroup
        .insert(cgroup_id, view.record.name.to_string());
    index
        .live
        .insert(view.record.name.to_string(), view.clone());
    Ok(view)
}

/// Brings back every registered sandbox after a start.
pub fn restore(agent: &Agent) -> Result<()> {
    let mut index = agent.sandboxes.write().unwrap_or_else(|p| p.into_inner());
    let records: Vec<SandboxRecord> = index.registry.list().cloned().collect();
    for record in records {
        if !record.cgroup_path.exists() {
            if record.adopted {
                log::warn!(
                    "sandbox {}: adopted cgroup {} is gone; delete the sandbox or adopt it again",
                    record.name,
                    record.cgroup_path.display()
                );
                continue;
            }
            cgroup::create(&record.cgroup_path)?;
        }
        let name = record.name.to_string();
        let snapshot = index.policies.current_snapshot(&name)?;
        if snapshot.version > 0 {
            agent.audit.log(
                ConfigStateChange::policy_loaded(
                    &policy_facts(&name, &snapshot),
                    PolicyLoad::Initial,
                )
                .into(),
            );
        }
        let view = bring_up(agent, &mut index, record, snapshot)
            .with_context(|| format!("restoring sandbox {name}"))?;
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
}

pub fn create(agent: &Agent, req: NewSandbox) -> Result<SandboxView> {
    let name = SandboxName::try_from(req.name.as_str())?;
    let policy_yaml = req.policy_yaml.filter(|y| !y.trim().is_empty());
    let source = req.policy_source.unwrap_or_else(|| "sandbox create".into());
    // Validate before touching the system.
    if let Some(yaml) = &policy_yaml {
        Policy::parse(&source, yaml)?;
    }
    let mut index = agent.sandboxes.write().unwrap_or_else(|p| p.into_inner());
    if index.registry.get(name.as_str()).is_some() {
        bail!("sandbox `{name}` already exists; delete it first or pick another name");
    }
    let cgroup_path = match &req.adopt {
        Some(path) => adoptable(&index, path)?,
        None => {
            let path = index.parent.join(name.as_str());
            cgroup::create(&path)?;
            path
        }
    };
    let record = SandboxRecord {
        name: name.clone(),
        id: index.registry.next_id(),
        cgroup_path,
        adopted: req.adopt.is_some(),
        created_unix: now_unix(),
    };
    // A stale history (a sandbox of the same name deleted while the agent
    // was down) must not leak into the new sandbox.
    index.policies.remove(name.as_str())?;
    let snapshot = match &policy_yaml {
        Some(yaml) => match index.policies.submit(name.as_str(), &source, yaml)? {
            Submitted::Loaded { snapshot, .. } => snapshot,
            Submitted::Failed { error, .. } => bail!(error),
        },
        None => Snapshot::deny_all(),
    };
    // Persist first: if attaching fails half-way, a restart or delete
    // still knows about the pins to clean up.
    index.registry.insert(record.clone())?;
    match bring_up(agent, &mut index, record, snapshot.clone()) {
        Ok(view) => {
            if snapshot.version > 0 {
                agent.audit.log(
                    ConfigStateChange::policy_loaded(
                        &policy_facts(name.as_str(), &snapshot),
                        PolicyLoad::Initial,
                    )
                    .into(),
                );
            }
            Ok(view)
        }
        Err(e) => {
            drop(index);
            let _ = delete(agent, name.as_str());
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
pub fn delete(agent: &Agent, name: &str) -> Result<u32> {
    let mut index = agent.sandboxes.write().unwrap_or_else(|p| p.into_inner());
    let Some(record) = index.registry.get(name).cloned() else {
        bail!("no sandbox named `{name}` (see `portcullis sandbox list`)");
    };
    // Owned sandboxes: kill first, so no process is ever running without
    // its programs attached.
    let killed = if record.adopted {
        0
    } else {
        cgroup::kill_and_remove(&record.cgroup_path)?
    };
    {
        let mut dp = agent.datapath.lock().unwrap_or_else(|p| p.into_inner());
        datapath::detach_sandbox(dp.pins(), name)?;
        if let Some(view) = index.live.get(name) {
            dp.unregister_cgroup(view.cgroup_id);
        }
    }
    if let Some(view) = index.live.remove(name) {
        index.by_cgroup.remove(&view.cgroup_id);
    }
    index.registry.remove(name)?;
    index.policies.remove(name)?;
    agent.pools.forget(record.id);
    Ok(killed)
}

/// The outcome of `policy set`.
pub struct PolicySet {
    pub snapshot: Arc<Snapshot>,
    pub unchanged: bool,
}

/// Validates a candidate and, if valid, swaps it in atomically. An invalid
/// candidate is recorded as failed and the snapshot in force stays.
pub fn set_policy(agent: &Agent, name: &str, source: &str, yaml: &str) -> Result<PolicySet> {
    let mut index = agent.sandboxes.write().unwrap_or_else(|p| p.into_inner());
    let Some(view) = index.live.get(name).cloned() else {
        bail!("no sandbox named `{name}` (see `portcullis sandbox list`)");
    };
    match index.policies.submit(name, source, yaml)? {
        Submitted::Loaded {
            snapshot,
            unchanged,
        } => {
            if !unchanged {
                for w in snapshot.policy.warnings() {
                    log::warn!("sandbox {name}: {w}");
                }
                // Relays authorised under the old snapshot re-check now.
                view.policy.send_replace(snapshot.clone());
                agent.audit.log(
                    ConfigStateChange::policy_loaded(
                        &policy_facts(name, &snapshot),
                        PolicyLoad::Reload,
                    )
                    .into(),
                );
            }
            Ok(PolicySet {
                snapshot,
                unchanged,
            })
        }
        Submitted::Failed { revision, error } => {
            let facts = PolicyFacts {
                sandbox: name.to_string(),
                path: Some(source.to_string()),
                version: Some(revision.version.to_string()),
                hash: None,
            };
            agent
                .audit
                .log(ConfigStateChange::policy_failed(&facts, &error).into());
            let current = view.snapshot();
            bail!(
                "{error}\npolicy rejected; version {} (hash {}) stays in force",
                current.version,
                current.hash
            )
        }
    }
}

/// Revisions of one sandbox, oldest first.
pub fn history(agent: &Agent, name: &str) -> Result<Vec<Revision>> {
    let index = agent.sandboxes.read().unwrap_or_else(|p| p.into_inner());
    if index.get(name).is_none() {
        bail!("no sandbox named `{name}` (see `portcullis sandbox list`)");
    }
    Ok(index.policies.history(name).to_vec())
}
