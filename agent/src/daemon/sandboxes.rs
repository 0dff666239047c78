//! The daemon's view of sandboxes: registry, cgroups, kernel attachment and
//! compiled policies, kept consistent with each other.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};

use super::Agent;
use crate::{
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
    pub policy: Arc<Policy>,
    pub links: u32,
}

pub struct SandboxIndex {
    registry: Registry,
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

fn compile(record: &SandboxRecord) -> Result<Arc<Policy>> {
    match &record.policy_yaml {
        None => Ok(Arc::new(Policy::deny_all())),
        Some(yaml) => {
            let source = record.policy_source.as_deref().unwrap_or("policy");
            let policy = Policy::parse(source, yaml)?;
            for w in &policy.warnings {
                log::warn!("sandbox {}: {w}", record.name);
            }
            Ok(Arc::new(policy))
        }
    }
}

/// Attaches and registers one sandbox whose cgroup exists.
fn bring_up(
    agent: &Agent,
    index: &mut SandboxIndex,
    record: SandboxRecord,
    policy: Arc<Policy>,
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
        policy,
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
        let policy =
            compile(&record).with_context(|| format!("sandbox {}: stored policy", record.name))?;
        let name = record.name.clone();
        let view = bring_up(agent, &mut index, record, policy)
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
    let record_policy = SandboxRecord {
        name: name.clone(),
        id: 0,
        cgroup_path: PathBuf::new(),
        adopted: req.adopt.is_some(),
        policy_yaml,
        policy_source: req.policy_source,
        created_unix: now_unix(),
    };
    // Validate before touching the system.
    let policy = compile(&record_policy)?;
    let mut index = agent.sandboxes.write().unwrap_or_else(|p| p.into_inner());
    if index.registry.get(name.as_str()).is_some() {
        bail!("sandbox `{name}` already exists; delete it first or pick another name");
    }
    let cgroup_path = match &req.adopt {
        Some(path) => {
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
            path
        }
        None => {
            let path = index.parent.join(name.as_str());
            cgroup::create(&path)?;
            path
        }
    };
    let record = SandboxRecord {
        id: index.registry.next_id(),
        cgroup_path,
        ..record_policy
    };
    // Persist first: if attaching fails half-way, a restart or delete
    // still knows about the pins to clean up.
    index.registry.insert(record.clone())?;
    match bring_up(agent, &mut index, record, policy) {
        Ok(view) => Ok(view),
        Err(e) => {
            drop(index);
            let _ = delete(agent, name.as_str());
            Err(e)
        }
    }
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
    Ok(killed)
}
