//! One-time import of the JSON files the store replaces:
//! `state_dir/sandboxes.json` (the sandbox registry) and
//! `state_dir/policies/<sandbox>.json` (policy revision histories).
//!
//! Each sandbox goes in with its revisions in one transaction; sandboxes
//! already in the store are skipped, so an import interrupted by a crash
//! simply runs again. Only when everything is in are the files renamed to
//! `*.imported` (policy files first, the registry last), so they are never
//! read twice.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::{ApprovalMode, Revision, RevisionStatus, SandboxRow, SqliteStore, Store, StoreError};
use crate::sandbox::registry::{SandboxName, SandboxRecord};

const REGISTRY_FILE: &str = "sandboxes.json";
const POLICIES_DIR: &str = "policies";

/// `sandbox/registry.rs` `Document`, as it was written.
#[derive(Deserialize)]
struct LegacyRegistry {
    next_id: u32,
    sandboxes: BTreeMap<String, LegacyRecord>,
}

/// The old `SandboxRecord`, copied so a later change to the live type
/// cannot break reading old files.
#[derive(Deserialize)]
struct LegacyRecord {
    name: String,
    id: u32,
    cgroup_path: PathBuf,
    adopted: bool,
    created_unix: u64,
}

/// `daemon/policies.rs` `History`, as it was written.
#[derive(Deserialize)]
struct LegacyHistory {
    revisions: Vec<LegacyRevision>,
}

/// The old `Revision`: the same fields minus `provenance`.
#[derive(Deserialize)]
struct LegacyRevision {
    version: u64,
    hash: String,
    status: RevisionStatus,
    source: String,
    created_unix_ms: u64,
    error: Option<String>,
    yaml: Option<String>,
}

impl From<LegacyRevision> for Revision {
    fn from(old: LegacyRevision) -> Self {
        Revision {
            version: old.version,
            hash: old.hash,
            status: old.status,
            source: old.source,
            provenance: "import".to_string(),
            created_unix_ms: old.created_unix_ms,
            error: old.error,
            yaml: old.yaml,
        }
    }
}

/// One `policies/<sandbox>.json` file.
struct PolicyFile {
    path: PathBuf,
    revisions: Vec<Revision>,
}

/// Imports the old JSON files, if any, and renames them. Returns how many
/// sandboxes were imported (0 when there was nothing left to import).
pub async fn import_legacy(store: &SqliteStore, state_dir: &Path) -> Result<usize, StoreError> {
    let registry_path = state_dir.join(REGISTRY_FILE);
    let registry = read_registry(&registry_path).await?;
    let mut policies = read_policy_files(&state_dir.join(POLICIES_DIR)).await?;
    if registry.is_none() && policies.is_empty() {
        return Ok(0);
    }

    let mut imported = 0;
    let mut done_files = Vec::new();
    if let Some(registry) = &registry {
        for (key, old) in &registry.sandboxes {
            let name = old.name.as_str();
            let record = SandboxRecord {
                name: SandboxName::try_from(name).map_err(|e| {
                    StoreError::Corrupt(format!("{}: {e}", registry_path.display()))
                })?,
                id: old.id,
                cgroup_path: old.cgroup_path.clone(),
                adopted: old.adopted,
                created_unix: old.created_unix,
            };
            if key != name {
                log::warn!(
                    "{}: entry `{key}` holds sandbox `{name}`; importing it as `{name}`",
                    registry_path.display()
                );
            }
            let file = policies.remove(name);
            let revisions = file.as_ref().map_or(&[][..], |f| f.revisions.as_slice());
            let row = SandboxRow {
                record,
                approval_mode: ApprovalMode::Manual,
            };
            if store.import_sandbox(&row, revisions).await? {
                imported += 1;
                log::info!(
                    "imported sandbox `{name}` with {} policy revision(s) from {}",
                    revisions.len(),
                    state_dir.display()
                );
            }
            done_files.extend(file.map(|f| f.path));
        }
        store.raise_next_sandbox_id(registry.next_id).await?;
    }

    // Policy histories of sandboxes the registry does not list.
    let known = store.sandboxes().await?;
    for (name, file) in policies {
        if known.iter().any(|row| row.record.name.as_str() == name) {
            done_files.push(file.path);
        } else {
            let orphan = suffixed(&file.path, "orphaned");
            log::warn!(
                "{} is the policy history of `{name}`, which {} does not list; \
                 not imported, kept as {}",
                file.path.display(),
                registry_path.display(),
                orphan.display()
            );
            rename(&file.path, &orphan).await?;
        }
    }

    for path in &done_files {
        rename(path, &suffixed(path, "imported")).await?;
    }
    if registry.is_some() {
        rename(&registry_path, &suffixed(&registry_path, "imported")).await?;
    }
    Ok(imported)
}

async fn read_registry(path: &Path) -> Result<Option<LegacyRegistry>, StoreError> {
    let bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::Backend(format!(
                "cannot read {} to import it: {e}",
                path.display()
            )));
        }
    };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        StoreError::Corrupt(format!(
            "{} does not decode ({e}); repair it, or move it away to skip importing it",
            path.display()
        ))
    })
}

/// Every `<sandbox>.json` in the old policies directory, by sandbox name.
async fn read_policy_files(dir: &Path) -> Result<BTreeMap<String, PolicyFile>, StoreError> {
    let unreadable = |e: std::io::Error| {
        StoreError::Backend(format!("cannot read {} to import it: {e}", dir.display()))
    };
    let mut files = BTreeMap::new();
    let mut entries = match tokio::fs::read_dir(dir).await {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(unreadable(e)),
    };
    while let Some(entry) = entries.next_entry().await.map_err(unreadable)? {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Some(name) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        let bytes = tokio::fs::read(&path).await.map_err(|e| {
            StoreError::Backend(format!("cannot read {} to import it: {e}", path.display()))
        })?;
        let history: LegacyHistory = serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::Corrupt(format!(
                "{} does not decode ({e}); repair it, or move it away to skip importing it",
                path.display()
            ))
        })?;
        let revisions = history.revisions.into_iter().map(Revision::from).collect();
        files.insert(name, PolicyFile { path, revisions });
    }
    Ok(files)
}

/// `a/b.json` → `a/b.json.<suffix>`.
fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    PathBuf::from(name)
}

async fn rename(from: &Path, to: &Path) -> Result<(), StoreError> {
    tokio::fs::rename(from, to).await.map_err(|e| {
        StoreError::Backend(format!(
            "imported {} but cannot rename it to {}: {e}; rename or remove it by hand",
            from.display(),
            to.display()
        ))
    })
}
