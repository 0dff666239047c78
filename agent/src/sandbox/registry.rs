//! Sandbox names and records (the store keeps them), and atomic file
//! writes for the few files the agent owns outside the store.

use std::{
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

    #[test]
    fn names_are_validated() {
        assert!(SandboxName::try_from("demo-1").is_ok());
        for bad in ["", "-x", "Demo", "a/b", "..", &"x".repeat(64)] {
            let err = SandboxName::try_from(bad).unwrap_err().to_string();
            assert!(err.contains("invalid sandbox name"), "{bad}: {err}");
        }
    }
}
