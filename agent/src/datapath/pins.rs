//! Where pins live in bpffs.
//!
//! ```text
//! <bpffs_dir>/maps/<MAP>                      maps, reused across restarts
//! <bpffs_dir>/links/global/<program>          tracepoints
//! <bpffs_dir>/links/sandbox/<name>/<program>  one link per cgroup program
//! ```

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

#[derive(Clone, Debug)]
pub struct PinLayout {
    root: PathBuf,
}

impl PinLayout {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn global_links(&self) -> PathBuf {
        self.root.join("links/global")
    }

    pub fn sandbox_links(&self, sandbox: &str) -> PathBuf {
        self.root.join("links/sandbox").join(sandbox)
    }

    /// Creates the directories on a bpffs, mounting the standard one at
    /// /sys/fs/bpf if nothing is mounted there yet (a fresh host or a
    /// privileged container often has the directory but no mount).
    pub fn create_dirs(&self) -> Result<()> {
        let existing = self
            .root
            .ancestors()
            .find(|p| p.is_dir())
            .unwrap_or(Path::new("/"));
        if !is_bpffs(existing)? {
            if existing == Path::new(STANDARD_BPFFS) {
                nix::mount::mount(
                    Some("bpf"),
                    STANDARD_BPFFS,
                    Some("bpf"),
                    nix::mount::MsFlags::empty(),
                    None::<&str>,
                )
                .with_context(|| format!("mounting bpffs at {STANDARD_BPFFS}"))?;
                log::info!("mounted bpffs at {STANDARD_BPFFS}");
            } else {
                bail!(
                    "{} is not on a bpf filesystem; mount one with `mount -t bpf bpf {}` or set bpffs_dir below {STANDARD_BPFFS}",
                    self.root.display(),
                    existing.display()
                );
            }
        }
        for dir in [
            self.maps(),
            self.global_links(),
            self.root.join("links/sandbox"),
        ] {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(())
    }

    /// Pinned links, sandbox and global.
    pub fn count_links(&self) -> u32 {
        let count = |dir: PathBuf| {
            fs::read_dir(dir)
                .map(|d| d.flatten().count() as u32)
                .unwrap_or(0)
        };
        let mut total = count(self.global_links());
        if let Ok(sandboxes) = fs::read_dir(self.root.join("links/sandbox")) {
            for s in sandboxes.flatten() {
                total += count(s.path());
            }
        }
        total
    }

    /// Removes every pin: maps, links, and the directories.
    pub fn remove_all(&self) -> Result<()> {
        if self.root.exists() {
            fs::remove_dir_all(&self.root)
                .with_context(|| format!("removing {}", self.root.display()))?;
        }
        Ok(())
    }
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;
const STANDARD_BPFFS: &str = "/sys/fs/bpf";

fn is_bpffs(path: &Path) -> Result<bool> {
    let stat =
        nix::sys::statfs::statfs(path).with_context(|| format!("statfs {}", path.display()))?;
    Ok(stat.filesystem_type().0 as i64 == BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_paths() {
        let p = PinLayout::new("/sys/fs/bpf/portcullis");
        assert_eq!(p.maps(), PathBuf::from("/sys/fs/bpf/portcullis/maps"));
        assert_eq!(
            p.sandbox_links("demo"),
            PathBuf::from("/sys/fs/bpf/portcullis/links/sandbox/demo")
        );
    }

    #[test]
    fn a_tmp_directory_is_not_bpffs() {
        let dir = tempfile::tempdir().unwrap();
        let p = PinLayout::new(dir.path().join("x"));
        assert!(
            p.create_dirs()
                .unwrap_err()
                .to_string()
                .contains("not on a bpf filesystem")
        );
    }
}
