//! The durable list of sandboxes, one JSON document written atomically.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// A sandbox name: what users type and what pins and cgroups are named by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SandboxName(String);

impl SandboxName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SandboxName {
    type Error = anyhow::Error;

    fn try_from(name: String) -> Result<Self> {
        let valid = !name.is_empty()
            && name.len() <= 63
            && name.as_bytes()[0].is_ascii_alphanumeric()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if !valid {
            bail!(
                "invalid sandbox name `{name}`: use 1-63 characters of a-z, 0-9, `-` and `_`, \
                 starting with a letter or digit"
            );
        }
        Ok(Self(name))
    }
}

impl TryFrom<&str> for SandboxName {
    type Error = anyhow::Error;

    fn try_from(name: &str) -> Result<Self> {
        Self::try_from(name.to_string())
    }
}

impl From<SandboxName> for String {
    fn from(name: SandboxName) -> String {
        name.0
    }
}

impl std::fmt::Display for SandboxName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SandboxRecord {
    pub name: SandboxName,
    /// Small number given to the kernel for this sandbox's cgroup.
    pub id: u32,
    pub cgroup_path: PathBuf,
    /// Adopted cgroups belong to someone else: never killed or removed.
    pub adopted: bool,
    pub created_unix: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Document {
    next_id: u32,
    sandboxes: BTreeMap<String, SandboxRecord>,
}

/// The registry file and its contents.
pub struct Registry {
    path: PathBuf,
    doc: Document,
}

impl Registry {
    pub fn open(state_dir: &Path) -> Result<Self> {
        let path = state_dir.join("sandboxes.json");
        let doc = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is corrupt; restore it or remove it", path.display())
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Document {
                next_id: 1,
                ..Default::default()
            },
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        Ok(Self { path, doc })
    }

    pub fn get(&self, name: &str) -> Option<&SandboxRecord> {
        self.doc.sandboxes.get(name)
    }

    pub fn list(&self) -> impl Iterator<Item = &SandboxRecord> {
        self.doc.sandboxes.values()
    }

    pub fn len(&self) -> usize {
        self.doc.sandboxes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.doc.sandboxes.is_empty()
    }

    pub fn next_id(&self) -> u32 {
        self.doc.next_id.max(1)
    }

    /// Adds a record and persists it before returning.
    pub fn insert(&mut self, record: SandboxRecord) -> Result<()> {
        self.doc.next_id = self.doc.next_id.max(record.id + 1);
        self.doc.sandboxes.insert(record.name.to_string(), record);
        self.save()
    }

    pub fn remove(&mut self, name: &str) -> Result<Option<SandboxRecord>> {
        let removed = self.doc.sandboxes.remove(name);
        if removed.is_some() {
            self.save()?;
        }
        Ok(removed)
    }

    fn save(&self) -> Result<()> {
        write_atomic(&self.path, &serde_json::to_vec_pretty(&self.doc)?, 0o600)
    }
}

/// Writes via a temporary file, fsync and rename, so a crash leaves either
/// the old or the new contents.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().context("path has no parent")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, id: u32) -> SandboxRecord {
        SandboxRecord {
            name: SandboxName::try_from(name).unwrap(),
            id,
            cgroup_path: format!("/sys/fs/cgroup/portcullis/{name}").into(),
            adopted: false,
            created_unix: 1,
        }
    }

    #[test]
    fn names_are_validated() {
        assert!(SandboxName::try_from("demo-1").is_ok());
        for bad in ["", "-x", "Demo", "a/b", "..", &"x".repeat(64)] {
            let err = SandboxName::try_from(bad).unwrap_err().to_string();
            assert!(err.contains("invalid sandbox name"), "{bad}: {err}");
        }
    }

    #[test]
    fn records_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut reg = Registry::open(dir.path()).unwrap();
        assert_eq!(reg.next_id(), 1);
        reg.insert(record("demo", 1)).unwrap();
        reg.insert(record("other", 2)).unwrap();
        reg.remove("other").unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        assert_eq!(reg.len(), 1);
        assert_eq!(reg.get("demo"), Some(&record("demo", 1)));
        assert_eq!(reg.next_id(), 3, "ids are never reused");
    }

    #[test]
    fn a_corrupt_registry_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("sandboxes.json"), b"{").unwrap();
        let err = Registry::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("sandboxes.json is corrupt"), "{err}");
    }
}
